"""Sweep bookkeeping over the ``sweeps`` and ``sweep_points`` tables: the one place that
writes them. A sweep is a named grid of points; each point is one run (or, for a derived
point, the first k samples of a larger one)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loopwright.traces.records import new_id, repair_row, utcnow
from loopwright.traces.schema import JSON_COLUMNS
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


def sweep_names(store: TraceStore) -> list[str]:
    return [r["name"] for r in store.query("SELECT name FROM sweeps ORDER BY 1")]


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
    row = {
        "sweep_id": sweep_id, "name": name, "tasks_spec": tasks_spec, "grid": grid,
        "config": config, "config_hash": config_hash,
    }  # fmt: skip
    store.execute(
        "INSERT INTO sweeps (sweep_id, name, tasks_spec, grid, config, config_hash, status, "
        "started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
        [*_storable("sweeps", row), utcnow()],
    )
    insert_points(store, sweep_id, points)
    return sweep_id


def sweep_points(store: TraceStore, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's ``sweep_points`` rows as stored."""
    return store.query("SELECT * FROM sweep_points WHERE sweep_id = ?", [sweep_id])


def update_sweep(
    store: TraceStore, sweep_id: str, *, grid: str, config: str, config_hash: str
) -> None:
    """A sweep grown by new points: its grid, config and identity hash now."""
    row = {"grid": grid, "config": config, "config_hash": config_hash}
    store.execute(
        "UPDATE sweeps SET grid = ?, config = ?, config_hash = ? WHERE sweep_id = ?",
        [*_storable("sweeps", row), sweep_id],
    )


def repoint(store: TraceStore, point: PointRow) -> None:
    """A stored point now read from another run (its old run is no longer planned)."""
    store.execute(
        "UPDATE sweep_points SET run_name = ?, derived = ?, options = ? WHERE point_id = ?",
        [point.run_name, point.derived, json.dumps(point.options), point.point_id],
    )


def insert_points(store: TraceStore, sweep_id: str, points: Iterable[PointRow]) -> None:
    """Write ``points`` of sweep ``sweep_id`` as ``pending``."""
    for p in points:
        point: dict[str, Any] = {
            "point_id": p.point_id, "sweep_id": sweep_id, "strategy": p.strategy,
            "loop": p.loop, "model": p.model, "seed": p.seed, "param": p.param,
            "value": _numeric(p.value), "options": json.dumps(p.options),
            "run_name": p.run_name, "derived": p.derived,
        }  # fmt: skip
        store.execute(
            "INSERT INTO sweep_points (point_id, sweep_id, strategy, loop, model, seed, param,"
            " value, options, run_name, derived, status) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            _storable("sweep_points", point),
        )


def _storable(table: str, row: dict[str, Any]) -> list[Any]:
    """The row's values, its text made storable as every row's is (``records.repair_row``).
    A sweep's names come from the command line; the repair is not counted per run."""
    return list(repair_row(row, JSON_COLUMNS.get(table, frozenset()))[0].values())


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
