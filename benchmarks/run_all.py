"""Run every benchmark and print ONE markdown table of figures, each against a same-run baseline.

Each script runs as a subprocess (quick settings unless ``--full``) with ``--json``, which
makes it print a final line ``{"rows": [{"figure", "value", "baseline", "ratio", "target"}]}``.
A script that fails, times out or is skipped (a missing optional dependency or data file)
becomes a row saying so; the table is printed and the exit status is 0 whatever happens.

``--smoke`` (or ``BENCH_SMOKE=1`` in the environment, so ``BENCH_SMOKE=1 make bench``) runs
EVERY script in this folder, those without a figure in the table too, with its own
``--smoke`` sizes: seconds each, figures meaningless, for CI. Then the exit status is 1 when
any script failed, timed out, printed no result line or reported a FAILED row, so a
refactor that breaks a benchmark fails the build. Skips stay skips (an optional dependency,
a data file outside the repository); an import of loopwright that fails is a failure.

    python benchmarks/run_all.py                       # quick settings, a few minutes
    python benchmarks/run_all.py --full                # each script's own defaults (long)
    python benchmarks/run_all.py --smoke               # every script at its smoke size (CI)
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
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
SMOKE_ENV = "BENCH_SMOKE"
Mode = Literal["quick", "full", "smoke"]


@dataclass(frozen=True)
class Bench:
    name: str
    quick: list[str]
    full: list[str] = field(default_factory=list)
    timeout_quick: float = 600.0
    timeout_full: float = 3600.0
    timeout_smoke: float = 300.0

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    def args(self, mode: Mode) -> list[str]:
        return {"quick": self.quick, "full": self.full, "smoke": ["--smoke"]}[mode]

    def timeout(self, mode: Mode) -> float:
        return {"quick": self.timeout_quick, "full": self.timeout_full}.get(
            mode, self.timeout_smoke
        )


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
    Bench("grpo", ["--steps", "2"], timeout_quick=900.0),
]
NAMES = [b.name for b in BENCHES]


def discover(folder: Path | None = None) -> list[Bench]:
    """What ``--smoke`` runs: the benches above, then every other script in ``folder`` (not
    this one, not ``_`` helpers), so a new script is run without being listed here."""
    folder = folder or HERE
    known = {b.name for b in BENCHES}
    extra = sorted(
        p.stem
        for p in folder.glob("*.py")
        if p.stem not in known and p.name != Path(__file__).name and not p.stem.startswith("_")
    )
    return [*BENCHES, *(Bench(name, []) for name in extra)]


@dataclass
class Outcome:
    rows: list[dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def _row(figure: str, note: str = "") -> dict[str, Any]:
    return {
        "figure": figure,
        "value": None,
        "baseline": None,
        "ratio": None,
        "target": "",
        "note": note,
    }


def _run(cmd: list[str], timeout: float, cwd: Path) -> tuple[int | None, str, str]:
    """Run in its own process group; on timeout kill that group (only what we started)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(SMOKE_ENV, None)  # each script is told its setting by its flags
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
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


def _foreign(name: str) -> bool:
    """A module a skip may stand for: neither loopwright's own nor a script of this folder."""
    top = name.split(".")[0]
    return top != "loopwright" and not (HERE / f"{top}.py").exists()


def _outside_repo(path: str) -> bool:
    try:
        return not (HERE.parent / path).resolve().is_relative_to(HERE.parent)
    except (OSError, ValueError):
        return True


def run_one(bench: Bench, mode: Mode, timeout: float | None, logs: Path | None) -> Outcome:
    """Run one script in ``mode`` and read its result line."""
    if not bench.script.exists():
        return Outcome([_row("SKIPPED: script not found")], 0.0)
    cmd = [sys.executable, str(bench.script), *bench.args(mode), "--json"]
    limit = timeout or bench.timeout(mode)
    t0 = time.perf_counter()
    code, out, err = _run(cmd, limit, bench.script.parent.parent)
    secs = time.perf_counter() - t0
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{bench.name}.log").write_text(
            f"$ {' '.join(cmd)}\n# exit {code}, {secs:.1f} s\n\n{out}\n--- stderr ---\n{err}",
            encoding="utf-8",
        )
    warnings = [ln.strip() for ln in err.splitlines() if ln.strip().startswith("WARNING")]

    def failed(why: str) -> Outcome:
        return Outcome([_row(f"FAILED: {why}")], secs, warnings, failed=True)

    if code is None:
        return failed(f"timed out after {limit:.0f} s")
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", err)
    if code != 0 and missing and _foreign(missing.group(1)):
        return Outcome([_row(f"SKIPPED: module {missing.group(1)} not installed")], secs)
    nofile = re.search(r"FileNotFoundError: .*?'([^']+)'", err)
    if code != 0 and nofile and _outside_repo(nofile.group(1)):
        return Outcome([_row(f"SKIPPED: {nofile.group(1)} not found")], secs)
    if code != 0:
        last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "no output")
        return failed(f"exit {code}: {last.strip()[:160]}")
    data = _last_json(out)
    if data is None:
        return failed("no JSON result line")
    rows = list(data.get("rows") or [])
    if not rows:
        reason = data.get("skipped") or "no rows reported"
        return Outcome([_row(f"SKIPPED: {reason}")], secs, warnings)
    notes = [r["note"] for r in rows if r.get("note")]
    bad = any(str(r.get("figure", "")).startswith("FAILED") for r in rows)
    return Outcome(rows, secs, list(dict.fromkeys(warnings + notes)), failed=bad)


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
    ap.add_argument("--only", help="comma-separated subset of the scripts (NAME of NAME.py)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true", help="each script's full default settings")
    how.add_argument(
        "--smoke",
        action="store_true",
        help=f"every script at its smoke size; exit 1 if one fails (also: {SMOKE_ENV}=1)",
    )
    ap.add_argument("--timeout", type=float, help="seconds per script (default 600 quick)")
    ap.add_argument("--logs", type=Path, help="write each script's full output to DIR/NAME.log")
    args = ap.parse_args(argv)
    smoke = args.smoke or (not args.full and os.environ.get(SMOKE_ENV, "") not in ("", "0"))
    mode: Mode = "smoke" if smoke else "full" if args.full else "quick"
    benches = discover() if smoke else BENCHES
    names = [b.name for b in benches]
    chosen = names
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in chosen if n not in names]
        if bad:
            ap.error(f"unknown benchmark(s) {', '.join(bad)}; choose from {', '.join(names)}")

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"# loopwright benchmarks, {datetime.now().isoformat(timespec='seconds')}, "
        f"{mode} settings\n"
        f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load}\n",
        flush=True,
    )
    results: dict[str, Outcome] = {}
    for bench in benches:
        if bench.name not in chosen:
            continue
        print(f"running {bench.name} ...", file=sys.stderr, flush=True)
        try:
            res = run_one(bench, mode, args.timeout, args.logs)
        except Exception as exc:  # the runner itself must not stop the table
            res = Outcome([_row(f"FAILED: {type(exc).__name__}: {exc}")], 0.0, failed=True)
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
    if mode == "smoke":
        broken = [name for name, res in results.items() if res.failed]
        if broken:
            print(f"smoke: {len(broken)} of {len(results)} scripts failed: {', '.join(broken)}")
            return 1
        print(f"smoke: all {len(results)} scripts ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
