"""``loopwright ingest``: TRL's GRPO completion logs into the trace store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from loopwright.loops.cli.options import DbOption


def ingest(
    folder: Annotated[
        Path,
        typer.Argument(
            help="The GRPOTrainer's output_dir (or its completions/ folder) with "
            "completions_*.parquet (log_completions=True)."
        ),
    ],
    name: Annotated[
        str, typer.Option("--name", help="Series name: its steps become runs NAME-gNNNNN.")
    ],
    db: DbOption = "loopwright.duckdb",
    model: Annotated[
        str, typer.Option(help="Model the completions came from (the runs' model).")
    ] = "trl",
    pass_above: Annotated[
        float,
        typer.Option(
            help="A completion passes (harvest's in-loop label) when its total reward is "
            "above this."
        ),
    ] = 0.0,
) -> None:
    """Store a GRPO run made with TRL: one run per step (prompts as tasks, completions as
    nodes with calls, each reward column a term, the advantage) and per-step metrics, so
    `runs`, `view`, `harvest` and `report --improve NAME` read it. Ingesting again replaces
    the same steps."""
    from loopwright.loops.cli.progress import console
    from loopwright.loops.errors import UserError
    from loopwright.loops.improve.record import ingest_completions

    if not name.strip():
        raise UserError("--name is empty: give the series a name")
    err = console(stderr=True)
    result = ingest_completions(folder, name, db, model=model, pass_above=pass_above)
    for line in result.skipped:
        err.print(f"skipped {line}", markup=False, highlight=False)
    if not result.steps:
        raise UserError(f"nothing ingested from {folder}: every completions file was skipped")
    first, last = min(result.steps), max(result.steps)
    terms = ", ".join(result.reward_terms) or "none"
    console().print(
        f"ingested {len(result.steps)} steps ({first}..{last}), {result.completions} "
        f"completions as series {name!r} into {db} (reward terms: {terms}); "
        f"`loopwright report --improve {name} --out DIR` plots them",
        markup=False,
        highlight=False,
    )
