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

The tasks are reloaded from the run's own task spec (``runs.tasks_spec`` with the run's
``limit``) and matched by id; a spec that cannot be loaded, or no longer holds the run's tasks
as they were, is a one-line ``UserError``.

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
    MathAnswer,
    Verdict,
    Verifier,
    grader_for,
    shared_sandbox,
    verdict_record,
)
from loopwright.sandboxes import BACKENDS, SandboxLimits
from loopwright.traces import TraceStore, TraceWriter, UnknownRun, VerdictRecord, resolve_runs
from loopwright.traces.queries import lit
from loopwright.traces.records import ANSWER_ROLES

__all__ = [
    "Agreement",
    "GradeProgress",
    "GradeReport",
    "grade_run",
]

_ERROR_KEY = "grader_error"


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
    store: TraceStore, run: dict[str, Any], loaded: dict[tuple[str, int | None], list[Task]]
) -> dict[str, Task]:
    """task_id -> Task for every task of ``run``, reloaded from the run's task spec."""
    spec = run["tasks_spec"]
    name = run["name"]
    if not spec:
        raise UserError(f"run {name!r} records no task spec, so its tasks cannot be reloaded")
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
                f"cannot load task spec {spec!r} of run {name!r}: {exc} (was the file moved?)"
            ) from None
    by_id = {t.id: t for t in loaded[key]}
    out: dict[str, Task] = {}
    for row in store.query(
        "SELECT task_id, prompt, reference FROM tasks WHERE run_id = ? ORDER BY idx",
        [run["run_id"]],
    ):
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
    marks = ", ".join("?" for _ in run_ids)
    roles = ", ".join(lit(r) for r in ANSWER_ROLES)
    rows = store.query(
        f"""
        WITH il AS (
            SELECT DISTINCT node_id FROM verdicts
            WHERE stage = 'in_loop' AND node_id IS NOT NULL AND run_id IN ({marks})
        ), g AS (
            SELECT node_id,
                   count(*) FILTER (WHERE json_extract_string(details, '$.{_ERROR_KEY}')
                                    IS NULL) AS ok,
                   count(*) AS n
            FROM verdicts
            WHERE stage = 'graded' AND node_id IS NOT NULL AND run_id IN ({marks})
            GROUP BY node_id
        )
        SELECT n.run_id, n.task_id, n.node_id, n.content,
               coalesce(g.ok, 0) > 0 AS graded, coalesce(g.ok, 0) = 0 AND g.n > 0 AS errored,
               t.idx
        FROM nodes n
        JOIN il ON il.node_id = n.node_id
        JOIN tasks t ON t.run_id = n.run_id AND t.task_id = n.task_id
        LEFT JOIN g ON g.node_id = n.node_id
        WHERE n.run_id IN ({marks}) AND n.role IN ({roles})
              AND n.content IS NOT NULL AND trim(n.content) <> ''
        ORDER BY t.idx, n.created_at, n.node_id
        """,
        [*run_ids, *run_ids, *run_ids],
    )
    order = {r: i for i, r in enumerate(run_ids)}
    rows.sort(key=lambda r: order[r["run_id"]])  # stable: task and trace order kept
    return [
        _Answer(
            r["run_id"], r["task_id"], r["node_id"], r["content"], r["graded"], bool(r["errored"])
        )
        for r in rows
    ]


def _error_record(ans: _Answer, grader: Verifier, why: str, latency: float) -> VerdictRecord:
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
        details=json.dumps({"answer": None, _ERROR_KEY: why[:2000]}),
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
) -> GradeReport:
    """Grade every not-yet-graded answer node of ``runs`` (names or ids) in ``db``.

    ``timeout_s`` is the wall-clock limit of one code-test run in the sandbox; ``concurrency``
    the answers graded at once (per Ray worker with ``executor="ray"``: the answers are then
    graded in the workers' own sandboxes, and this process writes every verdict). Raises
    ``UserError`` (one line) on a missing database, an unknown run, a task spec that cannot be
    loaded, or a sandbox or math checker that cannot run here.
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
    if db != ":memory:" and not Path(db).exists():
        raise UserError(f"no trace database at {db}: run `loopwright run` first")
    limits = SandboxLimits(timeout_s=timeout_s)
    code = CodeTests(sandbox, limits)  # one instance for every code task, as verify_many has

    store = TraceStore(db)
    try:
        try:
            by_name = resolve_runs(store, db, runs)
        except UnknownRun as exc:  # a name the user typed
            raise UserError(str(exc)) from None
        run_ids = [r["run_id"] for r in by_name.values()]
        loaded: dict[tuple[str, int | None], list[Task]] = {}
        tasks: dict[tuple[str, str], Task] = {}
        for run in by_name.values():
            for tid, task in _run_tasks(store, run, loaded).items():
                tasks[(run["run_id"], tid)] = task
        answers = _answers(store, run_ids)

        graders: dict[tuple[str, str], Verifier | None] = {}
        for key, task in tasks.items():
            g = grader_for(task, sandbox=sandbox)
            graders[key] = code if isinstance(g, CodeTests) else g
        todo: list[tuple[_Answer, Task, Verifier]] = []
        no_grader = 0
        for ans in answers:
            if ans.graded:
                continue
            key = (ans.run_id, ans.task_id)
            grader = graders[key]
            if grader is None:
                no_grader += 1
                continue
            todo.append((ans, tasks[key], grader))
        skipped = sum(a.graded for a in answers)
        if any(g is code for _, _, g in todo):
            shared_sandbox(sandbox)  # a sandbox that cannot run here: one line, before any work
        if executor == "local" and any(isinstance(g, MathAnswer) for _, _, g in todo):
            MathAnswer.start()  # likewise a math checker whose worker cannot start

        retry = [a.node_id for a, _, _ in todo if a.errored]
        if retry:  # earlier grader-error rows make way for the new verdicts
            store.execute(
                f"DELETE FROM verdicts WHERE stage = 'graded' AND node_id IN "
                f"({', '.join('?' for _ in retry)}) "
                f"AND json_extract_string(details, '$.{_ERROR_KEY}') IS NOT NULL",
                retry,
            )

        progress = GradeProgress(total=len(todo))
        if on_progress:
            on_progress(progress)
        writer = TraceWriter(store)
        try:
            if executor == "ray" and todo:  # ray is imported there, never on the default path
                from loopwright.loops.execution.ray_executor import grade_answers

                items = [(task, ans.content) for ans, task, _ in todo]

                def record(
                    i: int, verdict: Verdict | None, why: str | None, latency: float
                ) -> None:
                    _record(todo[i][0], todo[i][2], verdict, why, latency, writer, progress)
                    if on_progress:
                        on_progress(progress)

                grade_answers(items, sandbox, timeout_s, concurrency, record, ray_address, workers)
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


def _grade_one(
    grader: Verifier, task: Task, content: str
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
    task: Task, content: str, sandbox: str, timeout_s: float
) -> tuple[Verdict | None, str | None, float]:
    """Grade one answer in this process, as :func:`grade_run` does (what a Ray worker runs):
    the task's grader, code tests through one ``CodeTests`` per sandbox and timeout."""
    grader = grader_for(task, sandbox=sandbox)
    if grader is None:
        return None, "no grader for the task", 0.0
    if isinstance(grader, CodeTests):
        key = (sandbox, timeout_s)
        if key not in _code_tests:
            _code_tests[key] = CodeTests(sandbox, SandboxLimits(timeout_s=timeout_s))
        grader = _code_tests[key]
    return _grade_one(grader, task, content)


def _record(
    ans: _Answer,
    grader: Verifier,
    verdict: Verdict | None,
    why: str | None,
    latency: float,
    writer: TraceWriter,
    progress: GradeProgress,
) -> None:
    """Queue one answer's graded verdict (or its grader-error row) and count it."""
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
    todo: list[tuple[_Answer, Task, Verifier]],
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
        futures: dict[
            Future[tuple[Verdict | None, str | None, float]], tuple[_Answer, Verifier]
        ] = {
            pool.submit(_grade_one, grader, task, ans.content): (ans, grader)
            for ans, task, grader in todo
        }
        for fut in as_completed(futures):
            ans, grader = futures[fut]
            verdict, why, latency = fut.result()  # a UserError (no sandbox) stops the grading
            _record(ans, grader, verdict, why, latency, writer, progress)
            if on_progress:
                on_progress(progress)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
