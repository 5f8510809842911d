"""The viewer's reads: one function a page, each returning at most one page of rows.

Every list is sorted and filtered in SQL and cut with LIMIT/OFFSET, so no page reads a whole
table into Python; sort keys come from a fixed map (never from the request), values are bound
parameters. ``run_config`` fields are read with ``json_extract_string`` so a runs table from
before a field existed still reads; a run without ``verifier`` in its config checked against
the reference in the loop, and shows as ``oracle (legacy)``.
"""

from __future__ import annotations

import json
from typing import Any

from loopwright.traces.queries import oracle_sql, verifier_sql
from loopwright.traces.records import DRAFT_ROLES
from loopwright.traces.runs import run_provenance
from loopwright.traces.store import TraceStore
from loopwright.traces.view.diff import word_diff

MAX_PAGE = 500
MAX_NODES = 5000
"""A task's tree is sent whole (the client folds it); past this it is cut and says so."""
SNIPPET = 160


class BadRequest(ValueError):
    """A request the viewer cannot answer as asked (a bad sort key, filter or number): 400."""


class NotFound(BadRequest):
    """A request for a run, task, node, call or sweep the store does not hold: 404."""


MAX_OFFSET = 2**63 - 1
"""DuckDB's OFFSET is a BIGINT."""


def _page(limit: int, offset: int) -> tuple[int, int]:
    """``limit`` cut to MAX_PAGE; a limit under 1 or an offset outside a BIGINT is refused."""
    if limit < 1:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_PAGE}, not {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(f"offset must be a whole number from 0 to {MAX_OFFSET}, not {offset}")
    return min(limit, MAX_PAGE), offset


def _order(sort: str, desc: bool, keys: dict[str, str], default: str) -> str:
    if sort and sort not in keys:
        raise BadRequest(f"cannot sort by {sort!r}; choose one of {', '.join(keys)}")
    expr = keys[sort or default]
    return f"{expr} {'DESC' if desc else 'ASC'} NULLS LAST"


def has_table(store: TraceStore, name: str) -> bool:
    return bool(store.query("SELECT 1 FROM duckdb_tables() WHERE table_name = ? LIMIT 1", [name]))


RUN_SORTS = {
    "name": "name", "loop": "loop", "model": "model", "verifier": "verifier",
    "status": "status", "progress": "done * 1.0 / nullif(tasks, 0)", "pass_rate": "pass_rate",
    "tokens": "tokens", "cost_usd": "cost_usd", "wall_s": "wall_s", "started_at": "started_at",
}  # fmt: skip

_RUNS = f"""
WITH t AS (
    SELECT run_id, count(*) AS tasks,
           count(*) FILTER (WHERE status = 'done') AS done,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           avg(CASE WHEN graded THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'done') AS pass_rate,
           coalesce(sum(total_tokens), 0) AS tokens, coalesce(sum(cost_usd), 0) AS cost_usd,
           max(finished_at) AS last_finished
    FROM tasks GROUP BY run_id
), r AS (
    SELECT r.run_id, r.name, r.loop, r.model, r.status, r.started_at,
           {verifier_sql("r.config")} AS verifier, {oracle_sql("r.config")} AS oracle,
           json_extract_string(r.config, '$.limit') AS task_limit,
           coalesce(t.tasks, 0) AS tasks, coalesce(t.done, 0) AS done,
           coalesce(t.failed, 0) AS failed, t.pass_rate, coalesce(t.tokens, 0) AS tokens,
           coalesce(t.cost_usd, 0) AS cost_usd,
           date_diff('millisecond', r.started_at,
                     coalesce(r.finished_at, t.last_finished)) / 1000.0 AS wall_s
    FROM runs r LEFT JOIN t USING (run_id)
)
"""


def runs_page(
    store: TraceStore, *, q: str = "", status: str = "", sort: str = "", desc: bool = True,
    limit: int = 50, offset: int = 0,
) -> dict[str, Any]:  # fmt: skip
    limit, offset = _page(limit, offset)
    where, params = ["1=1"], []
    if q:
        where.append("(name ILIKE ? OR loop ILIKE ? OR model ILIKE ? OR verifier ILIKE ?)")
        params += [f"%{q}%"] * 4
    if status:
        where.append("status = ?")
        params.append(status)
    cond = " AND ".join(where)
    order = _order(sort, desc, RUN_SORTS, "started_at")
    rows = store.query(
        f"{_RUNS} SELECT *, count(*) OVER () AS total FROM r WHERE {cond} "
        f"ORDER BY {order}, name LIMIT {limit} OFFSET {offset}",
        params,
    )
    total = rows[0].pop("total") if rows else 0
    for r in rows[1:]:
        r.pop("total")
    return {"rows": rows, "total": total, "limit": limit, "offset": offset}


def run_detail(store: TraceStore, name: str) -> dict[str, Any]:
    rows = store.query(f"{_RUNS} SELECT * FROM r WHERE name = ?", [name])
    if not rows:
        raise NotFound(f"no run named {name!r}")
    run = rows[0]
    cfg = store.query("SELECT config, tasks_spec, seed, version FROM runs WHERE name = ?", [name])[
        0
    ]
    run["config"] = json.loads(cfg["config"]) if cfg["config"] else {}
    run["tasks_spec"], run["seed"], run["version"] = cfg["tasks_spec"], cfg["seed"], cfg["version"]
    run["provenance"] = run_provenance(store, run["run_id"])  # None: stored before schema v7
    run["stop_reasons"] = store.query(
        "SELECT stop_reason, count(*) AS n FROM tasks WHERE run_id = ? AND status = 'done' "
        "GROUP BY 1 ORDER BY 2 DESC",
        [run["run_id"]],
    )
    return run


def _run_id(store: TraceStore, name: str) -> str:
    rows = store.query("SELECT run_id FROM runs WHERE name = ?", [name])
    if not rows:
        raise NotFound(f"no run named {name!r}")
    return str(rows[0]["run_id"])


TASK_SORTS = {
    "idx": "idx", "task_id": "task_id", "verdict": "verdict", "graded": "graded",
    "stop_reason": "stop_reason", "rounds": "rounds", "tokens": "total_tokens",
    "calls": "calls", "wall_s": "wall_s", "status": "status",
}  # fmt: skip
TASK_FILTERS = {
    "": "1=1",
    "failed": "(status = 'failed' OR graded = false)",
    "errors": "status = 'failed'",
    "disagree": "verdict IS NOT NULL AND graded IS NOT NULL AND verdict <> graded",
    "passed": "graded = true",
    "running": "status = 'running'",
}


def tasks_page(
    store: TraceStore, run: str, *, filter: str = "", stop: str = "", q: str = "",
    sort: str = "", desc: bool = False, limit: int = 100, offset: int = 0,
) -> dict[str, Any]:  # fmt: skip
    if filter not in TASK_FILTERS:
        raise BadRequest(f"unknown filter {filter!r}; choose one of {', '.join(TASK_FILTERS)}")
    limit, offset = _page(limit, offset)
    run_id = _run_id(store, run)
    where, params = ["run_id = ?", TASK_FILTERS[filter]], [run_id]
    if stop:
        where.append("stop_reason = ?")
        params.append(stop)
    if q:
        where.append("(task_id ILIKE ? OR prompt ILIKE ?)")
        params += [f"%{q}%"] * 2
    order = _order(sort, desc, TASK_SORTS, "idx")
    rows = store.query(
        f"SELECT task_id, idx, kind, left(prompt, {SNIPPET}) AS prompt, final_answer, verdict, "
        "graded, stop_reason, rounds, total_tokens AS tokens, calls, cost_usd, wall_s, status, "
        f"error, count(*) OVER () AS total FROM tasks WHERE {' AND '.join(where)} "
        f"ORDER BY {order}, idx LIMIT {limit} OFFSET {offset}",
        params,
    )
    total = rows[0]["total"] if rows else 0
    for r in rows:
        r.pop("total")
    return {"rows": rows, "total": total, "limit": limit, "offset": offset}


def task_tree(store: TraceStore, run: str, task_id: str, node: str = "") -> dict[str, Any]:
    """The task row, its tree's nodes (light: a snippet of the text) and the full detail of
    ``node`` or else of the final node, so the page draws in one round trip."""
    run_id = _run_id(store, run)
    rows = store.query("SELECT * FROM tasks WHERE run_id = ? AND task_id = ?", [run_id, task_id])
    if not rows:
        raise NotFound(f"run {run!r} has no task {task_id!r}")
    loop = store.query("SELECT loop FROM runs WHERE run_id = ?", [run_id])[0]["loop"]
    nodes = store.query(
        f"""
        WITH n AS (
            SELECT node_id, parent_id, role, depth, round, left(content, {SNIPPET}) AS snippet,
                   answer, score, value, visits, is_final, created_at
            FROM nodes WHERE run_id = ? AND task_id = ?
            ORDER BY created_at, depth, round LIMIT {MAX_NODES + 1}
        ), v AS (
            SELECT node_id,
                   bool_and(passed) FILTER (WHERE stage = 'in_loop') AS in_loop,
                   bool_and(passed) FILTER (WHERE stage = 'graded') AS graded
            FROM verdicts WHERE run_id = ? AND task_id = ? GROUP BY node_id
        ), c AS (
            SELECT node_id, count(*) AS calls FROM calls
            WHERE run_id = ? AND task_id = ? GROUP BY node_id
        )
        SELECT n.*, v.in_loop, v.graded, coalesce(c.calls, 0) AS calls
        FROM n LEFT JOIN v USING (node_id) LEFT JOIN c USING (node_id)
        ORDER BY n.created_at, n.depth, n.round
        """,
        [run_id, task_id] * 3,
    )
    truncated = len(nodes) > MAX_NODES
    pick = node or rows[0]["final_node_id"]
    selected = node_detail(store, pick) if pick else None
    if selected is not None and (selected["run_id"], selected["task_id"]) != (run_id, task_id):
        selected = None  # a ?node= of another task
    return {"task": rows[0], "loop": loop, "nodes": nodes[:MAX_NODES], "truncated": truncated,
            "selected": selected}  # fmt: skip


# A node and its parent both holding drafts of the answer get a draft/revision diff; other
# roles' text is no draft (a critique, a vote's tally, the MCTS root holds the question).
_DRAFTS = frozenset(DRAFT_ROLES)


def node_detail(store: TraceStore, node_id: str) -> dict[str, Any]:
    rows = store.query("SELECT * FROM nodes WHERE node_id = ?", [node_id])
    if not rows:
        raise NotFound(f"no node {node_id!r}")
    node = rows[0]
    # run_id and task_id are redundant with node_id but let DuckDB skip every row group of
    # other tasks (rows land task by task, so zone maps prune): ~15 ms vs ~120 ms at 1M calls.
    where = "run_id = ? AND task_id = ? AND node_id = ?"
    key = [node["run_id"], node["task_id"], node_id]
    node["verdicts"] = store.query(
        "SELECT stage, verifier, verifier_version, passed, score, feedback, details, latency_s "
        f"FROM verdicts WHERE {where} ORDER BY created_at",
        key,
    )
    node["calls"] = store.query(
        "SELECT call_id, role, model, temperature, max_tokens, n, seed, sample_index, "
        "finish_reason, prompt_tokens, completion_tokens, cost_usd, latency_s, attempts, "
        f"cache_hit, error FROM calls WHERE {where} ORDER BY created_at, sample_index",
        key,
    )
    node["parent"] = None
    node["diff"] = None
    if node["parent_id"]:
        prow = store.query(
            "SELECT node_id, role, content FROM nodes WHERE node_id = ?", [node["parent_id"]]
        )
        if prow:
            parent = prow[0]
            node["parent"] = parent
            if node["role"] in _DRAFTS and parent["role"] in _DRAFTS:
                node["diff"] = word_diff(parent["content"] or "", node["content"] or "")
    return node


def call_detail(store: TraceStore, call_id: str) -> dict[str, Any]:
    rows = store.query("SELECT * FROM calls WHERE call_id = ?", [call_id])
    if not rows:
        raise NotFound(f"no call {call_id!r}")
    call = rows[0]
    try:
        call["messages"] = json.loads(call["messages"]) if call["messages"] else []
    except json.JSONDecodeError:
        call["messages"] = [{"role": "?", "content": call["messages"]}]
    return call
