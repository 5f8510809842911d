"""What post-hoc pairwise judging reads: a run's finished tasks, the verified answers it
pairs, the pairs already judged, and how the judge's picks agree with the grader's.

A judgement is a ``verdicts`` row of stage ``judge`` whose ``details`` name the two answers
(``a_node_id``, ``b_node_id``) and the winner with each shown first (``a_first.winner``,
``b_first.winner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loopwright.traces.queries import in_list, lit
from loopwright.traces.records import CANDIDATE_ROLES
from loopwright.traces.store import TraceStore

SCORER_PATTERNS = ("llm-judge%", "reward-model%")
"""``LIKE`` patterns of in-loop verifiers that score an answer rather than check it."""


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" for _ in values)


def done_tasks(store: TraceStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``run_id``, ``task_id``, ``idx``, ``prompt`` and ``reference`` of the runs' finished
    tasks (unordered)."""
    return store.query(
        f"SELECT run_id, task_id, idx, prompt, reference FROM tasks "
        f"WHERE run_id IN ({_marks(run_ids)}) AND status = 'done'",
        list(run_ids),
    )


def verified_answers(store: TraceStore, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The candidate nodes (``records.CANDIDATE_ROLES``) of the runs' finished tasks that
    have an in-loop verdict and non-empty content, in trace order: ``run_id``, ``task_id``,
    ``node_id``, ``content`` and ``passed`` (every in-loop check passed; without a check,
    every score's pass/fail; NULL when no verdict said pass or fail)."""
    marks = _marks(run_ids)
    scorer = " OR ".join(f"verifier LIKE {lit(s)}" for s in SCORER_PATTERNS)
    return store.query(
        f"""
        WITH v AS (
            SELECT node_id,
                   bool_and(passed) FILTER (WHERE passed IS NOT NULL AND NOT ({scorer})) AS checked,
                   bool_and(passed) FILTER (WHERE passed IS NOT NULL) AS scored
            FROM verdicts WHERE stage = 'in_loop' AND run_id IN ({marks})
            GROUP BY node_id
        )
        SELECT n.run_id, n.task_id, n.node_id, n.content,
               coalesce(v.checked, v.scored) AS passed
        FROM nodes n
        JOIN v ON v.node_id = n.node_id
        JOIN tasks t ON t.run_id = n.run_id AND t.task_id = n.task_id AND t.status = 'done'
        WHERE n.run_id IN ({marks}) AND {in_list("n.role", CANDIDATE_ROLES)}
              AND n.content IS NOT NULL AND trim(n.content) <> ''
        ORDER BY n.created_at, n.node_id
        """,
        [*run_ids, *run_ids],
    )


def judgement_details(store: TraceStore, run_ids: Sequence[str], verifier: str) -> list[str]:
    """The ``details`` JSON text of every judgement by ``verifier`` in the runs."""
    rows = store.query(
        f"SELECT details FROM verdicts WHERE stage = 'judge' AND verifier = ? "
        f"AND run_id IN ({_marks(run_ids)})",
        [verifier, *run_ids],
    )
    return [r["details"] or "{}" for r in rows]


def judgements_of_graded_pairs(
    store: TraceStore, run_id: str, verifier: str
) -> list[dict[str, Any]]:
    """The ``verifier`` judgements of one run whose two answers the grader split (one
    passed, one failed): the winners ``af`` (*a* shown first) and ``bf`` (*b* first), and
    whether the grader passed *a* (``pa``) and *b* (``pb``)."""
    return store.query(
        """
        WITH j AS (
            SELECT details->>'$.a_node_id' AS a, details->>'$.b_node_id' AS b,
                   details->>'$.a_first.winner' AS af, details->>'$.b_first.winner' AS bf
            FROM verdicts WHERE run_id = ? AND verifier = ?),
        g AS (SELECT node_id, bool_or(passed) AS passed FROM verdicts
              WHERE run_id = ? AND stage = 'graded' GROUP BY node_id)
        SELECT j.af, j.bf, ga.passed AS pa, gb.passed AS pb
        FROM j JOIN g ga ON ga.node_id = j.a JOIN g gb ON gb.node_id = j.b
        WHERE ga.passed <> gb.passed""",
        [run_id, verifier, run_id],
    )
