"""What travels to a Ray worker and what runs there, for ``--executor ray``.

The driver packs a run into a :class:`Payload` (its config, the ``--plugin`` files it
loaded, the scripted models it names); a :class:`Worker` actor unpacks it once per run,
builds its own model clients, and runs tasks with a :class:`_TaskSink` in place of the trace
writer, so a task's records go back to the driver whole. :class:`BudgetKeeper` is the one
actor holding a run budget that every worker reserves from (:class:`SharedBudget`).

Ray itself is imported lazily (:func:`import_ray`); importing this module does not load it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
import sys
import sysconfig
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.execution.runner import RunConfig, freeze_imports, make_clients, run_one_task
from loopwright.loops.graphs import get_loop
from loopwright.loops.models import scripted
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
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
class _Scripted:
    """A scripted model as shipped to the workers (its registry is per process)."""

    name: str
    replies: Any
    supports_n: bool
    prompt_tokens_per_call: int | None

    def register(self) -> None:
        scripted.ScriptedModel(
            self.replies, name=self.name, supports_n=self.supports_n,
            prompt_tokens_per_call=self.prompt_tokens_per_call,
        ).register()  # fmt: skip


@dataclass
class Payload:
    """What a worker needs to run a run's tasks: the config, the plugin files the driver
    loaded (custom loops, verifiers, models), and the scripted models it names, pickled
    separately so they unpickle after the plugins that may define their replies."""

    cfg: RunConfig
    plugins: list[tuple[str, str]]
    scripted: bytes


@dataclass
class _RunState:
    cfg: RunConfig
    spec: Any
    options: Any
    graph: Any
    client: ModelClient
    by_model: dict[str, ModelClient]
    clients: dict[str, ModelClient]
    slots: asyncio.Semaphore  # tasks of the run in progress at once on this worker
    pool: dict[tuple[str, str | None], ModelClient] = field(default_factory=dict)


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
        self._runs: dict[str, _RunState] = {}
        self._grade_slots: dict[int, asyncio.Semaphore] = {}
        self._where = f"{socket.gethostname()}:{os.getpid()}"  # the tasks rows' worker

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        """The id of the Ray node (machine) this worker runs on."""
        return str(import_ray().get_runtime_context().get_node_id())

    async def _state(self, run_key: str, payload_ref: list[Any], slots: int) -> _RunState:
        state = self._runs.get(run_key)
        if state is not None:
            return state
        payload: Payload = await payload_ref[0]
        if run_key in self._runs:  # another task of the run built it meanwhile
            return self._runs[run_key]
        for path, source in payload.plugins:
            _load_plugin(path, source)
        import pickle

        for model in pickle.loads(payload.scripted):
            model.register()
        cfg = payload.cfg
        spec = get_loop(cfg.loop)
        options = spec.options(**cfg.options)
        client, by_model, clients = make_clients(cfg, self._sink)
        state = _RunState(
            cfg, spec, options, spec.build(), client, by_model, clients, asyncio.Semaphore(slots)
        )
        freeze_imports()
        self._runs[run_key] = state
        return state

    async def run_tasks(
        self,
        run_key: str,
        payload_ref: list[Any],
        run_id: str,
        items: list[tuple[Task, int, str]],
        keeper: Any,
        slots: int,
    ) -> AsyncIterator[list[tuple[int, list[Any]]]]:
        """Run a chunk of ``(task, idx, attempt)`` items, ``slots`` tasks at a time on this
        worker over all of a run's chunks; a Ray streaming generator: yields ``(position,
        rows)`` pairs as tasks end, batched (whatever has ended since the last yield), where
        rows are every trace record the task wrote, its final ``tasks`` row last."""
        state = await self._state(run_key, payload_ref, slots)

        async def one(task: Task, idx: int, attempt: str) -> list[Any]:
            run_budget: Budget = (
                Budget() if keeper is None else SharedBudget(keeper, attempt, state.cfg.run_budget)
            )
            rows: list[Any] = []
            token = _task_rows.set(rows)
            try:
                await run_one_task(
                    state.cfg, state.spec, state.graph, state.options, state.client, self._sink,
                    run_id, task, idx, run_budget, state.clients, state.pool,
                )  # fmt: skip
            finally:
                _task_rows.reset(token)
            if self._sink.stray:
                rows[:0], self._sink.stray = self._sink.stray, []
            return [
                r.model_copy(update={"worker": self._where}) if isinstance(r, TaskRecord) else r
                for r in rows
            ]

        jobs = [functools.partial(one, *item) for item in items]
        async for batch in _as_they_end(jobs, state.slots):
            yield batch

    async def grade_many(
        self, items: list[tuple[Task, str]], sandbox: str, timeout_s: float, slots: int
    ) -> AsyncIterator[list[tuple[int, tuple[Any, str | None, float]]]]:
        """Grade ``(task, answer)`` items in this worker's own sandbox, ``slots`` at a time
        (each off the event loop: grading blocks); streams ``(position, (verdict, why,
        latency))`` batches as they end."""
        from loopwright.loops.execution.grade import grade_answer

        sem = self._grade_slots.setdefault(slots, asyncio.Semaphore(slots))
        jobs = [
            functools.partial(asyncio.to_thread, grade_answer, task, content, sandbox, timeout_s)
            for task, content in items
        ]
        async for batch in _as_they_end(jobs, sem):
            yield batch

    async def end_run(self, run_key: str) -> None:
        state = self._runs.pop(run_key, None)
        if state is not None:
            for c in [*state.by_model.values(), *state.pool.values()]:
                await c.aclose()


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


def pack_scripted(cfg: RunConfig) -> bytes:
    names = {m.split("/", 1)[1] for m in (cfg.model, *cfg.role_models.values())
             if m.startswith("scripted/")}  # fmt: skip
    models = []
    for name in sorted(names):
        sm = scripted.lookup(name)
        models.append(_Scripted(sm.name, sm.replies, sm.supports_n, sm.prompt_tokens_per_call))
    import ray.cloudpickle as cloudpickle

    # Replies defined in modules the workers cannot import (test files, scripts, and what
    # they import from beside them) travel by value; installed modules by reference.
    by_value = [m for m in list(sys.modules.values())
                if isinstance(m, types.ModuleType) and not _importable_everywhere(m)]  # fmt: skip
    for mod in by_value:
        cloudpickle.register_pickle_by_value(mod)
    try:
        return cloudpickle.dumps(models)  # type: ignore[no-any-return]
    finally:
        for mod in by_value:
            cloudpickle.unregister_pickle_by_value(mod)


def _importable_everywhere(mod: types.ModuleType) -> bool:
    name = getattr(mod, "__name__", "")
    if name == "__main__" or name.split(".")[0] in ("loopwright", "ray"):
        return True  # __main__: cloudpickle sends it by value itself
    if name.startswith("loopwright_plugin_"):
        return True  # the workers import the plugin files first, under the same names
    path = getattr(mod, "__file__", None)
    if not isinstance(path, str):
        return True
    return path.startswith(_installed_roots())


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({str(Path(paths[k]).resolve()) for k in ("stdlib", "platstdlib", "purelib",
                                                          "platlib")} | {sys.prefix, sys.base_prefix})  # fmt: skip
