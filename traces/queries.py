"""Small read helpers over the trace store. Everything else is plain SQL."""

from __future__ import annotations

import json
from typing import Any

from loopwright.traces.store import TraceStore

_CHILD_TABLES = ("nodes", "calls", "verdicts")


def run_by_name(store: TraceStore, name: str) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM runs WHERE name = ?", [name])
    return rows[0] if rows else None


def task_statuses(store: TraceStore, run_id: str) -> dict[str, str]:
    """task_id -> status for one run."""
    rows = store.query("SELECT task_id, status FROM tasks WHERE run_id = ?", [run_id])
    return {r["task_id"]: r["status"] for r in rows}


def discard_partial_tasks(store: TraceStore, run_id: str) -> list[str]:
    """Delete the trace rows of every unfinished task of a run, so a rerun is not duplicated.

    Returns the ids of the tasks that will be run again.
    """
    rows = store.query(
        "SELECT task_id FROM tasks WHERE run_id = ? AND status NOT IN ('done')", [run_id]
    )
    ids = [r["task_id"] for r in rows]
    if ids:
        cur = store.cursor()
        cur.execute("BEGIN TRANSACTION")
        for table in _CHILD_TABLES:
            cur.execute(
                f"DELETE FROM {table} WHERE run_id = ? AND task_id IN "
                "(SELECT task_id FROM tasks WHERE run_id = ? AND status <> 'done')",
                [run_id, run_id],
            )
        cur.execute("COMMIT")
    return ids


def cache_lookup(store: TraceStore, cache_key: str, n: int) -> list[dict[str, Any]] | None:
    """The cached samples 0..n-1 for a request, or None unless all n are cached."""
    rows = store.query(
        "SELECT * FROM call_cache WHERE cache_key = ? AND sample_index < ? ORDER BY sample_index",
        [cache_key, n],
    )
    return rows if len(rows) == n else None


def verifier_label(config: str | dict[str, Any] | None) -> tuple[str, bool]:
    """How a run's in-loop verifier is shown, and whether it read the answer key.

    Runs recorded before in-loop verifiers were chosen (no ``verifier`` in their config)
    checked drafts against the reference: they are oracle runs.
    """
    cfg = json.loads(config) if isinstance(config, str) else dict(config or {})
    if "verifier" not in cfg:
        return "oracle (legacy)", True
    names = sorted(set((cfg.get("verifiers") or {}).values())) or [str(cfg["verifier"])]
    oracle = bool(cfg.get("oracle")) or "oracle" in names
    return ",".join(names), oracle


def verifier_sql(config: str) -> str:
    """SQL for a run's in-loop verifier as shown, from its ``config`` JSON column (the same
    reading as ``verifier_label``): the verifiers it resolved, else the name it was given,
    else ``oracle (legacy)``."""
    return (
        f"coalesce(nullif(array_to_string(list_sort(list_distinct("
        f"json_extract_string({config}, '$.verifiers.*'))), ','), ''), "
        f"json_extract_string({config}, '$.verifier'), 'oracle (legacy)')"
    )


def oracle_sql(config: str) -> str:
    """SQL: did the run's loop see the answer key (``verifier_label``'s second value)."""
    return (
        f"(coalesce(CAST(json_extract({config}, '$.oracle') AS BOOLEAN), FALSE) "
        f"OR json_extract_string({config}, '$.verifier') IS NULL "
        f"OR json_extract_string({config}, '$.verifier') = 'oracle')"
    )


def list_runs(store: TraceStore) -> list[dict[str, Any]]:
    """One summary row per run, newest first, with its in-loop verifier (``verifier``,
    ``oracle``)."""
    rows = store.query(
        """
        WITH t AS (
            SELECT run_id,
                   count(*) AS tasks,
                   count(*) FILTER (WHERE status = 'done') AS done,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   avg(CASE WHEN graded THEN 1.0 ELSE 0.0 END)
                       FILTER (WHERE status = 'done') AS pass_rate,
                   sum(total_tokens) AS tokens,
                   sum(calls) AS calls,
                   sum(cost_usd) AS cost_usd,
                   max(finished_at) AS last_finished
            FROM tasks GROUP BY run_id
        )
        SELECT r.name, r.loop, r.model, r.status,
               coalesce(t.tasks, 0) AS tasks, coalesce(t.done, 0) AS done,
               coalesce(t.failed, 0) AS failed, t.pass_rate,
               coalesce(t.tokens, 0) AS tokens, coalesce(t.calls, 0) AS calls,
               coalesce(t.cost_usd, 0) AS cost_usd,
               date_diff('millisecond', r.started_at, coalesce(r.finished_at, t.last_finished))
                   / 1000.0 AS wall_s,
               r.started_at, r.config
        FROM runs r LEFT JOIN t USING (run_id)
        ORDER BY r.started_at DESC
        """
    )
    for r in rows:
        r["verifier"], r["oracle"] = verifier_label(r.pop("config"))
    return rows


def run_summary(store: TraceStore, run_id: str) -> dict[str, Any]:
    """Aggregates for one run: tasks, pass rates, tokens, calls, cost, stop reasons."""
    row = store.query(
        """
        SELECT count(*) AS tasks,
               count(*) FILTER (WHERE status = 'done') AS done,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               avg(CASE WHEN graded THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'done')
                   AS graded_pass_rate,
               avg(CASE WHEN verdict THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'done')
                   AS verified_rate,
               coalesce(sum(total_tokens), 0) AS tokens,
               coalesce(sum(calls), 0) AS calls,
               coalesce(sum(cost_usd), 0) AS cost_usd,
               avg(rounds) FILTER (WHERE status = 'done') AS mean_rounds
        FROM tasks WHERE run_id = ?
        """,
        [run_id],
    )[0]
    reasons = store.query(
        "SELECT stop_reason, count(*) AS n FROM tasks WHERE run_id = ? AND status = 'done' "
        "GROUP BY 1 ORDER BY 2 DESC",
        [run_id],
    )
    row["stop_reasons"] = {r["stop_reason"]: r["n"] for r in reasons}
    return row
