"""Run bookkeeping over the ``runs`` and ``tasks`` tables: open, reopen and finish a run,
find runs by name, the per-task statuses resume reads, and the summaries ``loopwright runs``
shows. The one place that writes a ``runs`` row."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any

from loopwright.traces.queries import verifier_label
from loopwright.traces.records import new_id, repair_json_text, repair_row, repair_text, utcnow
from loopwright.traces.schema import JSON_COLUMNS
from loopwright.traces.store import TraceStore, TraceStoreError

# A task's rows besides its ``tasks`` row: what resume discards for an unfinished task.
_CHILD_TABLES = ("nodes", "calls", "verdicts", "text_repairs", "write_errors")


def stored_name(name: str) -> str:
    """A run name as the store holds it (text UTF-8 cannot encode is repaired, see
    ``records.repair_text``): what to look a name given by the user up by."""
    return repair_text(name)[0]


class UnknownRun(TraceStoreError):
    """A run name (or id) the store does not hold; the message names the closest ones."""

    def __init__(self, db: str, name: str, known: Sequence[str]) -> None:
        if not known:
            msg = f"no runs in {db}: `loopwright run` writes them"
        else:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            msg = f"unknown run {name!r}{hint} (choose from: {', '.join(sorted(known))})"
        super().__init__(msg)
        self.name = name


def run_by_name(store: TraceStore, name: str) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM runs WHERE name = ?", [stored_name(name)])
    return rows[0] if rows else None


def run_by_id(store: TraceStore, run_id: str) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
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
               r.started_at, r.config, {provenance} AS provenance
        FROM runs r LEFT JOIN t USING (run_id)
        ORDER BY r.started_at DESC
        """.format(provenance="r.provenance" if has_provenance(store) else "NULL")
    )
    for r in rows:
        r["verifier"], r["oracle"] = verifier_label(r.pop("config"))
        r["source_sha256"] = _rows_sha256(_json(r.pop("provenance")))
    return rows


def has_provenance(store: TraceStore) -> bool:
    """Whether the file has ``runs.provenance`` (schema v7): a file of an older loopwright
    opened read-only is not migrated."""
    rows = store.query(
        "SELECT count(*) AS n FROM duckdb_columns() "
        "WHERE table_name = 'runs' AND column_name = 'provenance'"
    )
    return bool(rows[0]["n"])


def run_provenance(store: TraceStore, run_id: str) -> dict[str, Any] | None:
    """What run ``run_id`` ran on (``runs.provenance``), or None for a run stored without it
    (before schema v7)."""
    if not has_provenance(store):
        return None
    rows = store.query("SELECT provenance FROM runs WHERE run_id = ?", [run_id])
    return _json(rows[0]["provenance"]) if rows else None


def _json(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    out = json.loads(value) if isinstance(value, str) else value
    return out if isinstance(out, dict) else None


def _rows_sha256(provenance: dict[str, Any] | None) -> str | None:
    source = (provenance or {}).get("source") or {}
    value = source.get("rows_sha256") if isinstance(source, dict) else None
    return str(value) if value else None


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
    row.update(text_health(store, run_id))
    return row


def text_health(store: TraceStore, run_id: str) -> dict[str, int]:
    """``text_repairs``: stored values of the run whose text was repaired (each counted once,
    however often its row was rewritten); ``write_errors``: rows the database refused, kept
    as JSON text in the ``write_errors`` table instead."""
    row = store.query(
        "SELECT (SELECT count(DISTINCT (table_name, row_key, field)) FROM text_repairs "
        "        WHERE run_id = ?) AS text_repairs, "
        "       (SELECT count(*) FROM write_errors WHERE run_id = ?) AS write_errors",
        [run_id, run_id],
    )[0]
    return {k: int(v) for k, v in row.items()}


def resolve_runs(store: TraceStore, db: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Run name (or id) as given -> its ``runs`` row, in the order given; a run named twice
    (by name and by id, say) appears once. An unknown name raises :class:`UnknownRun`."""
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for given in dict.fromkeys(names):
        name = stored_name(given)
        rows = store.query("SELECT * FROM runs WHERE name = ? OR run_id = ?", [name, name])
        if not rows:
            known = [r["name"] for r in store.query("SELECT name FROM runs ORDER BY started_at")]
            raise UnknownRun(db, name, known)
        row = rows[0]
        if row["run_id"] not in seen:
            seen.add(row["run_id"])
            out[row["name"]] = row
    return out


def insert_run(
    store: TraceStore,
    *,
    name: str,
    loop: str,
    model: str,
    tasks_spec: str,
    config: str,
    config_hash: str,
    seed: int | None,
    version: str,
    provenance: str | None = None,
) -> str:
    """Write a new ``runs`` row in state ``running`` and commit it; returns its run_id.
    ``provenance`` (JSON) is what the run ran on (``loops/execution/provenance.py``).

    Its text is repaired like every row's (``records.repair_row``), each repaired value
    recorded in ``text_repairs`` in the same transaction."""
    run_id = new_id()
    now = utcnow()
    row, fixes = repair_row(
        {
            "run_id": run_id, "name": name, "loop": loop, "model": model,
            "tasks_spec": tasks_spec, "config": config, "config_hash": config_hash,
            "seed": seed, "version": version, "provenance": provenance,
        },
        JSON_COLUMNS["runs"],
    )  # fmt: skip
    cur = store.cursor()
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.execute(
            "INSERT INTO runs (run_id, name, loop, model, tasks_spec, config, config_hash, "
            "seed, version, provenance, status, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            [*row.values(), now],
        )
        for field, rep in fixes.items():
            cur.execute(
                "INSERT INTO text_repairs (run_id, table_name, row_key, field, joined_pairs, "
                "replaced, created_at) VALUES (?, 'runs', ?, ?, ?, ?, ?)",
                [run_id, run_id, field, rep.joined, rep.replaced, now],
            )
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return run_id


def reopen_run(store: TraceStore, run_id: str, provenance: str | None = None) -> set[str]:
    """Mark a run running again for ``--resume``: its unfinished tasks' rows are discarded
    (so nothing is duplicated); returns the ids of its finished tasks. ``provenance`` (JSON),
    when given, replaces the stored one (a run stored without one keeps none)."""
    discard_partial_tasks(store, run_id)
    if provenance is None:
        store.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", [run_id]
        )
    else:
        store.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL, provenance = ? "
            "WHERE run_id = ?",
            [repair_json_text(provenance)[0], run_id],
        )
    return {tid for tid, st in task_statuses(store, run_id).items() if st == "done"}


def finish_run(store: TraceStore, run_id: str, status: str) -> None:
    """Close a run: ``done``; ``interrupted`` when it stopped early; ``failed`` when its trace
    could not be written. ``--resume`` continues all three."""
    store.execute(
        "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?",
        [status, utcnow(), run_id],
    )


def run_status(store: TraceStore, name: str) -> str | None:
    """The named run's status, or None when the store holds no such run."""
    row = run_by_name(store, name)
    return str(row["status"]) if row else None


def failed_tasks(store: TraceStore, name: str) -> tuple[int, str | None]:
    """How many of the named run's tasks failed, and one of their errors."""
    rows = store.query(
        "SELECT count(*) AS n, any_value(t.error) AS error FROM tasks t "
        "JOIN runs r USING (run_id) WHERE r.name = ? AND t.status = 'failed'",
        [stored_name(name)],
    )
    return int(rows[0]["n"]), rows[0]["error"]
