"""``loopwright grade``: the held-out grader's verdict on every answer of finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from loopwright.loops.cli.options import ExecutorOption, RayAddressOption, WorkersOption
from loopwright.loops.cli.progress import LazyBar, console, print_error
from rich.markup import escape
from rich.table import Table


def grade(
    run: Annotated[list[str], typer.Option("--run", help="Run name or id; repeat for several.")],
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    sandbox: Annotated[
        str, typer.Option(help="Sandbox for code tests: bwrap, docker or process.")
    ] = "bwrap",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds one code-test run may take.")
    ] = 10.0,
    concurrency: Annotated[
        int, typer.Option(help="Answers graded at once (per Ray worker with --executor ray).")
    ] = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    grader: Annotated[
        str | None,
        typer.Option(help="Grader by name for every run; default: each run's own (by task kind)."),
    ] = None,
    plugin: Annotated[
        list[Path] | None,
        typer.Option(help="Python file registering custom graders (a run's --grader)."),
    ] = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Grade every answer of the runs with the held-out grader, not only each task's final.

    Writes one verdict per answer node (stage graded) that has none yet, so running again
    grades only what is new (and answers whose grading errored). The summary counts the
    answers graded and passed, and how the in-loop verdicts agree with the grader's.
    """
    from loopwright.loops.cli.main import load_plugins
    from loopwright.loops.errors import UserError
    from loopwright.loops.execution.grade import GradeProgress, grade_run
    from loopwright.traces.store import TraceStoreError

    err = console(stderr=True)
    bar = LazyBar("grade", {"passed": "passed", "failed": "failed", "errors": "errors"}, err)

    def on_progress(p: GradeProgress) -> None:
        bar.update(p.total, p.done, passed=p.passed, failed=p.failed, errors=p.errors)

    try:
        load_plugins(plugin)
        if executor == "ray" and plugin:  # Ray workers import the same files
            from loopwright.loops.execution.ray_executor import ship_plugins

            ship_plugins(plugin)
        with bar:
            report = grade_run(
                db,
                run,
                sandbox=sandbox,
                timeout_s=timeout,
                concurrency=concurrency,
                on_progress=on_progress,
                executor=_executor(executor),
                ray_address=ray_address,
                workers=workers,
                grader=grader,
            )
    except (UserError, TraceStoreError) as exc:
        print_error(err, exc)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted: the verdicts written are kept; run the same command to continue")
        raise typer.Exit(130) from None

    if json_out:
        typer.echo(report.model_dump_json(indent=2))
        return
    out = console()
    t = Table(title=escape(f"grade: {', '.join(report.runs)}"), show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("tasks / answers", f"{report.tasks} / {report.answers}"),
        ("graded now", str(report.graded)),
        ("passed / failed / errors", f"{report.passed} / {report.failed} / {report.errors}"),
        ("skipped, already graded", str(report.skipped)),
    ]
    if report.retried:
        rows.append(("regraded after an error", str(report.retried)))
    if report.no_grader:
        rows.append(("no grader for the task", str(report.no_grader)))
    for name, value in rows:
        t.add_row(name, value)
    out.print(t)

    a = report.agreement
    m = Table(title="in-loop vs graded, all answers")
    m.add_column("in-loop \\ graded", style="bold")
    m.add_column("passed", justify="right")
    m.add_column("failed", justify="right")
    m.add_row("passed", str(a.in_loop_passed_graded_passed), str(a.in_loop_passed_graded_failed))
    m.add_row("failed", str(a.in_loop_failed_graded_passed), str(a.in_loop_failed_graded_failed))
    out.print(m)
    decided = a.agree + a.disagree
    line = f"agree {a.agree} of {decided}" if decided else "no graded answers yet"
    if a.in_loop_passed_graded_failed:
        line += (
            f"; {a.in_loop_passed_graded_failed} passed the loop's own check but not the grader's"
        )
    if a.undecided:
        line += f"; {a.undecided} without a pass/fail on one side"
    out.print(line, highlight=False, soft_wrap=True)
    out.print(
        f"verdicts: {report.db} (stage 'graded'); harvest with --label graded",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _executor(name: str) -> Literal["local", "ray"]:
    from loopwright.loops.errors import unknown

    if name not in ("local", "ray"):
        raise unknown("executor", name, ("local", "ray"))
    return "ray" if name == "ray" else "local"
