"""Training and serving cost of `loopwright improve`, each against a same-run baseline.

1. Training tokens/s of loopwright's trainer (``loops/improve/train.py``: TRL SFTTrainer
   with our data conversion, progress callback and NaN check) against a bare TRL
   SFTTrainer built here on the same rows, model and settings (float32 on CPU on both
   sides), each counting the tokens of its own tokenised train set. Only
   ``trainer.train()`` is timed; one untimed warm-up step first, then the two alternate,
   median of the repeats. Goal >= 0.9.
2. Completion tokens/s of the exported GGUF (merged weights, the export type given) served
   by the embedded engine, against the shipped base model, same prompts and seeds, one
   stream. Goal >= 0.9.

    python benchmarks/improve_train.py [--rows 32] [--steps 4] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke


def _rows(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        a, b = 2 + i % 8, 3 + (i * 7) % 6
        q = f"Sam has {a} boxes with {b} pens in each box. How many pens are there in total?"
        ans = f"Each box has {b} pens and there are {a} boxes, so {a} x {b} = {a * b}. The answer is {a * b}."
        out.append({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": ans}]})  # fmt: skip
    return out


def _bare_trainer(model: Any, tok: Any, rows: list[dict[str, Any]], cfg: Any) -> Any:
    """The baseline: TRL's SFTTrainer as its docs show it, same data and settings.

    ``bf16`` is given because SFTConfig defaults it to True, which on CPU trains under bf16
    autocast; loopwright's trainer trains in float32 on CPU (bf16 only on CUDA), so leaving
    TRL's default here compared two different precisions.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    ds = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.max_steps, learning_rate=cfg.lr(), lr_scheduler_type="constant",
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=cfg.seed, use_cpu=True, bf16=False, max_length=cfg.max_length, packing=False,
        dataloader_pin_memory=False,
    )  # fmt: skip
    peft = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    return SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                      peft_config=peft if cfg.lora_rank else None)  # fmt: skip


def _bare_trl(model: Any, tok: Any, rows: list[dict[str, Any]], cfg: Any) -> tuple[int, float]:
    """(tokens of its tokenised train set, seconds of ``trainer.train()``) for the baseline."""
    from loopwright.loops.improve import train as T

    trainer = _bare_trainer(model, tok, rows, cfg)
    tokens = T._count_tokens(trainer)
    t0 = time.perf_counter()
    trainer.train()
    return tokens, time.perf_counter() - t0


def _serve_rate(model: str, prompts: list[str], max_tokens: int) -> float:
    from loopwright.loops.models.local_model import LocalEngine

    engine = LocalEngine.get(model)
    engine.generate([{"role": "user", "content": "hi"}], {"max_tokens": 4})  # warm-up
    tokens, t0 = 0, time.perf_counter()
    for i, p in enumerate(prompts):
        out = engine.generate([{"role": "user", "content": p}],
                              {"max_tokens": max_tokens, "temperature": 0.7, "seed": i})  # fmt: skip
        tokens += out["completion_tokens"]
    return tokens / (time.perf_counter() - t0)


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    from loopwright.loops.improve import TrainConfig
    from loopwright.loops.improve import train as T
    from loopwright.loops.improve.export import export_gguf

    work = Path(tempfile.mkdtemp(prefix="bench-improve-"))
    data = work / "sft.jsonl"
    rows = _rows(args.rows)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, lora_rank=args.lora_rank,
                      export=args.export, device="cpu")  # fmt: skip
    base = T.resolve_base("local/smollm2-135m")
    ours: list[float] = []
    bare: list[float] = []
    tokens = 0
    model = None
    # The first trainer.train() in a process pays one-off costs (lazy imports, oneDNN
    # kernel setup) that would land on whichever side runs first: one untimed step first.
    if args.warmup:
        warm_m, warm_tok = T.load_model(base, "cpu")
        _bare_trl(warm_m, warm_tok, rows, cfg.model_copy(update={"max_steps": args.warmup}))
        del warm_m
    for rep in range(args.repeats):
        for side in ("ours", "bare") if rep % 2 == 0 else ("bare", "ours"):
            if side == "ours":
                model, _tok, res = T.train_model(base, data, cfg)
                ours.append(res.tokens / res.seconds)
                tokens = res.tokens
            else:
                m, tok = T.load_model(base, "cpu")
                bare_tokens, secs = _bare_trl(m, tok, rows, cfg)
                bare.append(bare_tokens / secs)
            print(f"  rep {rep + 1} {side}: {(ours if side == 'ours' else bare)[-1]:.0f} tok/s")
    ours_r, bare_r = statistics.median(ours), statistics.median(bare)
    print(f"training tok/s: loopwright {ours_r:.0f}, bare TRL {bare_r:.0f}, {tokens} tokens a run")
    out = export_gguf(T.state_arrays(model), base.template, work / "m.gguf", args.export)
    prompts = [f"What is {a} times {a + 1}? Explain step by step." for a in range(args.requests)]
    # Both engines with one thread count: each engine otherwise picks it from the cores idle
    # when it starts, and the first starts right after training. Sides alternate; medians.
    from loopwright.loops.models.local_model import default_threads

    os.environ.setdefault("LOOPWRIGHT_LOCAL_THREADS", str(default_threads()))
    rates: dict[str, list[float]] = {"served": [], "shipped": []}
    for _ in range(args.repeats):
        rates["served"].append(_serve_rate(str(out), prompts, args.max_tokens))
        rates["shipped"].append(_serve_rate("smollm2-135m", prompts, args.max_tokens))
    served, shipped = (statistics.median(rates[k]) for k in ("served", "shipped"))
    print(f"serving threads: {os.environ['LOOPWRIGHT_LOCAL_THREADS']}; runs: {rates}")
    print(f"serving tok/s: exported {args.export} {served:.1f}, shipped Q4_1 {shipped:.1f}")
    return [
        {"figure": f"improve training tok/s (LoRA r{args.lora_rank}, batch {args.batch_size}, CPU) "
                   "(baseline: bare TRL SFTTrainer)",
         "value": round(ours_r, 1), "baseline": round(bare_r, 1),
         "ratio": round(ours_r / bare_r, 3), "target": ">= 0.9"},
        {"figure": f"exported {args.export} GGUF completion tok/s, 1 stream "
                   "(baseline: shipped SmolLM2 Q4_1)",
         "value": round(served, 1), "baseline": round(shipped, 1),
         "ratio": round(served / shipped, 3), "target": ">= 0.9"},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--export", default="Q8_0")
    ap.add_argument("--requests", type=int, default=4, help="serving requests per side")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps first (0: none)")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(
        ap,
        argv,
        rows=2,
        steps=1,
        batch_size=1,
        lora_rank=2,
        requests=1,
        max_tokens=4,
        repeats=1,
        warmup=0,
    )
    try:
        import trl  # noqa: F401
    except ImportError:
        print("SKIPPED: needs the train extra (pip install 'loopwright[train]')")
        if args.json:
            print(json.dumps({"rows": [], "skipped": "the train extra is not installed"}))
        return 0
    rows = bench(args)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
