"""Post-hoc grading: the held-out grader's verdict on every answer of a finished run.

A run writes ``graded`` verdicts only for each task's final node; the in-loop verifier judged
every answer. This grades the rest, so harvesting with ``--label graded`` sees every answer
and the in-loop/graded agreement shows a loop that games its own checks.

*Answer nodes* are the nodes of roles generator, refiner, expander and rollout with at least
one ``in_loop`` verdict and non-empty content. Each one without a ``graded`` verdict is graded
as the runner grades a final: ``grader_for(task, sandbox=...)`` on the node's whole content
(the grader extracts the answer: the final number for math, the program for code), code tests
in the process-wide shared sandbox, one verdict row (stage ``graded``) through the trace
writer. ``tasks.graded`` is left alone: it is the final node's.

The keyed tasks (reference, hidden tests, test style, entry point, metadata) are read from
the database: every task row keeps its answer key (``tasks.answer_key``), so a run is graded
from the database alone. Rows stored before the key was kept are the one exception: when
they have answers left to grade, their tasks are reloaded from the run's task spec
(``runs.tasks_spec`` with the run's ``limit``) and matched by id; a spec that cannot be
loaded, or no longer holds the run's tasks as they were, is a one-line ``UserError``.

A grader that raises on one node is recorded as a verdict with ``passed`` NULL, feedback
``grader error: ...`` and ``details.grader_error``; grading goes on. A grader that cannot run
here at all (no sandbox, a math checker whose worker cannot start) is a one-line
``UserError`` before any answer is graded: never a row of failed verdicts. Running again skips every
node that has a graded verdict, except those error rows: they are deleted and graded again,
so each answer ends with exactly one graded verdict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.execution.grade_report import Agreement, GradeProgress, GradeReport, agreement
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.verify import (
    CodeTests,
    Grader,
    MathAnswer,
    Verdict,
    check_grader,
    grader_for,
    shared_sandbox,
    verdict_record,
)
from loopwright.sandboxes import BACKENDS, SandboxLimits
from loopwright.traces import TraceStore, TraceWriter, UnknownRun, VerdictRecord, resolve_runs
from loopwright.traces.grading import (
    GRADER_ERROR_KEY,
    answer_nodes,
    delete_grader_errors,
    run_task_keys,
)
from pydantic import ValidationError

__all__ = [
    "Agreement",
    "GradeProgress",
    "GradeReport",
    "grade_run",
]


@dataclass(frozen=True)
class _Answer:
    run_id: str
    task_id: str
    node_id: str
    content: str
    graded: bool
    """Has a graded verdict that is not a grader-error row."""
    errored: bool
    """Has a grader-error row (and no other graded verdict)."""


def _run_tasks(
    store: TraceStore,
    run: dict[str, Any],
    loaded: dict[tuple[str, int | None], list[Task]],
    needed: set[str],
) -> dict[str, Task | None]:
    """task_id -> keyed Task for every task of ``run``, in run order: from its stored answer
    key; for a row stored without one (before keys were kept), reloaded from the run's task
    spec when it has ``needed`` answers to grade, else None."""
    name = run["name"]
    rows = run_task_keys(store, run["run_id"])
    out: dict[str, Task | None] = {}
    for row in rows:
        out[row["task_id"]] = None if row["answer_key"] is None else _keyed_task(row, name)
    legacy = [row for row in rows if row["answer_key"] is None and row["task_id"] in needed]
    if legacy:
        out.update(_reload_tasks(run, legacy, loaded))
    return out


def _keyed_task(row: dict[str, Any], run_name: str) -> Task:
    try:
        task = Task.model_validate_json(row["answer_key"])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "task"
        raise UserError(
            f"task {row['task_id']!r} of run {run_name!r} has an answer key this loopwright "
            f"cannot read ({where}: {err['msg']}): grade it with the version that ran it"
        ) from None
    if task.id != row["task_id"]:
        raise UserError(
            f"task {row['task_id']!r} of run {run_name!r} holds the answer key of task "
            f"{task.id!r}: the trace database was edited"
        )
    return task


def _reload_tasks(
    run: dict[str, Any],
    rows: list[dict[str, Any]],
    loaded: dict[tuple[str, int | None], list[Task]],
) -> dict[str, Task]:
    """The keyed tasks of ``rows`` (stored without an answer key), from the run's task spec."""
    spec = run["tasks_spec"]
    name = run["name"]
    old = "was stored before runs kept their answer keys"
    if not spec:
        raise UserError(f"run {name!r} {old} and records no task spec: it cannot be graded")
    try:
        limit = json.loads(run["config"] or "{}").get("limit")
    except (json.JSONDecodeError, AttributeError):
        limit = None
    key = (spec, limit)
    if key not in loaded:
        try:
            loaded[key] = load_tasks(spec, limit)
        except UserError as exc:
            raise UserError(
                f"run {name!r} {old}, so its tasks are read from its task spec {spec!r}, "
                f"which cannot be loaded: {exc} (was the file moved? put it back to grade)"
            ) from None
    by_id = {t.id: t for t in loaded[key]}
    out: dict[str, Task] = {}
    for row in rows:
        task = by_id.get(row["task_id"])
        if task is None:
            raise UserError(
                f"task spec {spec!r} no longer holds task {row['task_id']!r} of run {name!r}"
                " (was the file changed?)"
            )
        if task.prompt != row["prompt"] or task.reference != row["reference"]:
            raise UserError(
                f"task {row['task_id']!r} in task spec {spec!r} differs from the one run "
                f"{name!r} used (was the file changed?)"
            )
        out[task.id] = task
    return out


def _answers(store: TraceStore, run_ids: list[str]) -> list[_Answer]:
    """Answer nodes of the runs, in run order, then task order, then trace order."""
    rows = answer_nodes(store, run_ids)
    order = {r: i for i, r in enumerate(run_ids)}
    rows.sort(key=lambda r: order[r["run_id"]])  # stable: task and trace order kept
    return [
        _Answer(
            r["run_id"], r["task_id"], r["node_id"], r["content"], r["graded"], bool(r["errored"])
        )
        for r in rows
    ]


def _error_record(ans: _Answer, grader: Grader, why: str, latency: float) -> VerdictRecord:
    return VerdictRecord(
        run_id=ans.run_id,
        task_id=ans.task_id,
        node_id=ans.node_id,
        stage="graded",
        verifier=grader.name,
        verifier_version=getattr(grader, "version", None),
        passed=None,
        score=None,
        feedback=f"grader error: {why}"[:500],
        details=json.dumps({"answer": None, GRADER_ERROR_KEY: why[:2000]}),
        latency_s=latency,
    )


def grade_run(
    db: str | Path,
    runs: Sequence[str],
    *,
    sandbox: str = "bwrap",
    timeout_s: float = 10.0,
    concurrency: int = 4,
    on_progress: Callable[[GradeProgress], None] | None = None,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    grader: str | None = None,
) -> GradeReport:
    """Grade every not-yet-graded answer node of ``runs`` (names or ids) in ``db``.

    ``timeout_s`` is the wall-clock limit of one code-test run in the sandbox; ``concurrency``
    the answers graded at once (per Ray worker with ``executor="ray"``: the answers are then
    graded in the workers' own sandboxes, and this process writes every verdict). Raises
    ``UserError`` (one line) on a missing database, an unknown run, an answer key that cannot
    be read (or, for a run stored before keys were kept, a task spec that cannot be loaded),
    or a sandbox or math checker that cannot run here.

    ``grader`` names the held-out grader (``GRADERS``) for every run; None: each run's own
    (``--grader`` of the run, else by task kind).
    """
    t0 = time.perf_counter()
    db = str(db)
    if not runs:
        raise UserError("name at least one run with --run NAME")
    if concurrency < 1:
        raise UserError(f"--concurrency must be at least 1, got {concurrency}")
    if not timeout_s > 0:
        raise UserError(f"--timeout must be more than 0 seconds, got {timeout_s}")
    if sandbox not in BACKENDS:
        raise unknown("sandbox backend", sandbox, BACKENDS)
    check_grader(grader)
    if db != ":memory:" and not Path(db).exists():
        raise UserError(f"no trace database at {db}: run `loopwright run` first")
    limits = SandboxLimits(timeout_s=timeout_s)
    code = CodeTests(sandbox, limits)  # one instance for every code task, as grade_many has

    store = TraceStore(db)
    try:
        try:
            by_name = resolve_runs(store, db, runs)
        except UnknownRun as exc:  # a name the user typed
            raise UserError(str(exc)) from None
        run_ids = [r["run_id"] for r in by_name.values()]
        answers = _answers(store, run_ids)
        needed = {(a.run_id, a.task_id) for a in answers if not a.graded}
        loaded: dict[tuple[str, int | None], list[Task]] = {}
        tasks: dict[tuple[str, str], Task | None] = {}
        for run in by_name.values():
            rid = run["run_id"]
            mine = {tid for r, tid in needed if r == rid}
            for tid, task in _run_tasks(store, run, loaded, mine).items():
                tasks[(rid, tid)] = task

        names = {r["run_id"]: grader or _run_grader(r) for r in by_name.values()}
        graders: dict[tuple[str, str], tuple[Task, Grader | None]] = {}
        for key, task in tasks.items():
            if task is not None:
                g = grader_for(task, name=names[key[0]], sandbox=sandbox)
                graders[key] = (task, code if isinstance(g, CodeTests) else g)
        todo: list[tuple[_Answer, Task, Grader]] = []
        no_grader = 0
        for ans in answers:
            if ans.graded:
                continue
            task, chosen = graders[(ans.run_id, ans.task_id)]
            if chosen is None:
                no_grader += 1
                continue
            todo.append((ans, task, chosen))
        skipped = sum(a.graded for a in answers)
        if any(g is code for _, _, g in todo):
            shared_sandbox(sandbox)  # a sandbox that cannot run here: one line, before any work
        if executor == "local" and any(isinstance(g, MathAnswer) for _, _, g in todo):
            MathAnswer.start()  # likewise a math checker whose worker cannot start

        retry = [a.node_id for a, _, _ in todo if a.errored]
        delete_grader_errors(store, retry)  # earlier error rows make way for the new verdicts

        progress = GradeProgress(total=len(todo))
        if on_progress:
            on_progress(progress)
        writer = TraceWriter(store)
        try:
            if executor == "ray" and todo:  # ray is imported there, never on the default path
                from loopwright.loops.execution.ray_executor import GradeOn, grade_answers

                items = [(task, ans.content, names[ans.run_id]) for ans, task, _ in todo]

                def record(
                    i: int, verdict: Verdict | None, why: str | None, latency: float
                ) -> None:
                    _record(todo[i][0], todo[i][2], (verdict, why, latency), writer, progress)
                    if on_progress:
                        on_progress(progress)

                how = GradeOn(sandbox, timeout_s, concurrency, ray_address, workers)
                grade_answers(items, how, record)
            else:
                _grade_all(todo, writer, progress, concurrency, on_progress)
            writer.flush()
        finally:
            writer.close()
        table = agreement(store, run_ids)
    finally:
        store.close()
    return GradeReport(
        db=db,
        runs=list(by_name),
        sandbox=sandbox,
        tasks=len(tasks),
        answers=len(answers),
        graded=progress.done,
        passed=progress.passed,
        failed=progress.failed,
        errors=progress.errors,
        retried=len(retry),
        skipped=skipped,
        no_grader=no_grader,
        agreement=table,
        wall_s=time.perf_counter() - t0,
    )


def _run_grader(run: dict[str, Any]) -> str | None:
    """The grader a stored run named (``--grader``), None for by task kind."""
    try:
        config = json.loads(run.get("config") or "{}")
    except json.JSONDecodeError:
        return None
    name = config.get("grader") if isinstance(config, dict) else None
    if name is not None:
        check_grader(name)  # a run graded by a plugin's grader: load it with --plugin
    return name if isinstance(name, str) else None


def _grade_one(
    grader: Grader, task: Task, content: str
) -> tuple[Verdict | None, str | None, float]:
    """(verdict, None, latency) or (None, why it raised, latency); UserError propagates."""
    t0 = time.perf_counter()
    try:
        return grader(task, content), None, time.perf_counter() - t0
    except UserError:
        raise
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}".strip(), time.perf_counter() - t0


_code_tests: dict[tuple[str, float], CodeTests] = {}


def grade_answer(
    task: Task, content: str, sandbox: str, timeout_s: float, grader_name: str | None = None
) -> tuple[Verdict | None, str | None, float]:
    """Grade one answer in this process, as :func:`grade_run` does (what a Ray worker runs):
    the named grader (None: the task kind's), code tests through one ``CodeTests`` per sandbox
    and timeout."""
    grader = grader_for(task, name=grader_name, sandbox=sandbox)
    if grader is None:
        return None, "no grader for the task", 0.0
    if isinstance(grader, CodeTests):
        key = (sandbox, timeout_s)
        if key not in _code_tests:
            _code_tests[key] = CodeTests(sandbox, SandboxLimits(timeout_s=timeout_s))
        grader = _code_tests[key]
    return _grade_one(grader, task, content)


Graded = tuple[Verdict | None, str | None, float]
"""What grading one answer gave: (verdict, None, latency), or (None, why it raised, latency)."""


def _record(
    ans: _Answer, grader: Grader, graded: Graded, writer: TraceWriter, progress: GradeProgress
) -> None:
    """Queue one answer's graded verdict (or its grader-error row) and count it."""
    verdict, why, latency = graded
    if verdict is not None:
        rec = verdict_record(
            verdict, run_id=ans.run_id, task_id=ans.task_id, node_id=ans.node_id, stage="graded"
        )
        writer.write(rec)
        progress.passed += verdict.passed
        progress.failed += not verdict.passed
    else:
        writer.write(_error_record(ans, grader, why or "unknown error", latency))
        progress.errors += 1
    progress.done += 1


def _grade_all(
    todo: list[tuple[_Answer, Task, Grader]],
    writer: TraceWriter,
    progress: GradeProgress,
    concurrency: int,
    on_progress: Callable[[GradeProgress], None] | None,
) -> None:
    """Grade on a thread pool; each verdict is queued to the writer as it comes in."""
    if not todo:
        return
    pool = ThreadPoolExecutor(
        max_workers=min(concurrency, len(todo)), thread_name_prefix="loopwright-grade"
    )
    try:
        futures: dict[Future[Graded], tuple[_Answer, Grader]] = {
            pool.submit(_grade_one, grader, task, ans.content): (ans, grader)
            for ans, task, grader in todo
        }
        for fut in as_completed(futures):
            ans, grader = futures[fut]
            graded = fut.result()  # a UserError (no sandbox) stops the grading
            _record(ans, grader, graded, writer, progress)
            if on_progress:
                on_progress(progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
