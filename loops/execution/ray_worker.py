"""What travels to a Ray worker and what runs there, for ``--executor ray``.

The driver packs a run into a :class:`Payload` (the ``--plugin`` files it loaded, and the
run's config, model objects included); a :class:`Worker` actor unpacks it once per run into
the run's :class:`~loopwright.loops.execution.scope.RunScope`, as a local run builds it, with
a :class:`_TaskSink` in place of the trace writer, so a task's records go back to the driver
whole. :class:`BudgetKeeper` is the one actor holding a run budget that every worker
reserves from (:class:`SharedBudget`).

Ray itself is imported lazily (:func:`import_ray`); importing this module does not load it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import pickle
import socket
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.execution.runner import RunConfig, run_one_task
from loopwright.loops.execution.scope import RunScope
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.tasks import Task
from loopwright.traces import TaskRecord, TraceWriter

_LOST_WORKER_ERRORS = (
    "RayActorError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "ObjectLostError",
    "OwnerDiedError",
    "NodeDiedError",
    "LocalRayletDiedError",
)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the install
        raise UserError(
            "--executor ray needs Ray: pip install 'loopwright[ray]' (ray==2.60.0)"
        ) from None
    return ray


def init_ray(ray: Any, address: str | None) -> None:
    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)


def lost_worker_errors(ray: Any) -> tuple[type[BaseException], ...]:
    return tuple(getattr(ray.exceptions, n) for n in _LOST_WORKER_ERRORS)


# -- what a worker runs ---------------------------------------------------------------------
_task_rows: ContextVar[list[Any] | None] = ContextVar("loopwright_task_rows", default=None)


class _TaskSink(TraceWriter):
    """A worker's stand-in for the trace writer: each record joins the rows of the task being
    run (a context variable set around it), which go back to the driver when it ends. No
    store and no thread; the model client skips call-cache reads without a store."""

    def __init__(self) -> None:  # deliberately not TraceWriter's: nothing to write to here
        self.store = None  # type: ignore[assignment]
        self.rows_written = 0
        self.stray: list[Any] = []  # written outside any task (none expected): sent with the next

    def write(self, record: Any) -> None:
        rows = _task_rows.get()
        (self.stray if rows is None else rows).append(record)

    def flush(self, timeout: float | None = 60.0) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class Payload:
    """What a worker needs to run a run's tasks: the plugin files the driver loaded (custom
    loops, verifiers, models) and the run (its id and config, model objects included),
    pickled apart so that it unpickles after the plugins that may define its models."""

    plugins: list[tuple[str, str]]
    run_id: str
    cfg: bytes

    @classmethod
    def of(cls, cfg: RunConfig, run_id: str) -> Payload:
        import ray.cloudpickle as cloudpickle

        return cls(list(shipped_plugins), run_id, cloudpickle.dumps(cfg))


_plugins_loaded: set[str] = set()


def _load_plugin(path: str, source: str) -> None:
    """Import a plugin file's source as the driver's ``--plugin`` did (same module name)."""
    digest = hashlib.sha256(f"{path}\0{source}".encode()).hexdigest()
    if digest in _plugins_loaded:
        return
    name = f"loopwright_plugin_{len(_plugins_loaded)}"
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    _plugins_loaded.add(digest)


class Worker:
    """A Ray actor (async): runs tasks of any run it is handed, many at once."""

    def __init__(self, setup: Sequence[Callable[[], None]] = ()) -> None:
        for fn in setup:
            fn()
        self._sink = _TaskSink()
        self._runs: dict[str, RunScope] = {}
        self._grade_slots: dict[int, asyncio.Semaphore] = {}
        self._where = f"{socket.gethostname()}:{os.getpid()}"  # the tasks rows' worker

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The id of the Ray node (machine) this worker runs on."""
        return str(import_ray().get_runtime_context().get_node_id())

    async def _scope(self, run_key: str, payload_ref: list[Any]) -> RunScope:
        scope = self._runs.get(run_key)
        if scope is not None:
            return scope
        payload: Payload = await payload_ref[0]
        if run_key in self._runs:  # another task of the run built it meanwhile
            return self._runs[run_key]
        for path, source in payload.plugins:
            _load_plugin(path, source)
        cfg: RunConfig = pickle.loads(payload.cfg)
        scope = RunScope.build(cfg, payload.run_id, self._sink)
        self._runs[run_key] = scope
        return scope

    async def run_tasks(
        self,
        run_key: str,
        payload_ref: list[Any],
        items: list[tuple[Task, int, str]],
        keeper: Any,
    ) -> AsyncIterator[list[tuple[int, list[Any]]]]:
        """Run a chunk of ``(task, idx, attempt)`` items, the run's task slots at a time on
        this worker over all of a run's chunks; a Ray streaming generator: yields ``(position,
        rows)`` pairs as tasks end, batched (whatever has ended since the last yield), where
        rows are every trace record the task wrote, its final ``tasks`` row last."""
        scope = await self._scope(run_key, payload_ref)

        async def one(task: Task, idx: int, attempt: str) -> list[Any]:
            limits = scope.cfg.run_budget
            run_budget = None if keeper is None else SharedBudget(keeper, attempt, limits)
            rows: list[Any] = []
            token = _task_rows.set(rows)
            try:
                await run_one_task(scope, task, idx, run_budget)
            finally:
                _task_rows.reset(token)
            if self._sink.stray:
                rows[:0], self._sink.stray = self._sink.stray, []
            return [
                r.model_copy(update={"worker": self._where}) if isinstance(r, TaskRecord) else r
                for r in rows
            ]

        jobs = [functools.partial(one, *item) for item in items]
        async for batch in _as_they_end(jobs, scope.slots):
            yield batch

    async def grade_many(
        self, items: list[tuple[Task, str, str | None]], sandbox: str, timeout_s: float, slots: int
    ) -> AsyncIterator[list[tuple[int, tuple[Any, str | None, float]]]]:
        """Grade ``(task, answer, grader name)`` items in this worker's own sandbox, ``slots`` at a time
        (each off the event loop: grading blocks); streams ``(position, (verdict, why,
        latency))`` batches as they end."""
        from loopwright.loops.execution.grade import grade_answer

        sem = self._grade_slots.setdefault(slots, asyncio.Semaphore(slots))
        jobs = [
            functools.partial(
                asyncio.to_thread, grade_answer, task, content, sandbox, timeout_s, grader
            )
            for task, content, grader in items
        ]
        async for batch in _as_they_end(jobs, sem):
            yield batch

    async def end_run(self, run_key: str) -> None:
        scope = self._runs.pop(run_key, None)
        if scope is not None:
            await scope.aclose()


async def _as_they_end(
    jobs: Sequence[Callable[[], Awaitable[Any]]], slots: asyncio.Semaphore
) -> AsyncIterator[list[tuple[int, Any]]]:
    """Run ``jobs`` (at most ``slots`` at once) and yield ``(position, result)`` batches as
    they end: each batch is everything that ended since the previous yield, so the fewer
    yields (each a Ray object sent back) the busier the worker. A job's exception is raised
    after the batch of those that ended with it; the jobs still running are then cancelled."""
    ended: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def one(pos: int, job: Callable[[], Awaitable[Any]]) -> None:
        try:
            async with slots:
                result = await job()
        except Exception as exc:
            ended.put_nowait((pos, None, exc))
        else:
            ended.put_nowait((pos, result, None))

    running = [asyncio.ensure_future(one(p, j)) for p, j in enumerate(jobs)]
    try:
        left = len(jobs)
        while left:
            batch = [await ended.get()]
            while not ended.empty():
                batch.append(ended.get_nowait())
            left -= len(batch)
            good = [(p, r) for p, r, e in batch if e is None]
            if good:
                yield good
            for _, _, exc in batch:
                if exc is not None:
                    raise exc
    finally:
        for f in running:
            f.cancel()


# -- the run budget every worker shares ------------------------------------------------------
class BudgetKeeper:
    """A Ray actor (synchronous, so one caller's messages apply in the order sent) holding
    the run's spend: reservations of requests in flight by task attempt, and charges."""

    def __init__(self, limits: BudgetLimits) -> None:
        self.budget = Budget(limits)
        self.held: dict[str, int] = {}

    def reserve(self, attempt: str, calls: int) -> str | None:
        """Hold ``calls`` for ``attempt`` if they fit; else why not (holding nothing)."""
        try:
            self.budget.reserve(calls)
        except BudgetExhausted as exc:
            return str(exc)
        self.held[attempt] = self.held.get(attempt, 0) + calls
        return None

    def release(self, attempt: str, calls: int) -> None:
        n = min(calls, self.held.get(attempt, 0))  # a lost attempt's were given back already
        if n:
            self.budget.release(n)
            self.held[attempt] -= n
            if not self.held[attempt]:
                del self.held[attempt]

    def abandon(self, attempt: str) -> None:
        """Give back what an attempt whose worker died still held."""
        n = self.held.pop(attempt, 0)
        if n:
            self.budget.release(n)

    def charge(self, prompt_tokens: int, completion_tokens: int, calls: int, usd: float) -> None:
        self.budget.charge(prompt_tokens, completion_tokens, calls, usd)

    def reason(self, calls: int) -> str | None:
        return self.budget.exhausted_reason(calls)

    def calls_room(self) -> int | None:
        return self.budget._calls_room()

    def spent(self) -> dict[str, Any]:
        b = self.budget
        return {"calls": b.calls, "tokens": b.tokens, "usd": b.usd, "pending": b.pending}


class SharedBudget(Budget):
    """A worker's view of the run budget: every check and reservation asks the keeper
    (``areserve`` without blocking the worker's event loop); charges and releases are sent
    without waiting, in order, so a reservation is only freed after its charge counts."""

    def __init__(self, keeper: Any, attempt: str, limits: BudgetLimits) -> None:
        super().__init__(limits)
        self.keeper = keeper
        self.attempt = attempt

    def _own_reason(self, calls: int) -> str | None:
        return import_ray().get(self.keeper.reason.remote(calls))  # type: ignore[no-any-return]

    def _calls_room(self) -> int | None:
        return import_ray().get(self.keeper.calls_room.remote())  # type: ignore[no-any-return]

    def reserve(self, calls: int) -> None:
        reason = import_ray().get(self.keeper.reserve.remote(self.attempt, calls))
        if reason:
            raise BudgetExhausted(reason)

    async def areserve(self, calls: int) -> None:
        reason = await self.keeper.reserve.remote(self.attempt, calls)
        if reason:
            raise BudgetExhausted(reason)

    def release(self, calls: int) -> None:
        self.keeper.release.remote(self.attempt, calls)

    def charge(self, prompt_tokens: int, completion_tokens: int, calls: int, usd: float) -> None:
        self.keeper.charge.remote(prompt_tokens, completion_tokens, calls, usd)


def has_limits(limits: BudgetLimits) -> bool:
    return any(v is not None for v in limits.model_dump().values())


# -- the driver ------------------------------------------------------------------------------
shipped_plugins: list[tuple[str, str]] = []


def ship_plugins(paths: Sequence[str | Path]) -> None:
    """Have Ray workers import these plugin files too (the CLI's ``--plugin``): their source
    travels with the run, so the files need not exist on the workers' machines."""
    for p in paths:
        item = (str(p), Path(p).read_text(encoding="utf-8"))
        if item not in shipped_plugins:
            shipped_plugins.append(item)
