"""Per-sample accuracy of a model on builtin:arithmetic, with self-refine's first-draft prompt.

    python benchmarks/calibrate_arithmetic.py --tasks 40 --samples 4

The built-in set is meant to sit where the embedded model is sometimes right (20-70% per
sample), so loops that sample, vote or revise have room to help.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.prompts import render
from loopwright.loops.tasks import builtin_arithmetic
from loopwright.tools.numeric import check_number


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="local/smollm2-135m")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    tasks = builtin_arithmetic(seed=args.seed, n=args.tasks)
    client = ModelClient(ClientConfig(model=args.model, max_tokens=256, concurrency=4))
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


if __name__ == "__main__":
    asyncio.run(main())
