"""``loopwright sweep`` (run a grid as one sweep) and ``loopwright report`` (plots + Markdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from loopwright.loops.cli.config_options import ConfigOption, DryRunOption, SetOption
from loopwright.loops.cli.options import RUN_SETTINGS, config_error, with_flags
from loopwright.loops.cli.progress import console
from rich.markup import escape
from rich.table import Table


@with_flags(RUN_SETTINGS)
def sweep(
    ctx: typer.Context,
    settings: dict[str, Any],
    tasks: Annotated[str | None, typer.Option(help="Task spec, as for `loopwright run`.")] = None,
    grid: Annotated[
        str | None,
        typer.Option(
            help="e.g. 'best-of-n:n=1,2,4,8,16; self-refine:rounds=1,2,4; reflexion:trials=1,2,4'"
        ),
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="litellm model (repeatable).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per point (from --seed on).")] = 1,
    name: Annotated[
        str | None, typer.Option(help="Sweep name (default: derived from the arguments).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.")] = None,
    no_grade: Annotated[
        bool, typer.Option("--no-grade", help="Skip grading every answer (maj@k needs it).")
    ] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Run a grid of strategies x values x models x seeds as one sweep (resumable)."""
    import hashlib

    from loopwright.loops.errors import UserError
    from loopwright.loops.execution.sweep import (
        SweepConfig,
        SweepEvent,
        preview,
        run_sweep,
        validate,
    )
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    models = tuple(model or ["local/smollm2-135m"])
    if config is not None:
        from loopwright.loops.cli.config_options import given
        from loopwright.loops.cli.main import load_plugins
        from loopwright.loops.execution.config_file import load

        experiment = load(config, set_ or [])
        load_plugins(experiment.plugins)
        cfg = experiment.sweep_config(given(ctx, settings, {
            "tasks": ("tasks", tasks), "grid": ("grid", grid), "model": ("models", model),
            "seeds": ("seeds", seeds), "name": ("name", name), "limit": ("limit", limit),
            "no_grade": ("grade", not no_grade),
        }))  # fmt: skip
    else:
        if set_:
            raise UserError("-s/--set overrides a key of a --config file: give --config FILE")
        if tasks is None or grid is None:
            raise UserError("sweep takes --tasks SPEC and --grid GRID, or --config FILE")
        if name is None:
            key = f"{tasks}|{models}|{grid}|{seeds}|{limit}".encode()
            name = f"sweep-{hashlib.sha256(key).hexdigest()[:8]}"
        try:
            cfg = SweepConfig(
                **settings, name=name, tasks=tasks, models=models, grid=grid,
                seeds=seeds, limit=limit, grade=not no_grade,
            )  # fmt: skip
        except ValidationError as exc:  # pydantic: one line naming the flag and the bad value
            raise config_error(exc) from None
    if dry_run:
        from loopwright.loops.cli.config_options import print_sweep_plan

        print_sweep_plan(cfg)
        return
    validate(cfg)
    _, points, new = preview(cfg)
    stored = f"{len(points) - len(new)} stored, " if len(new) < len(points) else ""
    out = console()
    runs = len({p.run_name for p in points})
    out.print(
        f"sweep [bold]{escape(cfg.name)}[/bold]: {len(points)} points ({stored}"
        f"{sum(p.derived for p in points)} read from shared samples) in {runs} runs "
        f"on {escape(cfg.tasks)} -> {escape(cfg.db)}",
        highlight=False,
        soft_wrap=True,
    )
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pass {task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console(stderr=True),
    )
    bar_id = bar.add_task("", total=None, rate="-")

    def on_event(e: SweepEvent) -> None:
        tag = escape(f"[{e.index + 1}/{e.total}] {e.run_name}")
        if e.kind == "start":  # the description is rendered as markup: escaped above
            bar.update(bar_id, description=tag, completed=0, total=None, rate="-")
        elif e.kind == "grade":
            bar.update(bar_id, description=f"{tag} grading")
        elif e.kind in ("skip", "done", "failed"):
            extra = escape(f": {e.detail}") if e.detail else ""
            bar.console.print(f"{tag} {e.kind}{extra}", highlight=False, soft_wrap=True)

    def on_run(p: Any) -> None:
        finished = p.done - p.failed
        bar.update(bar_id, total=p.total, completed=p.done,
                   rate=f"{p.passed / finished:.0%}" if finished else "-")  # fmt: skip

    bar.start()
    try:
        run_sweep(cfg, on_event, on_run)
    finally:
        bar.stop()
    _summary(cfg.db, cfg.name)


def _summary(db: str, name: str) -> None:
    from loopwright.traces.run_queries import sweep_summary
    from loopwright.traces.store import TraceStore

    with TraceStore(db, read_only=True) as store:
        rows = sweep_summary(store, name)
    t = Table(
        title=escape(f"sweep {name} (graded accuracy of the runs; derived points: see report)")
    )
    for col in ("strategy", "model", "value", "status", "accuracy", "tokens/task"):
        t.add_column(col, justify="right" if col in ("accuracy", "tokens/task") else "left")
    seen: set[tuple[Any, ...]] = set()
    for r in rows:
        key = (r["strategy"], r["model"], r["value"], r["raw"], r["derived"])
        if key in seen:
            continue
        seen.add(key)
        shown = r["raw"] if r["value"] is None else f"{r['value']:g}"  # raw: not a number
        val = "-" if r["param"] is None else f"{r['param']}={shown}"
        acc = "shared" if r["derived"] else ("-" if r["acc"] is None else f"{r['acc']:.0%}")
        tok = "" if r["derived"] or r["tok"] is None else f"{r['tok']:.0f}"
        t.add_row(*(escape(c) for c in (r["strategy"], r["model"], val, r["status"], acc, tok)))
    console().print(t)
    console().print(
        f"next: loopwright report --db {db} --sweep {name} --out report-{name}",
        markup=False,
        highlight=False,
    )


def report(
    out: Annotated[Path, typer.Option(help="Folder for report.md and the PNG plots.")],
    sweep_name: Annotated[str | None, typer.Option("--sweep", help="Sweep name.")] = None,
    improve_name: Annotated[
        str | None, typer.Option("--improve", help="Improve series name (instead of --sweep).")
    ] = None,
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 2000,
) -> None:
    """Plots (PNG) and a Markdown report of a sweep (accuracy vs compute with CIs, pass@k,
    maj@k, the compute-matched winners and caution metrics) or of an improve series."""
    from loopwright.loops.errors import UserError

    if (sweep_name is None) == (improve_name is None):
        raise UserError("report takes one of --sweep NAME or --improve NAME")
    if improve_name is not None:
        from loopwright.loops.analysis.report_improve import write_improve_report

        path = write_improve_report(db, improve_name, out)
        console().print(f"report: {path}", markup=False, highlight=False)
        return
    from loopwright.loops.analysis.report import write_report

    assert sweep_name is not None
    path = write_report(db, sweep_name, out, n_boot=n_boot)
    console().print(f"report: {path}", highlight=False)
