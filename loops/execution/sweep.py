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
from collections.abc import Callable
from typing import Any, Literal

from loopwright.loops.errors import UserError
from loopwright.loops.execution.grid import GridEntry, parse_grid
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.config import Connection, nest_connection
from loopwright.traces.queries import in_list
from loopwright.traces.records import ANSWER_ROLES
from loopwright.traces.runs import failed_tasks, run_status
from loopwright.traces.store import TraceStore
from loopwright.traces.sweeps import (
    PointRow,
    insert_sweep,
    set_point_status,
    set_sweep_status,
    sweep_by_name,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SweepConfig(BaseModel):
    """One sweep: tasks, models, grid, seeds, and the run settings every point shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Sweep name; re-running the same name resumes it.")
    tasks: str = Field(description="Task spec, as for `loopwright run`.")
    models: tuple[str, ...] = Field(("local/smollm2-135m",), description="litellm models.")
    grid: str = Field(description="Strategies and values, see the module docstring.")
    seeds: int = Field(1, ge=1, le=100, description="Seeds 0..seeds-1 per point.")
    limit: int | None = Field(None, ge=1, description="Only the first N tasks.")
    db: str = Field("loopwright.duckdb", description="Trace database.")
    sandbox: str = Field("bwrap", description="Sandbox for code tests and grading.")
    budget: BudgetLimits = Field(default_factory=BudgetLimits, description="Per-task limits.")
    connection: Connection = Field(
        default_factory=Connection,
        description="Endpoint, transport, requests in flight per run, retries and the call "
        "cache the points share; may be given flat (concurrency=8).",
    )
    grade: bool = Field(True, description="Grade every answer after each run.")
    verifier: str = Field(
        "auto", description="In-loop verifier of every point (a grid entry may override it)."
    )
    verifier_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the in-loop verifier."
    )
    role_models: dict[str, str] = Field(
        default_factory=dict, description="Model per role; roles not named use the point's."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where each run's tasks run (runner.RunConfig.executor)."
    )
    ray_address: str | None = Field(None, description="Ray cluster to join; none: a local one.")
    workers: int | None = Field(None, ge=1, description="Ray worker actors, kept for all runs.")

    _flat = model_validator(mode="before")(nest_connection)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        twice = [m for i, m in enumerate(v) if m in v[:i]]
        if twice:
            raise ValueError(f"model {twice[0]!r} is given twice")
        return v

    def identity_hash(self) -> str:
        """What must match for a re-run to resume this sweep."""
        keep = self.model_dump(mode="json", include={"tasks", "models", "grid", "seeds", "limit",
                                                     "budget", "verifier",
                                                     "verifier_options", "role_models"})  # fmt: skip
        keep["api_base"] = self.connection.api_base
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class PointPlan(PointRow):
    """One point of the grid and the run that produces (or contains) it."""

    verifier: str | None = None


def _short(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model.split("/")[-1])


def plan(cfg: SweepConfig, entries: list[GridEntry]) -> list[PointPlan]:
    """Every point; points of one shared run follow the run's own point (largest N first)."""
    points: list[PointPlan] = []
    shorts = [_short(m) for m in cfg.models]
    for model in cfg.models:
        short = _short(model)
        if shorts.count(short) > 1:  # openai/x and azure/x must not share run names
            short = _short(model.replace("/", "-"))
        for entry in entries:
            values = sorted(entry.values, key=_sort_key, reverse=True) or [None]
            for seed in range(cfg.seeds):
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


def open_sweep(cfg: SweepConfig, points: list[PointPlan]) -> str:
    """Insert the sweep and its points, or check a re-run matches and return its id."""
    with TraceStore(cfg.db) as store:
        row = sweep_by_name(store, cfg.name)
        if row:
            if row["config_hash"] != cfg.identity_hash():
                raise UserError(
                    f"sweep {cfg.name!r} already exists in {cfg.db} with other tasks, models, "
                    "grid or seeds: re-run it with the same arguments or pick another --name"
                )
            set_sweep_status(store, row["sweep_id"], "running")
            return str(row["sweep_id"])
        return insert_sweep(
            store,
            name=cfg.name,
            tasks_spec=cfg.tasks,
            grid=cfg.grid,
            config=cfg.model_dump_json(),
            config_hash=cfg.identity_hash(),
            points=points,
        )


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
    from loopwright.loops.execution.runner import RunConfig, prepare

    entries = parse_grid(cfg.grid)
    points = plan(cfg, entries)
    seen: set[tuple[str, str, str]] = set()
    for p in points:
        key = (p.loop, p.model, p.verifier or cfg.verifier)
        if key in seen:
            continue
        seen.add(key)
        prepare(_run_config(cfg, p, RunConfig))
    return entries, points


def _run_config(cfg: SweepConfig, p: PointPlan, run_config: Any, resume: bool = False) -> Any:
    return run_config(
        loop=p.loop, tasks=cfg.tasks, model=p.model, connection=cfg.connection, limit=cfg.limit,
        db=cfg.db, run_name=p.run_name, seed=p.seed,
        budget=cfg.budget, options=p.options, sandbox=cfg.sandbox,
        resume=resume, verifier=p.verifier or cfg.verifier,
        verifier_options={} if p.verifier else cfg.verifier_options, role_models=cfg.role_models,
        executor=cfg.executor, ray_address=cfg.ray_address, workers=cfg.workers,
    )  # fmt: skip


def run_sweep(
    cfg: SweepConfig,
    on_event: Callable[[SweepEvent], None] | None = None,
    on_run_progress: Callable[[Any], None] | None = None,
) -> str:
    """Run (or resume) every point of the sweep; returns the sweep id."""
    _, points = validate(cfg)
    sweep_id = open_sweep(cfg, points)
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
    from loopwright.loops.execution.runner import RunConfig, run

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
        try:
            if state != "done" or broken:  # resuming a run redoes its failed tasks
                emit("start")
                asyncio.run(run(_run_config(cfg, p, RunConfig, resume=state is not None),
                                on_progress=on_run_progress))  # fmt: skip
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


def _failed_tasks(db: str, run_name: str) -> tuple[int, str | None]:
    """How many of the run's tasks failed, and one of their errors."""
    with TraceStore(db) as store:
        return failed_tasks(store, run_name)


def _graded(cfg: SweepConfig, run_name: str) -> bool:
    """True when no answer of the run still lacks a graded verdict (or grading is off)."""
    if not cfg.grade:
        return True
    with TraceStore(cfg.db) as store:
        rows = store.query(
            "SELECT count(*) AS n FROM nodes n JOIN runs r USING (run_id) "
            f"WHERE r.name = ? AND {in_list('n.role', ANSWER_ROLES)} "
            "AND coalesce(trim(n.content), '') <> '' "
            "AND EXISTS (SELECT 1 FROM verdicts v WHERE v.node_id = n.node_id "
            "AND v.stage = 'in_loop') AND NOT EXISTS (SELECT 1 FROM verdicts v "
            "WHERE v.node_id = n.node_id AND v.stage = 'graded')",
            [run_name],
        )
    return int(rows[0]["n"]) == 0
