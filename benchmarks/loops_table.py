"""Every loop on the embedded model from the CLI, at a matched per-task call budget.

For each loop and task set it runs, exactly as a user would::

    loopwright run LOOP --tasks SPEC --limit N --budget-calls B --db DB --run-name NAME [-o ...]

then reads the run back from the trace store and prints one markdown table: graded pass
rate, in-loop verified rate, tokens and model samples per task, wall time per task (tasks
run 4 at a time) and for the whole run. Re-running
with the same ``--db`` resumes finished runs instead of redoing them.

    python benchmarks/loops_table.py [--limit 20] [--budget-calls 8] [--db loops_table.duckdb]
        [--loops self-refine,critic,...] [--sets arithmetic,code] [--json]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loopwright.traces.store import TraceStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

CLI = str(Path(sys.executable).with_name("loopwright"))
SETS = {"arithmetic": "builtin:arithmetic", "code": "builtin:code"}
# Options that keep every loop inside the call budget in a sensible shape.
OPTIONS: dict[str, list[str]] = {
    "self-refine": [],
    "critic": [],
    "reflexion": [],
    "best-of-n": ["-o", "n=8"],
    # The built-in sets' in-loop verifier is the grader's check, so verifier selection is an
    # oracle pick (pass@8); majority vote sees no verdict and is the honest comparison.
    "best-of-n-majority": ["-o", "n=8", "-o", "selector=majority"],
    "beam": ["-o", "beam_width=2", "-o", "expansions=2", "-o", "max_depth=4"],
    "mcts": ["-o", "simulations=2", "-o", "children=2"],
}


def _has_run(db: str, name: str) -> bool:
    if not Path(db).exists():
        return False
    with TraceStore(db, read_only=True) as store:
        return bool(store.query("SELECT 1 FROM runs WHERE name = ?", [name]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--budget-calls", type=int, default=8)
    ap.add_argument("--db", default="loops_table.duckdb")
    ap.add_argument("--loops", default=",".join(OPTIONS))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--model", default="local/smollm2-135m")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(
        ap, argv, limit=1, budget_calls=2, loops="self-refine", sets="arithmetic", db=None
    )
    if args.db is None:  # --smoke: a store of its own, gone afterwards
        with tempfile.TemporaryDirectory(prefix="loops-table-") as tmp:
            args.db = str(Path(tmp) / "loops_table.duckdb")
            return _table(args)
    return _table(args)


def _table(args: argparse.Namespace) -> int:
    rows = []
    figures: list[dict[str, Any]] = []
    for loop in args.loops.split(","):
        for set_name in args.sets.split(","):
            name = f"table-{loop}-{set_name}-{args.limit}-b{args.budget_calls}"
            cmd = [
                CLI, "run", loop.removesuffix("-majority"), "--tasks", SETS[set_name], "--limit", str(args.limit),
                "--model", args.model, "--budget-calls", str(args.budget_calls),
                "--db", args.db, "--run-name", name, *OPTIONS.get(loop, []),
            ]  # fmt: skip
            if _has_run(args.db, name):
                cmd.append("--resume")
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"  failed ({proc.returncode}): {proc.stderr.strip()[-300:]}", flush=True)
                figures.append({
                    "figure": f"FAILED: {loop} on {set_name}", "value": None, "baseline": None,
                    "ratio": None, "target": "",
                    "note": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
                })  # fmt: skip
                continue
            rows.append((loop, set_name, name, wall))

    print("\n| loop | tasks | graded pass | in-loop verified | tokens/task | samples/task |"
          " wall/task | run wall | failed |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with TraceStore(args.db, read_only=True) as store:
        for loop, set_name, name, _ in rows:
            [r] = store.query(
                "SELECT count(*) n, avg(CAST(graded AS INT)) graded, avg(CAST(verdict AS INT)) v,"
                " avg(total_tokens) tok, avg(calls) calls, avg(wall_s) wall,"
                " epoch(max(tasks.finished_at) - min(tasks.started_at)) run_wall,"
                " sum(CAST(tasks.status = 'failed' AS INT)) failed"
                " FROM tasks JOIN runs USING (run_id) WHERE runs.name = ?",
                [name],
            )
            print(
                f"| {loop} | {set_name} ({r['n']}) | {100 * (r['graded'] or 0):.0f} % |"
                f" {100 * (r['v'] or 0):.0f} % | {r['tok'] or 0:.0f} | {r['calls'] or 0:.1f} |"
                f" {r['wall'] or 0:.1f} s | {(r['run_wall'] or 0) / 60:.1f} min | {r['failed']} |"
            )
            passed = round((r["graded"] or 0) * r["n"])
            figures.append({
                "figure": f"graded pass rate, {loop} on {set_name}, budget {args.budget_calls} "
                "calls a task (baseline: tasks)",
                "value": passed, "baseline": r["n"],
                "ratio": round(passed / r["n"], 3) if r["n"] else None, "target": "",
            })  # fmt: skip
    if args.json:
        print(json.dumps({"rows": figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
