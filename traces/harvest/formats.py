"""One SQL builder per format: each fills ``units`` and says how to rank and what to write.

Columns follow TRL's trainers: conversational (chat-message lists) where TRL has that form
and ``style="conversational"``, plain strings otherwise. PRM rows are TRL's stepwise
supervision (always plain); corrections are multi-turn ``messages`` (always conversational).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
from loopwright.traces.harvest.base import lit, provenance_sql
from loopwright.traces.harvest.options import HarvestOptions
from loopwright.traces.queries import in_list
from loopwright.traces.records import FEEDBACK_ROLES

CRITIQUE_TEMPLATE = (
    "Review the answer to the question below. Say what is wrong with it, if anything, "
    "and how to fix it.\n\nQuestion:\n{q}\n\nAnswer:\n{a}"
)


@dataclass(frozen=True)
class Plan:
    """How :func:`finish` ranks units and which columns the dataset gets."""

    order: str
    columns: dict[str, str]  # output name -> SQL over ``units``
    windows: str = ""


def _not_labelled(opts: HarvestOptions, c: str = "c") -> str:
    what = "graded" if opts.label == "graded" else "in-loop"
    return f"WHEN {c}.passed IS NULL THEN 'no {what} verdict'"


def _prov(opts: HarvestOptions) -> dict[str, str]:
    return {"provenance": "provenance"} if opts.provenance else {}


def sft(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    min_score = (
        f"WHEN c.score < {opts.min_score} THEN 'score below {opts.min_score:g}'"
        if opts.min_score is not None
        else ""
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        SELECT c.node_id AS uid, c.prompt_key, c.task_id, c.prompt, c.content, c.score,
               c.is_final, c.created_at AS seq,
               md5(c.prompt_h || c.content_h) AS dkey,
               CASE {_not_labelled(opts)}
                    WHEN NOT c.passed THEN 'not verified' {min_score} END AS reason,
               {provenance_sql("c", "[c.node_id]", opts.label, "c.passed")} AS provenance
        FROM cand c""")
    if opts.style == "plain":
        cols = {"prompt": "prompt", "completion": "content"}
    else:
        cols = {"messages": "user_msgs(prompt) || [msg('assistant', content)]"}
    return Plan("score DESC, is_final DESC, hash(uid)", {**cols, **_prov(opts)})


def kto(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        SELECT c.node_id AS uid, c.prompt_key, c.task_id, c.prompt, c.content,
               c.passed AS label, c.created_at AS seq,
               md5(c.prompt_h || c.content_h) AS dkey,
               CASE {_not_labelled(opts)} END AS reason,
               {provenance_sql("c", "[c.node_id]", opts.label, "c.passed")} AS provenance
        FROM cand c""")
    if opts.style == "plain":
        cols = {"prompt": "prompt", "completion": "content", "label": "label"}
    else:
        cols = {
            "prompt": "user_msgs(prompt)",
            "completion": "[msg('assistant', content)]",
            "label": "label",
        }
    # Alternate labels within a prompt so a cap keeps both kinds.
    return Plan(
        "rn_l, label DESC, hash(uid)",
        {**cols, **_prov(opts)},
        windows="row_number() OVER (PARTITION BY prompt_key, label ORDER BY hash(uid)) AS rn_l",
    )


def _pair_sources(opts: HarvestOptions) -> list[str]:
    parts = []
    if "siblings" in opts.pairs:
        same = {
            "task": "a.run_id = b.run_id AND a.task_id = b.task_id",
            "prompt": "a.prompt_key = b.prompt_key",
            "parent": "a.parent_id = b.parent_id AND a.run_id = b.run_id",
        }[opts.pair_scope]
        parts.append(f"""
            SELECT 's:' || a.node_id || ':' || b.node_id AS uid, 'siblings' AS source,
                   a.node_id AS chosen_id, b.node_id AS rejected_id,
                   a.score AS score_chosen, b.score AS score_rejected,
                   CAST(NULL AS VARCHAR) AS why
            FROM cand a JOIN cand b ON {same}
            WHERE a.passed AND NOT b.passed""")
    if "revisions" in opts.pairs:
        parts.append("""
            SELECT 'r:' || r.node_id AS uid, 'revisions' AS source,
                   r.node_id AS chosen_id, d.node_id AS rejected_id,
                   r.score AS score_chosen, d.score AS score_rejected,
                   CASE WHEN r.score < d.score THEN 'revision scored lower' END AS why
            FROM anc JOIN cand r ON r.node_id = anc.node_id JOIN cand d ON d.node_id = anc.anc_id""")
    if "judge" in opts.pairs:
        parts.append("""
            SELECT 'j:' || j.verdict_id AS uid, 'judge' AS source,
                   CASE WHEN j.af = 'b' THEN j.b ELSE j.a END AS chosen_id,
                   CASE WHEN j.af = 'b' THEN j.a ELSE j.b END AS rejected_id,
                   CAST(greatest(j.va, j.vb) AS DOUBLE) / greatest(j.parsed, 1) AS score_chosen,
                   CAST(least(j.va, j.vb) AS DOUBLE) / greatest(j.parsed, 1) AS score_rejected,
                   CASE WHEN j.af IS NULL OR j.bf IS NULL THEN 'judge undecided'
                        WHEN j.af <> j.bf THEN 'judge order flip'
                        WHEN j.af = 'tie' THEN 'tie' END AS why
            FROM judged j
            WHERE j.a IN (SELECT node_id FROM cand) AND j.b IN (SELECT node_id FROM cand)""")
    return parts


def dpo(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    con.execute("""
        CREATE OR REPLACE TEMP TABLE judged AS
        WITH v AS (
            SELECT verdict_id, details::JSON AS d FROM src.verdicts
            WHERE verifier = 'llm-judge-pairwise' AND details IS NOT NULL
              AND json_valid(details)),
        w AS (
            SELECT verdict_id, d->>'$.a_node_id' AS a, d->>'$.b_node_id' AS b,
                   d->>'$.a_first.winner' AS af, d->>'$.b_first.winner' AS bf,
                   CAST(coalesce(d->'$.a_first.votes', '[]') AS VARCHAR[])
                     || CAST(coalesce(d->'$.b_first.votes', '[]') AS VARCHAR[]) AS votes
            FROM v)
        SELECT verdict_id, a, b, af, bf,
               len(list_filter(votes, lambda x: x = 'a')) AS va,
               len(list_filter(votes, lambda x: x = 'b')) AS vb,
               len(list_filter(votes, lambda x: x IN ('a', 'b', 'tie'))) AS parsed
        FROM w WHERE a IS NOT NULL AND b IS NOT NULL""")
    union = " UNION ALL ".join(_pair_sources(opts))
    margin_rule = (
        f"WHEN p.score_chosen - p.score_rejected < {opts.min_margin} "
        f"THEN 'margin below {opts.min_margin:g}'"
        if opts.min_margin > 0
        else ""
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        WITH p AS ({union})
        SELECT p.uid, p.source, c.prompt_key, c.task_id, c.prompt,
               p.chosen_id, p.rejected_id, c.content AS chosen, r.content AS rejected,
               p.score_chosen, p.score_rejected,
               p.score_chosen - p.score_rejected AS margin,
               [c.created_at, r.created_at] AS seq,
               md5(c.prompt_h || c.content_h || r.content_h) AS dkey,
               CASE WHEN p.why IS NOT NULL THEN p.why
                    WHEN c.content_h = r.content_h THEN 'identical texts'
                    WHEN p.score_chosen = p.score_rejected THEN 'tie'
                    WHEN p.score_chosen < p.score_rejected THEN 'chosen scored lower'
                    {margin_rule} END AS reason,
               {provenance_sql("c", "[p.chosen_id, p.rejected_id]", opts.label, "c.passed")}
                 AS provenance
        FROM p JOIN cand c ON c.node_id = p.chosen_id JOIN cand r ON r.node_id = p.rejected_id""")
    if opts.style == "plain":
        cols = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    else:
        cols = {
            "prompt": "user_msgs(prompt)",
            "chosen": "[msg('assistant', chosen)]",
            "rejected": "[msg('assistant', rejected)]",
        }
    cols |= {
        "score_chosen": "score_chosen",
        "score_rejected": "score_rejected",
        "margin": "margin",
        "source": "source",
    }
    # Widest margin first; among equal margins walk the chosen x rejected grid by diagonals
    # (i-th chosen with i-th rejected first), so a cap spreads over distinct answers.
    return Plan(
        "margin DESC, abs(ci - ri), ci, hash(uid)",
        {**cols, **_prov(opts)},
        windows=(
            "dense_rank() OVER (PARTITION BY prompt_key ORDER BY chosen_id) AS ci, "
            "dense_rank() OVER (PARTITION BY prompt_key ORDER BY rejected_id) AS ri"
        ),
    )


def prm(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    # A step node extends its parent's text; its step is what it added.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE stepn AS
        SELECT n.node_id, n.parent_id, n.value,
               CASE WHEN n.parent_id IS NULL THEN n.content
                    WHEN p.role = 'expander' AND starts_with(n.content, p.content)
                      THEN trim(substr(n.content, length(p.content) + 1),
                                ' ' || chr(10) || chr(13) || chr(9))
               END AS step
        FROM nodes_f n LEFT JOIN src.nodes p ON p.node_id = n.parent_id
        WHERE n.role = 'expander'""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE paths AS
        WITH RECURSIVE up(t, s, hops) AS (
            SELECT c.node_id, c.node_id, 0 FROM cand c JOIN stepn USING (node_id)
            UNION ALL
            SELECT up.t, n.parent_id, up.hops + 1
            FROM up JOIN stepn n ON n.node_id = up.s
            WHERE n.parent_id IS NOT NULL AND up.hops < 256)
        SELECT up.t, up.s, up.hops, sn.step, sn.value, sn.node_id IS NOT NULL AS known
        FROM up LEFT JOIN stepn sn ON sn.node_id = up.s""")
    if opts.prm_label == "subtree":
        good = """
            CREATE OR REPLACE TEMP TABLE good AS
            SELECT s, bool_or(coalesce(passed, FALSE)) AS ok FROM (
                SELECT p.s, c.passed FROM paths p JOIN cand c ON c.node_id = p.t
                UNION ALL
                SELECT r.parent_id, r.passed FROM cand r WHERE r.role = 'rollout'
            ) GROUP BY s"""
    else:
        good = f"""
            CREATE OR REPLACE TEMP TABLE good AS
            SELECT node_id AS s, coalesce(value >= {opts.value_threshold}, FALSE) AS ok
            FROM stepn"""
    con.execute(good)
    verified = "WHEN NOT c.passed THEN 'not verified'" if opts.verified_only else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        WITH rows AS (
            SELECT p.t,
                   list(p.step ORDER BY p.hops DESC) AS steps,
                   list(CASE WHEN p.hops = 0 THEN c.passed ELSE coalesce(g.ok, FALSE) END
                        ORDER BY p.hops DESC) AS labels,
                   bool_and(p.known AND p.step IS NOT NULL) AS is_steps,
                   list(p.s ORDER BY p.hops DESC) AS ids
            FROM paths p JOIN cand c ON c.node_id = p.t LEFT JOIN good g ON g.s = p.s
            GROUP BY p.t)
        SELECT c.node_id AS uid, c.prompt_key, c.task_id, c.prompt, rows.steps, rows.labels,
               c.created_at AS seq,
               md5(c.prompt_h ||
                   array_to_string(list_transform(rows.steps, lambda x: dtext(x)), chr(30)))
                 AS dkey,
               CASE WHEN NOT rows.is_steps THEN 'not a step tree' {_not_labelled(opts)}
                    {verified} END AS reason,
               c.passed,
               {provenance_sql("c", "rows.ids", opts.label, "c.passed")} AS provenance
        FROM rows JOIN cand c ON c.node_id = rows.t""")
    cols = {"prompt": "prompt", "completions": "steps", "labels": "labels"}
    return Plan("passed DESC, hash(uid)", {**cols, **_prov(opts)})


def critique(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    template = lit(CRITIQUE_TEMPLATE)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        WITH crit AS (
            SELECT n.node_id, n.parent_id, n.content FROM nodes_f n
            WHERE {in_list("n.role", FEEDBACK_ROLES)} AND coalesce(trim(n.content), '') <> ''),
        rev AS (
            SELECT anc.anc_id AS d, arg_max(r.node_id, (r.passed, r.score)) AS r_id
            FROM anc JOIN cand r ON r.node_id = anc.node_id GROUP BY anc.anc_id)
        SELECT k.node_id AS uid, d.prompt_key, d.task_id, d.created_at AS seq,
               replace(replace({template}, '{{q}}', d.prompt), '{{a}}', d.content) AS request,
               k.content AS critique,
               md5(d.prompt_h || d.content_h || md5(dtext(k.content)))
                 AS dkey,
               coalesce(r.score, 0) - d.score AS gain,
               CASE WHEN r.node_id IS NULL THEN 'no revision followed'
                    WHEN r.passed IS NULL THEN 'no verdict on the revision'
                    WHEN NOT r.passed THEN 'revision not verified'
                    WHEN r.score <= d.score THEN 'revision no better' END AS reason,
               {provenance_sql("d", "[d.node_id, k.node_id, r.node_id]", opts.label, "r.passed")}
                 AS provenance
        FROM crit k JOIN cand d ON d.node_id = k.parent_id
        LEFT JOIN rev ON rev.d = d.node_id LEFT JOIN cand r ON r.node_id = rev.r_id""")
    if opts.style == "plain":
        cols = {"prompt": "request", "completion": "critique"}
    else:
        cols = {"prompt": "user_msgs(request)", "completion": "[msg('assistant', critique)]"}
    return Plan("gain DESC, hash(uid)", {**cols, **_prov(opts)})


def corrections(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> Plan:
    verified = "WHEN NOT leaf.passed THEN 'not verified'" if opts.verified_only else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE units AS
        WITH RECURSIVE chain(leaf, node, hops) AS (
            SELECT c.node_id, c.node_id, 0 FROM cand c
            WHERE c.node_id NOT IN (SELECT anc_id FROM anc)
            UNION ALL
            SELECT chain.leaf, anc.anc_id, chain.hops + 1
            FROM chain JOIN anc ON anc.node_id = chain.node WHERE chain.hops < 64),
        fb AS (
            SELECT parent_id AS node_id, arg_min(content, created_at) AS text FROM nodes_f
            WHERE {in_list("role", FEEDBACK_ROLES)} AND coalesce(trim(content), '') <> ''
            GROUP BY parent_id),
        turns AS (
            SELECT chain.leaf,
                   list({{'answer': c.content,
                          'feedback': coalesce(fb.text, c.v_feedback,
                                               'That answer is not right. Try again.')}}
                        ORDER BY chain.hops DESC) AS path,
                   list(c.node_id ORDER BY chain.hops DESC) AS ids,
                   list(c.content_h ORDER BY chain.hops DESC) AS hashes
            FROM chain JOIN cand c ON c.node_id = chain.node
            LEFT JOIN fb ON fb.node_id = c.node_id
            GROUP BY chain.leaf)
        SELECT leaf.node_id AS uid, leaf.prompt_key, leaf.task_id, leaf.prompt, turns.path,
               leaf.created_at AS seq,
               leaf.passed, len(turns.path) AS attempts,
               md5(leaf.prompt_h || array_to_string(turns.hashes, '')) AS dkey,
               CASE WHEN len(turns.path) < 2 THEN 'single attempt' {_not_labelled(opts, "leaf")}
                    {verified} END AS reason,
               {provenance_sql("leaf", "turns.ids", opts.label, "leaf.passed")} AS provenance
        FROM turns JOIN cand leaf ON leaf.node_id = turns.leaf""")
    messages = (
        "user_msgs(prompt) || flatten(list_transform(path, lambda x, i: CASE WHEN i < len(path) "
        "THEN [msg('assistant', x.answer), msg('user', x.feedback)] "
        "ELSE [msg('assistant', x.answer)] END))"
    )
    return Plan("passed DESC, attempts DESC, hash(uid)", {"messages": messages, **_prov(opts)})


BUILDERS: dict[str, Callable[[duckdb.DuckDBPyConnection, HarvestOptions], Plan]] = {
    "sft": sft,
    "dpo": dpo,
    "kto": kto,
    "prm": prm,
    "critique": critique,
    "corrections": corrections,
}
