"""Sweep bookkeeping over the ``sweeps`` and ``sweep_points`` tables: the one place that
writes them. A sweep is a named grid of points; each point is one run (or, for a derived
point, the first k samples of a larger one)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loopwright.traces.records import new_id, utcnow
from loopwright.traces.store import TraceStore
from pydantic import BaseModel, ConfigDict


class PointRow(BaseModel):
    """What a ``sweep_points`` row records of a planned point. ``value`` is the grid value
    of ``param``; only a number is stored (NULL otherwise)."""

    model_config = ConfigDict(frozen=True)

    point_id: str
    strategy: str
    loop: str
    model: str
    seed: int
    param: str | None
    value: Any
    options: dict[str, Any]
    run_name: str
    derived: bool


def _numeric(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def sweep_by_name(store: TraceStore, name: str) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM sweeps WHERE name = ?", [name])
    return rows[0] if rows else None


def insert_sweep(
    store: TraceStore,
    *,
    name: str,
    tasks_spec: str,
    grid: str,
    config: str,
    config_hash: str,
    points: Iterable[PointRow],
) -> str:
    """Write a sweep in state ``running`` and its points as ``pending``; returns its id."""
    sweep_id = new_id()
    store.execute(
        "INSERT INTO sweeps (sweep_id, name, tasks_spec, grid, config, config_hash, status, "
        "started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
        [sweep_id, name, tasks_spec, grid, config, config_hash, utcnow()],
    )
    for p in points:
        store.execute(
            "INSERT INTO sweep_points (point_id, sweep_id, strategy, loop, model, seed, param,"
            " value, options, run_name, derived, status) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            [p.point_id, sweep_id, p.strategy, p.loop, p.model, p.seed, p.param, _numeric(p.value),
             json.dumps(p.options), p.run_name, p.derived],
        )  # fmt: skip
    return sweep_id


def set_sweep_status(store: TraceStore, sweep_id: str, status: str) -> None:
    """``running`` when (re)started; ``done`` or ``partial`` (some point failed) at the end."""
    finished = None if status == "running" else utcnow()
    store.execute(
        "UPDATE sweeps SET status = ?, finished_at = ? WHERE sweep_id = ?",
        [status, finished, sweep_id],
    )


def set_point_status(
    store: TraceStore, run_name: str, status: str, error: str | None = None
) -> None:
    store.execute(
        "UPDATE sweep_points SET status = ?, error = ? WHERE run_name = ?",
        [status, error, run_name],
    )
