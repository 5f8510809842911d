"""Online RL in the store (schema v8): the ``rollouts`` and ``train_steps`` tables, and the
step runs they belong to.

Each GRPO step is one run, ``{improve}-g{step:05d}`` (loop ``grpo``), holding the step's
completions as a best-of-n run holds its samples: ``tasks``, a generator node, a call and
verdicts per completion (``loops/improve/record.py`` builds them). Beside those rows, a
``rollouts`` row per completion keeps what only RL has (step, group, reward per term,
advantage, the policy that sampled it) and a ``train_steps`` row the step's metrics. A step's
run carries ``improve`` and ``step`` in its config, so every row of a step is found again:
recording a step twice replaces it (:func:`discard_step`), and a resumed series drops the
steps after its checkpoint (:func:`discard_steps_after`).

Rows are repaired like every row (``records.repair_row``, a ``text_repairs`` row per value
changed); a row the database still refuses goes to ``write_errors``, never failing the step.
"""

from __future__ import annotations

import contextlib
import json
import math
from datetime import datetime
from typing import Any

from loopwright.traces.queries import table_names
from loopwright.traces.records import utcnow
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import repairs_rows
from pydantic import BaseModel, ConfigDict, Field

GRPO_LOOP = "grpo"
"""The ``runs.loop`` of a step run (recorded by a series or ingested from TRL)."""

_RUN_TABLES = ("tasks", "nodes", "calls", "verdicts", "text_repairs", "write_errors", "rollouts")
"""The tables whose rows of a run go with it (``runs`` and ``train_steps`` besides)."""


def step_run_name(improve: str, step: int) -> str:
    """The name of the run holding step ``step`` of series ``improve``."""
    return f"{improve}-g{step:05d}"


class RolloutRecord(BaseModel):
    """One completion of a GRPO step: a ``rollouts`` row (its text, call and verdicts are the
    generator node ``node_id`` of the step's run)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    node_id: str
    improve: str
    step: int
    task_id: str
    group_index: int | None = Field(None, description="The prompt group within the step.")
    sample_index: int | None = Field(None, description="The completion within its group.")
    policy: str | None = Field(None, description="The model (policy step) that sampled it.")
    reward: float | None = Field(None, description="Total reward (weighted sum of the terms).")
    rewards: str | None = Field(None, description="JSON: the reward per term.")
    advantage: float | None = None
    completion_tokens: int | None = None
    clipped: bool | None = Field(None, description="Cut at the completion length cap.")
    pseudo_label: str | None = Field(None, description="majority reward: the group's label.")
    correct: bool | None = Field(None, description="The held-out grader's verdict (record).")
    created_at: datetime = Field(default_factory=utcnow)

    def row(self) -> dict[str, Any]:
        return self.model_dump()


# -- writing ---------------------------------------------------------------------------------
def _step_runs(store: TraceStore, improve: str, after: int, upto: int | None) -> list[str]:
    """Run ids of the series' step runs with ``after < step <= upto`` (any step when ``upto``
    is None), found by their config, their rollouts and their ``train_steps`` rows."""
    hi = 2**31 - 1 if upto is None else upto
    rows = store.query(
        f"""
        SELECT run_id FROM runs
        WHERE loop = '{GRPO_LOOP}' AND json_extract_string(config, '$.improve') = ?
          AND TRY_CAST(json_extract(config, '$.step') AS INTEGER) > ?
          AND TRY_CAST(json_extract(config, '$.step') AS INTEGER) <= ?
        UNION SELECT DISTINCT run_id FROM rollouts WHERE improve = ? AND step > ? AND step <= ?
        UNION SELECT run_id FROM train_steps
        WHERE improve = ? AND step > ? AND step <= ? AND run_id IS NOT NULL""",
        [improve, after, hi] * 3,
    )
    return [r["run_id"] for r in rows]


def _discard(store: TraceStore, improve: str, after: int, upto: int | None) -> list[int]:
    """Delete every row of the series' steps in ``(after, upto]``; the steps that had rows."""
    hi = 2**31 - 1 if upto is None else upto
    steps = {
        int(r["step"])
        for r in store.query(
            f"""
            SELECT TRY_CAST(json_extract(config, '$.step') AS INTEGER) AS step FROM runs
            WHERE loop = '{GRPO_LOOP}' AND json_extract_string(config, '$.improve') = ?
            UNION SELECT step FROM rollouts WHERE improve = ?
            UNION SELECT step FROM train_steps WHERE improve = ?""",
            [improve, improve, improve],
        )
        if r["step"] is not None and after < int(r["step"]) <= hi
    }
    run_ids = _step_runs(store, improve, after, upto)
    if not steps and not run_ids:
        return []
    cur = store.cursor()
    cur.execute("BEGIN TRANSACTION")
    try:
        for run_id in run_ids:
            for table in _RUN_TABLES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            cur.execute("DELETE FROM train_steps WHERE run_id = ?", [run_id])
            cur.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        cur.execute(
            "DELETE FROM train_steps WHERE improve = ? AND step > ? AND step <= ?",
            [improve, after, hi],
        )
        cur.execute(
            "DELETE FROM rollouts WHERE improve = ? AND step > ? AND step <= ?",
            [improve, after, hi],
        )
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            cur.execute("ROLLBACK")
        raise
    return sorted(steps)


def discard_step(store: TraceStore, improve: str, step: int) -> bool:
    """Delete every row of step ``step`` of ``improve`` (its run and all the run's rows,
    rollouts, metrics), so the step can be recorded again; whether it had rows."""
    return bool(_discard(store, improve, step - 1, step))


def discard_steps_after(store: TraceStore, improve: str, step: int) -> list[int]:
    """Delete every row of the series' steps after ``step`` (what a resumed series samples
    again); the steps discarded."""
    return _discard(store, improve, step, None)


def name_taken(store: TraceStore, name: str) -> str | None:
    """The loop of the run already called ``name``, or None when the name is free."""
    rows = store.query("SELECT loop FROM runs WHERE name = ?", [name])
    return str(rows[0]["loop"]) if rows else None


def _error_row(table: str, row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    return {
        "run_id": row.get("run_id"),
        "task_id": row.get("task_id"),
        "table_name": table,
        "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
        "record": json.dumps(row, default=str),
        "created_at": utcnow(),
    }


def _insert(cur: Any, table: str, rows: list[dict[str, Any]], verb: str = "INSERT") -> None:
    import pyarrow as pa

    batch = pa.Table.from_pylist(rows)  # noqa: F841  (DuckDB scans it by name)
    cur.execute(f"{verb} INTO {table} BY NAME SELECT * FROM batch")


def _write_rows(store: TraceStore, table: str, rows: list[dict[str, Any]], verb: str) -> int:
    """Insert ``rows`` (repaired) in one transaction; when the database refuses the batch,
    row by row, each refused row kept in ``write_errors``. Returns the rows written."""
    if not rows:
        return 0
    fixed: list[dict[str, Any]] = []
    repairs: list[dict[str, Any]] = []
    for row in rows:
        good, reps = repairs_rows(table, row)
        fixed.append(good)
        repairs.extend(reps)
    cur = store.cursor()
    try:
        cur.execute("BEGIN TRANSACTION")
        _insert(cur, table, fixed, verb)
        if repairs:
            _insert(cur, "text_repairs", repairs)
        cur.execute("COMMIT")
        return len(fixed)
    except Exception:
        with contextlib.suppress(Exception):
            cur.execute("ROLLBACK")
    written = 0
    for row in fixed:
        try:
            cur.execute("BEGIN TRANSACTION")
            _insert(cur, table, [row], verb)
            cur.execute("COMMIT")
            written += 1
        except Exception as exc:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            _insert(cur, "write_errors", [_error_row(table, row, exc)])
    if repairs:
        _insert(cur, "text_repairs", repairs)
    return written


def write_rollouts(store: TraceStore, rollouts: list[RolloutRecord]) -> int:
    """Insert ``rollouts`` rows; returns how many the table took (the rest: write_errors)."""
    return _write_rows(store, "rollouts", [r.row() for r in rollouts], "INSERT")


def write_train_step(
    store: TraceStore, improve: str, step: int, run_id: str | None, metrics: dict[str, Any]
) -> None:
    """Write (or replace) the ``train_steps`` row of a step."""
    row = {
        "improve": improve,
        "step": step,
        "run_id": run_id,
        "metrics": json.dumps(no_nan(metrics), default=str),
        "created_at": utcnow(),
    }
    _write_rows(store, "train_steps", [row], "INSERT OR REPLACE")


def no_nan(value: Any) -> Any:
    """``value`` with NaN and infinities (not JSON) as None, in nested dicts and lists too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


# -- reading ---------------------------------------------------------------------------------
def _has_tables(store: TraceStore) -> bool:
    """Whether the file has the v8 tables (a file of an older loopwright opened read-only is
    not migrated)."""
    return {"rollouts", "train_steps"} <= table_names(store)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def step_metrics(store: TraceStore, improve: str) -> list[dict[str, Any]]:
    """The ``train_steps`` rows of a series by step: ``step``, ``run_id``, ``run_name`` and
    ``metrics`` (a dict)."""
    if not _has_tables(store):
        return []
    rows = store.query(
        "SELECT s.step, s.run_id, r.name AS run_name, s.metrics, s.created_at "
        "FROM train_steps s LEFT JOIN runs r USING (run_id) WHERE s.improve = ? ORDER BY s.step",
        [improve],
    )
    for r in rows:
        r["metrics"] = _json(r["metrics"]) or {}
    return rows


def rollouts_of(store: TraceStore, improve: str, step: int | None = None) -> list[dict[str, Any]]:
    """The ``rollouts`` rows of a series (one step's with ``step``) in production order, each
    with its completion (``content``), extracted ``answer`` and ``rewards`` as a dict."""
    if not _has_tables(store):
        return []
    cond, params = ("AND o.step = ?", [improve, step]) if step is not None else ("", [improve])
    rows = store.query(
        f"""
        SELECT o.*, n.content, n.answer
        FROM rollouts o LEFT JOIN nodes n USING (node_id)
        WHERE o.improve = ? {cond}
        ORDER BY o.step, o.group_index, o.sample_index, o.created_at""",
        params,
    )
    for r in rows:
        r["rewards"] = _json(r["rewards"]) or {}
    return rows


def step_rewards(store: TraceStore, improve: str) -> list[dict[str, Any]]:
    """``step``, ``group_index``, ``reward`` of every rewarded rollout of a series (what the
    report's confidence bands resample, by group)."""
    if not _has_tables(store):
        return []
    return store.query(
        "SELECT step, group_index, reward FROM rollouts "
        "WHERE improve = ? AND reward IS NOT NULL ORDER BY step, group_index",
        [improve],
    )


def grpo_series(store: TraceStore) -> list[str]:
    """Names of the series with recorded GRPO steps (trained here or ingested)."""
    if not _has_tables(store):
        return []
    return [
        r["improve"] for r in store.query("SELECT DISTINCT improve FROM train_steps ORDER BY 1")
    ]


def checkpoint_steps(store: TraceStore, improve: str) -> dict[int, int]:
    """Round -> the GRPO step its model was taken at (``models.step``, schema v8)."""
    has = store.query(
        "SELECT count(*) AS n FROM duckdb_columns() "
        "WHERE table_name = 'models' AND column_name = 'step'"
    )
    if not has[0]["n"]:
        return {}
    rows = store.query(
        "SELECT round, step FROM models WHERE improve = ? AND step IS NOT NULL", [improve]
    )
    return {int(r["round"]): int(r["step"]) for r in rows}
