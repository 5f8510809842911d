"""GRPO steps per second: rollouts from the embedded engine vs bare TRL, in the same run.

Both sides are TRL's ``GRPOTrainer`` on SmolLM2-135M (de-quantised from the shipped GGUF,
float32, full fine-tune, CPU) with the same settings, tasks (``builtin:arithmetic``, the
prompt every loop drafts with), seed and reward (1 when the completion's last number equals
the reference, else 0): the baseline as TRL's docs show it (``transformers.generate``
inside the trainer); the other with loopwright's ``rollout_func`` on the embedded llama.cpp
engine serving the current policy (``loops/improve/rollout_engine.py``: weights exported to
GGUF and the server restarted after every optimizer step).

Figures: steps/s of the engine side against the baseline (goal on a CPU: >= 2.0), with the
step-time breakdown of each side (generation, reward, update, sync), and training tokens/s
of the update phase (prompt + completion tokens of the step's batch over the step time
left after generation, reward and sync) against the baseline (goal >= 0.9). Only
``trainer.train()`` is timed. The engine's first export of the initial policy (a one-off,
like building the trainer) is done before and printed apart. One untimed warm-up step runs
first (the first ``train()`` in a process pays one-off costs).

    python benchmarks/grpo.py [--steps 4] [--prompts 2] [--generations 4] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

MODEL = "local/smollm2-135m"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def correct(completions: list[Any], reference: list[str], **_: Any) -> list[float | None]:
    """1.0 when the completion's last number equals the reference, else 0.0."""
    out: list[float | None] = []
    for comp, ref in zip(completions, reference, strict=True):
        text = comp[-1]["content"] if isinstance(comp, list) else str(comp)
        nums = NUMBER.findall(text.replace(",", ""))
        try:
            out.append(float(bool(nums) and float(nums[-1]) == float(ref)))
        except ValueError:
            out.append(0.0)
    return out


def _dataset(n: int) -> Any:
    from datasets import Dataset
    from loopwright.loops.prompts import draft_messages
    from loopwright.loops.tasks import load_tasks

    tasks = load_tasks("builtin:arithmetic", limit=n)
    return Dataset.from_list(
        [{"prompt": draft_messages(t), "reference": str(t.reference)} for t in tasks]
    )


class Clock:
    """Per-step seconds of each phase, from wrapped trainer methods and a callback."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.cur: dict[str, float] = {}
        self.t0 = 0.0

    def wrap(self, obj: Any, name: str, phase: str) -> None:
        inner = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.cur[phase] = self.cur.get(phase, 0.0) + time.perf_counter() - t

        setattr(obj, name, timed)

    def callback(self, trainer: Any) -> Any:
        from transformers import TrainerCallback

        clock = self

        class _Steps(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, *_: Any, **__: Any) -> None:
                clock.cur = {"tokens0": float(trainer.state.num_input_tokens_seen)}
                clock.t0 = time.perf_counter()

            def on_step_end(self, *_: Any, **__: Any) -> None:
                cur = clock.cur
                cur["step"] = time.perf_counter() - clock.t0
                cur["tokens"] = float(trainer.state.num_input_tokens_seen) - cur.pop("tokens0")
                gen = cur.get("generation", 0.0)  # rollout_func's time includes its sync
                cur["generation"] = gen - cur.get("sync", 0.0)
                cur["update"] = cur["step"] - gen - cur.get("reward", 0.0)
                clock.steps.append(cur)

        return _Steps()


def _trainer(
    model: Any,
    tok: Any,
    ds: Any,
    args: argparse.Namespace,
    steps: int,
    max_tokens: int,
    rollout: Callable[..., Any] | None,
) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    conf = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-"),
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=max_tokens,
        max_steps=steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        use_cpu=True,
        bf16=False,
        beta=0.0,
        gradient_checkpointing=False,
        temperature=1.0,
        loss_type="dapo",
        dataloader_pin_memory=False,
    )  # the settings DESIGN.md measured GRPO on CPU with (TRL's bf16 default fails on CPU)
    kw: dict[str, Any] = {"rollout_func": rollout} if rollout else {}
    if args.lora_rank:
        from peft import LoraConfig

        kw["peft_config"] = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                       lora_dropout=0.0, target_modules="all-linear",
                                       task_type="CAUSAL_LM")  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=conf, train_dataset=ds,
                          processing_class=tok, **kw)  # fmt: skip
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def run_side(side: str, args: argparse.Namespace, ds: Any, work: Path) -> dict[str, Any]:
    """Train ``args.steps`` steps on one side; its timings."""
    import torch
    from loopwright.loops.improve import train as T
    from loopwright.loops.improve.config import GrpoConfig
    from loopwright.loops.improve.rollout_engine import make_rollout_func, start_engine

    torch.manual_seed(args.seed)
    base = T.resolve_base(MODEL)
    model, tok = T.load_model(base, "cpu")
    clock = Clock()
    engine = None
    setup = 0.0
    rollout = None
    if side == "engine":
        cfg = GrpoConfig(steps=args.steps, generations=args.generations, rollout="engine",
                         prompts_per_step=args.prompts, max_completion_tokens=args.max_tokens)  # fmt: skip
        engine = start_engine(cfg, base.template, work / "engine", export=args.export,
                              threads=args.threads or None)  # fmt: skip
        setup = engine.sync(model, step=0)  # the initial policy, before train()
        inner = make_rollout_func(engine, tok, cfg, seed=args.seed)

        def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
            out = inner(prompts, trainer)
            clock.cur["sync"] = clock.cur.get("sync", 0.0) + engine.timings["sync_s"]
            return out

    trainer = _trainer(model, tok, ds, args, args.steps, args.max_tokens, rollout)
    clock.wrap(trainer, "_generate", "generation")
    clock.wrap(trainer, "_calculate_rewards", "reward")
    trainer.add_callback(clock.callback(trainer))
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    if engine is not None:
        engine.close()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    total = {k: sum(s.get(k, 0.0) for s in clock.steps)
             for k in ("step", "generation", "reward", "update", "sync", "tokens")}  # fmt: skip
    return {"side": side, "wall": wall, "steps": clock.steps, "total": total, "setup": setup,
            "reward_mean": statistics.fmean(rewards) if rewards else None}  # fmt: skip


def _warmup(args: argparse.Namespace, ds: Any) -> None:
    """One untimed tiny step: the first train() of a process pays lazy imports, kernels."""
    from loopwright.loops.improve import train as T

    model, tok = T.load_model(T.resolve_base(MODEL), "cpu")
    _trainer(model, tok, ds, args, 1, 8, None).train()


def _show(r: dict[str, Any]) -> None:
    t = r["total"]
    n = len(r["steps"])
    print(f"  {r['side']:>6}: {n} steps in {r['wall']:.1f} s ({n / r['wall']:.3f} steps/s); "
          f"per step: generation {t['generation'] / n:.1f} s, reward {t['reward'] / n:.2f} s, "
          f"update {t['update'] / n:.1f} s, sync {t['sync'] / n:.2f} s; "
          f"{t['tokens'] / n:.0f} tokens a step; mean reward {r['reward_mean']}")  # fmt: skip


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    import warnings

    warnings.simplefilter("ignore")
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    ds = _dataset(max(args.steps, 1) * args.prompts * 2)
    work = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    if args.warmup:
        _warmup(args, ds)
    order = ("engine", "bare") if args.engine_first else ("bare", "engine")
    res = {side: run_side(side, args, ds, work) for side in order}
    eng, bare = res["engine"], res["bare"]
    print(f"engine: first export + load of the initial policy (before train): "
          f"{eng['setup']:.1f} s ({args.export})")  # fmt: skip
    for side in order:
        _show(res[side])
    sps = {k: len(r["steps"]) / r["wall"] for k, r in res.items()}
    upd = {k: r["total"]["tokens"] / max(r["total"]["update"], 1e-9) for k, r in res.items()}
    gen = {k: r["total"]["generation"] for k, r in res.items()}
    ratio = sps["engine"] / sps["bare"]
    print(f"steps/s: engine {sps['engine']:.4f}, bare TRL {sps['bare']:.4f}, ratio {ratio:.2f}")
    print(f"update-phase tokens/s: engine side {upd['engine']:.0f}, bare TRL {upd['bare']:.0f}, "
          f"ratio {upd['engine'] / upd['bare']:.2f}")  # fmt: skip
    how = f"LoRA r{args.lora_rank}" if args.lora_rank else "full FT"
    size = f"{args.prompts}x{args.generations}, <= {args.max_tokens} tokens, {how}, CPU"
    return [
        {"figure": f"GRPO steps/s ({size}): engine rollouts ({args.export}) "
                   "(baseline: bare GRPOTrainer, transformers generation)",
         "value": round(sps["engine"], 4), "baseline": round(sps["bare"], 4),
         "ratio": round(ratio, 3), "target": ">= 2.0"},
        {"figure": f"GRPO update-phase training tok/s ({size}) (baseline: bare GRPOTrainer)",
         "value": round(upd["engine"], 1), "baseline": round(upd["bare"], 1),
         "ratio": round(upd["engine"] / upd["bare"], 3), "target": ">= 0.9"},
        {"figure": f"GRPO generation seconds a step ({size}): engine vs transformers "
                   "(lower is better)",
         "value": round(gen["engine"] / len(eng["steps"]), 2),
         "baseline": round(gen["bare"] / len(bare["steps"]), 2),
         "ratio": round(gen["engine"] / max(gen["bare"], 1e-9), 3), "target": "-"},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=128, help="completion cap")
    ap.add_argument("--lr", type=float, default=None, help="default 1e-5 full, 5e-5 LoRA")
    ap.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tune")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: default)")
    ap.add_argument("--export", default="F16", help="the engine's GGUF type")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1, help="an untimed warm-up step (0: none)")
    ap.add_argument("--engine-first", action="store_true", help="run the engine side first")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, steps=1, prompts=2, generations=2, max_tokens=16,
                             warmup=0)  # fmt: skip
    try:
        import trl  # noqa: F401
    except ImportError:
        print("SKIPPED: needs the train extra (pip install 'loopwright[train]')")
        if args.json:
            print(json.dumps({"rows": [], "skipped": "the train extra is not installed"}))
        return 0
    if args.lr is None:
        args.lr = 5e-5 if args.lora_rank else 1e-5
    rows = bench(args)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
