"""The tables every export starts from, built in DuckDB over the attached trace database.

A harvest opens an in-memory DuckDB, attaches the trace file read-only as ``src`` and builds
temporary tables:

- ``cand`` — every *candidate*: a node holding a whole answer that a verifier judged (roles
  generator, refiner, expander, rollout with an ``in_loop`` or ``graded`` verdict), inside the
  user's filters, with its task prompt, run provenance and its label (``passed``/``score``
  from the chosen verdict stage);
- ``anc`` — each candidate's nearest candidate ancestor (the draft a revision revised),
  walking up through critic/reflector/partial nodes;
- ``contam`` — prompt keys that overlap an eval file (word n-grams).

Each format then builds ``units`` (one row per output row, with an exclusion ``reason`` that
is NULL for kept rows) and :func:`finish` applies the shared steps — contamination,
duplicates, the per-prompt cap — as SQL updates, so excluded rows are counted by reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from loopwright.traces.harvest.options import HarvestOptions
from loopwright.traces.queries import in_list as _in_list
from loopwright.traces.queries import lit, oracle_sql, verifier_sql
from loopwright.traces.records import ANSWER_ROLES, OPINION_VERIFIERS

EVAL_FIELDS = ("prompt", "question", "problem", "input", "text")


class HarvestError(Exception):
    """Bad harvest input: one line saying what is wrong and what to do."""


def connect(db: str | Path, opts: HarvestOptions) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the trace file attached read-only and the macros defined."""
    path = Path(db)
    if not path.exists():
        raise HarvestError(f"no trace database at {path}: run `loopwright run` first or fix --db")
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH {lit(str(path))} AS src (READ_ONLY)")
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise HarvestError(
            f"cannot open {path}: {first} (is a loopwright run still writing it?)"
        ) from exc
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'src'"
    ).fetchall()}  # fmt: skip
    missing = {"runs", "tasks", "nodes", "verdicts", "calls"} - have
    if missing:
        raise HarvestError(f"{path} is not a loopwright trace database (no {sorted(missing)[0]})")
    _macros(con, opts)
    return con


def _macros(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> None:
    con.execute(
        "CREATE TEMP MACRO norm(x) AS "
        "trim(regexp_replace(lower(coalesce(x, '')), '[^a-z0-9]+', ' ', 'g'))"
    )
    # The text a duplicate check compares.
    dtext = {"normalised": "norm(x)", "exact": "coalesce(x, '')", "none": "coalesce(x, '')"}
    con.execute(f"CREATE TEMP MACRO dtext(x) AS {dtext[opts.dedup]}")
    con.execute("CREATE TEMP MACRO pkey(x) AS md5(norm(x))")
    con.execute("CREATE TEMP MACRO msg(r, c) AS {'role': r, 'content': c}")
    system = (
        f"[msg('system', {lit(opts.system)})] || " if opts.system and opts.style != "plain" else ""
    )
    con.execute(f"CREATE TEMP MACRO user_msgs(p) AS {system}[msg('user', p)]")
    con.execute(
        "CREATE TEMP MACRO words(x) AS list_filter(string_split(norm(x), ' '), lambda w: w <> '')"
    )
    con.execute(
        "CREATE TEMP MACRO ngrams(ws, n) AS CASE WHEN len(ws) < n "
        "THEN [array_to_string(ws, ' ')] "
        "ELSE list_transform(range(1, len(ws) - n + 2), "
        "lambda i: array_to_string(ws[i:i + n - 1], ' ')) END"
    )


def _filters(alias: str, opts: HarvestOptions) -> str:
    conds = ["TRUE"]
    if opts.runs:
        conds.append(
            f"({_in_list(f'{alias}.run_id', opts.runs)} OR {_in_list('r.name', opts.runs)})"
        )
    if opts.loops:
        conds.append(_in_list("r.loop", opts.loops))
    if opts.models:
        conds.append(f"({_in_list(f'{alias}.model', opts.models)} OR "
                     f"({alias}.model IS NULL AND {_in_list('r.model', opts.models)}))")  # fmt: skip
    if opts.min_round is not None:
        conds.append(f"{alias}.round >= {opts.min_round}")
    if opts.max_round is not None:
        conds.append(f"{alias}.round <= {opts.max_round}")
    return " AND ".join(conds)


def check_runs(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> None:
    """Unknown --run names are an error, not an empty dataset."""
    if not opts.runs:
        return
    known = con.execute("SELECT run_id, name FROM src.runs").fetchall()
    names = {n for r in known for n in r}
    unknown = [r for r in opts.runs if r not in names]
    if unknown:
        listed = ", ".join(sorted(r[1] for r in known)[:8]) or "none"
        raise HarvestError(f"unknown run {unknown[0]!r}; runs in this database: {listed}")


def build_candidates(con: duckdb.DuckDBPyConnection, opts: HarvestOptions) -> None:
    """``cand`` (labelled answers), ``nodes_f`` (every node in the filters) and ``anc``."""
    check_runs(con, opts)
    opinion = ", ".join(lit(v) for v in OPINION_VERIFIERS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE lab AS
        SELECT node_id, stage,
               arg_max(passed, created_at) AS passed,
               arg_max(score, created_at) AS score,
               arg_max(feedback, created_at) AS feedback
        FROM src.verdicts
        WHERE node_id IS NOT NULL AND stage IN ('in_loop', 'graded')
          AND verifier NOT IN ({opinion})
        GROUP BY node_id, stage""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE nodes_f AS
        SELECT n.*, r.name AS run_name, r.config_hash, r.model AS run_model,
               -- the run's in-loop verifier; runs from before verifiers were chosen checked
               -- against the reference, so they count as oracle runs
               {verifier_sql("r.config")} AS verifier, {oracle_sql("r.config")} AS oracle
        FROM src.nodes n JOIN src.runs r USING (run_id)
        WHERE {_filters("n", opts)}""")
    stage = opts.label
    # Prompts are normalised once each, not once per answer (the regex is the costly part).
    con.execute("""
        CREATE OR REPLACE TEMP TABLE prompts AS
        SELECT prompt, pkey(prompt) AS prompt_key, md5(dtext(prompt)) AS prompt_h
        FROM (SELECT DISTINCT prompt FROM src.tasks)""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand AS
        SELECT n.node_id, n.parent_id, n.run_id, n.run_name, n.config_hash, n.task_id,
               n.verifier, n.oracle, n.loop, coalesce(n.model, n.run_model) AS model, n.role, n.depth, n.round,
               n.content, n.answer, n.value, n.is_final, n.created_at,
               t.prompt, t.kind, pr.prompt_key, pr.prompt_h,
               md5(dtext(n.content)) AS content_h,
               il.passed AS v_passed, il.score AS v_score, il.feedback AS v_feedback,
               g.passed AS g_passed,
               {"g" if stage == "graded" else "il"}.passed AS passed,
               CAST(coalesce({"g" if stage == "graded" else "il"}.score,
                             CAST({"g" if stage == "graded" else "il"}.passed AS INT))
                    AS DOUBLE) AS score
        FROM nodes_f n
        JOIN src.tasks t USING (run_id, task_id)
        JOIN prompts pr ON pr.prompt = t.prompt
        LEFT JOIN lab il ON il.node_id = n.node_id AND il.stage = 'in_loop'
        LEFT JOIN lab g ON g.node_id = n.node_id AND g.stage = 'graded'
        WHERE {_in_list("n.role", ANSWER_ROLES)}
          AND (il.node_id IS NOT NULL OR g.node_id IS NOT NULL)
          AND coalesce(trim(n.content), '') <> ''""")
    # Nearest candidate ancestor: walk up through nodes that are not answers (a critique, a
    # reflection, a partial step) until an answer of the same run is reached.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE anc AS
        WITH RECURSIVE up(node_id, cur, hops) AS (
            SELECT c.node_id, c.parent_id, 1 FROM cand c WHERE c.parent_id IS NOT NULL
            UNION ALL
            SELECT up.node_id, n.parent_id, up.hops + 1
            FROM up JOIN src.nodes n ON n.node_id = up.cur
            WHERE n.parent_id IS NOT NULL AND up.hops < 64
              AND NOT EXISTS (SELECT 1 FROM cand c WHERE c.node_id = up.cur))
        SELECT up.node_id, up.cur AS anc_id
        FROM up JOIN cand c ON c.node_id = up.cur""")


def _eval_texts(opts: HarvestOptions) -> list[str]:
    texts: list[str] = []
    for path in opts.contamination:
        if not path.exists():
            raise HarvestError(f"contamination file {path} does not exist")
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HarvestError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
                if isinstance(row, str):
                    texts.append(row)
                    continue
                if not isinstance(row, dict):
                    raise HarvestError(f"{path}:{lineno}: expected a JSON object per line")
                fields = (opts.contamination_field,) if opts.contamination_field else EVAL_FIELDS
                text = next((row[f] for f in fields if isinstance(row.get(f), str)), None)
                if text is None:
                    raise HarvestError(
                        f"{path}:{lineno}: no text field ({', '.join(fields)}); "
                        "name it with --contamination-field"
                    )
                texts.append(text)
    return texts


def overlapping(
    prompts: list[str], eval_texts: list[str], opts: HarvestOptions | None = None
) -> list[str]:
    """The ``prompts`` that harvest's contamination check finds in ``eval_texts`` (same
    n-gram rule and threshold), so a train/eval split can be refused before any run."""
    opts = opts or HarvestOptions()
    con = duckdb.connect()
    try:
        _macros(con, opts)
        con.execute("CREATE TEMP TABLE cand (prompt VARCHAR, prompt_key VARCHAR)")
        con.executemany("INSERT INTO cand VALUES (?, pkey(?))", [[p, p] for p in prompts])
        build_contamination(con, opts, eval_texts)
        rows = con.execute(
            "SELECT DISTINCT prompt FROM cand WHERE prompt_key IN (SELECT prompt_key FROM contam)"
            " ORDER BY prompt"
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        con.close()


def build_contamination(
    con: duckdb.DuckDBPyConnection, opts: HarvestOptions, texts: list[str] | None = None
) -> None:
    """``contam(prompt_key)``: candidate prompts overlapping an eval text (``texts``, or the
    rows of the eval files ``opts.contamination`` names)."""
    con.execute("CREATE OR REPLACE TEMP TABLE contam (prompt_key VARCHAR)")
    texts = _eval_texts(opts) if texts is None else texts
    if not texts:
        return
    con.execute("CREATE OR REPLACE TEMP TABLE eval_texts (text VARCHAR)")
    con.executemany("INSERT INTO eval_texts VALUES (?)", [[t] for t in texts])
    n = opts.ngram
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE eval_grams AS
        SELECT DISTINCT g FROM (
            SELECT unnest(ngrams(words(text), {n})) AS g FROM eval_texts
            WHERE len(words(text)) >= {n})""")
    con.execute(f"""
        INSERT INTO contam
        WITH p AS (SELECT DISTINCT prompt_key, prompt FROM cand),
        long_p AS (
            SELECT prompt_key, unnest(list_distinct(ngrams(words(prompt), {n}))) AS g
            FROM p WHERE len(words(prompt)) >= {n}),
        share AS (
            SELECT prompt_key, avg(CAST(e.g IS NOT NULL AS DOUBLE)) AS s
            FROM long_p LEFT JOIN eval_grams e USING (g) GROUP BY prompt_key)
        SELECT prompt_key FROM share WHERE s >= {opts.contamination_threshold}
        UNION
        SELECT p.prompt_key FROM p
        WHERE len(words(p.prompt)) BETWEEN 1 AND {n - 1} AND EXISTS (
            SELECT 1 FROM eval_texts e
            WHERE contains(' ' || norm(e.text) || ' ', ' ' || norm(p.prompt) || ' '))""")


def provenance_sql(c: str, node_ids: str, label: str, passed: str) -> str:
    """The ``provenance`` struct of a row whose main candidate is alias ``c``."""
    return (
        f"{{'run_id': {c}.run_id, 'run_name': {c}.run_name, 'task_id': {c}.task_id, "
        f"'node_ids': {node_ids}, 'model': {c}.model, 'loop': {c}.loop, "
        f"'config_hash': {c}.config_hash, 'round': {c}.round, 'label': {lit(label)}, "
        f"'passed': {passed}, 'verifier': {c}.verifier, 'oracle': {c}.oracle}}"
    )


def finish(
    con: duckdb.DuckDBPyConnection,
    opts: HarvestOptions,
    cap: int,
    order: str,
    windows: str = "",
) -> None:
    """Contamination, duplicates and the per-prompt cap over ``units``, in that order.

    ``units`` must have ``uid``, ``prompt_key``, ``dkey``, ``seq`` (when the row's answer was
    made: of duplicates the first made is kept), ``reason`` and the columns ``order`` (best
    first, for the cap) and ``windows`` (extra window columns the order may use) refer to.
    """
    con.execute("""
        UPDATE units SET reason = 'contaminated'
        WHERE reason IS NULL AND prompt_key IN (SELECT prompt_key FROM contam)""")
    extra = f", {windows}" if windows else ""
    if opts.dedup != "none":
        con.execute("""
            UPDATE units SET reason = 'duplicate' FROM (
                SELECT uid, row_number() OVER (PARTITION BY dkey ORDER BY seq, hash(uid)) AS rn
                FROM units WHERE reason IS NULL) d
            WHERE units.uid = d.uid AND d.rn > 1""")
    con.execute(f"""
        UPDATE units SET reason = {lit(f"over {cap} per prompt")} FROM (
            SELECT uid, row_number() OVER (PARTITION BY prompt_key ORDER BY {order}) AS rn
            FROM (SELECT *{extra} FROM units WHERE reason IS NULL)) d
        WHERE units.uid = d.uid AND d.rn > {cap}""")
