"""Training: the one module that imports torch, transformers, TRL and PEFT (lazily).

``train_and_export`` loads the base weights, runs TRL's SFT or DPO trainer over a harvested
JSONL file (LoRA by default, merged afterwards), and writes the merged weights as GGUF.
Install with ``pip install 'loopwright[train]'``.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.loops.improve.config import TrainConfig
from loopwright.loops.improve.export import export_gguf
from loopwright.loops.models.local_model import spec_for, weights_path
from pydantic import BaseModel, Field

StepCallback = Callable[[int, int, float | None], None]
"""(step, max_steps, loss) after each optimizer step."""


class TrainingFailed(Exception):
    """A training step failed (out of memory, a NaN loss): the round ends, nothing is kept."""


class TrainResult(BaseModel):
    """What a training run did."""

    steps: int = Field(description="Optimizer steps taken.")
    final_loss: float | None = Field(description="Loss of the last logged step.")
    tokens: int = Field(description="Tokens the trainer saw (rows x epochs, after truncation).")
    seconds: float = Field(description="Wall time of trainer.train().")
    device: str = Field(description="cpu or cuda.")


def _need_train() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"training needs the train extra ({exc.name} is missing): "
            "pip install torch==2.13.0 && pip install 'loopwright[train]'"
        ) from None


@dataclass
class BaseWeights:
    """Where the base model's weights come from and which GGUF file is the export template."""

    load_dir: Path
    gguf_file: str | None
    template: Path


def resolve_base(model: str) -> BaseWeights:
    """``local/NAME``, ``local/PATH.gguf`` or a Hugging Face checkpoint directory."""
    if model.startswith("local/"):
        gguf = weights_path(spec_for(model.removeprefix("local/")))
        return BaseWeights(gguf.parent, gguf.name, gguf)
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        # A checkpoint has no GGUF of its own: the shipped SmolLM2 file supplies tokenizer
        # and metadata, so only a SmolLM2-shaped checkpoint exports.
        return BaseWeights(path, None, weights_path(spec_for("smollm2-135m")))
    raise UserError(
        f"base model {model!r}: give local/NAME, local/PATH.gguf or a Hugging Face "
        "checkpoint directory (with config.json)"
    )


def load_model(base: BaseWeights, device: str) -> tuple[Any, Any]:
    """(plain trainable model, tokenizer). A GGUF load comes back marked quantised, which
    transformers refuses to fine-tune fully: rebuild a plain model from config + weights."""
    import datasets
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # its de-quantising bar is a bare tqdm that ignores transformers' progress-bar switch
    if not isinstance(gguf_utils.tqdm, functools.partial):
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    kw: dict[str, Any] = {"gguf_file": base.gguf_file} if base.gguf_file else {}
    loaded = AutoModelForCausalLM.from_pretrained(str(base.load_dir), dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(str(base.load_dir), **kw)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    del loaded
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), tok


def pick_device(want: str) -> str:
    import torch

    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no GPU here (use auto or cpu)")
    return want


def read_rows(data: Path, objective: str) -> list[dict[str, Any]]:
    """Harvested rows as TRL takes them: SFT as prompt/completion (loss on the answer only)."""
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line]
    if objective == "dpo":
        return [
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows
        ]
    out = []
    for r in rows:
        msgs = r["messages"]
        out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return out


def lora_config(cfg: TrainConfig) -> Any:
    """PEFT's LoRA settings for ``cfg`` (None: rank 0, every weight trains), for every trainer:
    all linear layers, alpha 2 x rank unless given, no dropout."""
    if not cfg.lora_rank:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _trainer(model: Any, tok: Any, rows: list[dict[str, Any]], cfg: TrainConfig, device: str,
             callbacks: list[Any]) -> Any:  # fmt: skip
    """The TRL trainer for ``cfg`` (shared with the benchmark's bare-TRL baseline)."""
    from datasets import Dataset

    common: dict[str, Any] = {
        "output_dir": "/tmp/loopwright-trl-unused",  # nothing is saved: save_strategy no
        "per_device_train_batch_size": cfg.batch_size,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "learning_rate": cfg.lr(),
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": cfg.seed,
        "use_cpu": device == "cpu",
        "bf16": device == "cuda",
        "max_length": cfg.max_length,
        "dataloader_pin_memory": device == "cuda",
    }
    peft_config = lora_config(cfg)
    ds = Dataset.from_list(rows)
    trainer: Any
    if cfg.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, beta=cfg.beta),
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**common, packing=False),
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar shows step and loss
    return trainer


def _callback(on_step: StepCallback | None, seen: list[float | None]) -> Any:
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            seen.append(float(loss))
            if not math.isfinite(float(loss)):
                control.should_training_stop = True  # the round fails after this step
            if on_step:
                on_step(state.global_step, state.max_steps, float(loss))

    return _Steps()


def train_model(
    base: BaseWeights,
    data: Path,
    cfg: TrainConfig,
    on_step: StepCallback | None = None,
) -> tuple[Any, Any, TrainResult]:
    """Train on ``data`` and return (merged plain model, tokenizer, result)."""
    _need_train()
    import torch

    rows = read_rows(data, cfg.objective)
    if not rows:
        raise TrainingFailed(f"{data} has no rows to train on")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tok = load_model(base, device)
    losses: list[float | None] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' notices about TRL's args
        trainer = _trainer(model, tok, rows, cfg, device, [_callback(on_step, losses)])
    tokens = _count_tokens(trainer)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            trainer.train()
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed(f"out of memory on {device} at batch {cfg.batch_size}: "
                             "lower --batch-size or --max-length") from exc  # fmt: skip
    seconds = time.perf_counter() - t0
    final = losses[-1] if losses else None
    if final is not None and not math.isfinite(final):
        raise TrainingFailed(f"loss became {final} at step {trainer.state.global_step}: "
                             "lower --learning-rate")  # fmt: skip
    merged = trainer.model
    if cfg.lora_rank:
        merged = merged.merge_and_unload()
    merged.eval()
    result = TrainResult(
        steps=int(trainer.state.global_step),
        final_loss=final,
        tokens=int(tokens * max(1.0, cfg.epochs if not cfg.max_steps else 1.0)),
        seconds=seconds,
        device=device,
    )
    return merged, tok, result


def _count_tokens(trainer: Any) -> int:
    """Tokens of one pass over the tokenised train set (for tokens/s)."""
    ds = trainer.train_dataset
    total = 0
    for col in ("input_ids", "chosen_input_ids", "rejected_input_ids", "prompt_input_ids"):
        if col in ds.column_names:
            total += sum(len(x) for x in ds[col])
    return total


def state_arrays(model: Any) -> dict[str, Any]:
    """The model's weights as float32 numpy arrays, Hugging Face names."""
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def train_and_export(
    base_model: str,
    data: Path,
    out: Path,
    cfg: TrainConfig,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train from ``base_model`` on ``data`` and write the merged model to ``out`` (GGUF)."""
    base = resolve_base(base_model)
    model, _tok, result = train_model(base, data, cfg, on_step)
    export_gguf(state_arrays(model), base.template, out, cfg.export)
    return result


def greedy_tokens(model: Any, tok: Any, prompt: str, max_new_tokens: int = 24) -> str:
    """The transformers model's greedy answer to a one-message chat (for fidelity checks)."""
    import torch

    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
