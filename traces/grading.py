"""What post-hoc grading reads and writes: the keyed tasks of a run, the answer nodes to
grade, the grader-error rows a new grading replaces, and the in-loop x graded table.

*Answer nodes* are the nodes with non-empty content of the whole-answer roles
(``WHOLE_ANSWER_ROLES``: a draft or a revision, checked in the loop or not -- best-of-n under
a majority vote checks none, and its samples are still what pass@k counts), and of the other
answer roles (``records.ANSWER_ROLES``: a search step, a rollout) those with at least one
``in_loop`` verdict (a step the loop checked as an answer, not a partial one). A graded verdict whose ``details`` holds
``GRADER_ERROR_KEY`` records a grader that raised: the answer is not graded yet.
"""

from __future__ import annotations

from typing import Any

from loopwright.traces.queries import in_list, lit
from loopwright.traces.records import ANSWER_ROLES, OPINION_VERIFIERS, Role
from loopwright.traces.store import TraceStore

GRADER_ERROR_KEY = "grader_error"
"""The ``details`` key of a graded verdict written when the grader raised."""

_ERROR = f"json_extract_string(details, '$.{GRADER_ERROR_KEY}')"

WHOLE_ANSWER_ROLES: tuple[Role, ...] = ("generator", "refiner")
"""Roles whose nodes are always whole answers (never a partial step of a search)."""


def _marks(values: list[str]) -> str:
    return ", ".join("?" for _ in values)


def run_task_keys(store: TraceStore, run_id: str) -> list[dict[str, Any]]:
    """The tasks of a run in run order: ``task_id``, ``prompt``, ``reference`` and
    ``answer_key`` (the keyed task as JSON; NULL for rows stored before it was kept)."""
    return store.query(
        "SELECT task_id, prompt, reference, answer_key FROM tasks WHERE run_id = ? ORDER BY idx",
        [run_id],
    )


def answer_nodes(store: TraceStore, run_ids: list[str]) -> list[dict[str, Any]]:
    """The runs' answer nodes in task order, then trace order (runs mixed): ``run_id``,
    ``task_id``, ``node_id``, ``content``, ``graded`` (a graded verdict that is not a
    grader-error row) and ``errored`` (only grader-error rows)."""
    marks = _marks(run_ids)
    return store.query(
        f"""
        WITH il AS (
            SELECT DISTINCT node_id FROM verdicts
            WHERE stage = 'in_loop' AND node_id IS NOT NULL AND run_id IN ({marks})
        ), g AS (
            SELECT node_id,
                   count(*) FILTER (WHERE {_ERROR} IS NULL) AS ok,
                   count(*) AS n
            FROM verdicts
            WHERE stage = 'graded' AND node_id IS NOT NULL AND run_id IN ({marks})
            GROUP BY node_id
        )
        SELECT n.run_id, n.task_id, n.node_id, n.content,
               coalesce(g.ok, 0) > 0 AS graded,
               coalesce(coalesce(g.ok, 0) = 0 AND g.n > 0, FALSE) AS errored,
               t.idx
        FROM nodes n
        LEFT JOIN il ON il.node_id = n.node_id
        JOIN tasks t ON t.run_id = n.run_id AND t.task_id = n.task_id
        LEFT JOIN g ON g.node_id = n.node_id
        WHERE n.run_id IN ({marks}) AND {in_list("n.role", ANSWER_ROLES)}
              AND ({in_list("n.role", WHOLE_ANSWER_ROLES)} OR il.node_id IS NOT NULL)
              AND n.content IS NOT NULL AND trim(n.content) <> ''
        ORDER BY t.idx, n.created_at, n.node_id
        """,
        [*run_ids, *run_ids, *run_ids],
    )


def delete_grader_errors(store: TraceStore, node_ids: list[str]) -> None:
    """Delete the grader-error rows of these nodes (their new verdicts take the place)."""
    if not node_ids:
        return
    store.execute(
        f"DELETE FROM verdicts WHERE stage = 'graded' AND node_id IN ({_marks(node_ids)}) "
        f"AND {_ERROR} IS NOT NULL",
        node_ids,
    )


def agreement_counts(store: TraceStore, run_ids: list[str]) -> list[dict[str, Any]]:
    """In-loop x graded over every answer node of the runs that has a graded verdict: rows
    of ``il`` (the latest in-loop pass/fail; opinion verifiers left out, as harvesting's
    labels leave them out), ``g`` (the latest graded one) and ``n`` answers."""
    marks = _marks(run_ids)
    opinion = ", ".join(lit(v) for v in OPINION_VERIFIERS)
    return store.query(
        f"""
        WITH il AS (
            SELECT node_id, arg_max(passed, created_at)
                FILTER (WHERE verifier NOT IN ({opinion})) AS passed
            FROM verdicts
            WHERE stage = 'in_loop' AND node_id IS NOT NULL AND run_id IN ({marks})
            GROUP BY node_id
        ), g AS (
            SELECT node_id, arg_max(passed, created_at) AS passed
            FROM verdicts
            WHERE stage = 'graded' AND node_id IS NOT NULL AND run_id IN ({marks})
            GROUP BY node_id
        )
        SELECT il.passed AS il, g.passed AS g, count(*) AS n
        FROM nodes n
        JOIN il ON il.node_id = n.node_id
        JOIN g ON g.node_id = n.node_id
        WHERE n.run_id IN ({marks}) AND {in_list("n.role", ANSWER_ROLES)}
              AND n.content IS NOT NULL AND trim(n.content) <> ''
        GROUP BY 1, 2
        """,
        [*run_ids, *run_ids, *run_ids],
    )


def graded_passed_task_ids(store: TraceStore, run_id: str) -> set[str]:
    """Tasks of a run with at least one answer the grader passed."""
    return {
        r["task_id"]
        for r in store.query(
            "SELECT DISTINCT task_id FROM verdicts "
            "WHERE run_id = ? AND stage = 'graded' AND passed",
            [run_id],
        )
    }


def done_task_ids(store: TraceStore, run_id: str) -> set[str]:
    """Tasks of a run that finished."""
    return {
        r["task_id"]
        for r in store.query(
            "SELECT task_id FROM tasks WHERE run_id = ? AND status = 'done'", [run_id]
        )
    }


def final_grades(store: TraceStore, run_id: str) -> list[float]:
    """1.0 or 0.0 per finished task of a run (by task id): did the grader pass the answer
    the loop returned (an ungraded one counts as failed)."""
    rows = store.query(
        "SELECT CAST(coalesce(graded, false) AS DOUBLE) AS g FROM tasks "
        "WHERE run_id = ? AND status = 'done' ORDER BY task_id",
        [run_id],
    )
    return [float(r["g"]) for r in rows]
