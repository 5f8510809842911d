"""What the runner and the sweep driver read back from the store while they work: a resumed
run's finished counts, whether a sweep run's answers all have a graded verdict, the rows
of a sweep's summary table, and the sample rows a tracker mirror shows."""

from __future__ import annotations

from typing import Any

from loopwright.traces.queries import in_list
from loopwright.traces.records import ANSWER_ROLES
from loopwright.traces.store import TraceStore


def finished_counts(store: TraceStore, run_id: str) -> tuple[int, int]:
    """Of a run's finished (``done``) tasks: how many the grader passed, and their tokens."""
    [row] = store.query(
        "SELECT count(*) FILTER (WHERE graded) AS passed, coalesce(sum(total_tokens), 0) "
        "AS tokens FROM tasks WHERE run_id = ? AND status = 'done'",
        [run_id],
    )
    return int(row["passed"]), int(row["tokens"])


def ungraded_answers(store: TraceStore, run_name: str) -> int:
    """Answer nodes of the run named ``run_name`` that an in-loop verifier judged and the
    grader has not (what ``loopwright grade`` would still grade)."""
    [row] = store.query(
        "SELECT count(*) AS n FROM nodes n JOIN runs r USING (run_id) "
        f"WHERE r.name = ? AND {in_list('n.role', ANSWER_ROLES)} "
        "AND coalesce(trim(n.content), '') <> '' "
        "AND EXISTS (SELECT 1 FROM verdicts v WHERE v.node_id = n.node_id "
        "AND v.stage = 'in_loop') AND NOT EXISTS (SELECT 1 FROM verdicts v "
        "WHERE v.node_id = n.node_id AND v.stage = 'graded')",
        [run_name],
    )
    return int(row["n"])


def sweep_summary(store: TraceStore, name: str) -> list[dict[str, Any]]:
    """One row per point of the sweep ``name`` (and task run of it): strategy, model, the
    swept value (``raw``: as given, when it is not a number), status, the run's task count,
    graded accuracy and mean tokens per task. Derived points have no tasks of their own."""
    return store.query(
        "SELECT p.strategy, p.model, p.param, p.value, p.derived, p.status,"
        " CASE WHEN p.value IS NULL AND p.param IS NOT NULL"
        " THEN json_extract_string(p.options, '$.' || p.param) END AS raw,"
        " count(t.task_id) AS tasks, avg(CAST(t.graded AS INT)) AS acc,"
        " avg(t.total_tokens) AS tok"
        " FROM sweep_points p JOIN sweeps s USING (sweep_id)"
        " LEFT JOIN runs r ON r.name = p.run_name"
        " LEFT JOIN tasks t ON t.run_id = r.run_id AND NOT p.derived"
        " WHERE s.name = ? GROUP BY ALL ORDER BY p.model, p.strategy, p.value",
        [name],
    )


def task_samples(store: TraceStore, run_id: str, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` tasks of a run, in task order, as a tracker's sample table shows
    them: id, prompt, final answer, in-loop verdict, graded verdict, status, stop reason,
    tokens."""
    return store.query(
        "SELECT task_id, prompt, final_answer, verdict, graded, status, stop_reason,"
        " total_tokens FROM tasks WHERE run_id = ? ORDER BY idx, task_id LIMIT ?",
        [run_id, limit],
    )
