"""Per-sample pass rate of a model on builtin:code, with self-refine's first-draft prompt.

    python benchmarks/code_pass_rate.py --samples 4 [--json]

Samples k drafts per task (temperature 0.7, ``code_max_tokens`` 384) through the model client
and runs each against the task's hidden tests with the ``CodeTests`` verifier in the sandbox.
The built-in set is meant to sit where the embedded model passes some tasks but not most
(roughly 10-40 % per sample), so loops that sample or revise have room to help.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path

from loopwright.loops.graphs.self_refine import SelfRefineOptions
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.prompts import render
from loopwright.loops.tasks import Task, builtin_code
from loopwright.loops.verify import grade_many

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="local/smollm2-135m")
    ap.add_argument("--tasks", type=int, default=None, help="first N tasks (default: all)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--sandbox", default="bwrap")
    ap.add_argument("--verbose", action="store_true", help="print every task's pass count")
    ap.add_argument("--save", help="write every draft and its verdict to this JSONL file")
    ap.add_argument("--max-tokens", type=int, default=SelfRefineOptions().code_max_tokens)
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, tasks=2, samples=1, max_tokens=48)
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


async def bench(args: argparse.Namespace) -> list[dict[str, object]]:
    tasks = builtin_code(n=args.tasks)
    max_tokens = args.max_tokens
    client = ModelClient(ClientConfig(model=args.model, max_tokens=max_tokens, concurrency=4))
    system = render("self_refine", "system")

    async def one(task: Task) -> list[str]:
        user = render("self_refine", "generate_code", question=task.prompt.rstrip())
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        samples = await client.sample(
            msgs, n=args.samples, seed=args.seed + 1, temperature=args.temperature
        )
        return [s.text for s in samples]

    t0 = time.perf_counter()
    drafts = await asyncio.gather(*(one(t) for t in tasks))
    t_gen = time.perf_counter() - t0
    pairs = [(t, d) for t, ds in zip(tasks, drafts, strict=True) for d in ds]
    verdicts = grade_many(pairs, concurrency=4, sandbox=args.sandbox)
    t_all = time.perf_counter() - t0

    per_task: dict[str, list[bool]] = collections.defaultdict(list)
    for (task, _), v in zip(pairs, verdicts, strict=True):
        per_task[task.id].append(bool(v and v.passed))
    by: dict[str, list[bool]] = collections.defaultdict(list)
    for task in tasks:
        for key in ("difficulty", "category"):
            by[f"{key}={task.metadata[key]}"].extend(per_task[task.id])
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            for (task, draft), v in zip(pairs, verdicts, strict=True):
                row = {"task_id": task.id, "draft": draft, "verdict": v and v.model_dump()}
                f.write(json.dumps(row) + "\n")
    # A sandbox that was killed or timed out is not the model's fault: count it separately.
    infra = sum(1 for v in verdicts if v and (v.details.get("killed_by") or v.details["timed_out"]))
    flat = [ok for oks in per_task.values() for ok in oks]
    print(f"model {args.model}, {len(tasks)} tasks x {args.samples} samples, T={args.temperature}")
    print(f"per-sample pass rate: {sum(flat) / len(flat):.1%} ({sum(flat)}/{len(flat)})")
    for key, oks in sorted(by.items()):
        print(f"  {key:>18}: {sum(oks) / len(oks):.1%} of {len(oks)}")
    any_k = sum(any(oks) for oks in per_task.values())
    print(f"any-of-{args.samples} passed: {any_k / len(tasks):.1%} ({any_k}/{len(tasks)})")
    print(f"drafts killed or timed out in the sandbox: {infra}")
    if args.verbose:
        for task in tasks:
            oks = per_task[task.id]
            print(f"  {task.id} {task.entry_point:<20} {sum(oks)}/{len(oks)}")
    print(f"wall time: {t_all:.0f} s (generation {t_gen:.0f} s)")
    return [
        {
            "figure": f"{args.model} per-sample pass rate on builtin:code, {len(tasks)} tasks x "
            f"{args.samples} samples, {args.sandbox} sandbox (baseline: samples)",
            "value": sum(flat),
            "baseline": len(flat),
            "ratio": round(sum(flat) / len(flat), 3),
            "target": "0.10-0.40",
        }
    ]


if __name__ == "__main__":
    sys.exit(main())
