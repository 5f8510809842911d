"""What a harvest takes (options) and what it gives back (the result and its report)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Format = Literal["sft", "dpo", "kto", "prm", "critique", "corrections"]
FORMATS: tuple[Format, ...] = ("sft", "dpo", "kto", "prm", "critique", "corrections")
PairSource = Literal["siblings", "revisions", "judge"]
Label = Literal["in_loop", "graded"]
Dedup = Literal["normalised", "exact", "none"]
Style = Literal["conversational", "plain"]
PrmLabel = Literal["subtree", "value"]

# Per-format cap on rows (pairs, paths) per prompt when the user sets none.
DEFAULT_MAX_PER_PROMPT: dict[str, int] = {
    "sft": 4,
    "dpo": 4,
    "kto": 8,
    "prm": 4,
    "critique": 2,
    "corrections": 2,
}


class HarvestOptions(BaseModel):
    """Filters and shaping of one export. Every field has a CLI flag of the same name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: tuple[str, ...] = Field((), description="Run names or ids; empty: every run.")
    loops: tuple[str, ...] = Field((), description="Loop names; empty: every loop.")
    models: tuple[str, ...] = Field((), description="Model strings; empty: every model.")
    min_round: int | None = Field(None, ge=0, description="Drop nodes of earlier rounds.")
    max_round: int | None = Field(None, ge=0, description="Drop nodes of later rounds.")
    label: Label = Field(
        "in_loop",
        description="Which verdict labels a node: the in-loop verifier's or the held-out "
        "grader's (graded verdicts exist for the nodes that were graded, usually the finals).",
    )
    verified_only: bool = Field(
        False, description="kto/corrections/prm: keep only rows whose final answer passed."
    )
    min_score: float | None = Field(
        None, description="sft/kto: minimum verdict score of a kept completion."
    )
    min_margin: float = Field(
        0.0, ge=0.0, description="dpo: minimum score_chosen - score_rejected (ties never pass)."
    )
    max_per_prompt: int | None = Field(
        None, gt=0, description="Rows (pairs, paths) kept per prompt; default depends on format."
    )
    pairs: tuple[PairSource, ...] = Field(
        ("siblings", "revisions", "judge"), description="dpo: where pairs come from."
    )
    pair_scope: Literal["task", "prompt", "parent"] = Field(
        "task",
        description="dpo siblings: pair answers of the same task in the same run (on-policy), "
        "of the same prompt across runs and models, or only children of the same tree node.",
    )
    dedup: Dedup = Field(
        "normalised",
        description="Drop repeated rows: by a hash of case/punctuation/space-normalised text, "
        "of the exact text, or not at all.",
    )
    contamination: tuple[Path, ...] = Field(
        (), description="Eval JSONL files; prompts overlapping them are left out."
    )
    contamination_field: str | None = Field(
        None,
        description="Field holding the eval text; default the first of prompt, question, "
        "problem, input, text.",
    )
    ngram: int = Field(8, ge=1, le=64, description="Word n-gram size of the overlap check.")
    contamination_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A prompt is contaminated when this share of its n-grams occurs in an eval "
        "text (prompts shorter than n words: when the whole prompt does).",
    )
    prm_label: PrmLabel = Field(
        "subtree",
        description="prm: a step is good when some verified answer (a finished path or a "
        "rollout) descends from it (Math-Shepherd), or when its tree value >= value_threshold.",
    )
    value_threshold: float = Field(0.5, description="prm with prm_label=value.")
    style: Style = Field(
        "conversational",
        description="conversational: chat-message lists where TRL has that form; plain: strings.",
    )
    system: str | None = Field(None, description="A system message put before every prompt.")
    provenance: bool = Field(
        True, description="Add a `provenance` struct column (run, task, nodes, model, loop...)."
    )

    @field_validator("runs", "loops", "models", "pairs", "contamination", mode="before")
    @classmethod
    def _tuple(cls, v: object) -> object:
        if isinstance(v, str | Path):
            return (v,)
        return tuple(v) if isinstance(v, list | set) else v

    @model_validator(mode="after")
    def _check(self) -> HarvestOptions:
        if (
            self.min_round is not None
            and self.max_round is not None
            and self.min_round > self.max_round
        ):
            raise ValueError(f"min_round {self.min_round} is above max_round {self.max_round}")
        if not self.pairs:
            raise ValueError("pairs is empty: give at least one of siblings, revisions, judge")
        return self

    def cap(self, fmt: str) -> int:
        return self.max_per_prompt or DEFAULT_MAX_PER_PROMPT[fmt]


class HarvestResult(BaseModel):
    """What one export wrote and what it left out."""

    model_config = ConfigDict(frozen=True)

    format: Format
    out: str | None = Field(description="Where the rows went (None: not written).")
    rows: int = Field(description="Rows written.")
    prompts: int = Field(description="Distinct prompts among the written rows.")
    per_prompt_max: int = Field(0, description="Most rows any one prompt has.")
    considered: int = Field(description="Rows before exclusions.")
    excluded: dict[str, int] = Field(description="Rows left out, by reason.")
    by_source: dict[str, int] = Field({}, description="dpo: written pairs per source.")
    labels: dict[str, int] = Field({}, description="kto/prm: written labels true/false.")
    margin_histogram: list[tuple[float, float, int]] = Field(
        [], description="dpo: (low, high, pairs) bins of written margins."
    )
    contaminated_tasks: list[str] = Field([], description="Task ids left out as contaminated.")
    columns: list[str] = Field([], description="Columns of the written dataset.")
    seconds: float = Field(0.0, description="Wall time of the export.")
