"""Harvest throughput: every export format over a synthetic 1M-call trace database.

Builds a loopwright trace database (the real schema from ``loopwright.traces.schema``) with
DuckDB set operations -- no Python loop over rows -- shaped like what the loops write:

* runs of self-refine, reflexion, best-of-n, beam and mcts for two models; every run works
  on a window of a shared pool of prompts, so one task (same ``task_id``, same prompt) shows
  up in several runs;
* self-refine: draft (generator, round 0) -> critic (same round, parent the draft) -> refiner
  (parent the draft, round + 1) ...; reflexion: generator trials chained, a reflector lesson
  under each failed trial; earlier drafts fail, the chain stops at the first pass;
* best-of-n: 8 generator samples of one request (n=8, no parent) and a ``vote`` node;
* beam: expander step trees (``beam_width`` 2, ``expansions`` 2, ``max_depth`` 4; a child's
  content is its parent's plus ``\\n\\n`` plus the new step; depth = round = step index),
  terminals with an answer, one rollout under every open partial;
* mcts: a root (the question), generator attempts under it, expander attempts below the best
  one, a ``value`` reply under every attempt and a reflector lesson per simulation;
* an ``in_loop`` ``math-answer`` verdict on every answer node (~30% pass), a ``graded``
  verdict on each task's final node, ``llm-judge-pairwise`` verdicts (stage ``judge``) on ~40%
  of the tasks with ~20% order flips, ~20% of the answers a bare "The answer is N." (so
  duplicates exist), and one ``calls`` row per model sample.

Then it times ``harvest()`` for every format to ``.parquet`` and ``.jsonl`` (and to a
``datasets`` folder for one format), one export with a contamination file, against a
baseline measured in the same run: ``COPY (SELECT * FROM nodes) TO 'x.parquet'`` on a plain
DuckDB connection (the raw I/O floor).

    python benchmarks/harvest.py                      # 1M calls
    python benchmarks/harvest.py --calls 50000        # quick
    python benchmarks/harvest.py --formats sft,dpo --db /tmp/traces.duckdb --keep
    python benchmarks/harvest.py --smoke --json       # 2,000 calls; a final JSON line of rows

Exits 0 whatever the figures (a failed export is printed, not raised); it is a benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import duckdb
from loopwright.traces.harvest import FORMATS, HarvestOptions, harvest
from loopwright.traces.schema import TABLES

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

MODELS = ("openai/gpt-4o-mini", "hosted_vllm/Qwen2.5-7B-Instruct")
LOOPS = ("self-refine", "reflexion", "best-of-n", "beam", "mcts")
# Mean model samples per task of each loop (see the node builders below); sets the task count.
CALLS_PER_TASK = {
    "self-refine": 4.0,
    "reflexion": 4.0,
    "best-of-n": 8.0,
    "beam": 27.1,
    "mcts": 14.0,
}
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Ema", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kai", "Lena"]
THINGS = ["apples", "marbles", "stickers", "books", "pencils", "shells", "coins", "cards"]
PHRASES = [
    "First count what is in the boxes",
    "Then multiply the number of boxes by the items per box",
    "Next add the amount there was at the start",
    "Finally check the sum once more",
]

# Column list of the staging table every loop's node builder fills (UNION ALL BY NAME).
STAGE = """
    CREATE TEMP TABLE sn (
        node_id VARCHAR, parent_id VARCHAR, run_id VARCHAR, task_id VARCHAR, loop VARCHAR,
        model VARCHAR, role VARCHAR, depth INTEGER, round INTEGER, content VARCHAR,
        answer VARCHAR, ok BOOLEAN, score DOUBLE, value DOUBLE, visits INTEGER, ord INTEGER,
        req VARCHAR, sidx INTEGER, n INTEGER, output VARCHAR, prompt VARCHAR, idx INTEGER,
        run_no INTEGER)"""


def _list(items: list[str]) -> str:
    return "[" + ", ".join("'" + s.replace("'", "''") + "'" for s in items) + "]"


def _macros(con: duckdb.DuckDBPyConnection, seed: int) -> None:
    m = [
        # Uniform [0, 1) from a string: deterministic, so texts rebuilt elsewhere agree.
        f"u(s) AS CAST(hash('{seed}:' || s) % 1000003 AS DOUBLE) / 1000003",
        "h(s, m) AS CAST(hash(s) % m AS BIGINT)",
        "nid(r, t, k) AS md5(r || ':' || t || ':' || k)",
        "wrong(ref, s) AS CAST(CAST(ref AS BIGINT) + 1 + h(s, 3) AS VARCHAR)",
        "ans(ref, ok, s) AS CASE WHEN ok THEN ref ELSE wrong(ref, s) END",
        "solution(a, s) AS CASE WHEN u(s || ':dup') < 0.2 THEN 'The answer is ' || a || '.' "
        "ELSE 'Let us reason step by step (' || substr(md5(s), 1, 10) || '). We start from the "
        "quantities in the question, multiply the boxes by the items in each box and add what "
        "was there at the start. Checking the arithmetic once more, the answer is ' || a || '.' "
        "END",
        "critique(a, s) AS 'The draft answer ' || a || ' is off: it counts the boxes but not "
        "the items in each box (' || substr(md5(s), 1, 6) || '). Multiply first, then add the "
        "starting amount.'",
        "lesson(a, s) AS 'Lesson: my answer ' || a || ' was rejected because I added before "
        "multiplying (' || substr(md5(s), 1, 6) || '). Next time multiply the boxes by the "
        "items per box first.'",
        f"step(s, d) AS 'Step ' || (d + 1) || ': ' || {_list(PHRASES)}[1 + d % 4] || ' (' "
        "|| substr(md5(s), 1, 8) || ').'",
        "ts(run_no, idx, ord) AS TIMESTAMP '2026-05-01 00:00:00' + to_days(CAST(run_no AS INT))"
        " + to_seconds(CAST(idx AS BIGINT) * 60 + ord)",
    ]
    for macro in m:
        con.execute(f"CREATE TEMP MACRO {macro}")


def _nodes(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ``sn``: one row per node, with its label (``ok``) and the request that made it."""
    common = "run_id, task_id, loop, model, prompt, idx, run_no"
    con.execute(STAGE)
    # self-refine: drafts 0..refs; a critique under each draft but the last.
    con.execute(f"""
        INSERT INTO sn BY NAME
        WITH d AS (
            SELECT {common}, reference, refs, k, run_id || task_id || ':d' || k AS s,
                   k = refs AND (refs < 3 OR u(run_id || task_id || ':ok') < 0.3) AS ok
            FROM tg, range(4) g(k) WHERE loop = 'self-refine' AND k <= refs),
        d2 AS (SELECT *, ans(reference, ok, s) AS a FROM d)
        SELECT {common}, nid(run_id, task_id, 'd' || k) AS node_id,
               CASE WHEN k > 0 THEN nid(run_id, task_id, 'd' || (k - 1)) END AS parent_id,
               CASE WHEN k = 0 THEN 'generator' ELSE 'refiner' END AS role, k AS depth,
               k AS round, solution(a, s) AS content, a AS answer, ok,
               CAST(ok AS DOUBLE) AS score, 2 * k AS ord, 'd' || k AS req, 0 AS sidx, 1 AS n,
               solution(a, s) AS output
        FROM d2
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'c' || k) AS node_id,
               nid(run_id, task_id, 'd' || k) AS parent_id, 'critic' AS role, k + 1 AS depth,
               k AS round, critique(a, s) AS content, 2 * k + 1 AS ord, 'c' || k AS req,
               0 AS sidx, 1 AS n, critique(a, s) AS output
        FROM d2 WHERE k < refs""")
    # reflexion: trials 0..trials-1 chained; a lesson under each failed trial but the last.
    con.execute(f"""
        INSERT INTO sn BY NAME
        WITH d AS (
            SELECT {common}, reference, trials, k, run_id || task_id || ':a' || k AS s,
                   k = trials - 1 AND (trials < 4 OR u(run_id || task_id || ':ok') < 0.3) AS ok
            FROM tg, range(4) g(k) WHERE loop = 'reflexion' AND k < trials),
        d2 AS (SELECT *, ans(reference, ok, s) AS a FROM d)
        SELECT {common}, nid(run_id, task_id, 'a' || k) AS node_id,
               CASE WHEN k > 0 THEN nid(run_id, task_id, 'a' || (k - 1)) END AS parent_id,
               'generator' AS role, k AS depth, k AS round, solution(a, s) AS content,
               a AS answer, ok, CAST(ok AS DOUBLE) AS score, 2 * k AS ord, 'a' || k AS req,
               0 AS sidx, 1 AS n, solution(a, s) AS output
        FROM d2
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'x' || k) AS node_id,
               nid(run_id, task_id, 'a' || k) AS parent_id, 'reflector' AS role,
               k + 1 AS depth, k AS round, lesson(a, s) AS content, 2 * k + 1 AS ord,
               'x' || k AS req, 0 AS sidx, 1 AS n, lesson(a, s) AS output
        FROM d2 WHERE k < trials - 1""")
    # best-of-n: 8 samples of one request, then the vote record (no model call).
    con.execute(f"""
        INSERT INTO sn BY NAME
        WITH d AS (
            SELECT {common}, reference, k, run_id || task_id || ':s' || k AS s,
                   u(run_id || task_id || ':s' || k || ':ok') < 0.3 AS ok
            FROM tg, range(8) g(k) WHERE loop = 'best-of-n'),
        d2 AS (SELECT *, ans(reference, ok, s) AS a FROM d)
        SELECT {common}, nid(run_id, task_id, 's' || k) AS node_id, 'generator' AS role,
               0 AS depth, 0 AS round, solution(a, s) AS content, a AS answer, ok,
               CAST(ok AS DOUBLE) AS score, k AS ord, 'bon' AS req, k AS sidx, 8 AS n,
               solution(a, s) AS output
        FROM d2
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'vote') AS node_id, 'vote' AS role, 0 AS depth,
               0 AS round, '{{"requested": "verifier", "used": "verifier", "fallback": null, '
               || '"samples": 8, "requests": 1, "rejection": false}}' AS content, 8 AS ord
        FROM tg WHERE loop = 'best-of-n'""")
    # beam: depth d = 0..3, 4 children per depth (2 kept beams x 2 expansions); children 0
    # and 1 stay open, child 3 may finish early, depth 3 always finishes. The ancestors of
    # child j at depth d are child j // 2 at depth d - 1 and child 0 above that.
    con.execute(f"""
        CREATE TEMP TABLE beam AS
        WITH e AS (
            SELECT {common}, reference, d, j,
                   run_id || task_id || ':e' || d || '.' || j AS s,
                   d = 3 OR (j = 3 AND u(run_id || task_id || ':t' || d) < 0.3) AS terminal
            FROM tg, range(4) g1(d), range(4) g2(j) WHERE loop = 'beam'),
        e2 AS (
            SELECT *, u(s || ':ok') < 0.3 AS ok,
                   step(s, d) || CASE WHEN terminal
                       THEN ' The answer is ' || ans(reference, u(s || ':ok') < 0.3, s) || '.'
                       ELSE '' END AS own
            FROM e)
        SELECT {common}, reference, d, j, s, terminal, own,
               nid(run_id, task_id, 'e' || d || '.' || j) AS node_id,
               CASE WHEN d > 0 THEN nid(run_id, task_id, 'e' || (d - 1) || '.' || (j // 2))
                    END AS parent_id,
               CASE WHEN terminal THEN ok END AS ok,
               CASE WHEN terminal THEN ans(reference, ok, s) END AS answer,
               array_to_string(list_transform(range(d), lambda k: step(
                   run_id || task_id || ':e' || k || '.'
                   || CASE WHEN k = d - 1 THEN j // 2 ELSE 0 END, k)) || [own], chr(10) || chr(10))
                 AS content
        FROM e2""")
    con.execute(f"""
        INSERT INTO sn BY NAME
        SELECT {common}, node_id, parent_id, 'expander' AS role, d AS depth, d AS round,
               content, answer, ok, CAST(ok AS DOUBLE) AS score,
               CASE WHEN terminal THEN CAST(ok AS DOUBLE)
                    ELSE CAST(u(s || ':r:ok') < 0.3 AS DOUBLE) END AS value,
               10 * d + j AS ord, 'e' || d || '.' || (j // 2) AS req, j % 2 AS sidx, 2 AS n,
               own AS output
        FROM beam
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'r' || d || '.' || j) AS node_id,
               node_id AS parent_id, 'rollout' AS role, d + 1 AS depth, d AS round,
               content || chr(10) || chr(10) || x AS content, a AS answer, rok AS ok,
               CAST(rok AS DOUBLE) AS score, 10 * d + 5 + j AS ord,
               'r' || d || '.' || j AS req, 0 AS sidx, 1 AS n, x AS output
        FROM (
            SELECT *, 'Carrying on from here the remaining steps give ' || a
                      || '. The answer is ' || a || '.' AS x
            FROM (
                SELECT *, ans(reference, rok, s || ':r') AS a
                FROM (SELECT *, u(s || ':r:ok') < 0.3 AS rok FROM beam WHERE NOT terminal)))""")
    # mcts: root; simulation 1..sims expands 3 attempts (generators under the root, then
    # expanders under the previous simulation's first attempt), a value reply under each
    # attempt and one reflector lesson per simulation.
    con.execute(f"""
        INSERT INTO sn BY NAME
        WITH a AS (
            SELECT {common}, reference, sims, sim, i,
                   run_id || task_id || ':m' || sim || '.' || i AS s,
                   u(run_id || task_id || ':m' || sim || '.' || i || ':ok') < 0.3 AS ok
            FROM tg, range(1, 4) g1(sim), range(3) g2(i) WHERE loop = 'mcts' AND sim <= sims),
        a2 AS (SELECT *, ans(reference, ok, s) AS x,
                      CAST(h(s || ':v', 10) + 1 AS DOUBLE) / 10 AS rate FROM a)
        SELECT {common}, nid(run_id, task_id, 'root') AS node_id, 'root' AS role, 0 AS depth,
               0 AS round, prompt AS content, 0 AS ord
        FROM tg WHERE loop = 'mcts'
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'm' || sim || '.' || i) AS node_id,
               CASE WHEN sim = 1 THEN nid(run_id, task_id, 'root')
                    ELSE nid(run_id, task_id, 'm' || (sim - 1) || '.0') END AS parent_id,
               CASE WHEN sim = 1 THEN 'generator' ELSE 'expander' END AS role, sim AS depth,
               sim AS round, solution(x, s) AS content, x AS answer, ok,
               CAST(ok AS DOUBLE) AS score, 0.5 * rate + 0.5 * CAST(ok AS DOUBLE) AS value,
               CASE WHEN i = 0 THEN sims - sim + 1 ELSE 1 END AS visits, 10 * sim + i AS ord,
               'm' || sim AS req, i AS sidx, 3 AS n, solution(x, s) AS output
        FROM a2
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'v' || sim || '.' || i) AS node_id,
               nid(run_id, task_id, 'm' || sim || '.' || i) AS parent_id, 'value' AS role,
               sim + 1 AS depth, sim AS round,
               'Score: ' || CAST(rate * 10 AS INT) || '/10. The attempt is plausible.' AS content,
               rate AS score, 10 * sim + 3 + i AS ord, 'v' || sim || '.' || i AS req,
               0 AS sidx, 1 AS n,
               'Score: ' || CAST(rate * 10 AS INT) || '/10. The attempt is plausible.' AS output
        FROM a2
        UNION ALL BY NAME
        SELECT {common}, nid(run_id, task_id, 'l' || sim) AS node_id,
               nid(run_id, task_id, 'm' || sim || '.' || i) AS parent_id, 'reflector' AS role,
               sim + 1 AS depth, sim AS round, lesson(x, s) AS content, 10 * sim + 7 AS ord,
               'l' || sim AS req, 0 AS sidx, 1 AS n, lesson(x, s) AS output
        FROM a2 WHERE i = 1""")


def build(db: Path, calls: int, seed: int) -> tuple[dict[str, int], dict[str, float]]:
    """Write the synthetic trace database at ``db``: row counts per table, seconds per phase."""
    phases: dict[str, float] = {}
    t = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        phases[name] = now - t[0]
        t[0] = now

    per_task = len(MODELS) * sum(CALLS_PER_TASK.values())
    n_tasks = max(1, round(calls / per_task))  # tasks per run
    n_prompts = max(n_tasks + 1, calls // 50)
    offset = n_prompts // (len(LOOPS) * len(MODELS))
    con = duckdb.connect(str(db))
    try:
        for ddl in TABLES.values():
            con.execute(ddl)
        con.execute("INSERT INTO schema_version (version) VALUES (1)")
        # Row order means nothing here; without it DuckDB inserts (and indexes) in parallel.
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SELECT setseed({(seed % 1000) / 1000})")
        _macros(con, seed)
        runs = [(i * len(MODELS) + m, lp, md) for i, lp in enumerate(LOOPS)
                for m, md in enumerate(MODELS)]  # fmt: skip
        con.execute("CREATE TEMP TABLE rg (run_no INTEGER, loop VARCHAR, model VARCHAR)")
        con.executemany("INSERT INTO rg VALUES (?, ?, ?)", [list(r) for r in runs])
        con.execute("""
            CREATE TEMP TABLE rg2 AS
            SELECT *, loop || '-' || split_part(model, '/', 2) || '-synthetic' AS name,
                   md5('run:' || loop || model) AS run_id FROM rg""")
        con.execute(f"""
            CREATE TEMP TABLE prompts AS
            SELECT p AS prompt_no, 'synth/' || lpad(CAST(p AS VARCHAR), 6, '0') AS task_id,
                   n1, n2, thing, a, b, c, CAST(a + b * c AS VARCHAR) AS reference,
                   n1 || ' has ' || a || ' ' || thing || '. ' || n2 || ' gives ' || n1 || ' '
                   || b || ' boxes with ' || c || ' ' || thing || ' in each box for puzzle '
                   || p || '. How many ' || thing || ' does ' || n1 || ' have now?' AS prompt
            FROM (SELECT p, {_list(NAMES)}[1 + h(p || ':n1', 12)] AS n1,
                         {_list(NAMES)}[1 + (h(p || ':n1', 12) + 1 + h(p || ':n2', 11)) % 12]
                           AS n2,
                         {_list(THINGS)}[1 + h(p || ':th', 8)] AS thing,
                         10 + h(p || ':a', 990) AS a, 2 + h(p || ':b', 48) AS b,
                         3 + h(p || ':c', 97) AS c
                  FROM range({n_prompts}) g(p))""")
        con.execute(f"""
            CREATE TEMP TABLE tg AS
            SELECT r.run_no, r.run_id, r.loop, r.model, CAST(i AS INTEGER) AS idx, p.task_id,
                   p.prompt, p.reference,
                   CAST(floor(u(r.run_id || p.task_id || ':R') * 4) AS INT) AS refs,
                   1 + CAST(floor(u(r.run_id || p.task_id || ':K') * 4) AS INT) AS trials,
                   1 + CAST(floor(u(r.run_id || p.task_id || ':S') * 3) AS INT) AS sims
            FROM rg2 r CROSS JOIN range({n_tasks}) g(i)
            JOIN prompts p ON p.prompt_no = (r.run_no * {offset} + i) % {n_prompts}""")
        mark("prompts, tasks")
        _nodes(con)
        mark("node staging")
        # The final node of a task: the last passing answer, else the last answer.
        con.execute("""
            CREATE TEMP TABLE fin AS
            SELECT run_id, task_id, arg_max(node_id, CAST(ok AS INT) * 1000 + ord) AS node_id
            FROM sn WHERE ok IS NOT NULL GROUP BY run_id, task_id""")
        con.execute("""
            INSERT INTO nodes (
                node_id, parent_id, run_id, task_id, loop, model, role, depth, round,
                content, answer, score, value, visits, is_final, created_at)
            SELECT sn.node_id, parent_id, sn.run_id, sn.task_id, loop, model, role, depth, round,
                   content, answer, score, value, visits, fin.node_id IS NOT NULL,
                   ts(run_no, idx, ord)
            FROM sn LEFT JOIN fin USING (node_id)""")
        mark("nodes")
        con.execute("""
            INSERT INTO calls (
                call_id, request_id, run_id, task_id, node_id, loop, round, role, model,
                messages, temperature, max_tokens, n, seed, sample_index, output,
                finish_reason, logprob_mean, prompt_tokens, completion_tokens, cost_usd,
                latency_s, attempts, cache_hit, cache_key, error, created_at)
            SELECT md5('call:' || node_id), md5('req:' || run_id || task_id || req), run_id,
                   task_id, node_id, loop, round, role, model,
                   '[{"role": "system", "content": "You are a careful ' || role
                   || '."}, {"role": "user", "content": ' || to_json(prompt) || '}]',
                   0.7, 512, n, h(node_id, 100000), sidx, output, 'stop',
                   -0.8 * random(),
                   CASE WHEN sidx = 0 THEN 40 + length(prompt) // 4 ELSE 0 END,
                   1 + length(output) // 4, 0.000002 * length(output), 0.2 + 2 * random(), 1,
                   FALSE, md5('cache:' || run_id || task_id || req), NULL,
                   ts(run_no, idx, ord)
            FROM sn WHERE req IS NOT NULL""")
        mark("calls")
        con.execute("""
            INSERT INTO verdicts (
                verdict_id, run_id, task_id, node_id, stage, verifier, verifier_version,
                passed, score, feedback, details, latency_s, created_at)
            SELECT md5('v:' || node_id), run_id, task_id, node_id, 'in_loop', 'math-answer',
                   '1', ok, CAST(ok AS DOUBLE),
                   CASE WHEN ok THEN 'correct' ELSE 'expected a different answer than '
                        || answer END,
                   NULL, 0.001 + 0.002 * random(), ts(run_no, idx, ord) + INTERVAL 1 SECOND
            FROM sn WHERE ok IS NOT NULL""")
        con.execute("""
            INSERT INTO verdicts (
                verdict_id, run_id, task_id, node_id, stage, verifier, verifier_version,
                passed, score, feedback, details, latency_s, created_at)
            SELECT md5('g:' || node_id), run_id, task_id, node_id, 'graded', 'math-answer',
                   '1', ok, CAST(ok AS DOUBLE), CASE WHEN ok THEN 'correct' ELSE 'wrong' END,
                   NULL, 0.002, ts(run_no, idx, 999)
            FROM sn JOIN fin USING (run_id, task_id, node_id)""")
        # Pairwise judgements: the first against the last answer of ~40% of the tasks.
        con.execute("""
            INSERT INTO verdicts (
                verdict_id, run_id, task_id, node_id, stage, verifier, verifier_version,
                passed, score, feedback, details, latency_s, created_at)
            WITH x AS (
                SELECT run_id, task_id, any_value(run_no) AS run_no, any_value(idx) AS idx,
                       arg_min(node_id, ord) AS a, arg_min(ok, ord) AS a_ok,
                       arg_max(node_id, ord) AS b, arg_max(ok, ord) AS b_ok
                FROM sn WHERE ok IS NOT NULL GROUP BY run_id, task_id
                HAVING count(*) > 1 AND u(run_id || task_id || ':judge') < 0.4),
            w AS (
                SELECT *, u(run_id || task_id || ':flip') < 0.2 AS flip,
                       CASE WHEN a_ok AND NOT b_ok THEN 'a' WHEN b_ok AND NOT a_ok THEN 'b'
                            WHEN u(run_id || task_id || ':w') < 0.15 THEN 'tie'
                            WHEN u(run_id || task_id || ':w') < 0.55 THEN 'a' ELSE 'b' END AS w
                FROM x),
            j AS (
                SELECT *, CASE WHEN flip THEN 'a' ELSE w END AS af,
                       CASE WHEN flip THEN 'b' ELSE w END AS bf,
                       CASE WHEN flip THEN NULL ELSE w END AS winner
                FROM w)
            SELECT md5('j:' || a || b), run_id, task_id, a, 'judge', 'llm-judge-pairwise', '1',
                   winner = 'a',
                   CASE winner WHEN 'a' THEN 1.0 WHEN 'b' THEN 0.0 WHEN 'tie' THEN 0.5 END,
                   CASE WHEN flip THEN 'order flip: a-first picked a, b-first picked b; '
                        || 'recorded as undecided'
                        ELSE coalesce(winner || ' preferred', 'tie') || ' in both orders' END,
                   json_object(
                       'kind', 'pairwise', 'judge_model', 'openai/gpt-4o', 'winner', winner,
                       'parsed', TRUE, 'position_consistent', NOT flip,
                       'a_first', json_object('order', 'ab', 'raw', json_array('Winner: ' || af),
                                              'votes', json_array(af), 'winner', af,
                                              'agreement', 1.0, 'error', NULL),
                       'b_first', json_object('order', 'ba', 'raw', json_array('Winner: ' || bf),
                                              'votes', json_array(bf), 'winner', bf,
                                              'agreement', 1.0, 'error', NULL),
                       'first_position_wins', CASE WHEN flip THEN 2 ELSE 1 END,
                       'second_position_wins', CASE WHEN flip THEN 0 ELSE 1 END,
                       'position_ties', 0, 'n_samples', 2, 'n_unparsed', 0,
                       'agreement', CASE WHEN flip THEN 0.5 ELSE 1.0 END,
                       'a_chars', 200, 'b_chars', 200, 'latency_s', 1.5,
                       'a_node_id', a, 'b_node_id', b),
                   1.5, ts(run_no, idx, 1000)
            FROM j""")
        mark("verdicts")
        con.execute("""
            INSERT INTO tasks (
                run_id, task_id, idx, kind, prompt, reference, final_answer,
                final_node_id, verdict, graded, score, stop_reason, rounds,
                prompt_tokens, completion_tokens, total_tokens, cost_usd, calls, wall_s,
                status, error, started_at, finished_at)
            WITH c AS (
                SELECT run_id, task_id, sum(prompt_tokens) AS pt, sum(completion_tokens) AS ct,
                       sum(cost_usd) AS cost, count(*) AS n, sum(latency_s) AS wall
                FROM calls GROUP BY run_id, task_id),
            f AS (
                SELECT fin.run_id, fin.task_id, sn.answer, sn.node_id, sn.ok, sn.round
                FROM fin JOIN sn USING (node_id))
            SELECT tg.run_id, tg.task_id, tg.idx, 'math', tg.prompt, tg.reference, f.answer,
                   f.node_id, f.ok, f.ok, CAST(f.ok AS DOUBLE),
                   CASE WHEN f.ok THEN 'verified' ELSE 'max_rounds' END, f.round, c.pt, c.ct,
                   c.pt + c.ct, c.cost, c.n, c.wall, 'done', NULL,
                   ts(tg.run_no, tg.idx, 0), ts(tg.run_no, tg.idx, 999)
            FROM tg JOIN f USING (run_id, task_id) JOIN c USING (run_id, task_id)""")
        con.execute(f"""
            INSERT INTO runs (
                run_id, name, loop, model, tasks_spec, config, config_hash, seed,
                version, status, started_at, finished_at)
            SELECT run_id, name, loop, model, 'synthetic:math',
                   json_object('loop', loop, 'model', model, 'seed', {seed}),
                   md5(loop || model), {seed}, '0.0.0', 'done',
                   ts(run_no, 0, 0), ts(run_no, {n_tasks}, 0)
            FROM rg2""")
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
        mark("tasks, runs")
        con.execute("CHECKPOINT")
        mark("checkpoint")
        return counts, phases
    finally:
        con.close()


def baseline(db: Path, out_dir: Path, repeats: int = 3) -> float:
    """Fastest of ``repeats`` plain ``COPY (SELECT * FROM nodes) TO parquet`` (connect included)."""
    best = float("inf")
    out = out_dir / "baseline-nodes.parquet"
    for _ in range(repeats):
        t0 = time.perf_counter()
        con = duckdb.connect(str(db), read_only=True)
        try:
            con.execute(f"COPY (SELECT * FROM nodes) TO '{out}' (FORMAT PARQUET)")
        finally:
            con.close()
        best = min(best, time.perf_counter() - t0)
        out.unlink()
    return best


def contamination_file(db: Path, path: Path, most: int = 1000) -> int:
    """A JSONL of ``most`` of the synthetic prompts (at most 5% of them) under ``question``."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        [(distinct,)] = con.execute("SELECT count(DISTINCT prompt) FROM tasks").fetchall()
        n = max(1, min(most, distinct // 20))
        con.execute(f"""
            COPY (SELECT question FROM (SELECT DISTINCT prompt AS question FROM tasks)
                  ORDER BY hash(question) LIMIT {n})
            TO '{path}' (FORMAT JSON)""")
        return sum(1 for line in path.open() if line.strip())
    finally:
        con.close()


def _fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000, help="model samples (calls rows)")
    ap.add_argument("--db", type=Path, help="trace database to write (default: a temp file)")
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated formats")
    ap.add_argument("--dataset-format", default="sft", help="the format also saved with datasets")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, calls=2000)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass

    print(f"# harvest benchmark, {datetime.now().isoformat(timespec='seconds')}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, duckdb {duckdb.__version__}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    work = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    db = args.db or work / "traces.duckdb"
    try:
        if db.exists():
            db.unlink()
        t0 = time.perf_counter()
        counts, phases = build(db, args.calls, args.seed)
        built = time.perf_counter() - t0
        size = db.stat().st_size / 2**20
        print(f"\nbuilt {db} in {built:.1f} s ({size:.0f} MiB, --calls {args.calls})")
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
        print("build phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))

        floor = baseline(db, work)
        print(f"baseline: COPY (SELECT * FROM nodes) TO parquet: {floor:.2f} s "
              f"({counts['nodes']:,} rows; best of 3, connect included)")  # fmt: skip

        contam = work / "eval.jsonl"
        n_eval = contamination_file(db, contam)
        jobs: list[tuple[str, str, HarvestOptions]] = []
        for fmt in formats:
            jobs += [(fmt, "parquet", HarvestOptions()), (fmt, "jsonl", HarvestOptions())]
            if fmt == args.dataset_format:
                jobs.append((fmt, "dataset", HarvestOptions()))
        if formats:
            first = args.dataset_format if args.dataset_format in formats else formats[0]
            jobs.append((first, "parquet+contamination", HarvestOptions(contamination=(contam,))))

        rows: list[list[str]] = []
        figures: list[dict[str, object]] = []
        notes: list[str] = []
        for fmt, kind, opts in jobs:
            ext = {"parquet": ".parquet", "jsonl": ".jsonl", "dataset": ""}.get(kind, ".parquet")
            out = work / "out" / f"{fmt}-{kind.replace('+', '-')}{ext}"
            try:
                res = harvest(fmt, db, out, opts, overwrite=True)
            except Exception as exc:  # a benchmark reports failures instead of stopping
                first_line = (str(exc).splitlines() or [""])[0]
                notes.append(f"FAILED {fmt} -> {kind}: {type(exc).__name__}: {first_line}")
                print(f"  {notes[-1]}", flush=True)
                rows.append([fmt, kind, "error", "-", "-", "-", "-"])
                figures.append({
                    "figure": f"FAILED: harvest {fmt} -> {kind}", "value": None, "baseline": None,
                    "ratio": None, "target": "", "note": notes[-1],
                })  # fmt: skip
                continue
            rate = res.rows / res.seconds if res.seconds else 0.0
            print(f"  {fmt} -> {kind}: {res.rows:,} rows in {res.seconds:.1f} s", flush=True)
            rows.append([
                fmt, kind, f"{res.rows:,}", f"{res.considered:,}", _fmt_s(res.seconds),
                f"{res.seconds / floor:.1f}x", f"{rate:,.0f}",
            ])  # fmt: skip
            figures.append({
                "figure": f"harvest {fmt} -> {kind}, {res.rows:,} rows: seconds (baseline: COPY "
                "nodes TO parquet)",
                "value": round(res.seconds, 3), "baseline": round(floor, 3),
                "ratio": round(res.seconds / floor, 2) if floor else None, "target": "",
            })  # fmt: skip
            excluded = ", ".join(f"{k} {v:,}" for k, v in res.excluded.items()) or "none"
            extra = ""
            if res.by_source:
                extra = " | by source: " + ", ".join(f"{k} {v:,}" for k, v in res.by_source.items())
            if res.labels:
                extra += " | labels: " + ", ".join(f"{k} {v:,}" for k, v in res.labels.items())
            if "contamination" in kind:
                extra += (f" | {len(res.contaminated_tasks):,} contaminated tasks "
                          f"from {n_eval:,} eval prompts")  # fmt: skip
            if kind != "jsonl":
                notes.append(f"{fmt} ({kind}): excluded {excluded}{extra}")
            if res.rows == 0:
                notes.append(f"WARNING {fmt} -> {kind}: 0 rows written")
            if res.seconds > 120:
                notes.append(f"WARNING {fmt} -> {kind}: took {res.seconds:.0f} s")
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()

        print()
        print(
            "| format | output | rows written | rows considered | seconds | vs baseline | rows/s |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        print(f"| nodes (COPY baseline) | parquet | {counts['nodes']:,} | - | {floor:.2f} | 1.0x | "
              f"{counts['nodes'] / floor:,.0f} |")  # fmt: skip
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()
        for note in notes:
            print(note)
        if args.json:
            print(json.dumps({"rows": figures}))
    finally:
        if args.keep:
            print(f"\nkept {db}")
            for p in work.iterdir():
                if p != db:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            if args.db:
                work.rmdir()
        else:
            shutil.rmtree(work, ignore_errors=True)
            if args.db and db.exists():
                db.unlink()
                Path(str(db) + ".wal").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
