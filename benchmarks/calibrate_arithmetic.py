"""Per-sample accuracy of a model on builtin:arithmetic, with self-refine's first-draft prompt.

    python benchmarks/calibrate_arithmetic.py --tasks 40 --samples 4 [--json]

The built-in set is meant to sit where the embedded model is sometimes right (20-70% per
sample), so loops that sample, vote or revise have room to help.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path

from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.prompts import render
from loopwright.loops.tasks import builtin_arithmetic
from loopwright.tools.numeric import check_number

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="local/smollm2-135m")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, tasks=2, samples=1, max_tokens=24)
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


async def bench(args: argparse.Namespace) -> list[dict[str, object]]:
    tasks = builtin_arithmetic(seed=args.seed, n=args.tasks)
    client = ModelClient(ClientConfig(model=args.model, max_tokens=args.max_tokens, concurrency=4))
    system = render("self_refine", "system")

    async def one(task):  # type: ignore[no-untyped-def]
        msgs = [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": render("self_refine", "generate_math", question=task.prompt),
            },
        ]
        samples = await client.sample(
            msgs, n=args.samples, seed=args.seed + 1, temperature=args.temperature
        )
        return task, [check_number(s.text, task.reference or "").passed for s in samples]

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in tasks))
    by_form: dict[str, list[bool]] = collections.defaultdict(list)
    for task, ok in results:
        by_form[task.metadata["form"]].extend(ok)
    flat = [x for _, ok in results for x in ok]
    print(f"model {args.model}, {args.tasks} tasks x {args.samples} samples, T={args.temperature}")
    print(f"per-sample accuracy: {sum(flat) / len(flat):.1%} ({sum(flat)}/{len(flat)})")
    for form, ok in sorted(by_form.items()):
        print(f"  {form:>4}: {sum(ok) / len(ok):.1%} of {len(ok)}")
    print(f"any-of-{args.samples} correct: {sum(any(ok) for _, ok in results) / len(results):.1%}")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return [
        {
            "figure": f"{args.model} per-sample accuracy on builtin:arithmetic, {args.tasks} tasks "
            f"x {args.samples} samples (baseline: samples)",
            "value": sum(flat),
            "baseline": len(flat),
            "ratio": round(sum(flat) / len(flat), 3),
            "target": "0.20-0.70",
        }
    ]


if __name__ == "__main__":
    sys.exit(main())
