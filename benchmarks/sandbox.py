"""Sandbox start-up cost: runs/s of a trivial Python program, bwrap versus a bare subprocess.

Three sides, one run at a time, alternated ``--repeats`` times after a warm-up; medians count:

* ``bare subprocess``  -- ``subprocess.run([python, "-I", "-B", "-c", "pass"])`` with the same
  interpreter the bwrap backend uses (so only the sandbox differs);
* ``process backend``  -- ``ProcessSandbox().run_python("pass")`` (work dir, rlimits, capture);
* ``bwrap backend``    -- ``BwrapSandbox().run_python("pass")`` (all of that plus namespaces,
  the slot uid and its cleanup).

    python benchmarks/sandbox.py [--runs 200] [--repeats 3]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
from loopwright.sandboxes import BwrapSandbox, ProcessSandbox


def _rate(fn: Callable[[], object], runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        fn()
    return runs / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200, help="runs per side per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; median counts")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, runs=3, repeats=1)

    bwrap = BwrapSandbox()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        process = ProcessSandbox()
    python = bwrap.python_argv()[0]

    def bare() -> None:
        subprocess.run([python, "-I", "-B", "-c", "pass"], check=True)

    def in_process() -> None:
        assert process.run_python("pass").ok

    def in_bwrap() -> None:
        assert bwrap.run_python("pass").ok

    sides = {"bare subprocess": bare, "process backend": in_process, "bwrap backend": in_bwrap}
    for fn in sides.values():
        _rate(fn, max(5, args.runs // 10))  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            rates[name].append(_rate(fn, args.runs))

    print(f"interpreter: {python}  runs/side: {args.runs} x {args.repeats}")
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in med.items():
        print(f"{name:16s} {rate:8.1f} runs/s  ({1000 / rate:6.1f} ms/run)")
    ratio = med["bwrap backend"] / med["bare subprocess"]
    extra_ms = 1000 / med["bwrap backend"] - 1000 / med["bare subprocess"]
    print(f"bwrap/bare ratio: {ratio:.2f}  (+{extra_ms:.1f} ms per run)")
    if args.json:
        base = med["bare subprocess"]
        rows = [
            {
                "figure": f"runs/s of `pass`: {name} (baseline: bare subprocess)",
                "value": round(med[name], 1),
                "baseline": round(base, 1),
                "ratio": round(med[name] / base, 3),
                "target": "",
            }
            for name in ("bwrap backend", "process backend")
        ]
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
