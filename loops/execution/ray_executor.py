"""``--executor ray``: a run's tasks on Ray worker actors; this process keeps the one writer.

Each worker actor has its own model clients (one per model, ``--concurrency`` requests in
flight each) and builds its own sandboxes. It never opens the DuckDB file: what a task's loop
would have written (its ``tasks`` rows, nodes, calls, verdicts, call-cache rows) is collected
per task and returned to the driver when the task ends, and the driver queues it, in order,
on the run's single :class:`TraceWriter`. So a task is in the store whole or not at all, and
``--resume`` after the driver dies redoes exactly the tasks whose rows had not been committed.

A worker that dies mid-task loses only that attempt (nothing of it was written): Ray restarts
the actor and the driver queues the task again, for whichever worker is free first, up to
``MAX_ATTEMPTS`` times; each task is written once. A run budget (``--run-budget-*``) lives in
one small actor that every worker reserves from before each request and charges after it, so
the run's calls never exceed it in total; a lost attempt's reservations are given back.

``grade --executor ray`` spreads answers over the same kind of workers: each grades in its
own sandbox and returns the verdict; the driver writes it.

Ray is imported lazily, here only: the default executor never loads it. Workers read no call
cache (they have no store); the calls they make are still written to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.execution.runner import (
    RunConfig,
    _freeze_imports,
    _run_task,
    make_clients,
    task_slots,
)
from loopwright.loops.graphs import get_loop
from loopwright.loops.models import scripted
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
from loopwright.loops.tasks import Task
from loopwright.traces import TaskRecord, TraceWriter, new_id, utcnow

MAX_ATTEMPTS = 3
"""Tries per task when its worker dies under it; then the task is recorded as failed."""

_LOST_WORKER_ERRORS = (
    "RayActorError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "ObjectLostError",
    "OwnerDiedError",
    "NodeDiedError",
    "LocalRayletDiedError",
)


def _ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the install
        raise UserError(
            "--executor ray needs Ray: pip install 'loopwright[ray]' (ray==2.60.0)"
        ) from None
    return ray


def _init(ray: Any, address: str | None) -> None:
    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)


def _lost_worker(ray: Any) -> tuple[type[BaseException], ...]:
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
class _Payload:
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
        self._closing: set[str] = set()

    def pid(self) -> int:
        return os.getpid()

    async def _state(self, run_key: str, payload_ref: list[Any]) -> _RunState:
        state = self._runs.get(run_key)
        if state is not None:
            return state
        payload: _Payload = await payload_ref[0]
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
        state = _RunState(cfg, spec, options, spec.build(), client, by_model, clients)
        _freeze_imports()
        self._runs[run_key] = state
        return state

    async def run_task(
        self,
        run_key: str,
        payload_ref: list[Any],
        run_id: str,
        task: Task,
        idx: int,
        attempt: str,
        keeper: Any,
    ) -> list[Any]:
        """Run one task; returns every trace record it wrote, its final ``tasks`` row last."""
        state = await self._state(run_key, payload_ref)
        run_budget: Budget = (
            Budget() if keeper is None else SharedBudget(keeper, attempt, state.cfg.run_budget)
        )
        rows: list[Any] = []
        token = _task_rows.set(rows)
        try:
            await _run_task(
                state.cfg, state.spec, state.graph, state.options, state.client, self._sink,
                run_id, task, idx, run_budget, state.clients, state.pool,
            )  # fmt: skip
        finally:
            _task_rows.reset(token)
        if self._sink.stray:
            rows[:0], self._sink.stray = self._sink.stray, []
        return rows

    async def grade(
        self, task: Task, content: str, sandbox: str, timeout_s: float
    ) -> tuple[Any, str | None, float]:
        """Grade one answer in this worker's own sandbox (off its event loop: it blocks)."""
        from loopwright.loops.execution.grade import grade_answer

        return await asyncio.to_thread(grade_answer, task, content, sandbox, timeout_s)

    async def end_run(self, run_key: str) -> None:
        state = self._runs.pop(run_key, None)
        if state is not None:
            for c in [*state.by_model.values(), *state.pool.values()]:
                await c.aclose()


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
        return _ray().get(self.keeper.reason.remote(calls))  # type: ignore[no-any-return]

    def _calls_room(self) -> int | None:
        return _ray().get(self.keeper.calls_room.remote())  # type: ignore[no-any-return]

    def reserve(self, calls: int) -> None:
        reason = _ray().get(self.keeper.reserve.remote(self.attempt, calls))
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


def _has_limits(limits: BudgetLimits) -> bool:
    return any(v is not None for v in limits.model_dump().values())


# -- the driver ------------------------------------------------------------------------------
_shipped_plugins: list[tuple[str, str]] = []


def ship_plugins(paths: Sequence[str | Path]) -> None:
    """Have Ray workers import these plugin files too (the CLI's ``--plugin``): their source
    travels with the run, so the files need not exist on the workers' machines."""
    for p in paths:
        item = (str(p), Path(p).read_text(encoding="utf-8"))
        if item not in _shipped_plugins:
            _shipped_plugins.append(item)


def _scripted_models(cfg: RunConfig) -> bytes:
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


class RayPool:
    """Ray worker actors for one or more runs (a sweep keeps one pool for all its runs).

    Joins the cluster at ``address`` (or the one this process already joined); without one
    it starts a local Ray with this machine's cores and shuts it down on :meth:`close`.
    ``workers`` defaults to one per CPU of the cluster. ``setup`` callables run in each
    worker as it starts (and restarts), e.g. to register test doubles.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        setup: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.address = address
        self.n_workers = workers
        self.setup = list(setup)
        self.workers: list[Any] = []
        self.retried = 0  # task attempts lost with their worker and queued again
        self._started_ray = False

    def start(self) -> RayPool:
        ray = _ray()
        if not ray.is_initialized():
            _init(ray, self.address)
            self._started_ray = True
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            n = self.n_workers or max(1, int(cpus))
            # Ray's default resources for actors: a CPU to be placed, none held while running,
            # so two runs (or a sweep's driver and a test's) can share a cluster.
            actor = ray.remote(Worker).options(
                max_restarts=-1,  # a killed worker comes back; its task is queued again
                max_task_retries=0,  # ... by the driver, which decides where
                max_concurrency=1000,
                scheduling_strategy="SPREAD",
            )
            self.workers = [actor.remote(self.setup) for _ in range(n)]
            ray.get([w.pid.remote() for w in self.workers])  # every worker up and imported
        except BaseException:
            self.close()
            raise
        return self

    def pids(self) -> list[int]:
        ray = _ray()
        return [int(p) for p in ray.get([w.pid.remote() for w in self.workers])]

    def close(self) -> None:
        ray = _ray()
        for w in self.workers:
            with contextlib.suppress(Exception):
                ray.kill(w)
        self.workers = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayPool:
        global _active
        self.start()
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._outer
        self.close()

    async def run(
        self,
        cfg: RunConfig,
        run_id: str,
        tasks: list[Task],
        todo: list[Task],
        writer: TraceWriter,
        finished: Callable[[TaskRecord], None],
    ) -> None:
        """Run ``todo`` over the workers, writing each task's rows as it comes back."""
        ray = _ray()
        lost_worker = _lost_worker(ray)
        index = {t.id: i for i, t in enumerate(tasks)}
        run_key = new_id()
        payload = ray.put(_Payload(cfg, list(_shipped_plugins), _scripted_models(cfg)))
        keeper = (
            ray.remote(BudgetKeeper).options(num_cpus=0).remote(cfg.run_budget)
            if _has_limits(cfg.run_budget)
            else None
        )
        queue: asyncio.Queue[tuple[Task, int] | None] = asyncio.Queue()
        for t in todo:
            queue.put_nowait((t, 0))
        slots = task_slots(cfg.connection.concurrency)  # per worker, as a local run has
        n_lanes = slots * len(self.workers)
        left = len(todo)

        def done(rows: list[Any]) -> None:
            nonlocal left
            for r in rows:
                writer.write(r)
            finished(rows[-1])
            left -= 1
            if left == 0:
                for _ in range(n_lanes):
                    queue.put_nowait(None)

        async def lane(worker: Any) -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                task, tries = item
                attempt = f"{run_key}:{task.id}:{tries}"
                try:
                    rows = await worker.run_task.remote(
                        run_key, [payload], run_id, task, index[task.id], attempt, keeper
                    )
                except lost_worker as exc:
                    if keeper is not None:
                        keeper.abandon.remote(attempt)
                    if tries + 1 < MAX_ATTEMPTS:
                        self.retried += 1
                        queue.put_nowait((task, tries + 1))
                        if not await _revived(worker, lost_worker):
                            return  # the other workers' lanes finish the run
                        continue
                    rows = [_lost(run_id, task, index[task.id], exc)]
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise UserError(str(exc.cause)) from None
                    raise
                done(rows)

        if left == 0:
            for _ in range(n_lanes):
                queue.put_nowait(None)
        lanes = [asyncio.ensure_future(lane(w)) for w in self.workers for _ in range(slots)]
        try:
            await asyncio.gather(*lanes)
            while left and not queue.empty():  # every worker stayed dead: none will run these
                if (item := queue.get_nowait()) is not None:
                    done([_lost(run_id, item[0], index[item[0].id], _NoWorker())])
        except BaseException:
            for f in lanes:
                f.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(w.end_run.remote(run_key) for w in self.workers)), 10
                )
            if keeper is not None:
                with contextlib.suppress(Exception):
                    ray.kill(keeper)

    async def grade(
        self,
        items: Sequence[tuple[Task, str]],
        sandbox: str,
        timeout_s: float,
        concurrency: int,
        record: Callable[[int, Any, str | None, float], None],
    ) -> None:
        """Grade ``items`` (task, answer) over the workers, ``concurrency`` at a time on
        each; ``record(i, verdict, why, latency)`` runs here, in this process, per answer. An
        answer whose worker died is graded again elsewhere (grading writes nothing there)."""
        ray = _ray()
        lost_worker = _lost_worker(ray)
        if not items:
            return
        n_lanes = concurrency * len(self.workers)
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        for i in range(len(items)):
            queue.put_nowait((i, 0))
        left = len(items)

        async def lane(worker: Any) -> None:
            nonlocal left
            while (item := await queue.get()) is not None:
                i, tries = item
                task, content = items[i]
                try:
                    verdict, why, latency = await worker.grade.remote(
                        task, content, sandbox, timeout_s
                    )
                except lost_worker as exc:
                    if tries + 1 < MAX_ATTEMPTS:
                        self.retried += 1
                        queue.put_nowait((i, tries + 1))
                        if not await _revived(worker, lost_worker):
                            return
                        continue
                    verdict, why, latency = None, f"lost its Ray worker: {type(exc).__name__}", 0.0
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise UserError(str(exc.cause)) from None
                    raise
                record(i, verdict, why, latency)
                left -= 1
                if not left:
                    for _ in range(n_lanes):
                        queue.put_nowait(None)

        lanes = [asyncio.ensure_future(lane(w)) for w in self.workers for _ in range(concurrency)]
        try:
            await asyncio.gather(*lanes)
            while left and not queue.empty():  # every worker stayed dead
                if (item := queue.get_nowait()) is not None:
                    record(item[0], None, "no Ray worker came back to grade it", 0.0)
                    left -= 1
        except BaseException:
            for f in lanes:
                f.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            raise


REVIVE_S = 120.0
"""How long a lane waits for its killed worker to be restarted before it stops."""


class _NoWorker(Exception):
    def __str__(self) -> str:
        return f"no worker came back within {REVIVE_S:.0f} s"


async def _revived(worker: Any, lost_worker: tuple[type[BaseException], ...]) -> bool:
    """Wait until Ray has restarted ``worker`` (it answers again); False after REVIVE_S.

    A lane whose worker died takes no new task until then: calls to an actor that is still
    restarting fail at once, and each would use up an attempt of a task the live workers
    could have run (on a busy machine a restart takes seconds)."""
    deadline = asyncio.get_running_loop().time() + REVIVE_S
    while True:
        try:
            await worker.pid.remote()
            return True
        except lost_worker:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.5)


def _lost(run_id: str, task: Task, idx: int, exc: BaseException) -> TaskRecord:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return TaskRecord(
        run_id=run_id, task_id=task.id, idx=idx, kind=task.kind, prompt=task.prompt,
        reference=task.reference, status="failed", started_at=utcnow(), finished_at=utcnow(),
        error=f"lost its Ray worker {MAX_ATTEMPTS} times: {type(exc).__name__}: {first}",
    )  # fmt: skip


_active: RayPool | None = None


@contextlib.contextmanager
def ray_pool(
    address: str | None = None,
    workers: int | None = None,
    setup: Sequence[Callable[[], None]] = (),
) -> Iterator[RayPool]:
    """Keep one pool of workers for every ``--executor ray`` run inside the block."""
    with RayPool(address, workers, setup) as pool:
        yield pool


async def run_tasks(
    cfg: RunConfig,
    run_id: str,
    tasks: list[Task],
    todo: list[Task],
    writer: TraceWriter,
    finished: Callable[[TaskRecord], None],
) -> None:
    """The runner's hook: run ``todo`` on the active pool, or on one made for this run."""
    if _active is not None:
        await _active.run(cfg, run_id, tasks, todo, writer, finished)
        return
    pool = RayPool(cfg.ray_address, cfg.workers).start()  # ray.init wants the main thread
    try:
        await pool.run(cfg, run_id, tasks, todo, writer, finished)
    finally:
        pool.close()


def grade_answers(
    items: Sequence[tuple[Task, str]],
    sandbox: str,
    timeout_s: float,
    concurrency: int,
    record: Callable[[int, Any, str | None, float], None],
    address: str | None = None,
    workers: int | None = None,
) -> None:
    """``grade --executor ray``'s hook: grade on the active pool, or on one made for it."""
    if _active is not None:
        _run_sync(_active.grade(items, sandbox, timeout_s, concurrency, record))
        return
    pool = RayPool(address, workers).start()
    try:
        _run_sync(pool.grade(items, sandbox, timeout_s, concurrency, record))
    finally:
        pool.close()


def _run_sync(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to the end from synchronous code, even one called on an event loop (the
    caller then waits in a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        ex.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Keep Ray up (joined at ``address``, or started locally) for every pool made inside the
    block, each with fresh workers: ``improve`` serves a new model each round, and a worker
    keeps every model it has served loaded."""
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    _init(ray, address)
    try:
        yield
    finally:
        ray.shutdown()
