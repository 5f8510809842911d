"""``loopwright harvest FORMAT``: training sets from the trace store, and what was left out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from loopwright.loops.cli.progress import console
from rich.markup import escape
from rich.table import Table

FORMAT_HELP = (
    "sft (verified answers), dpo (chosen/rejected pairs), kto (pass/fail labels), prm "
    "(step labels), critique (critiques that led to a better verified revision), corrections "
    "(attempt, feedback, revision ... turns)."
)


def _split(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for vs in values or [] for v in vs.split(",") if v.strip())


def harvest(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=FORMAT_HELP)],
    db: Annotated[Path, typer.Option("--db", help="Trace database.")] = Path("loopwright.duckdb"),
    out: Annotated[
        Path | None,
        typer.Option(help="Output: .jsonl, .parquet, or a folder (datasets' save_to_disk)."),
    ] = None,
    run: Annotated[list[str] | None, typer.Option(help="Run name or id (repeatable).")] = None,
    loop: Annotated[list[str] | None, typer.Option(help="Loop name (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option(help="Model string (repeatable).")] = None,
    min_round: Annotated[int | None, typer.Option(help="Drop nodes of earlier rounds.")] = None,
    max_round: Annotated[int | None, typer.Option(help="Drop nodes of later rounds.")] = None,
    label: Annotated[
        str, typer.Option(help="Label nodes by the in_loop verifier or the graded check.")
    ] = "in_loop",
    verified_only: Annotated[
        bool, typer.Option(help="prm/corrections: only rows whose final answer passed.")
    ] = False,
    min_score: Annotated[float | None, typer.Option(help="sft: minimum verdict score.")] = None,
    min_margin: Annotated[float, typer.Option(help="dpo: minimum score margin.")] = 0.0,
    max_per_prompt: Annotated[
        int | None, typer.Option(help="Rows kept per prompt (default: per format).")
    ] = None,
    pairs: Annotated[
        str, typer.Option(help="dpo pair sources, comma-separated.")
    ] = "siblings,revisions,judge",
    pair_scope: Annotated[
        str, typer.Option(help="dpo siblings: same 'task' of a run, 'prompt' or 'parent' node.")
    ] = "task",
    dedup: Annotated[str, typer.Option(help="normalised, exact or none.")] = "normalised",
    contamination: Annotated[
        list[Path] | None, typer.Option(help="Eval JSONL; overlapping prompts are left out.")
    ] = None,
    contamination_field: Annotated[
        str | None, typer.Option(help="Text field of the eval file.")
    ] = None,
    ngram: Annotated[int, typer.Option(help="Word n-gram size of the overlap check.")] = 8,
    contamination_threshold: Annotated[
        float, typer.Option(help="Share of a prompt's n-grams found in the eval file.")
    ] = 0.5,
    prm_label: Annotated[
        str, typer.Option(help="prm: 'subtree' (a verified answer descends) or 'value'.")
    ] = "subtree",
    value_threshold: Annotated[float, typer.Option(help="prm --prm-label value.")] = 0.5,
    style: Annotated[str, typer.Option(help="conversational (messages) or plain.")] = (
        "conversational"
    ),
    system: Annotated[str | None, typer.Option(help="System message before prompts.")] = None,
    provenance: Annotated[
        bool, typer.Option(help="Add the provenance column (run, task, nodes, model ...).")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Count and report; write nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Write a FORMAT training set from the traces in --db to --out, and report what was left
    out and why."""
    from loopwright.loops.errors import UserError, first_error
    from loopwright.traces.harvest import HarvestError, HarvestOptions
    from loopwright.traces.harvest import harvest as run_harvest
    from pydantic import ValidationError

    if out is None and not dry_run:
        raise UserError("give --out PATH (.jsonl, .parquet or a folder), or --dry-run")
    try:
        # validated from a dict: the flags are plain strings, the options' Literals check them
        opts = HarvestOptions.model_validate(
            dict(
                runs=_split(run),
                loops=_split(loop),
                models=_split(model),
                min_round=min_round,
                max_round=max_round,
                label=label,
                verified_only=verified_only,
                min_score=min_score,
                min_margin=min_margin,
                max_per_prompt=max_per_prompt,
                pairs=_split([pairs]),
                pair_scope=pair_scope,
                dedup=dedup,
                contamination=tuple(contamination or ()),
                contamination_field=contamination_field,
                ngram=ngram,
                contamination_threshold=contamination_threshold,
                prm_label=prm_label,
                value_threshold=value_threshold,
                style=style,
                system=system,
                provenance=provenance,
            )
        )
    except ValidationError as exc:  # pydantic: one line naming the bad value
        raise UserError(first_error(exc, as_flag=True)) from None
    try:
        result = run_harvest(fmt, db, None if dry_run else out, opts, overwrite=overwrite)
    except HarvestError as exc:
        raise UserError(str(exc)) from None
    if json_out:
        console().print_json(result.model_dump_json())
        return
    print_report(result.model_dump())


def _bar(n: int, top: int, width: int = 30) -> str:
    return "█" * (round(width * n / top) if top else 0)


def print_report(r: dict[str, Any]) -> None:
    """The short report after an export: rows, per prompt, sources, margins, exclusions."""
    con = console()
    where = f"to {r['out']}" if r["out"] else "(dry run: nothing written)"
    per = r["rows"] / r["prompts"] if r["prompts"] else 0.0
    con.print(
        f"[bold]{r['format']}[/bold]: {r['rows']} rows from {r['prompts']} prompts {escape(where)} "
        f"in {r['seconds']:.2f}s — {per:.1f} per prompt (max {r['per_prompt_max']}); "
        f"columns: {escape(', '.join(r['columns']))}",
        highlight=False,
        soft_wrap=True,
    )
    if r["by_source"]:
        con.print(
            "pairs by source: " + ", ".join(f"{k} {v}" for k, v in r["by_source"].items()),
            markup=False,
            highlight=False,
        )
    if r["labels"]:
        con.print(
            "labels: " + ", ".join(f"{k} {v}" for k, v in r["labels"].items()),
            markup=False,
            highlight=False,
        )
    if r["margin_histogram"] and r["rows"]:
        top = max(n for _, _, n in r["margin_histogram"])
        con.print("margin histogram:")
        for lo, hi, n in r["margin_histogram"]:
            con.print(f"  {lo:.1f}-{hi:.1f} {n:>7} {_bar(n, top)}", highlight=False)
    table = Table()
    table.add_column(f"left out: {r['considered'] - r['rows']} of {r['considered']}")
    table.add_column("rows", justify="right")
    for reason, n in r["excluded"].items():  # reasons, most rows first
        table.add_row(escape(reason), str(n))
    if r["excluded"]:
        con.print(table)
    else:
        con.print(f"nothing left out of {r['considered']} candidate rows")
    if r["contaminated_tasks"]:
        shown = ", ".join(r["contaminated_tasks"][:10])
        more = len(r["contaminated_tasks"]) - 10
        con.print(
            f"contaminated tasks: {shown}{f' and {more} more' if more > 0 else ''}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
