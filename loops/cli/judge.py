"""``loopwright judge pairs``: pairwise LLM-judge preferences over a run's verified answers."""

from __future__ import annotations

from typing import Annotated

import typer
from loopwright.loops.cli.progress import LazyBar, console, print_error
from rich.markup import escape
from rich.table import Table

judge_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Judge traced answers after a run: pairwise preferences for harvesting.",
)


@judge_app.command("pairs")
def pairs(
    run: Annotated[list[str], typer.Option("--run", help="Run name; repeat for several runs.")],
    model: Annotated[str, typer.Option(help="Judge model (litellm model string).")],
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    api_base: Annotated[str | None, typer.Option(help="Endpoint for self-hosted models.")] = None,
    pairs_per_task: Annotated[int, typer.Option(help="Most pairs judged per task.")] = 4,
    k: Annotated[int, typer.Option("--k", help="Judge samples per order of a pair.")] = 1,
    concurrency: Annotated[int, typer.Option(help="Comparisons in flight.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the pair order and judge calls.")] = 0,
    budget_calls: Annotated[
        int | None, typer.Option(help="Most judge samples now (a pair costs 2*k); rerun for more.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Completion cap of a judge reply.")] = 512,
) -> None:
    """Compare pairs of each task's verified answers (both orders) and record the preferences.

    Writes one verdict per pair (stage judge, verifier llm-judge-pairwise). Pairs already
    judged are skipped, so the same command continues an interrupted or budget-capped job.
    """
    import asyncio

    from loopwright.loops.analysis.judge_pairs import JudgePairsProgress, judge_pairs
    from loopwright.loops.errors import UserError
    from loopwright.loops.execution.run_config import SEED_MAX
    from loopwright.traces.store import TraceStoreError

    err = console(stderr=True)
    if not 0 <= seed <= SEED_MAX:  # stored as a signed 64-bit integer
        print_error(err, f"--seed must be from 0 to {SEED_MAX}, got {seed}")
        raise typer.Exit(2)
    bar = LazyBar(
        "judge pairs",
        {"consistent": "consistent", "flipped": "flipped", "undecided": "undecided",
         "tokens": "tok"},
        err,
    )  # fmt: skip

    def on_progress(p: JudgePairsProgress) -> None:
        bar.update(p.total, p.done, consistent=p.consistent, flipped=p.flipped,
                   undecided=p.undecided, tokens=p.tokens)  # fmt: skip

    try:
        with bar:
            report = asyncio.run(
                judge_pairs(
                    db,
                    run,
                    model,
                    api_base=api_base,
                    pairs_per_task=pairs_per_task,
                    k=k,
                    concurrency=concurrency,
                    seed=seed,
                    budget_calls=budget_calls,
                    max_tokens=max_tokens,
                    on_progress=on_progress,
                )
            )
    except (UserError, TraceStoreError) as exc:
        print_error(err, exc)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished judgements are saved; run the same command to continue")
        raise typer.Exit(130) from None

    t = Table(title=escape(f"judge pairs: {', '.join(report.runs)}"), show_header=False)
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("judge model", report.judge_model),
        ("tasks / candidates", f"{report.tasks} / {report.candidates}"),
        ("pairs selected (of distinct)", f"{report.selected} (of {report.candidate_pairs})"),
        ("pairs judged", str(report.judged)),
        ("skipped, already judged", str(report.skipped)),
        ("consistent / order-flipped / undecided",
         f"{report.consistent} / {report.flipped} / {report.undecided}"),
        ("failed judge calls", str(report.failed)),
        ("model samples", f"{report.calls:,}"),
        ("tokens", f"{report.tokens:,}"),
        ("cost", f"${report.cost_usd:.4f}"),
    ]  # fmt: skip
    if report.retried:
        rows.append(("retried after a failure", str(report.retried)))
    if report.not_started:
        rows.append(("left for a rerun", f"{report.not_started} ({report.stopped})"))
    for name, value in rows:
        t.add_row(name, escape(value))
    out = console()
    out.print(t)
    out.print(
        f"verdicts: {report.db} (stage 'judge', verifier 'llm-judge-pairwise')",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
