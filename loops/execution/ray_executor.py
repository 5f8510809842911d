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

Ray is imported lazily, here and in ``ray_worker`` (what travels to a worker and runs there)
only: the default executor never loads it. Workers read no call cache (they have no store);
the calls they make are still written to it.
"""

from __future__ import annotations

__all__ = [
    "MAX_ATTEMPTS",
    "GradeOn",
    "RayPool",
    "grade_answers",
    "ray_pool",
    "ray_session",
    "run_tasks",
    "ship_plugins",
]

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.loops.execution.ray_worker import (
    BudgetKeeper,
    Payload,
    Worker,
    has_limits,
    import_ray,
    init_ray,
    lost_worker_errors,
    ship_plugins,
)
from loopwright.loops.execution.runner import RunWork
from loopwright.loops.execution.scope import task_slots
from loopwright.loops.tasks import Task
from loopwright.traces import TaskRecord, new_id, utcnow

MAX_ATTEMPTS = 3
"""Tries per task when its worker dies under it; then the task is recorded as failed."""


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
        ray = import_ray()
        if not ray.is_initialized():
            init_ray(ray, self.address)
            self._started_ray = True
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            n = self.n_workers or max(1, int(cpus))
            # Ray's default resources for actors: a CPU to be placed, none held while running,
            # so two runs (or a sweep's driver and a test's) can share a cluster.
            actor = ray.remote(Worker)
            self.workers = [
                actor.options(
                    max_restarts=-1,  # a killed worker comes back; its task is queued again
                    max_task_retries=0,  # ... by the driver, which decides where
                    max_concurrency=1000,
                    scheduling_strategy=where,
                ).remote(self.setup)
                for where in _placement(ray, n)
            ]
            ray.get([w.pid.remote() for w in self.workers])  # every worker up and imported
        except BaseException:
            self.close()
            raise
        return self

    def pids(self) -> list[int]:
        ray = import_ray()
        return [int(p) for p in ray.get([w.pid.remote() for w in self.workers])]

    def nodes(self) -> list[str]:
        """The Ray node each worker runs on, in worker order."""
        ray = import_ray()
        return [str(n) for n in ray.get([w.node.remote() for w in self.workers])]

    def close(self) -> None:
        ray = import_ray()
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

    async def run(self, work: RunWork) -> None:
        """Run ``work.todo`` over the workers, writing each task's rows as it comes back."""
        ray = import_ray()
        cfg, todo, index = work.cfg, work.todo, work.index
        run_key = new_id()
        payload = ray.put(Payload.of(cfg, work.run_id))
        keeper = (
            ray.remote(BudgetKeeper).options(num_cpus=0).remote(cfg.run_budget)
            if has_limits(cfg.run_budget)
            else None
        )
        slots = task_slots(cfg.connection.concurrency)  # per worker, as a local run has

        def attempt(i: int, tries: int) -> str:
            return f"{run_key}:{todo[i].id}:{tries}"

        def start(worker: Any, chunk: list[tuple[int, int]]) -> Any:
            items = [(todo[i], index[todo[i].id], attempt(i, t)) for i, t in chunk]
            return worker.run_tasks.remote(run_key, [payload], items, keeper)

        def abandon(i: int, tries: int) -> None:
            if keeper is not None:  # what the lost attempt still held goes back to the run
                keeper.abandon.remote(attempt(i, tries))

        def done(_: int, rows: list[Any]) -> None:
            for r in rows:
                work.writer.write(r)
            work.finished(rows[-1])

        def lost(i: int, exc: BaseException) -> list[Any]:
            return [_lost(work.run_id, todo[i], index[todo[i].id], exc)]

        try:
            await self._spread(len(todo), slots, start, done, lost, abandon)
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
        items: Sequence[tuple[Task, str, str | None]],
        how: GradeOn,
        record: Callable[[int, Any, str | None, float], None],
    ) -> None:
        """Grade ``items`` (task, answer, grader name) over the workers, ``how.concurrency`` at a time on
        each; ``record(i, verdict, why, latency)`` runs here, in this process, per answer. An
        answer whose worker died is graded again elsewhere (grading writes nothing there)."""
        concurrency = how.concurrency

        def start(worker: Any, chunk: list[tuple[int, int]]) -> Any:
            answers = [items[i] for i, _ in chunk]
            return worker.grade_many.remote(answers, how.sandbox, how.timeout_s, concurrency)

        def lost(i: int, exc: BaseException) -> tuple[Any, str | None, float]:
            if isinstance(exc, _NoWorker):
                return None, "no Ray worker came back to grade it", 0.0
            return None, f"lost its Ray worker: {type(exc).__name__}", 0.0

        await self._spread(len(items), concurrency, start, lambda i, r: record(i, *r), lost)

    async def _spread(
        self,
        n: int,
        per_worker: int,
        start: Callable[[Any, list[tuple[int, int]]], Any],
        done: Callable[[int, Any], None],
        lost: Callable[[int, BaseException], Any],
        abandon: Callable[[int, int], None] = lambda i, tries: None,
    ) -> None:
        """Items ``0..n-1`` over the workers, ``per_worker`` at a time on each.

        Each worker is handed chunks of ``(item, tries)`` by ``FEEDS`` feeders of its own, so
        the next chunk is there before the last one's stragglers end; a chunk is at most
        ``per_worker`` items and shrinks as the queue empties, so the workers finish
        together. ``start(worker, chunk)`` begins a streaming Ray call that yields ``(position
        in chunk, result)`` batches; ``done(i, result)`` runs here, once per item. The items
        of a chunk still out when its worker died are queued again for any worker
        (``abandon(i, tries)`` for each), up to ``MAX_ATTEMPTS`` tries; then, or when no
        worker came back, ``lost(i, exc)`` is their result. A feeder whose worker died waits
        for its restart before it takes another chunk.
        """
        if n == 0:
            return
        ray = import_ray()
        lost_worker = lost_worker_errors(ray)
        n_feeds = FEEDS * len(self.workers)
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait((i, 0))
        left = n

        def finish(i: int, result: Any) -> None:
            nonlocal left
            done(i, result)
            left -= 1
            if not left:
                for _ in range(n_feeds):
                    queue.put_nowait(None)

        def take(first: tuple[int, int]) -> list[tuple[int, int]]:
            size = max(1, min(per_worker, -(-(queue.qsize() + 1) // n_feeds)))
            chunk = [first]
            while len(chunk) < size and not queue.empty():
                item = queue.get_nowait()
                if item is None:  # the end: leave it for the next feeder's get
                    queue.put_nowait(None)
                    break
                chunk.append(item)
            return chunk

        async def feed(worker: Any) -> None:
            while (first := await queue.get()) is not None:
                chunk = take(first)
                out = dict(enumerate(chunk))  # position -> (item, tries), until it returns
                try:
                    async for ref in start(worker, chunk):
                        for pos, result in await ref:
                            finish(out.pop(pos)[0], result)
                except lost_worker as exc:
                    for i, tries in out.values():
                        abandon(i, tries)
                        if tries + 1 < MAX_ATTEMPTS:
                            self.retried += 1
                            queue.put_nowait((i, tries + 1))
                        else:
                            finish(i, lost(i, exc))
                    if not await _revived(worker, lost_worker):
                        return  # the other workers' feeders finish the items
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, UserError):
                        raise UserError(str(exc.cause)) from None
                    raise

        # Round robin: every worker's first chunk goes out before any worker's second one.
        feeds = [asyncio.ensure_future(feed(w)) for _ in range(FEEDS) for w in self.workers]
        try:
            await asyncio.gather(*feeds)
            while left and not queue.empty():  # every worker stayed dead: none will run these
                if (item := queue.get_nowait()) is not None:
                    finish(item[0], lost(item[0], _NoWorker()))
        except BaseException:
            for f in feeds:
                f.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)
            raise


FEEDS = 2
"""Chunks in flight per worker: one running, the next queued behind it."""


def _placement(ray: Any, n: int) -> list[Any]:
    """Where each of ``n`` workers starts: the alive nodes in turn, each as many times as it
    has CPUs before any node gets more (Ray's own SPREAD is best effort, and since a worker
    holds no CPU once placed, it can stack every worker on one node). Soft affinity: a
    worker whose node is lost is restarted on another."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cpus = {
        str(node["NodeID"]): int(node.get("Resources", {}).get("CPU", 0))
        for node in ray.nodes()
        if node.get("Alive")
    }
    slots = [
        node
        for k in range(max(cpus.values(), default=0))
        for node in sorted(cpus)
        if k < cpus[node]
    ]
    if not slots:
        return ["SPREAD"] * n
    return [NodeAffinitySchedulingStrategy(slots[i % len(slots)], soft=True) for i in range(n)]


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
        reference=task.reference, answer_key=task.answer_key(), status="failed",
        started_at=utcnow(), finished_at=utcnow(),
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


async def run_tasks(work: RunWork) -> None:
    """The runner's hook: run ``work`` on the active pool, or on one made for this run."""
    if _active is not None:
        await _active.run(work)
        return
    # ray.init wants the main thread
    pool = RayPool(work.cfg.ray_address, work.cfg.workers).start()
    try:
        await pool.run(work)
    finally:
        pool.close()


@dataclass(frozen=True)
class GradeOn:
    """How ``grade --executor ray`` grades: in which sandbox, the time one code-test run may
    take, answers at once per worker, and the cluster (none: this process's, or a local one)
    and its worker count."""

    sandbox: str
    timeout_s: float
    concurrency: int
    ray_address: str | None = None
    workers: int | None = None


def grade_answers(
    items: Sequence[tuple[Task, str, str | None]],
    how: GradeOn,
    record: Callable[[int, Any, str | None, float], None],
) -> None:
    """``grade --executor ray``'s hook: grade on the active pool, or on one made for it."""
    if _active is not None:
        _run_sync(_active.grade(items, how, record))
        return
    pool = RayPool(how.ray_address, how.workers).start()
    try:
        _run_sync(pool.grade(items, how, record))
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
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    init_ray(ray, address)
    try:
        yield
    finally:
        ray.shutdown()
