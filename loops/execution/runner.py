"""Run a loop over a task set: concurrency, per-task failure records, budgets, resume.

A task counts as finished once its ``done`` row is committed; its nodes, calls and verdicts
are queued before that row, so a finished task always has its whole trace. On ``resume`` the
rows of unfinished tasks are deleted and those tasks run again, so none is duplicated.
"""

from __future__ import annotations

__all__ = [
    "Progress",
    "RunConfig",
    "RunResult",
    "freeze_imports",
    "make_clients",
    "prepare",
    "run",
    "run_one_task",
    "task_slots",
]

import asyncio
import contextlib
import gc
import json
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from langgraph.errors import GraphRecursionError
from loopwright.loops.errors import ModelCallError, UserError, unknown
from loopwright.loops.execution.run_config import Progress, RunConfig, RunResult
from loopwright.loops.graphs import get_loop
from loopwright.loops.graphs.base import LoopSpec
from loopwright.loops.graphs.context import LoopContext
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig, check_model
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.verify import (
    VERIFIERS,
    check_verifier,
    grader_for,
    is_oracle,
    make_verifier,
    resolve,
    run_check,
    verdict_record,
)
from loopwright.traces import TaskRecord, TraceStore, TraceWriter, run_by_name, run_summary, utcnow
from loopwright.traces.runs import finish_run, insert_run, reopen_run, stored_name
from loopwright.traces.writer import TraceWriterError
from pydantic import BaseModel, ValidationError


def _version() -> str:
    try:
        return version("loopwright")
    except PackageNotFoundError:
        return "0+unknown"


_frozen = False


def freeze_imports() -> None:
    """Once per process: move what is alive now (the imported litellm, LangGraph, pydantic
    object graphs, ~10^6 objects) out of the cyclic collector's reach. Each full collection
    would otherwise walk all of it: ~1 ms of CPU per task at 64 in flight."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def task_slots(concurrency: int) -> int:
    """Tasks in progress at once for ``concurrency`` requests in flight (1 stays sequential)."""
    return concurrency + concurrency // 4


def prepare(cfg: RunConfig) -> tuple[LoopSpec[Any], BaseModel, list[Task]]:
    """Validate everything a user can get wrong before anything is written."""
    spec = get_loop(cfg.loop)
    try:
        options = spec.options(**cfg.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"{cfg.loop} option {field}: {err['msg']}") from None
    check_model(cfg.model, cfg.connection.api_base, cfg.connection.transport)
    for role, model in cfg.role_models.items():
        if role not in ROLES:
            raise unknown("role", role, ROLES)
        check_model(model, cfg.connection.api_base, cfg.connection.transport)
    from loopwright.sandboxes import BACKENDS

    if cfg.sandbox not in BACKENDS:
        raise unknown("sandbox backend", cfg.sandbox, BACKENDS)
    check_verifier(cfg.verifier, cfg.verifier_options)
    tasks = load_tasks(cfg.tasks, cfg.limit)
    _check_verifier_applies(cfg, tasks)
    return spec, options, tasks


ROLES = ("generator", "critic", "refiner", "reflector", "judge", "value", "verifier", "expander",
         "rollout")  # fmt: skip
"""Roles a model can be chosen for with ``--role-model ROLE=MODEL``."""


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


def verifiers_used(cfg: RunConfig, tasks: list[Task]) -> dict[str, str]:
    """Task kind -> in-loop verifier name, as the run resolves ``cfg.verifier``."""
    return {k: resolve(cfg.verifier, k) for k in sorted({t.kind for t in tasks})}


def _stored_config(cfg: RunConfig, tasks: list[Task]) -> dict[str, Any]:
    """``runs.config``: the run's settings plus the verifiers it resolved and whether any of
    them read the answer key (``oracle``), which every view of the run shows."""
    used = verifiers_used(cfg, tasks)
    return {
        **cfg.model_dump(mode="json"),
        "verifiers": used,
        "oracle": any(is_oracle(v) for v in used.values()),
    }


async def run(cfg: RunConfig, on_progress: Callable[[Progress], None] | None = None) -> RunResult:
    """Execute (or resume) a run and return its summary."""
    spec, options, tasks = prepare(cfg)
    store = TraceStore(cfg.db)
    writer = TraceWriter(store)
    try:
        run_id, name, todo, started = _open_run(store, cfg, tasks, cfg.config_hash(options))
        progress = Progress(total=len(tasks), skipped=len(tasks) - len(todo))
        progress.done = progress.skipped
        if progress.skipped:  # a resumed run's bar and pass rate include what was already done
            row = store.query(
                "SELECT count(*) FILTER (WHERE graded) AS passed, coalesce(sum(total_tokens), 0) "
                "AS tokens FROM tasks WHERE run_id = ? AND status = 'done'",
                [run_id],
            )[0]
            progress.passed, progress.tokens = int(row["passed"]), int(row["tokens"])
        if on_progress:
            on_progress(progress)

        def finished(rec: TaskRecord) -> None:
            progress.done += 1
            progress.failed += rec.status == "failed"
            progress.passed += bool(rec.graded)
            progress.tokens += rec.total_tokens
            if on_progress:
                on_progress(progress)

        status = "interrupted"
        try:
            if cfg.executor == "ray":  # ray is imported there, never on the default path
                from loopwright.loops.execution.ray_executor import run_tasks

                await run_tasks(cfg, run_id, tasks, todo, writer, finished)
            else:
                await _run_local(cfg, spec, options, run_id, tasks, todo, writer, finished)
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


def make_clients(
    cfg: RunConfig, writer: TraceWriter
) -> tuple[ModelClient, dict[str, ModelClient], dict[str, ModelClient]]:
    """The run's client, one client per model (shared by its roles), and role -> client."""
    base_cfg = ClientConfig.of(cfg.model, cfg.connection)
    client = ModelClient(base_cfg, writer=writer)
    by_model = {cfg.model: client}
    for model in cfg.role_models.values():
        if model not in by_model:
            by_model[model] = ModelClient(
                base_cfg.model_copy(update={"model": model}), writer=writer
            )
    return client, by_model, {role: by_model[m] for role, m in cfg.role_models.items()}


async def _run_local(
    cfg: RunConfig,
    spec: LoopSpec[Any],
    options: BaseModel,
    run_id: str,
    tasks: list[Task],
    todo: list[Task],
    writer: TraceWriter,
    finished: Callable[[TaskRecord], None],
) -> None:
    """Run ``todo`` in this process, ``task_slots(concurrency)`` tasks at a time."""
    client, by_model, clients = make_clients(cfg, writer)
    pool: dict[tuple[str, str | None], ModelClient] = {}  # loop options' own models
    graph = spec.build()
    freeze_imports()
    run_budget = Budget(cfg.run_budget)
    # Requests are bounded by the client; tasks get a little slack beyond that. With
    # exactly `concurrency` tasks a slot only reopens after a finished task's verify,
    # grade and trace work, which on a burst of answers all interleave on the event
    # loop: the next requests then leave late every round (0.83 vs 0.90 of the ideal
    # rate at 64 in flight, benchmarks/throughput.py).
    sem = asyncio.Semaphore(task_slots(cfg.connection.concurrency))
    index = {t.id: i for i, t in enumerate(tasks)}

    async def one(task: Task) -> None:
        async with sem:
            rec = await run_one_task(
                cfg, spec, graph, options, client, writer, run_id, task, index[task.id],
                run_budget, clients, pool,
            )  # fmt: skip
        finished(rec)

    try:
        await asyncio.gather(*(one(t) for t in todo))
    finally:
        for c in [*by_model.values(), *pool.values()]:
            await c.aclose()


def _open_run(
    store: TraceStore, cfg: RunConfig, tasks: list[Task], config_hash: str
) -> tuple[str, str, list[Task], bool]:
    """The run's id and stored name, the tasks still to run, and whether it was created now."""
    if cfg.resume and not cfg.run_name:
        raise UserError("--resume needs --run-name NAME of the run to continue")
    # The name as stored: text UTF-8 cannot encode is repaired on the way into the store.
    name = stored_name(cfg.run_name or f"{cfg.loop}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    row = run_by_name(store, name)
    if cfg.resume and row is not None:
        if row["config_hash"] != config_hash:
            raise UserError(
                f"run {name!r} was started with a different loop/tasks/model/seed/options; "
                "resume it with the same arguments or start a new --run-name"
            )
        run_id = row["run_id"]
        done = reopen_run(store, run_id)
        todo = [t for t in tasks if t.id not in done]
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
        model=cfg.model,
        tasks_spec=cfg.tasks,
        config=json.dumps(_stored_config(cfg, tasks)),
        config_hash=config_hash,
        seed=cfg.seed,
        version=_version(),
    )
    return run_id, name, tasks, True


async def run_one_task(
    cfg: RunConfig,
    spec: LoopSpec[Any],
    graph: Any,
    options: BaseModel,
    client: ModelClient,
    writer: TraceWriter,
    run_id: str,
    task: Task,
    idx: int,
    run_budget: Budget,
    clients: dict[str, ModelClient] | None = None,
    pool: dict[tuple[str, str | None], ModelClient] | None = None,
) -> TaskRecord:
    budget = Budget(cfg.budget, parent=run_budget)
    ctx = LoopContext(
        task=task.blind(),  # the loop never sees the answer key; the grader below does
        client=client,
        clients=clients or {},
        pool=pool if pool is not None else {},
        verifier=make_verifier(
            cfg.verifier, task, options=cfg.verifier_options, sandbox=cfg.sandbox
        ),
        budget=budget,
        options=options,
        loop=spec.name,
        run_id=run_id,
        seed=cfg.seed,
        writer=writer,
    )
    started = utcnow()
    t0 = time.perf_counter()
    base = TaskRecord(
        run_id=run_id,
        task_id=task.id,
        idx=idx,
        kind=task.kind,
        prompt=task.prompt,
        reference=task.reference,
        status="running",
        started_at=started,
    )
    writer.write(base)
    status, error, outcome = "done", None, None
    try:
        final = await graph.ainvoke(
            spec.initial_state(ctx),
            config={
                "configurable": {"loopwright": ctx},
                "recursion_limit": spec.recursion_limit(options),
            },
        )
        outcome = spec.outcome(ctx, final)
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
        grader = grader_for(task, sandbox=cfg.sandbox)
        if grader is not None:
            try:
                v = await run_check(grader, task, outcome.final_text or "")
            except UserError:
                raise
            except Exception as exc:  # the task's record says so; the run goes on
                status, error = "failed", f"grading failed: {type(exc).__name__}: {exc}"
            else:
                graded = v.passed
                writer.write(
                    verdict_record(
                        v, run_id=run_id, task_id=task.id, node_id=outcome.final_node_id,
                        stage="graded",
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
