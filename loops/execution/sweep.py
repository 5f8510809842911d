"""Sweeps: a grid of strategies x values x models x seeds, run and recorded as one sweep.

A grid is ``;``-separated entries, each ``LOOP[(OPT=VAL, ...)][:PARAM=V1,V2,...]``::

    best-of-n:n=1,2,4,8,16; self-refine:max_rounds=1,2,4; reflexion:trials=1,2,4
    best-of-n(selector=majority,temperature=1.0):n=1,4,16

``PARAM`` is a loop option; ``rounds``/``trials`` stand for ``max_rounds``/``max_trials``.
Samples are shared where the loop allows it: best-of-n (without rejection sampling) runs once
per model and seed at the largest N, and the smaller N are *derived* points the report reads
from the first N samples of that run (as search-and-learn does), so the curve costs one run.
Other values run separately, largest first, and share the call cache, so a 1-round run
reuses the first round of the 4-round run instead of paying for it again.

After each run every answer is graded by the held-out grader (``loopwright grade``), which
majority vote, pass@k and the per-turn transitions in reports need. Each point is a row of
``sweep_points``; re-running the same command resumes: finished points are skipped, an
interrupted run is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loopwright.loops.errors import UserError
from loopwright.loops.execution.grid import GridEntry, format_entry, parse_grid
from loopwright.loops.execution.run_config import (
    ModelRef,
    RunSettings,
    identity_hash,
    model_name,
)
from loopwright.loops.models.base import Model
from loopwright.traces import run_by_name
from loopwright.traces.queries import table_names
from loopwright.traces.run_queries import ungraded_answers
from loopwright.traces.runs import failed_tasks, run_status
from loopwright.traces.store import TraceStore
from loopwright.traces.sweeps import (
    PointRow,
    insert_points,
    insert_sweep,
    repoint,
    set_point_status,
    set_sweep_status,
    sweep_by_name,
    update_sweep,
)
from loopwright.traces.sweeps import sweep_points as stored_points
from pydantic import BaseModel, Field, field_validator

if TYPE_CHECKING:
    from loopwright.loops.execution.run_config import RunConfig


class SweepConfig(RunSettings):
    """One sweep: tasks, models, grid, seeds, and the run settings every point shares."""

    name: str = Field(description="Sweep name; re-running the same name resumes it.")
    tasks: str = Field(description="Task spec, as for `loopwright run`.")
    models: tuple[ModelRef, ...] = Field(
        ("local/smollm2-135m",), description="Models: litellm model strings or Model objects."
    )
    grid: str = Field(description="Strategies and values, see the module docstring.")
    seeds: int = Field(
        1, ge=1, le=100, description="Seeds per point: seed, seed+1, ..., seed+seeds-1."
    )
    limit: int | None = Field(None, ge=1, description="Only the first N tasks.")
    grade: bool = Field(True, description="Grade every answer after each run.")

    BOOKKEEPING: ClassVar[frozenset[str]] = frozenset({"name", "grade"})
    POINTS: ClassVar[frozenset[str]] = frozenset({"grid", "models", "seed", "seeds"})
    """What picks the points: not the sweep's identity, so a sweep grows by new points (its
    stored grid, models and seeds become the union) without redoing the others."""

    def identity(self) -> dict[str, Any]:
        """What every point shares (tasks, settings): a re-run must match it."""
        out = super().identity()
        for k in self.POINTS:
            out.pop(k, None)
        return out

    def legacy_hash(self) -> str:
        """The hash sweeps stored before they could grow (their points included)."""
        return identity_hash(super().identity())

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: tuple[str | Model, ...]) -> tuple[str | Model, ...]:
        names = [model_name(m) for m in v]
        twice = [m for i, m in enumerate(names) if m in names[:i]]
        if twice:
            raise ValueError(f"model {twice[0]!r} is given twice")
        return v

    def model_named(self, name: str) -> str | Model:
        """The sweep's model recorded as ``name`` (a point's ``model``)."""
        return next(m for m in self.models if model_name(m) == name)


class PointPlan(PointRow):
    """One point of the grid and the run that produces (or contains) it."""

    verifier: str | None = None


def _short(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model.split("/")[-1])


def plan(cfg: SweepConfig, entries: list[GridEntry]) -> list[PointPlan]:
    """Every point; points of one shared run follow the run's own point (largest N first)."""
    points: list[PointPlan] = []
    names = [model_name(m) for m in cfg.models]
    shorts = [_short(m) for m in names]
    for model in names:
        short = _short(model)
        if shorts.count(short) > 1:  # openai/x and azure/x must not share run names
            short = _short(model.replace("/", "-"))
        for entry in entries:
            values = sorted(entry.values, key=_sort_key, reverse=True) or [None]
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                top = values[0]
                for v in values:
                    run_v = top if entry.shared else v
                    tag = f"{entry.param}={run_v}" if entry.param else "default"
                    run_name = f"{cfg.name}.{short}.{entry.label}.{tag}.s{seed}"
                    pid = hashlib.sha256(
                        f"{cfg.name}|{model}|{entry.label}|{v}|{seed}".encode()
                    ).hexdigest()[:24]
                    points.append(
                        PointPlan(
                            point_id=pid,
                            strategy=entry.label,
                            loop=entry.loop,
                            model=model,
                            seed=seed,
                            param=entry.param,
                            value=v,
                            options=entry.options(run_v),
                            verifier=entry.verifier,
                            run_name=run_name,
                            derived=entry.shared and v != top,
                        )
                    )
    return points


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def open_sweep(cfg: SweepConfig) -> tuple[str, SweepConfig, list[PointPlan]]:
    """Insert the sweep and its points; or check a re-run shares the stored sweep's tasks
    and settings, and grow it by the points it adds. Returns the sweep id, the sweep as it
    now stands (stored and new points) and its points as they run."""
    with TraceStore(cfg.db) as store:
        row = sweep_by_name(store, cfg.name)
        if row is None:
            points = plan(cfg, parse_grid(cfg.grid))
            sweep_id = insert_sweep(
                store, name=cfg.name, tasks_spec=cfg.tasks, grid=cfg.grid,
                config=cfg.model_dump_json(), config_hash=cfg.config_hash(), points=points,
            )  # fmt: skip
            return sweep_id, cfg, points
        sweep_id = str(row["sweep_id"])
        grown, points, new, moved = settle(cfg, row, stored_points(store, sweep_id))
        if grown.grid != row["grid"] or row["config_hash"] != grown.config_hash() or new:
            update_sweep(store, sweep_id, grid=grown.grid, config=grown.model_dump_json(),
                         config_hash=grown.config_hash())  # fmt: skip
        insert_points(store, sweep_id, new)
        for p in moved:
            repoint(store, p)
        set_sweep_status(store, sweep_id, "running")
        return sweep_id, grown, points


def preview(cfg: SweepConfig) -> tuple[SweepConfig, list[PointPlan], set[str]]:
    """What ``open_sweep`` would run, read without writing (no database is created): the
    sweep as it would stand, its points, and the ids of the points it would add."""
    points = plan(cfg, parse_grid(cfg.grid))
    if not Path(cfg.db).exists():
        return cfg, points, {p.point_id for p in points}
    with TraceStore(cfg.db, read_only=True) as store:
        row = sweep_by_name(store, cfg.name) if "sweeps" in table_names(store) else None
        if row is None:
            return cfg, points, {p.point_id for p in points}
        grown, points, new, _ = settle(cfg, row, stored_points(store, str(row["sweep_id"])))
    return grown, points, {p.point_id for p in new}


def settle(
    cfg: SweepConfig, row: dict[str, Any], stored: list[dict[str, Any]]
) -> tuple[SweepConfig, list[PointPlan], list[PointPlan], list[PointPlan]]:
    """A re-run of a stored sweep: (the grown sweep, its points as they run, the new points,
    the stored points now read from another run). Refused when the tasks or the settings
    every point shares differ."""
    if row["config_hash"] not in (cfg.config_hash(), cfg.legacy_hash()) and (
        _stored_hash(row) != cfg.config_hash()
    ):
        raise UserError(
            f"sweep {cfg.name!r} already exists in {cfg.db} with other tasks or settings "
            "(points may be added: other loops, values, models or seeds): re-run it with "
            "the same tasks and settings or pick another --name"
        )
    grown = _grow(cfg, row)
    points, new, moved = reconcile(plan(grown, parse_grid(grown.grid)), stored)
    return grown, points, new, moved


def _stored_hash(row: dict[str, Any]) -> str | None:
    """The shared-settings hash of a stored sweep's config (None if it no longer reads)."""
    try:
        return SweepConfig.model_validate_json(row["config"] or "").config_hash()
    except ValueError:
        return None


def _grow(cfg: SweepConfig, row: dict[str, Any]) -> SweepConfig:
    """The stored sweep and ``cfg`` united: grid entries merged by label (values added),
    models added, seeds from the lowest to the highest of both."""
    try:
        old = SweepConfig.model_validate_json(row["config"] or "")
    except ValueError:  # a config this version cannot read: the stored points stay as they are
        return cfg
    try:
        entries = {e.label: e for e in parse_grid(row["grid"] or old.grid)}
    except UserError as exc:
        raise UserError(f"sweep {cfg.name!r} in {cfg.db}: its stored grid: {exc}") from None
    changed = False
    for e in parse_grid(cfg.grid):
        have = entries.get(e.label)
        if have is None:
            entries[e.label], changed = e, True
        elif have.param != e.param:
            raise UserError(
                f"sweep {cfg.name!r}: {e.label} was swept over {have.param or 'nothing'} and "
                f"now over {e.param or 'nothing'}: keep one, or pick another --name"
            )
        elif any(v not in have.values for v in e.values):
            values = (*have.values, *(v for v in e.values if v not in have.values))
            entries[e.label], changed = have.model_copy(update={"values": values}), True
    grid = "; ".join(format_entry(e) for e in entries.values()) if changed else row["grid"]
    names = [model_name(m) for m in cfg.models]
    models = (*cfg.models, *(m for m in old.models if model_name(m) not in names))
    seed = min(cfg.seed, old.seed)
    seeds = max(cfg.seed + cfg.seeds, old.seed + old.seeds) - seed
    return cfg.model_copy(update={"grid": grid, "models": models, "seed": seed, "seeds": seeds})


def reconcile(
    planned: list[PointPlan], stored: list[dict[str, Any]]
) -> tuple[list[PointPlan], list[PointPlan], list[PointPlan]]:
    """The planned points as they run over what is stored: a stored point keeps the run it
    has (a point that had its own run keeps it; one read from a run keeps reading it while
    that run is planned), so growing a sweep redoes nothing. Returns (points, new points,
    stored points now read from another run)."""
    rows = {r["point_id"]: r for r in stored}
    out: dict[str, PointPlan] = {}
    rename: dict[str, str] = {}
    for p in planned:  # own runs first: a stored one keeps its run, a planned one is its own
        r = rows.get(p.point_id)
        if r is not None and not r["derived"]:
            out[p.point_id] = p.model_copy(update={
                "run_name": r["run_name"], "derived": False,
                "options": json.loads(r["options"]) if r["options"] else p.options,
            })  # fmt: skip
            if not p.derived:
                rename[p.run_name] = r["run_name"]
        elif not p.derived:
            out[p.point_id] = p
    own = {p.run_name for p in out.values()}
    for p in planned:
        if p.point_id in out:
            continue
        r = rows.get(p.point_id)
        if r is not None and r["run_name"] in own:
            out[p.point_id] = p.model_copy(update={
                "run_name": r["run_name"], "derived": True,
                "options": json.loads(r["options"]) if r["options"] else p.options,
            })  # fmt: skip
            continue
        out[p.point_id] = p.model_copy(update={"run_name": rename.get(p.run_name, p.run_name)})
    points = [out[p.point_id] for p in planned]
    new = [p for p in points if p.point_id not in rows]
    moved = [
        p for p in points if p.point_id in rows
        and (p.run_name, p.derived) != (rows[p.point_id]["run_name"], rows[p.point_id]["derived"])
    ]  # fmt: skip
    return points, new, moved


def _set_status(db: str, run_name: str, status: str, error: str | None = None) -> None:
    with TraceStore(db) as store:
        set_point_status(store, run_name, status, error)


def _run_state(db: str, run_name: str) -> str | None:
    with TraceStore(db) as store:
        return run_status(store, run_name)


class SweepEvent(BaseModel):
    """What the driver reports to a progress display."""

    kind: str  # "start", "skip", "done", "failed", "grade"
    run_name: str
    index: int
    total: int
    detail: str = ""


def validate(cfg: SweepConfig) -> tuple[list[GridEntry], list[PointPlan]]:
    """Everything a user can get wrong, checked before anything runs."""
    from loopwright.loops.execution.runner import prepare

    entries = parse_grid(cfg.grid)
    points = plan(cfg, entries)
    seen: set[tuple[str, str, str]] = set()
    for p in points:
        key = (p.loop, p.model, p.verifier or cfg.verifier)
        if key in seen:
            continue
        seen.add(key)
        prepare(run_config(cfg, p))
    return entries, points


def run_config(cfg: SweepConfig, p: PointPlan, resume: bool = False) -> RunConfig:
    """The run that produces point ``p``: the sweep's settings, the point's loop, model,
    seed and options (a grid entry's own verifier replaces the sweep's and its options)."""
    from loopwright.loops.execution.run_config import RunConfig

    settings = cfg.settings()
    if p.verifier:
        settings.update(verifier=p.verifier, verifier_options={})
    return RunConfig(
        **{**settings, "seed": p.seed}, loop=p.loop, tasks=cfg.tasks,
        model=cfg.model_named(p.model), limit=cfg.limit, run_name=p.run_name,
        options=p.options, resume=resume,
    )  # fmt: skip


def run_sweep(
    cfg: SweepConfig,
    on_event: Callable[[SweepEvent], None] | None = None,
    on_run_progress: Callable[[Any], None] | None = None,
) -> str:
    """Run (or resume) every point of the sweep; returns the sweep id."""
    validate(cfg)
    sweep_id, cfg, points = open_sweep(cfg)
    with contextlib.ExitStack() as stack:
        if cfg.executor == "ray":  # one pool of workers for every run of the sweep
            from loopwright.loops.execution.ray_executor import ray_pool

            stack.enter_context(ray_pool(cfg.ray_address, cfg.workers))
        failed = _run_points(cfg, points, on_event, on_run_progress)
    with TraceStore(cfg.db) as store:
        set_sweep_status(store, sweep_id, "done" if not failed else "partial")
    return sweep_id


def _run_points(
    cfg: SweepConfig,
    points: list[PointPlan],
    on_event: Callable[[SweepEvent], None] | None,
    on_run_progress: Callable[[Any], None] | None,
) -> int:
    """Run (or resume) each run of the sweep in turn; returns how many failed."""
    from loopwright.loops.execution.grade import grade_run
    from loopwright.loops.execution.runner import run

    runs = list(dict.fromkeys(p.run_name for p in points))
    failed = 0
    for i, name in enumerate(runs):

        def emit(kind: str, detail: str = "", i: int = i, name: str = name) -> None:
            if on_event:
                on_event(SweepEvent(kind=kind, run_name=name, index=i, total=len(runs),
                                    detail=detail))  # fmt: skip

        p = next(p for p in points if p.run_name == name and not p.derived)
        state = _run_state(cfg.db, name)
        broken, _ = _failed_tasks(cfg.db, name)
        if state == "done" and not broken and _graded(cfg, name):
            emit("skip", "already done")
            _set_status(cfg.db, name, "done")
            continue
        wall_s: float | None = None  # set when the run ran now: then it is mirrored
        try:
            if state != "done" or broken:  # resuming a run redoes its failed tasks
                emit("start")
                began = time.monotonic()
                asyncio.run(run(run_config(cfg, p, resume=state is not None),
                                on_progress=on_run_progress, mirror=False))  # fmt: skip
                wall_s = time.monotonic() - began
            if cfg.grade:
                emit("grade")
                grade_run(cfg.db, [name], sandbox=cfg.sandbox, executor=cfg.executor,
                          ray_address=cfg.ray_address, workers=cfg.workers)  # fmt: skip
        except UserError as exc:
            failed += 1
            _set_status(cfg.db, name, "failed", str(exc))
            emit("failed", str(exc))
            continue
        broken, error = _failed_tasks(cfg.db, name)
        if cfg.tracker and wall_s is not None:
            _mirror_point(cfg, p, "failed" if broken else "done", wall_s)
        if broken:
            # A point with failed tasks would be measured on the tasks that happened to work.
            failed += 1
            msg = f"{broken} task(s) failed, e.g. {error}; re-run the sweep to retry them"
            _set_status(cfg.db, name, "failed", msg)
            emit("failed", msg)
            continue
        _set_status(cfg.db, name, "done")
        emit("done")
    return failed


def _mirror_point(cfg: SweepConfig, p: PointPlan, status: str, wall_s: float) -> None:
    """Mirror the run of point ``p`` to the sweep's tracker, after grading: one tracker run
    in the sweep's group, the point's settings as its config. (The smaller N a best-of-n run
    also answers for are read from its samples by ``loopwright report``, not mirrored.)"""
    from loopwright.loops.execution.trackers import mirror_run

    config = {
        "sweep": cfg.name, "tasks": cfg.tasks, "limit": cfg.limit, "strategy": p.strategy,
        "loop": p.loop, "model": p.model, "seed": p.seed, "param": p.param, "value": p.value,
        "options": p.options, "verifier": p.verifier or cfg.verifier, "point_id": p.point_id,
    }  # fmt: skip
    with TraceStore(cfg.db) as store:
        row = run_by_name(store, p.run_name)
        if row is None:  # nothing was recorded to mirror
            return
        mirror_run(cfg.tracker or "", cfg.tracker_project, store, row["run_id"],
                   name=p.run_name, config=config, status=status, wall_s=wall_s,
                   group=cfg.name)  # fmt: skip


def _failed_tasks(db: str, run_name: str) -> tuple[int, str | None]:
    """How many of the run's tasks failed, and one of their errors."""
    with TraceStore(db) as store:
        return failed_tasks(store, run_name)


def _graded(cfg: SweepConfig, run_name: str) -> bool:
    """True when no answer of the run still lacks a graded verdict (or grading is off)."""
    if not cfg.grade:
        return True
    with TraceStore(cfg.db) as store:
        return ungraded_answers(store, run_name) == 0
