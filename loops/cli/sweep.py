"""``loopwright sweep`` (run a grid as one sweep) and ``loopwright report`` (plots + Markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from loopwright.loops.cli.progress import console
from loopwright.loops.errors import UserError, first_error
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.config import Connection
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

TransportOption = Annotated[
    str,
    typer.Option(
        help="litellm, http (direct OpenAI-compatible requests, ~10x less CPU per call) "
        "or auto: http for openai/ and hosted_vllm/ models with --api-base."
    ),
]
VerifierOption = Annotated[
    str,
    typer.Option(
        help="In-loop verifier: auto (visible-tests for code, self for math/text), "
        "visible-tests, self, consistency, judge, reward, none, or oracle (reads the answer "
        "key: upper bounds only). `loopwright verifiers` lists them."
    ),
]
VerifierOptionsOption = Annotated[
    list[str] | None,
    typer.Option("--verifier-option", help="In-loop verifier option KEY=VALUE."),
]
ExecutorOption = Annotated[
    str,
    typer.Option(
        help="Where tasks run: local (this process) or ray (Ray worker actors, each with its "
        "own model client and sandboxes; this process writes every trace row)."
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="With --executor ray: the cluster to join (HEAD_IP:6379, from `ray start "
        "--head`); default: a local Ray on this machine's cores, stopped at the end."
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(help="With --executor ray: worker actors (default: one per CPU of the cluster)."),
]
RoleModelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--role-model",
        help="ROLE=MODEL: a model for one role (generator, critic, refiner, reflector, "
        "judge, value, verifier); the others use --model.",
    ),
]


def parse_key_values(items: list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (values read as JSON when they parse) as a dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def parse_role_models(items: list[str] | None) -> dict[str, str]:
    """``ROLE=MODEL`` items as a dict; a malformed item is one error line."""
    out: dict[str, str] = {}
    for item in items or []:
        role, sep, model = item.partition("=")
        if not sep or not role.strip() or not model.strip():
            raise UserError(f"--role-model takes ROLE=MODEL, got {item!r}")
        out[role.strip()] = model.strip()
    return out


def sweep(
    tasks: Annotated[str, typer.Option(help="Task spec, as for `loopwright run`.")],
    grid: Annotated[
        str,
        typer.Option(
            help="e.g. 'best-of-n:n=1,2,4,8,16; self-refine:rounds=1,2,4; reflexion:trials=1,2,4'"
        ),
    ],
    model: Annotated[list[str] | None, typer.Option(help="litellm model (repeatable).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per point (0..N-1).")] = 1,
    name: Annotated[
        str | None, typer.Option(help="Sweep name (default: derived from the arguments).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.")] = None,
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    concurrency: Annotated[
        int, typer.Option(help="Model requests in flight per run (per Ray worker with ray).")
    ] = 4,
    sandbox: Annotated[str, typer.Option(help="Sandbox for code tests.")] = "bwrap",
    api_base: Annotated[str | None, typer.Option(help="Endpoint for self-hosted models.")] = None,
    transport: TransportOption = "auto",
    verifier: VerifierOption = "auto",
    verifier_option: VerifierOptionsOption = None,
    role_model: RoleModelOption = None,
    budget_tokens: Annotated[int | None, typer.Option(help="Token budget per task.")] = None,
    budget_calls: Annotated[int | None, typer.Option(help="Sample budget per task.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Dollar budget per task.")] = None,
    no_grade: Annotated[
        bool, typer.Option("--no-grade", help="Skip grading every answer (maj@k needs it).")
    ] = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Run a grid of strategies x values x models x seeds as one sweep (resumable)."""
    import hashlib

    from loopwright.loops.execution.sweep import SweepConfig, SweepEvent, run_sweep, validate

    models = tuple(model or ["local/smollm2-135m"])
    if name is None:
        key = f"{tasks}|{models}|{grid}|{seeds}|{limit}".encode()
        name = f"sweep-{hashlib.sha256(key).hexdigest()[:8]}"
    try:
        cfg = SweepConfig(
            name=name, tasks=tasks, models=models, grid=grid, seeds=seeds, limit=limit, db=db,
            connection=Connection(concurrency=concurrency, api_base=api_base,
                                  transport=transport),  # type: ignore[arg-type]
            sandbox=sandbox,
            budget=BudgetLimits(tokens=budget_tokens, calls=budget_calls, usd=budget_usd),
            grade=not no_grade, verifier=verifier,
            executor=executor, ray_address=ray_address, workers=workers,  # type: ignore[arg-type]
            verifier_options=parse_key_values(verifier_option or [], "--verifier-option"),
            role_models=parse_role_models(role_model),
        )  # fmt: skip
    except ValidationError as exc:  # pydantic: one line naming the bad value
        raise UserError(first_error(exc, as_flag=True)) from None
    _, points = validate(cfg)
    out = console()
    runs = len({p.run_name for p in points})
    out.print(
        f"sweep [bold]{escape(cfg.name)}[/bold]: {len(points)} points "
        f"({sum(p.derived for p in points)} read from shared samples) in {runs} runs "
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
    from loopwright.traces.store import TraceStore

    with TraceStore(db, read_only=True) as store:
        rows = store.query(
            "SELECT p.strategy, p.model, p.param, p.value, p.derived, p.status,"
            " CASE WHEN p.value IS NULL AND p.param IS NOT NULL"
            " THEN json_extract_string(p.options, '$.' || p.param) END AS raw,"
            " count(t.task_id) AS tasks, avg(CAST(t.graded AS INT)) AS acc,"
            " avg(t.total_tokens) AS tok"
            " FROM sweep_points p JOIN sweeps s USING (sweep_id)"
            " LEFT JOIN runs r ON r.name = p.run_name"
            " LEFT JOIN tasks t ON t.run_id = r.run_id AND NOT p.derived"
            " WHERE s.name = ? GROUP BY ALL ORDER BY p.model, p.strategy, p.value",
            [name],
        )
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
