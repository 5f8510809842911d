"""Run a loop over a task set: concurrency, per-task failure records, budgets, resume.

A task counts as finished once its ``done`` row is committed; its nodes, calls and verdicts
are queued before that row, so a finished task always has its whole trace. On ``resume`` the
rows of unfinished tasks are deleted and those tasks run again, so none is duplicated.
"""

from __future__ import annotations

__all__ = [
    "Progress",
    "RunConfig",
    "RunPlan",
    "RunResult",
    "RunWork",
    "prepare",
    "run",
    "run_one_task",
]

import asyncio
import contextlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from langgraph.errors import GraphRecursionError
from loopwright.loops.errors import ModelCallError, UserError, unknown
from loopwright.loops.execution.provenance import (
    Provenance,
    build_provenance,
    resume_record,
    source_at,
    stored_rows_sha256,
)
from loopwright.loops.execution.run_config import Progress, RunConfig, RunResult, model_name
from loopwright.loops.execution.scope import RunScope, in_loop_verifier
from loopwright.loops.execution.trackers import check_tracker, mirror_run
from loopwright.loops.graphs import get_loop
from loopwright.loops.graphs.base import LoopSpec, run_loop
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.config import check_model
from loopwright.loops.tasks import SourceInfo, Task, load_task_set
from loopwright.loops.verify import (
    VERIFIERS,
    check_grader,
    check_verifier,
    is_oracle,
    resolve,
    run_grader,
    verdict_record,
)
from loopwright.traces import TaskRecord, TraceStore, TraceWriter, run_by_name, run_summary, utcnow
from loopwright.traces.records import MODEL_ROLES
from loopwright.traces.run_queries import finished_counts
from loopwright.traces.runs import finish_run, insert_run, reopen_run, run_provenance, stored_name
from loopwright.traces.writer import TraceWriterError
from pydantic import BaseModel, ValidationError


def _version() -> str:
    try:
        return version("loopwright")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class RunPlan:
    """A checked run: its loop, the validated loop options, its tasks and where they came
    from."""

    spec: LoopSpec[Any]
    options: BaseModel
    tasks: list[Task]
    source: SourceInfo

    def verifiers_used(self, cfg: RunConfig) -> dict[str, str]:
        """Task kind -> in-loop verifier name, as the run resolves ``cfg.verifier``."""
        name = in_loop_verifier(cfg, self.spec, self.options)
        return {k: resolve(name, k) for k in sorted({t.kind for t in self.tasks})}


def prepare(cfg: RunConfig) -> RunPlan:
    """Validate everything a user can get wrong before anything is written."""
    spec = get_loop(cfg.loop)
    try:
        options = spec.options(**cfg.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"{cfg.loop} option {field}: {err['msg']}") from None
    _check_models(cfg)
    from loopwright.sandboxes import BACKENDS

    if cfg.sandbox not in BACKENDS:
        raise unknown("sandbox backend", cfg.sandbox, BACKENDS)
    check_verifier(cfg.verifier, cfg.verifier_options)
    check_grader(cfg.grader)
    check_tracker(cfg.tracker)
    tasks, source = _load_tasks(cfg)
    _check_verifier_applies(cfg, tasks)
    return RunPlan(spec, options, tasks, source)


def _check_models(cfg: RunConfig) -> None:
    """Every model string names a model that can run here; a model object is used as it is,
    and no other model may go by its name (the trace tells models apart by name)."""
    for role in cfg.role_models:
        if role not in MODEL_ROLES:
            raise unknown("role", role, MODEL_ROLES)
    seen: dict[str, Any] = {}
    for model in (cfg.model, *cfg.role_models.values()):
        name = model_name(model)
        if name not in seen:
            seen[name] = model
            if isinstance(model, str):
                check_model(model, cfg.connection.api_base, cfg.connection.transport)
        elif seen[name] is not model and not (
            isinstance(seen[name], str) and isinstance(model, str)
        ):
            # a model object and anything else under its name: the trace could not tell them apart
            raise UserError(f"two different models are named {name!r}: give each its own name")


def _load_tasks(cfg: RunConfig) -> tuple[list[Task], SourceInfo]:
    """The run's tasks and their source record."""
    if isinstance(cfg.tasks, list):  # given in Python: say so in the caller's terms
        tasks = cfg.tasks[: cfg.limit]
        if not tasks:
            raise UserError("the task list is empty: give at least one Task")
        ids = [t.id for t in tasks]
        twice = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
        if twice is not None:
            raise UserError(
                f"task id {twice!r} is given twice: ids must be unique (resume keys on them)"
            )
    loaded = load_task_set(cfg.tasks, cfg.limit)
    return loaded.tasks, loaded.source


def _check_verifier_applies(cfg: RunConfig, tasks: list[Task]) -> None:
    """An explicitly chosen verifier must fit the task kinds (``auto`` always does)."""
    if cfg.verifier in ("auto", "none", "oracle"):
        return
    cls = VERIFIERS[cfg.verifier]
    kinds = sorted({t.kind for t in tasks})
    if not any(k in cls.kinds for k in kinds):
        raise UserError(
            f"verifier {cfg.verifier} judges {', '.join(cls.kinds)} tasks, and these tasks are "
            f"{', '.join(kinds)}: choose another --verifier (`loopwright verifiers` lists them)"
        )


def _stored_config(cfg: RunConfig, plan: RunPlan) -> dict[str, Any]:
    """``runs.config``: the run's settings plus the verifiers it resolved and whether any of
    them read the answer key (``oracle``), which every view of the run shows."""
    used = plan.verifiers_used(cfg)
    return {**cfg.stored(), "verifiers": used, "oracle": any(is_oracle(v) for v in used.values())}


@dataclass(frozen=True)
class RunWork:
    """What an executor is handed: the run, the tasks still to do, and where results go."""

    cfg: RunConfig
    run_id: str
    writer: TraceWriter
    todo: list[Task]
    index: dict[str, int]
    """Task id -> its position in the task set (``tasks.idx``)."""
    finished: Callable[[TaskRecord], None]
    """Called once per task, with its final record, as it ends."""


async def run(
    cfg: RunConfig,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    mirror: bool = True,
) -> RunResult:
    """Execute (or resume) a run and return its summary. With ``cfg.tracker`` (and
    ``mirror``), the finished run is mirrored to that tracker (``trackers.mirror_run``); a
    sweep or an improve series passes ``mirror=False`` and mirrors at its own level."""
    began = time.monotonic()
    plan = prepare(cfg)
    store = TraceStore(cfg.db)
    writer = TraceWriter(store)
    try:
        run_id, name, todo, started = _open_run(store, cfg, plan)
        progress = Progress(total=len(plan.tasks), skipped=len(plan.tasks) - len(todo))
        progress.done = progress.skipped
        if progress.skipped:  # a resumed run's bar and pass rate include what was already done
            progress.passed, progress.tokens = finished_counts(store, run_id)
        if on_progress:
            on_progress(progress)

        def finished(rec: TaskRecord) -> None:
            progress.done += 1
            progress.failed += rec.status == "failed"
            progress.passed += bool(rec.graded)
            progress.tokens += rec.total_tokens
            if on_progress:
                on_progress(progress)

        index = {t.id: i for i, t in enumerate(plan.tasks)}
        work = RunWork(cfg, run_id, writer, todo, index, finished)
        status = "interrupted"
        try:
            if cfg.executor == "ray":  # ray is imported there, never on the default path
                from loopwright.loops.execution.ray_executor import run_tasks

                await run_tasks(work)
            else:
                await _run_local(work)
            status = "done"
        except TraceWriterError:
            pass  # writer.failed says why; the run is closed as failed below
        finally:
            with contextlib.suppress(TraceWriterError):
                writer.flush()
            if writer.failed is not None:
                status = "failed"
            finish_run(store, run_id, status)
        if writer.failed is not None:
            raise TraceWriterError(
                f"{writer.failed}; run {name!r} is marked failed: once the cause is fixed, "
                f"continue it with --resume --run-name {name}"
            ) from writer.failed.__cause__
        if cfg.tracker and mirror:  # on the driver, after the run row is closed
            mirror_run(cfg.tracker, cfg.tracker_project, store, run_id, name=name,
                       config=_stored_config(cfg, plan), status=status,
                       wall_s=time.monotonic() - began)  # fmt: skip
        return RunResult(
            run_id=run_id,
            name=name,
            summary=run_summary(store, run_id),
            progress=progress,
            started=started,
        )
    finally:
        with contextlib.suppress(TraceWriterError):  # reported above, once
            writer.close()
        store.close()


async def _run_local(work: RunWork) -> None:
    """Run ``work.todo`` in this process, ``task_slots(concurrency)`` tasks at a time."""
    scope = RunScope.build(work.cfg, work.run_id, work.writer)

    async def one(task: Task) -> None:
        async with scope.slots:
            rec = await run_one_task(scope, task, work.index[task.id])
        work.finished(rec)

    try:
        await asyncio.gather(*(one(t) for t in work.todo))
    finally:
        await scope.aclose()


def _open_run(
    store: TraceStore, cfg: RunConfig, plan: RunPlan
) -> tuple[str, str, list[Task], bool]:
    """The run's id and stored name, the tasks still to run, and whether it was created now."""
    if cfg.resume and not cfg.run_name:
        raise UserError("--resume needs --run-name NAME of the run to continue")
    # The name as stored: text UTF-8 cannot encode is repaired on the way into the store.
    name = stored_name(cfg.run_name or f"{cfg.loop}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    config_hash = cfg.config_hash(plan.options)
    row = run_by_name(store, name)
    if cfg.resume and row is not None:
        if row["config_hash"] != config_hash:
            raise UserError(
                f"run {name!r} was started with a different loop/tasks/model/seed/options; "
                "resume it with the same arguments or start a new --run-name"
            )
        run_id = row["run_id"]
        done = reopen_run(store, run_id, _resumed_provenance(store, run_id, name, cfg, plan))
        todo = [t for t in plan.tasks if t.id not in done]
        return run_id, name, todo, False
    # --resume of a run the store does not hold: it was stopped before its run row was
    # committed, so nothing of it was stored; it starts now, under that name.
    if row is not None:
        raise UserError(
            f"a run named {name!r} already exists in {cfg.db}: pass --resume to "
            "continue it, or choose another --run-name"
        )
    run_id = insert_run(
        store,
        name=name,
        loop=cfg.loop,
        model=cfg.model_name,
        tasks_spec=cfg.tasks_spec,
        config=json.dumps(_stored_config(cfg, plan)),
        config_hash=config_hash,
        seed=cfg.seed,
        version=_version(),
        provenance=build_provenance(cfg, plan.source, len(plan.tasks)).model_dump_json(),
    )
    return run_id, name, plan.tasks, True


def _resumed_provenance(
    store: TraceStore, run_id: str, name: str, cfg: RunConfig, plan: RunPlan
) -> str | None:
    """The provenance of a run being resumed, with this session appended; refuses a task
    source whose rows changed since the run was made (read at the run's first --limit, so a
    resume may still extend or shorten it). None: the run was stored without one (before
    schema v7), and resumes as it did then."""
    stored = run_provenance(store, run_id)
    was = stored_rows_sha256(stored)
    if stored is None or was is None:
        return None
    source = plan.source
    if "limit" in stored and stored["limit"] != cfg.limit:
        source = source_at(cfg, stored["limit"])
    now = source.rows_sha256
    if now != was:
        raise UserError(
            f"run {name!r} was made on tasks with hash {was[:12]}; {cfg.tasks_spec} now hashes "
            f"to {now[:12]}: the task source changed. Run under a new --run-name, or restore "
            "the source"
        )
    record = Provenance.model_validate(stored)
    record.resumes.append(resume_record())
    return record.model_dump_json()


async def run_one_task(
    scope: RunScope, task: Task, idx: int, run_budget: Budget | None = None
) -> TaskRecord:
    """Run the loop on one task, grade its answer, and write the task's records; returns
    its final ``tasks`` row. ``run_budget`` replaces the scope's (a Ray worker's share)."""
    cfg, writer = scope.cfg, scope.writer
    budget = Budget(cfg.budget, parent=run_budget or scope.run_budget)
    ctx = scope.context(task, budget)
    started = utcnow()
    t0 = time.perf_counter()
    base = TaskRecord(
        run_id=scope.run_id,
        task_id=task.id,
        idx=idx,
        kind=task.kind,
        prompt=task.prompt,
        reference=task.reference,
        answer_key=task.answer_key(),
        status="running",
        started_at=started,
    )
    writer.write(base)
    status, error, outcome = "done", None, None
    try:
        outcome = await run_loop(scope.spec, scope.graph, ctx)
    except ModelCallError as exc:
        status, error = "failed", f"model call failed: {exc}"
    except GraphRecursionError as exc:  # a loop bug; keep the task's record, not the run
        status, error = "failed", f"loop exceeded its step limit: {exc}"
    except UserError:
        raise
    except Exception as exc:  # a bug in a loop or a tool: the record keeps its traceback
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    graded = None
    if outcome is not None and outcome.final_node_id is not None:
        grader = scope.grader_for(task)
        if grader is not None:
            try:
                v = await run_grader(grader, task, outcome.final_text or "")
            except UserError:
                raise
            except Exception as exc:  # the task's record says so; the run goes on
                status, error = "failed", f"grading failed: {type(exc).__name__}: {exc}"
            else:
                graded = v.passed
                writer.write(
                    verdict_record(
                        v, run_id=scope.run_id, task_id=task.id,
                        node_id=outcome.final_node_id, stage="graded",
                    )
                )  # fmt: skip
        for node in ctx.nodes:
            node.is_final = node.node_id == outcome.final_node_id
    for node in ctx.nodes:
        writer.write(node)
    rec = base.model_copy(
        update={
            "status": status,
            "error": error,
            "final_answer": outcome.answer if outcome else None,
            "final_node_id": outcome.final_node_id if outcome else None,
            "verdict": outcome.verified if outcome else None,
            "graded": graded if status == "done" else None,
            "score": outcome.score if outcome else None,
            "stop_reason": outcome.stop_reason if outcome else None,
            "rounds": outcome.rounds if outcome else None,
            "prompt_tokens": budget.prompt_tokens,
            "completion_tokens": budget.completion_tokens,
            "total_tokens": budget.tokens,
            "cost_usd": budget.usd,
            "calls": budget.calls,
            "wall_s": time.perf_counter() - t0,
            "finished_at": utcnow(),
        }
    )
    writer.write(rec)
    return rec
