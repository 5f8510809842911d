"""Run every benchmark and print ONE markdown table of figures, each against a same-run baseline.

Each script runs as a subprocess (quick settings unless ``--full``) with ``--json``, which
makes it print a final line ``{"rows": [{"figure", "value", "baseline", "ratio", "target"}]}``;
``harvest.py``'s markdown table is parsed instead when it has no ``--json`` flag. A script
that fails, times out or is skipped (a missing optional dependency or data file) becomes a
row saying so; the table is printed and the exit status is 0 whatever happens.

    python benchmarks/run_all.py                       # quick settings, a few minutes
    python benchmarks/run_all.py --full                # each script's own defaults (long)
    python benchmarks/run_all.py --only throughput,tracing
    python benchmarks/run_all.py --logs /tmp/bench     # keep each script's full output
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    quick: list[str]
    full: list[str] = field(default_factory=list)
    timeout_quick: float = 600.0
    timeout_full: float = 3600.0

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"


BENCHES: list[Bench] = [
    Bench("overhead", ["--calls", "500", "--warmup", "100", "--repeats", "1"]),
    Bench("throughput", ["--rounds", "10", "--min-calls", "20", "--repeats", "3"]),
    Bench("tracing", ["--calls", "1000", "--repeats", "5"]),
    Bench("sandbox", ["--runs", "30", "--repeats", "1"]),
    Bench("verify_throughput", ["--repeats", "1"]),
    Bench("harvest", ["--calls", "20000"], timeout_full=7200.0),
    Bench("local_model", ["--requests", "4", "--repeats", "1"]),
    Bench("engine", ["--requests", "8", "--repeats", "2", "--rounds", "2"]),
    Bench("math_agreement", ["--limit", "100", "--show", "0"]),
    Bench("search", ["--queries", "1000"]),
    Bench("view_pages", ["--calls", "20000", "--repeats", "3", "--writer-calls", "5000"]),
    Bench(
        "ray_scale",
        ["--calls", "1000", "--code-copies", "2", "--repeats", "1", "--writer-tasks", "5000"],
    ),
    Bench("improve_train", ["--rows", "16", "--steps", "2", "--repeats", "2"]),
]
NAMES = [b.name for b in BENCHES]


@dataclass
class Outcome:
    rows: list[dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)


def _row(figure: str, note: str = "") -> dict[str, Any]:
    return {
        "figure": figure,
        "value": None,
        "baseline": None,
        "ratio": None,
        "target": "",
        "note": note,
    }


def _has_json_flag(script: Path) -> bool:
    return "--json" in script.read_text(encoding="utf-8")


def _run(cmd: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run in its own process group; on timeout kill that group (only what we started)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=HERE.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err


def _last_json(out: str) -> dict[str, Any] | None:
    for line in reversed(out.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"rows"' in line:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _num(text: str) -> float | None:
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    return float(m.group(0).replace(",", "")) if m else None


def parse_harvest_table(out: str) -> list[dict[str, Any]]:
    """Rows of harvest.py's markdown table: seconds per export against the COPY baseline."""
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("|")]
    header: list[str] | None = None
    body: list[list[str]] = []
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if header is None:
            if any("second" in c.lower() for c in cells):
                header = [c.lower() for c in cells]
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        body.append(cells)
    if header is None or not body:
        return []
    col = {name: i for i, name in enumerate(header)}
    sec = next(i for name, i in col.items() if "second" in name)
    rows_col = next((i for name, i in col.items() if "written" in name or name == "rows"), None)
    base_row = next((r for r in body if "baseline" in r[0].lower()), None)
    floor = _num(base_row[sec]) if base_row else None
    rows = []
    for r in body:
        if r is base_row or len(r) <= sec:
            continue
        what = " -> ".join(c for c in r[:2] if c)
        n = f", {r[rows_col]} rows" if rows_col is not None and rows_col < len(r) else ""
        secs = _num(r[sec])
        if secs is None:
            rows.append(_row(f"harvest {what}: FAILED", "the export raised; see harvest.py output"))
            continue
        rows.append(
            {
                "figure": f"harvest {what}{n}: seconds (baseline: COPY nodes TO parquet)",
                "value": secs,
                "baseline": floor,
                "ratio": round(secs / floor, 2) if floor else None,
                "target": "",
            }
        )
    return rows


def run_one(bench: Bench, full: bool, timeout: float | None, logs: Path | None) -> Outcome:
    if not bench.script.exists():
        return Outcome([_row("SKIPPED: script not found")], 0.0)
    json_flag = bench.name != "harvest" or _has_json_flag(bench.script)
    cmd = [sys.executable, str(bench.script), *([] if full else bench.quick)]
    if json_flag:
        cmd.append("--json")
    limit = timeout or (bench.timeout_full if full else bench.timeout_quick)
    t0 = time.perf_counter()
    code, out, err = _run(cmd, limit)
    secs = time.perf_counter() - t0
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{bench.name}.log").write_text(
            f"$ {' '.join(cmd)}\n# exit {code}, {secs:.1f} s\n\n{out}\n--- stderr ---\n{err}",
            encoding="utf-8",
        )
    warnings = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("WARNING")]
    if code is None:
        return Outcome([_row(f"FAILED: timed out after {limit:.0f} s")], secs, warnings)
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", err)
    if code != 0 and missing:
        return Outcome([_row(f"SKIPPED: module {missing.group(1)} not installed")], secs)
    nofile = re.search(r"FileNotFoundError: .*?'([^']+)'", err)
    if code != 0 and nofile:
        return Outcome([_row(f"SKIPPED: {nofile.group(1)} not found")], secs)
    if code != 0:
        last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "no output")
        return Outcome([_row(f"FAILED: exit {code}: {last.strip()[:160]}")], secs, warnings)
    if json_flag:
        data = _last_json(out)
        if data is None:
            return Outcome([_row("FAILED: no JSON result line")], secs, warnings)
        rows = list(data.get("rows") or [])
        if not rows:
            reason = data.get("skipped") or "no rows reported"
            return Outcome([_row(f"SKIPPED: {reason}")], secs, warnings)
    else:
        rows = parse_harvest_table(out)
        if not rows:
            return Outcome([_row("FAILED: could not parse harvest.py's table")], secs, warnings)
    notes = [r["note"] for r in rows if r.get("note")]
    return Outcome(rows, secs, list(dict.fromkeys(warnings + notes)))


def _fmt(x: Any, ratio: bool = False) -> str:
    if x is None or x == "":
        return "—"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if ratio:
        return f"{x:.2f}"
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: dict[str, Outcome]) -> str:
    out = [
        "| benchmark | figure | value | baseline (same run) | ratio | target |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, res in results.items():
        for r in res.rows:
            target = str(r.get("target") or "").replace(">=", "≥").replace("<=", "≤")
            out.append(
                "| "
                + " | ".join(
                    [
                        name,
                        _cell(str(r.get("figure", ""))),
                        _fmt(r.get("value")),
                        _fmt(r.get("baseline")),
                        _fmt(r.get("ratio"), ratio=True),
                        _cell(target) or "—",
                    ]
                )
                + " |"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(NAMES)}")
    ap.add_argument("--full", action="store_true", help="each script's full default settings")
    ap.add_argument("--timeout", type=float, help="seconds per script (default 600 quick)")
    ap.add_argument("--logs", type=Path, help="write each script's full output to DIR/NAME.log")
    args = ap.parse_args(argv)
    chosen = NAMES
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in chosen if n not in NAMES]
        if bad:
            ap.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(NAMES)}")

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"# loopwright benchmarks, {datetime.now().isoformat(timespec='seconds')}, "
        f"{'full' if args.full else 'quick'} settings\n"
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load}\n",
        flush=True,
    )
    results: dict[str, Outcome] = {}
    for bench in BENCHES:
        if bench.name not in chosen:
            continue
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        try:
            res = run_one(bench, args.full, args.timeout, args.logs)
        except Exception as exc:  # the runner itself must not stop the table
            res = Outcome([_row(f"FAILED: {type(exc).__name__}: {exc}")], 0.0)
        print(f"  {bench.name}: {res.seconds:.0f} s", file=sys.stderr, flush=True)
        results[bench.name] = res

    print(table(results))
    notes = [(name, n) for name, res in results.items() for n in res.notes]
    if notes:
        print()
        for name, n in notes:
            print(f"- {name}: {n}")
    total = sum(r.seconds for r in results.values())
    print(
        f"\n{len(results)} scripts in {total:.0f} s; ratio = value / baseline (throughput: "
        "= ideal time / measured time; tracing: time on / time off, so ratio - 1 = slowdown)."
    )
    if args.logs:
        print(f"full outputs: {args.logs}/NAME.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
