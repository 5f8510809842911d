"""Math checker agreement with MATH-500's reference answers.

* matched:    each reference *solution* (its ``\\boxed{}`` answer extracted by the checker)
              against its own reference answer -- should be ~100 % equal;
* mismatched: each solution against the *next* problem's answer (pairs whose answers are
              textually identical are skipped) -- should be ~0 % equal.

Also prints checks per second. The data is read by path and never copied.

    python benchmarks/math_agreement.py [--data ../shared/data/math500/test.jsonl]
        [--policy strict|lenient] [--limit N] [--show 10]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
from loopwright.tools.math_check import MathChecker

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=_DEFAULT)
    ap.add_argument("--policy", choices=["strict", "lenient"], default="strict")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--show", type=int, default=10, help="disagreements to print")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, limit=5, show=0)

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()]
    rows = rows[: args.limit] if args.limit else rows
    checker = MathChecker(policy=args.policy)
    misses: list[str] = []
    t0 = time.perf_counter()
    matched = 0
    for r in rows:
        v = checker.check(r["solution"], r["answer"])
        matched += v.passed
        if not v.passed and len(misses) < args.show:
            misses.append(f"  {r.get('unique_id', '?')}: gold {r['answer']!r} got {v.extracted!r}")
    t_matched = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = equal = 0
    collisions: list[str] = []
    for r, other in zip(rows, rows[1:] + rows[:1], strict=True):
        if r["answer"].strip() == other["answer"].strip():
            continue
        pairs += 1
        if checker.check(r["solution"], other["answer"]).passed:
            equal += 1
            collisions.append(f"  {r['answer']!r} vs {other['answer']!r}")
    t_mismatched = time.perf_counter() - t0
    checker.close()

    n = len(rows)
    print(f"MATH-500 ({n} problems), policy={args.policy}")
    print(f"  matched pairs equal:     {matched}/{n} = {matched / n:.1%}")
    print(f"  mismatched pairs equal:  {equal}/{pairs} = {equal / max(pairs, 1):.1%}")
    print(f"  throughput: {(n + pairs) / (t_matched + t_mismatched):.1f} checks/s")
    if collisions:
        print("  mismatched pairs judged equal (check whether they really are):")
        print("\n".join(collisions[: args.show]))
    if misses:
        print("  first disagreements on matched pairs:")
        print("\n".join(misses))
    if args.json:
        rows = [
            {
                "figure": f"MATH-500 ({args.policy}): solutions equal to their own answer "
                "(baseline: pairs)",
                "value": matched,
                "baseline": n,
                "ratio": round(matched / n, 3),
                "target": "~1.00",
            },
            {
                "figure": f"MATH-500 ({args.policy}): solutions equal to the next problem's "
                "answer (baseline: pairs)",
                "value": equal,
                "baseline": pairs,
                "ratio": round(equal / max(pairs, 1), 3),
                "target": "~0.00",
            },
        ]
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
