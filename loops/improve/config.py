"""What ``loopwright improve`` takes: the rounds, the method and the training settings.

Plain pydantic, no torch: the CLI validates everything here before anything heavy loads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from loopwright.loops.execution.run_config import SEED_MAX, RunSettings
from loopwright.loops.improve.export import ExportType
from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["rest-em", "star", "dpo", "self-reward", "grpo"]
METHODS: tuple[Method, ...] = ("rest-em", "star", "dpo", "self-reward", "grpo")
Device = Literal["auto", "cpu", "cuda"]


class TrainConfig(BaseModel):
    """One training run (TRL trainer over a harvested file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: Literal["sft", "dpo", "grpo"] = Field(
        "sft", description="TRL trainer: SFT, DPO or GRPO."
    )
    lora_rank: int = Field(16, ge=0, description="LoRA rank; 0 fine-tunes every weight.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha; default 2 x rank.")
    epochs: float = Field(2.0, gt=0, description="Passes over the data (unless max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Default: SFT 2e-4 with LoRA / 2e-5 full; DPO 5e-5 with LoRA / 5e-6 full.",
    )
    batch_size: int = Field(8, ge=1, description="Rows per optimizer step (per device).")
    max_length: int = Field(512, ge=16, description="Tokens kept of each row.")
    beta: float = Field(0.1, gt=0, description="DPO: strength of the pull to the reference.")
    export: ExportType = Field("Q8_0", description="GGUF tensor type of the exported model.")
    device: Device = Field("auto", description="auto: CUDA when torch sees a GPU, else CPU.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Data order and initialisation seed.")

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        lora = self.lora_rank > 0
        if self.objective == "sft":
            return 2e-4 if lora else 2e-5
        if self.objective == "grpo":
            return 5e-5 if lora else 1e-5
        return 5e-5 if lora else 5e-6


LossType = Literal["dapo", "grpo", "dr_grpo", "bnpo"]
ScaleRewards = Literal["group", "batch", "none"]
RolloutBackend = Literal["auto", "engine", "trl", "self-refine"]


class GrpoConfig(BaseModel):
    """Online RL on verifiable rewards (``--method grpo``): TRL's ``GRPOTrainer`` with
    loopwright's graders and verifiers as the reward. Steps are GRPO optimizer steps; each
    samples ``generations`` completions for each of ``prompts_per_step`` train tasks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reward: str = Field(
        "grader",
        description="grader (the held-out grader on the train tasks' keys: RLVR), "
        "verifier[:NAME] (an in-loop verifier, blind task) or majority (label-free, TTRL: the "
        "group's most common answer is the pseudo-label).",
    )
    steps: int = Field(40, ge=1, description="GRPO optimizer steps in all.")
    generations: int = Field(4, ge=2, description="Completions sampled per prompt (group size).")
    prompts_per_step: int = Field(2, ge=1, description="Train prompts per step.")
    max_completion_tokens: int = Field(128, ge=8, description="Completion length cap (tokens).")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    beta: float = Field(0.0, ge=0, description="KL pull to the reference model; 0: none.")
    loss_type: LossType = Field("dapo", description="TRL loss: dapo, grpo, dr_grpo or bnpo.")
    scale_rewards: ScaleRewards = Field(
        "group", description="Advantage scaling: group, batch, none."
    )
    format_weight: float = Field(
        0.0, ge=0, description="Weight of a format term (1 when an answer can be extracted)."
    )
    length_weight: float = Field(
        0.0, ge=0, description="Weight of a length term (-1 when the completion hits the cap)."
    )
    eval_every: int = Field(
        0, ge=0, description="Checkpoint, export and evaluate every K steps; 0: at the end only."
    )
    save_every: int = Field(
        5, ge=1, description="Save a resumable checkpoint every K steps (kill -9 loses at most K)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Resumable checkpoints kept on disk.")
    eval_selector: Literal["majority", "verifier"] = Field(
        "majority",
        description="The eval loop's own pick among its samples: majority (no extra calls) "
        "or verifier (the model's self-check, as rounds do; doubles the eval's calls). "
        "pass@1, pass@k and maj@k read the plain samples either way.",
    )
    rollout: RolloutBackend = Field(
        "auto",
        description="auto: the embedded llama.cpp engine on CPU, TRL's own generation (vLLM "
        "when installed) on GPU; engine or trl to choose. self-refine: two-turn episodes "
        "(draft, then a revision of it in the same conversation: the two-turn loop) on the "
        "engine, rewarded on the revision plus improve_weight x (revision - draft).",
    )
    improve_weight: float = Field(
        0.5,
        ge=0,
        description="rollout self-refine: weight of the improvement term, the revision's "
        "correctness minus the draft's (SCoRe's progress bonus); 0: none.",
    )

    def episode(self) -> bool:
        """Whether rollouts are two-turn episodes (``rollout=self-refine``)."""
        return self.rollout == "self-refine"

    def reward_kind(self) -> str:
        """grader, verifier or majority."""
        return self.reward.split(":", 1)[0]

    def reward_verifier(self) -> str | None:
        """NAME of ``verifier:NAME`` (None: the task kind's default verifier)."""
        kind, _, name = self.reward.partition(":")
        return name or None if kind == "verifier" else None

    @model_validator(mode="after")
    def _check(self) -> GrpoConfig:
        if self.reward_kind() not in ("grader", "verifier", "majority"):
            raise ValueError(f"reward {self.reward!r}: use grader, verifier[:NAME] or majority")
        if ":" in self.reward and self.reward_kind() != "verifier":
            raise ValueError(f"reward {self.reward!r}: only verifier takes a :NAME")
        return self

    def checkpoints(self) -> list[int]:
        """The steps whose model is exported and evaluated (each one a round)."""
        if not self.eval_every:
            return [self.steps]
        marks = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return marks if marks and marks[-1] == self.steps else [*marks, self.steps]


class ImproveConfig(RunSettings):
    """A series of self-improvement rounds, stored under ``name`` in the trace database; its
    generation and eval runs share the run settings (``RunSettings``)."""

    name: str = Field(min_length=1, description="Name of the series (resume keys on it).")
    tasks: str = Field(description="Train task spec (the loop's tasks each round).")
    eval_tasks: str = Field(description="Held-out eval task spec; must not overlap tasks.")
    rounds: int = Field(3, ge=0, description="Training rounds after the base evaluation.")
    method: Method = Field("rest-em", description="rest-em, star, dpo or self-reward.")
    base: str = Field(
        "local/smollm2-135m",
        description="Base model: local/NAME, local/PATH.gguf or a Hugging Face checkpoint dir.",
    )
    loop: str = Field("best-of-n", description="Loop generating the training samples.")
    options: dict[str, Any] = Field(default_factory=dict, description="Loop options.")
    limit: int | None = Field(None, ge=1, description="Only the first N train tasks.")
    eval_limit: int | None = Field(None, ge=1, description="Only the first N eval tasks.")
    drop_overlap: bool = Field(
        False, description="Train without the train prompts that overlap eval (else refuse)."
    )
    eval_samples: int = Field(4, ge=1, description="Plain samples per eval task (pass@k).")
    max_per_prompt: int | None = Field(
        None, ge=1, description="Training rows kept per prompt (harvest cap)."
    )
    data: Literal["accumulate", "replace"] = Field(
        "replace", description="Train on every round's samples so far, or this round's only."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Trainer settings.")
    grpo: GrpoConfig = Field(
        default_factory=GrpoConfig, description="--method grpo: rewards, steps, groups."
    )
    workdir: str | None = Field(
        None, description="Where data and models go; default NAME.improve/ beside the db."
    )
    resume: bool = Field(False, description="Continue the series called name.")

    BOOKKEEPING: ClassVar[frozenset[str]] = frozenset({"resume", "workdir"})

    @model_validator(mode="after")
    def _method_objective(self) -> ImproveConfig:
        want = {"dpo": "dpo", "self-reward": "dpo", "grpo": "grpo"}.get(self.method, "sft")
        if self.train.objective != want:
            # The method decides the trainer; a config that says otherwise is rewritten.
            object.__setattr__(self, "train", self.train.model_copy(update={"objective": want}))
        return self

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        if self.method != "grpo":  # series stored before GRPO existed keep their hash
            out.pop("grpo", None)
        return out

    def restarts_from_base(self) -> bool:
        """ReST-EM and STaR fine-tune the base each round; DPO methods iterate."""
        return self.method in ("rest-em", "star")
