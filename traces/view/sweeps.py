"""The viewer's reads across runs: sweeps, two runs compared task by task, improve rounds."""

from __future__ import annotations

import json
from typing import Any

from loopwright.traces.store import TraceStore
from loopwright.traces.view.queries import BadRequest, NotFound, _page, _run_id, has_table


def sweeps_list(store: TraceStore) -> list[dict[str, Any]]:
    if not has_table(store, "sweeps"):
        return []
    return store.query(
        """
        SELECT s.name, s.tasks_spec, s.grid, s.status, s.started_at, s.finished_at,
               count(p.point_id) AS points,
               count(p.point_id) FILTER (WHERE p.status = 'done') AS done
        FROM sweeps s LEFT JOIN sweep_points p USING (sweep_id)
        GROUP BY ALL ORDER BY s.started_at DESC NULLS LAST LIMIT 500
        """
    )


def sweep_row(store: TraceStore, name: str) -> dict[str, Any]:
    """The sweeps row named ``name``; NotFound when there is none."""
    if not has_table(store, "sweeps"):
        raise NotFound("this database has no sweeps (`loopwright sweep` makes one)")
    rows = store.query("SELECT * FROM sweeps WHERE name = ?", [name])
    if not rows:
        raise NotFound(f"no sweep named {name!r}")
    return rows[0]


def sweep_points(store: TraceStore, name: str) -> dict[str, Any]:
    sweep = sweep_row(store, name)
    sweep["config"] = json.loads(sweep["config"]) if sweep["config"] else {}
    sweep["points"] = store.query(
        """
        WITH t AS (
            SELECT run_id, count(*) AS tasks, count(*) FILTER (WHERE status = 'done') AS done,
                   avg(CASE WHEN graded THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'done')
                       AS pass_rate,
                   avg(total_tokens) AS tokens_per_task, avg(calls) AS calls_per_task
            FROM tasks WHERE run_id IN (
                SELECT r.run_id FROM sweep_points p JOIN runs r ON r.name = p.run_name
                WHERE p.sweep_id = ?)
            GROUP BY run_id
        )
        -- a derived point (best-of-n at k < N) reads the first k samples of a shared run:
        -- that run's own pass rate and costs are not the point's, so the report has them
        SELECT p.strategy, p.loop, p.model, p.seed, p.param, p.value, p.run_name, p.derived,
               p.status, t.tasks, t.done,
               CASE WHEN NOT p.derived THEN t.pass_rate END AS pass_rate,
               CASE WHEN NOT p.derived THEN t.tokens_per_task END AS tokens_per_task,
               CASE WHEN NOT p.derived THEN t.calls_per_task END AS calls_per_task
        FROM sweep_points p LEFT JOIN runs r ON r.name = p.run_name
             LEFT JOIN t ON t.run_id = r.run_id
        WHERE p.sweep_id = ? ORDER BY p.strategy, p.model, p.value, p.seed
        """,
        [sweep["sweep_id"], sweep["sweep_id"]],
    )
    return sweep


COMPARE_FILTERS = {
    "": "1=1",
    "differ": "a.graded IS DISTINCT FROM b.graded",
    "a_only": "a.graded AND NOT coalesce(b.graded, false)",
    "b_only": "b.graded AND NOT coalesce(a.graded, false)",
}


def compare_page(
    store: TraceStore, a: str, b: str, *, filter: str = "", limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    """Two runs on the same tasks, one row a task both ran."""
    if filter not in COMPARE_FILTERS:
        raise BadRequest(f"unknown filter {filter!r}; choose one of {', '.join(COMPARE_FILTERS)}")
    limit, offset = _page(limit, offset)
    ra, rb = _run_id(store, a), _run_id(store, b)
    cols = "task_id, idx, final_answer, verdict, graded, total_tokens, calls, stop_reason"
    sql = f"""
        WITH a AS (SELECT {cols}, prompt FROM tasks WHERE run_id = ?),
             b AS (SELECT {cols} FROM tasks WHERE run_id = ?),
             j AS (SELECT a.task_id, a.idx, left(a.prompt, 120) AS prompt,
                          a.final_answer AS a_answer, a.verdict AS a_verdict,
                          a.graded AS a_graded, a.total_tokens AS a_tokens,
                          b.final_answer AS b_answer, b.verdict AS b_verdict,
                          b.graded AS b_graded, b.total_tokens AS b_tokens
                   FROM a JOIN b USING (task_id) WHERE {COMPARE_FILTERS[filter]})
        """
    summary = store.query(
        sql
        + """SELECT count(*) AS shared,
                 count(*) FILTER (WHERE a_graded) AS a_passed,
                 count(*) FILTER (WHERE b_graded) AS b_passed,
                 count(*) FILTER (WHERE a_graded AND NOT coalesce(b_graded, false)) AS a_only,
                 count(*) FILTER (WHERE b_graded AND NOT coalesce(a_graded, false)) AS b_only,
                 sum(a_tokens) AS a_tokens, sum(b_tokens) AS b_tokens FROM j""",
        [ra, rb],
    )[0]
    rows = store.query(
        sql + f"SELECT * FROM j ORDER BY idx LIMIT {limit} OFFSET {offset}", [ra, rb]
    )
    return {"a": a, "b": b, "summary": summary, "rows": rows, "limit": limit, "offset": offset}


def improve_page(store: TraceStore) -> dict[str, Any]:
    """The improve tables if this database has them (an older store has neither)."""
    out: dict[str, Any] = {"models": None, "rounds": None}
    for table in ("models", "rounds"):
        if has_table(store, table):
            # Whatever columns the table has: it is another module's schema, read as is.
            out[table] = store.query(f"SELECT * FROM {table} LIMIT 500")
    return out
