"""What reports read: a sweep's points and per-task costs, best-of-n samples with their
verdicts, revision chains and judge verdicts. Each function returns plain rows; the report
code (``loops/analysis``) shapes them.

Costs per task (``task_costs``): ``tokens`` (prompt + completion, as charged), ``calls``
(model samples), ``usd``, and ``wall`` — the task's model time: the sum of its requests'
latencies, where a request served from the call cache counts at the latency of the request
that filled the cache, so a point that reused another point's calls is not shown as free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loopwright.traces.queries import in_list
from loopwright.traces.records import OPINION_VERIFIERS, Role
from loopwright.traces.store import TraceStore


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" for _ in values)


def sweep_point_rows(store: TraceStore, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's ``sweep_points`` rows with the ``run_id`` of each point's run (NULL when
    it has none yet), by model, strategy, value and seed."""
    return store.query(
        "SELECT p.*, r.run_id FROM sweep_points p LEFT JOIN runs r ON r.name = p.run_name"
        " WHERE p.sweep_id = ? ORDER BY p.model, p.strategy, p.value, p.seed",
        [sweep_id],
    )


def run_configs(store: TraceStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``name`` and ``config`` (JSON text) of each run."""
    if not run_ids:
        return []
    return store.query(
        f"SELECT name, config FROM runs WHERE run_id IN ({_marks(run_ids)})", list(run_ids)
    )


def task_costs(store: TraceStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One row per finished task of the runs: ``run_id``, ``task_id``, ``correct`` (the
    final answer graded), ``verdict`` (in-loop), ``tokens``, ``calls``, ``usd``, ``wall``."""
    marks = _marks(run_ids)
    return store.query(
        f"""
        WITH req AS (
            SELECT run_id, task_id, request_id, any_value(cache_key) AS key,
                   bool_or(cache_hit) AS hit, max(latency_s) AS lat
            FROM calls WHERE run_id IN ({marks}) GROUP BY ALL),
        fresh AS (
            SELECT cache_key AS key, max(latency_s) AS lat FROM calls
            WHERE NOT cache_hit AND cache_key IS NOT NULL GROUP BY 1),
        model_s AS (
            SELECT run_id, task_id,
                   sum(CASE WHEN hit THEN coalesce(fresh.lat, 0) ELSE req.lat END) AS s
            FROM req LEFT JOIN fresh USING (key) GROUP BY ALL)
        SELECT t.run_id, t.task_id, coalesce(t.graded, FALSE) AS correct, t.verdict,
               t.total_tokens AS tokens, t.calls, t.cost_usd AS usd,
               coalesce(m.s, t.wall_s) AS wall
        FROM tasks t LEFT JOIN model_s m USING (run_id, task_id)
        WHERE t.run_id IN ({marks}) AND t.status = 'done'""",
        [*run_ids, *run_ids],
    )


def best_of_n_samples(store: TraceStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One row per generator sample of the runs' finished best-of-n tasks (and GRPO step
    runs, whose completions are samples alike: traces/rollouts.py), in production
    order (run, task, call time, request, sample index): the node (``node_id``,
    ``content``, ``answer``, ``is_final``), the task ``kind``, its latest in-loop
    (``verified``, ``score``) and graded (``correct``) verdicts from checks (opinion
    verifiers left out), what its in-loop checks cost (``ctok``, ``ccalls``, ``cusd`` from
    their ``details.cost_*``), the scores the loop's judge or reward selector gave
    (``judge``, ``reward``), and its call (``logprob_mean``, tokens, ``cost_usd``,
    ``latency_s``)."""
    marks = _marks(run_ids)
    opinions = in_list("verifier", OPINION_VERIFIERS)
    return store.query(
        f"""
        WITH v AS (
            SELECT node_id, stage, arg_max(passed, created_at) AS passed,
                   arg_max(score, created_at) AS score,
                   sum(coalesce(TRY_CAST(details->>'$.cost_tokens' AS DOUBLE), 0)) AS ctok,
                   sum(coalesce(TRY_CAST(details->>'$.cost_calls' AS DOUBLE), 0)) AS ccalls,
                   sum(coalesce(TRY_CAST(details->>'$.cost_usd' AS DOUBLE), 0)) AS cusd
            FROM verdicts WHERE run_id IN ({marks}) AND stage IN ('in_loop', 'graded')
              AND NOT {opinions}
            GROUP BY ALL),
        sig AS (  -- what the loop's own judge / reward selector scored each sample
            SELECT node_id,
                   arg_max(score, created_at) FILTER (WHERE verifier = 'llm-judge') AS judge,
                   arg_max(score, created_at) FILTER (WHERE verifier = 'reward-model') AS reward
            FROM verdicts WHERE run_id IN ({marks}) AND stage = 'in_loop'
              AND verifier IN ('llm-judge', 'reward-model')
            GROUP BY 1)
        SELECT n.run_id, n.task_id, n.node_id, n.content, n.answer, t.kind, n.is_final,
               sig.judge, sig.reward, il.ctok, il.ccalls, il.cusd,
               il.passed AS verified, il.score, g.passed AS correct,
               c.logprob_mean, c.completion_tokens, c.prompt_tokens, c.cost_usd,
               c.latency_s, c.created_at, c.sample_index
        FROM nodes n JOIN runs r USING (run_id)
        JOIN tasks t USING (run_id, task_id)
        LEFT JOIN calls c ON c.node_id = n.node_id
        LEFT JOIN v il ON il.node_id = n.node_id AND il.stage = 'in_loop'
        LEFT JOIN v g ON g.node_id = n.node_id AND g.stage = 'graded'
        LEFT JOIN sig ON sig.node_id = n.node_id
        WHERE n.run_id IN ({marks}) AND r.loop IN ('best-of-n', 'grpo') AND n.role = 'generator'
          AND t.status = 'done'
        ORDER BY n.run_id, n.task_id, c.created_at, c.request_id, c.sample_index""",
        [*run_ids, *run_ids, *run_ids],
    )


def revision_chain(store: TraceStore, run_id: str, roles: Sequence[Role]) -> list[dict[str, Any]]:
    """The in-loop verified nodes of ``roles`` of one run, by task, round and trace order:
    ``task_id``, ``round``, ``answer``, the task ``kind`` and its latest graded ``passed``."""
    return store.query(
        f"""
        WITH g AS (SELECT node_id, arg_max(passed, created_at) AS passed FROM verdicts
                   WHERE run_id = ? AND stage = 'graded' GROUP BY 1)
        SELECT n.task_id, n.round, n.answer, t.kind, g.passed
        FROM nodes n JOIN tasks t USING (run_id, task_id) LEFT JOIN g USING (node_id)
        WHERE n.run_id = ? AND {in_list("n.role", list(roles))}
          AND EXISTS (SELECT 1 FROM verdicts v WHERE v.node_id = n.node_id
                      AND v.stage = 'in_loop')
        ORDER BY n.task_id, n.round, n.created_at""",
        [run_id, run_id],
    )


def revision_pairs(store: TraceStore, run_id: str) -> list[dict[str, Any]]:
    """Each refiner node of one run with the draft it revised (its parent generator node):
    ``task_id``, ``node_id`` (the revision's), ``draft_passed`` and ``revision_passed`` (the
    latest graded verdicts; None: not graded), in trace order."""
    return store.query(
        """
        WITH g AS (SELECT node_id, arg_max(passed, created_at) AS passed FROM verdicts
                   WHERE run_id = ? AND stage = 'graded' GROUP BY 1)
        SELECT r.task_id, r.node_id, gd.passed AS draft_passed, gr.passed AS revision_passed
        FROM nodes r JOIN nodes d ON d.node_id = r.parent_id AND d.role = 'generator'
        LEFT JOIN g gd ON gd.node_id = d.node_id LEFT JOIN g gr ON gr.node_id = r.node_id
        WHERE r.run_id = ? AND r.role = 'refiner'
        ORDER BY r.task_id, r.created_at""",
        [run_id, run_id],
    )


def pairwise_judgements(
    store: TraceStore, run_ids: Sequence[str], verifier: str
) -> list[dict[str, Any]]:
    """Each pairwise judgement (``verifier`` rows) of the runs: the winner with *a* shown
    first (``ab``) and with *b* first (``ba``), and the lengths of both answers."""
    return store.query(
        f"""
        SELECT v.details->>'$.a_first.winner' AS ab, v.details->>'$.b_first.winner' AS ba,
               length(a.content) AS la, length(b.content) AS lb
        FROM verdicts v
        JOIN nodes a ON a.node_id = v.details->>'$.a_node_id'
        JOIN nodes b ON b.node_id = v.details->>'$.b_node_id'
        WHERE v.run_id IN ({_marks(run_ids)}) AND v.verifier = ?""",
        [*run_ids, verifier],
    )


def judged_and_graded(
    store: TraceStore, run_ids: Sequence[str], verifier: str
) -> list[dict[str, Any]]:
    """Each ``verifier`` verdict of the runs on a graded answer: its ``judged`` pass/fail
    and ``score``, the grader's latest verdict (``truth``) and the answer's length."""
    marks = _marks(run_ids)
    return store.query(
        f"""
        WITH g AS (SELECT node_id, arg_max(passed, created_at) AS passed FROM verdicts
                   WHERE run_id IN ({marks}) AND stage = 'graded' GROUP BY 1)
        SELECT v.passed AS judged, g.passed AS truth, length(n.content) AS len, v.score
        FROM verdicts v JOIN g USING (node_id) JOIN nodes n USING (node_id)
        WHERE v.run_id IN ({marks}) AND v.verifier = ? AND g.passed IS NOT NULL""",
        [*run_ids, *run_ids, verifier],
    )
