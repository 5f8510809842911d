"""``loopwright improve``: self-improvement rounds with lineage, and their progress bars."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from loopwright.loops.cli.options import (
    RUN_SETTINGS,
    Flag,
    FlagGroup,
    LoopOptionsOption,
    config_error,
    with_flags,
)
from loopwright.loops.cli.progress import LazyBar
from loopwright.loops.cli.progress import console as make_console
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


TRAINING = FlagGroup(
    "training",
    (
        Flag("lora_rank", Annotated[int, typer.Option(help="LoRA rank; 0 fine-tunes every weight.")], 16),
        Flag("epochs", Annotated[float, typer.Option(help="Passes over the data.")], 2.0),
        Flag("max_steps", Annotated[int | None, typer.Option(help="Stop training after N steps (grpo: its steps, default 40).")]),
        Flag("learning_rate", Annotated[float | None, typer.Option(help="Default depends on method and LoRA.")]),
        Flag("batch_size", Annotated[int, typer.Option(help="Rows per optimizer step.")], 8),
        Flag("max_length", Annotated[int, typer.Option(help="Tokens kept per training row.")], 512),
        Flag("beta", Annotated[float, typer.Option(help="DPO beta.")], 0.1),
        Flag("export", Annotated[str, typer.Option(help="GGUF type: Q8_0, F16, F32, Q5_0, Q4_1, Q4_0.")], "Q8_0"),
        Flag("device", Annotated[str, typer.Option(help="auto, cpu or cuda.")], "auto"),
    ),
)  # fmt: skip
"""The trainer's flags (``TrainConfig``); its seed is the series' ``--seed``."""


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


GRPO = FlagGroup(
    "grpo",
    (
        Flag("reward", Annotated[str | None, typer.Option(help="grpo: grader (RLVR on the train labels), verifier[:NAME] or majority (label-free). Default grader.")]),
        Flag("generations", Annotated[int | None, typer.Option(help="grpo: completions per prompt (group size). Default 4.")]),
        Flag("prompts_per_step", Annotated[int | None, typer.Option(help="grpo: train prompts per step. Default 2.")]),
        Flag("max_completion_tokens", Annotated[int | None, typer.Option(help="grpo: completion length cap. Default 128.")]),
        Flag("temperature", Annotated[float | None, typer.Option(help="grpo: rollout temperature. Default 1.0.")]),
        Flag("kl_beta", Annotated[float | None, typer.Option(help="grpo: KL weight to the base; 0 none. Default 0.")]),
        Flag("loss_type", Annotated[str | None, typer.Option(help="grpo: dapo, grpo, dr_grpo or bnpo. Default dapo.")]),
        Flag("scale_rewards", Annotated[str | None, typer.Option(help="grpo: advantage scaling group, batch or none. Default group.")]),
        Flag("format_weight", Annotated[float | None, typer.Option(help="grpo: weight of the format term. Default 0.")]),
        Flag("length_weight", Annotated[float | None, typer.Option(help="grpo: weight of the length term. Default 0.")]),
        Flag("eval_every", Annotated[int | None, typer.Option(help="grpo: export and evaluate every K steps (each a round); 0 at the end. Default 0.")]),
        Flag("save_every", Annotated[int | None, typer.Option(help="grpo: resumable checkpoint every K steps. Default 5.")]),
        Flag("keep_checkpoints", Annotated[int | None, typer.Option(help="grpo: resumable checkpoints kept. Default 2.")]),
        Flag("rollout", Annotated[str | None, typer.Option(help="grpo: auto, engine (llama.cpp) or trl generation, or self-refine (two-turn draft -> revision episodes on the engine). Default auto.")]),
        Flag("improve_weight", Annotated[float | None, typer.Option(help="grpo --rollout self-refine: weight of the revision-minus-draft correctness term. Default 0.5.")]),
        Flag("eval_selector", Annotated[str | None, typer.Option(help="grpo: the eval loop's pick, majority (no extra calls) or verifier (self-check). Default majority.")]),
    ),
    _given,
)  # fmt: skip
"""``--method grpo``'s flags (``GrpoConfig``; ``--kl-beta`` is its beta); ``--max-steps``
counts its steps."""


def _grpo_error(exc: Any) -> Exception | None:
    """A ``GrpoConfig`` error named by its flag (``grpo.beta`` is ``--kl-beta``)."""
    from loopwright.loops.errors import UserError

    e = exc.errors()[0]
    loc = e["loc"]
    if not loc or loc[0] != "grpo":
        return None
    field = str(loc[1]) if len(loc) > 1 else "reward"  # its model check is the reward's
    flag = {"beta": "kl-beta", "steps": "max-steps"}.get(field, field.replace("_", "-"))
    return UserError(f"--{flag}: {str(e['msg']).removeprefix('Value error, ')}")


@with_flags(RUN_SETTINGS, TRAINING, GRPO)
def improve(
    tasks: Annotated[str, typer.Option(help="Train task spec (the loop runs on these).")],
    eval_tasks: Annotated[
        str, typer.Option(help="Held-out eval task spec, disjoint from --tasks.")
    ],
    name: Annotated[str, typer.Option(help="Name of the series (resume keys on it).")],
    settings: dict[str, Any],
    training: dict[str, Any],
    grpo: dict[str, Any],
    rounds: Annotated[int, typer.Option(help="Training rounds after the base evaluation.")] = 3,
    method: Annotated[
        str, typer.Option(help="rest-em, star, dpo, self-reward or grpo.")
    ] = "rest-em",
    loop: Annotated[str, typer.Option(help="Loop generating the samples.")] = "best-of-n",
    option: LoopOptionsOption = None,
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
    workdir: Annotated[
        str | None, typer.Option(help="Data and models; default NAME.improve/ by the db.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the series --name.")] = False,
) -> None:
    """Self-improvement rounds: generate -> grade -> harvest -> train -> serve -> evaluate."""
    from loopwright.loops.cli.main import parse_options
    from loopwright.loops.errors import UserError
    from loopwright.loops.improve import ImproveConfig, TrainConfig
    from loopwright.loops.improve.rounds import run_improve
    from pydantic import ValidationError

    if grpo and method != "grpo":
        flag = "--" + sorted(grpo)[0].replace("_", "-")
        raise UserError(f"{flag} applies to --method grpo only")
    if method == "grpo":
        if "kl_beta" in grpo:
            grpo["beta"] = grpo.pop("kl_beta")
        if training.get("max_steps") is not None:  # --max-steps counts GRPO steps
            grpo["steps"] = training.pop("max_steps")
    try:
        cfg = ImproveConfig(
            **settings, name=name, tasks=tasks, eval_tasks=eval_tasks, rounds=rounds,
            method=method, loop=loop, options=parse_options(option), base=base, limit=limit,
            eval_limit=eval_limit, eval_samples=eval_samples, max_per_prompt=max_per_prompt,
            data=data, drop_overlap=drop_overlap, workdir=workdir, resume=resume,
            train=TrainConfig(**training, seed=settings["seed"]), grpo=grpo,
        )  # fmt: skip
    except ValidationError as exc:  # pydantic: one line naming the flag and the bad value
        raise _grpo_error(exc) or config_error(exc) from None
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
