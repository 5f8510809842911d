"""Tracing cost: the same model calls through ``ModelClient`` with a trace writer and without.

Workload: ``--calls`` chat completions at ``--concurrency`` through
``loopwright.loops.models.client.ModelClient`` (call cache off, a distinct seed per call), against
the loopback mock OpenAI-compatible server of ``throughput.py`` (``--latency``, default
50 ms) or, with ``--provider scripted``, against the in-process scripted model (no network,
no latency: every microsecond of tracing shows).

* ``off`` -- ``ModelClient(config, writer=None)``: nothing is traced;
* ``on``  -- ``ModelClient(config, writer=TraceWriter(store))`` on a fresh temporary DuckDB
  file; the timed span ends when ``writer.flush()`` has committed every row, and the trace
  must then hold exactly ``--calls`` call rows.

The two sides alternate ``--repeats`` times after a warm-up; medians count. Figure:
slowdown = time_on / time_off - 1 (target <= 5 %). Process CPU seconds are printed too;
on a loaded machine they are steadier than wall time.

    python benchmarks/tracing.py [--calls 1000] [--concurrency 64] [--repeats 5] [--json]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported
os.environ.setdefault("OPENAI_API_KEY", "sk-loopwright-mock")  # the mock ignores it

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, ClientConfig
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter
from throughput import MODEL, REPLY, MockServer


def _messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You solve grade-school math problems step by step."},
        {
            "role": "user",
            "content": f"Task {i}: Ana has 2 apples and gets 3 more. How many apples now?",
        },
    ]


async def _calls(client: ModelClient, n: int, run_id: str) -> int:
    async def one(i: int) -> bool:
        ctx = CallContext(run_id=run_id, task_id=f"t{i:06d}", loop="bench", round=0)
        [s] = await client.sample(_messages(i), seed=i, temperature=0.7, context=ctx)
        return s.text == REPLY

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


class Sides:
    def __init__(self, config: ClientConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.runs = 0
        self.problems: list[str] = []

    async def off(self, n: int) -> tuple[float, float]:
        client = ModelClient(self.config, writer=None)
        await asyncio.sleep(0.2)  # settle (untimed)
        c0, t0 = time.process_time(), time.perf_counter()
        ok = await _calls(client, n, "off")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if ok != n:
            self.problems.append(f"tracing off: {n - ok} of {n} replies were wrong")
        return wall, cpu

    async def on(self, n: int) -> tuple[float, float]:
        self.runs += 1
        db = self.workdir / f"trace-{self.runs}.duckdb"
        store = TraceStore(db)
        writer = TraceWriter(store)
        try:
            client = ModelClient(self.config, writer=writer)
            run_id = f"on-{self.runs}"
            await asyncio.sleep(0.2)
            c0, t0 = time.process_time(), time.perf_counter()
            ok = await _calls(client, n, run_id)
            await asyncio.to_thread(writer.flush)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            [row] = store.query(
                "SELECT count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS errors "
                "FROM calls WHERE run_id = ?",
                [run_id],
            )
        finally:
            writer.close()
            store.close()
            db.unlink(missing_ok=True)
            Path(str(db) + ".wal").unlink(missing_ok=True)
        if ok != n:
            self.problems.append(f"tracing on: {n - ok} of {n} replies were wrong")
        if row["calls"] != n or row["errors"]:
            self.problems.append(
                f"tracing on: the trace holds {row['calls']} call rows ({row['errors']} errors), "
                f"expected {n}"
            )
        return wall, cpu


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="loopwright-tracing-") as tmp:
        if args.provider == "mock":
            srv: MockServer | None = MockServer(args.latency, process=True).start()
            model, api_base = MODEL, srv.base_url
            where = f"mock OpenAI server, {args.latency * 1000:.0f} ms latency"
        else:
            srv = None
            model = ScriptedModel(lambda call: REPLY, name="tracing-bench").register()
            api_base = None
            where = "scripted model (in-process, no latency)"
        try:
            config = ClientConfig(
                model=model, api_base=api_base, concurrency=args.concurrency, cache=False
            )
            sides = Sides(config, Path(tmp))
            print(
                f"tracing on vs off: {args.calls} calls/side through ModelClient at concurrency "
                f"{args.concurrency}, {where}; median of {args.repeats} alternating repeats; "
                f"{os.cpu_count()} CPUs, load average {_load()}"
            )
            warm = min(args.calls, 2 * args.concurrency)
            await sides.off(warm)
            await sides.on(warm)
            wall: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            for rep in range(args.repeats):
                # Alternate which side goes first, so a drifting machine load favours neither.
                order = ("off", "on") if rep % 2 == 0 else ("on", "off")
                for name in order:
                    w, c = await (sides.off if name == "off" else sides.on)(args.calls)
                    wall[name].append(w)
                    cpu[name].append(c)
                    print(
                        f"  rep {rep + 1}: tracing {name:<3} {w:6.2f} s  "
                        f"{args.calls / w:7.1f} calls/s  cpu {c:6.2f} s"
                    )
        finally:
            if srv is not None:
                srv.stop()
    t_on, t_off = statistics.median(wall["on"]), statistics.median(wall["off"])
    c_on, c_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    paired = statistics.median(on / off for on, off in zip(wall["on"], wall["off"], strict=True))
    print(
        f"median wall: on {t_on:.2f} s, off {t_off:.2f} s -> slowdown {100 * (t_on / t_off - 1):+.1f} %"
        f" (target <= 5 %)\nmedian cpu:  on {c_on:.2f} s, off {c_off:.2f} s -> "
        f"{100 * (c_on / c_off - 1):+.1f} %\nmedian of the per-repeat on/off ratios: "
        f"{100 * (paired - 1):+.1f} %"
    )
    for p in sides.problems:
        print(f"WARNING: {p}", file=sys.stderr)
    rows = [
        {
            "figure": f"seconds for {args.calls} calls at concurrency {args.concurrency}, "
            "tracing on (baseline: off); ratio - 1 = slowdown",
            "value": round(t_on, 3),
            "baseline": round(t_off, 3),
            "ratio": round(t_on / t_off, 3),
            "target": "<= 1.05",
        },
        {
            "figure": "process CPU seconds, tracing on (baseline: off)",
            "value": round(c_on, 3),
            "baseline": round(c_off, 3),
            "ratio": round(c_on / c_off, 3),
            "target": "",
        },
    ]
    if sides.problems:
        for r in rows:
            r["note"] = "; ".join(sides.problems)
    return rows


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000, help="calls per side per repeat")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    ap.add_argument("--repeats", type=int, default=5, help="alternating repeats (median)")
    ap.add_argument("--provider", choices=["mock", "scripted"], default="mock")
    ap.add_argument("--latency", type=float, default=0.05, help="mock server latency, seconds")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, calls=40, concurrency=8, repeats=1)
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
