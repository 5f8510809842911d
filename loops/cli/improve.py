"""``loopwright improve``: self-improvement rounds with lineage, and their progress bars."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from loopwright.loops.cli.progress import LazyBar
from loopwright.loops.cli.progress import console as make_console
from loopwright.loops.cli.sweep import (
    ExecutorOption,
    RayAddressOption,
    VerifierOption,
    WorkersOption,
)
from loopwright.loops.errors import UserError, first_error
from loopwright.loops.improve.config import SEED_MAX
from pydantic import ValidationError
from rich.markup import escape

err = make_console(stderr=True)


class _Bars:
    """One bar per stage: generation and evaluation (tasks), training (step, loss)."""

    def __init__(self) -> None:
        self._bar: LazyBar | None = None
        self._label = ""

    def _switch(self, label: str, fields: dict[str, str]) -> LazyBar:
        if self._label != label or self._bar is None:
            self.close()
            self._bar, self._label = LazyBar(label, fields, err), label
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__()
            self._bar = None

    def stage(self, rnd: int, stage: str, detail: str = "") -> None:
        self.close()
        err.print(f"[bold]round {rnd}[/bold] {stage}" + (escape(f": {detail}") if detail else ""),
                  highlight=False, soft_wrap=True)  # fmt: skip

    def run_progress(self, label: str, p: Any) -> None:
        bar = self._switch(label, {"rate": "pass", "tokens": "tok"})
        finished = p.done - p.failed
        rate = f"{p.passed / finished:.0%}" if finished else "-"
        bar.update(p.total, p.done, rate=rate, tokens=p.tokens)

    def train_step(self, step: int, total: int, loss: float | None) -> None:
        bar = self._switch("train", {"loss": "loss"})
        bar.update(total, step, loss="-" if loss is None else f"{loss:.4f}")


def improve(
    tasks: Annotated[str, typer.Option(help="Train task spec (the loop runs on these).")],
    eval_tasks: Annotated[
        str, typer.Option(help="Held-out eval task spec, disjoint from --tasks.")
    ],
    name: Annotated[str, typer.Option(help="Name of the series (resume keys on it).")],
    rounds: Annotated[int, typer.Option(help="Training rounds after the base evaluation.")] = 3,
    method: Annotated[str, typer.Option(help="rest-em, star, dpo or self-reward.")] = "rest-em",
    loop: Annotated[str, typer.Option(help="Loop generating the samples.")] = "best-of-n",
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Loop option KEY=VALUE.")
    ] = None,
    base: Annotated[
        str, typer.Option(help="local/NAME, local/PATH.gguf or a Hugging Face checkpoint dir.")
    ] = "local/smollm2-135m",
    limit: Annotated[int | None, typer.Option(help="Only the first N train tasks.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Only the first N eval tasks.")] = None,
    eval_samples: Annotated[int, typer.Option(help="Plain samples per eval task.")] = 4,
    max_per_prompt: Annotated[
        int | None, typer.Option(help="Training rows kept per prompt.")
    ] = None,
    data: Annotated[
        str, typer.Option(help="accumulate or replace data across rounds.")
    ] = "replace",
    drop_overlap: Annotated[
        bool, typer.Option(help="Drop train prompts overlapping eval instead of refusing.")
    ] = False,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank; 0 fine-tunes every weight.")] = 16,
    epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 2.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop training after N steps.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Default depends on method and LoRA.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per optimizer step.")] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens kept per training row.")] = 512,
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.1,
    export: Annotated[
        str, typer.Option(help="GGUF type: Q8_0, F16, F32, Q5_0, Q4_1, Q4_0.")
    ] = "Q8_0",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    workdir: Annotated[
        str | None, typer.Option(help="Data and models; default NAME.improve/ by the db.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(help="Model requests in flight (per Ray worker with --executor ray).")
    ] = 4,
    seed: Annotated[int, typer.Option(help="Seed of runs and training.", min=0, max=SEED_MAX)] = 0,
    sandbox: Annotated[str, typer.Option(help="Sandbox for code tests.")] = "bwrap",
    verifier: VerifierOption = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the series --name.")] = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Self-improvement rounds: generate -> grade -> harvest -> train -> serve -> evaluate."""
    from loopwright.loops.cli.main import _parse_options
    from loopwright.loops.improve import ImproveConfig, TrainConfig
    from loopwright.loops.improve.rounds import run_improve

    try:
        cfg = ImproveConfig(
            name=name, tasks=tasks, eval_tasks=eval_tasks, rounds=rounds, method=method,  # type: ignore[arg-type]
            loop=loop, options=_parse_options(option or []), base=base, limit=limit,
            eval_limit=eval_limit, eval_samples=eval_samples, max_per_prompt=max_per_prompt,
            data=data, drop_overlap=drop_overlap, db=db, workdir=workdir,  # type: ignore[arg-type]
            concurrency=concurrency, seed=seed, sandbox=sandbox, resume=resume,
            verifier=verifier, executor=executor, ray_address=ray_address,  # type: ignore[arg-type]
            workers=workers,
            train=TrainConfig(
                lora_rank=lora_rank, epochs=epochs, max_steps=max_steps,
                learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
                beta=beta, export=export, device=device, seed=seed,  # type: ignore[arg-type]
            ),
        )  # fmt: skip
    except ValidationError as exc:  # pydantic: one line naming the bad value
        raise UserError(first_error(exc)) from None
    bars = _Bars()
    try:
        result = run_improve(cfg, bars)  # type: ignore[arg-type]
    finally:
        bars.close()
    from loopwright.loops.analysis.report_improve import improve_table

    print(improve_table(result.rounds))
    if result.failed:
        err.print(f"[red]stopped:[/red] {escape(result.failed)}; fix it and continue with --resume",
                  highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(1)
