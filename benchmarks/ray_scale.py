"""Scale-out on Ray: a run on Ray workers against the same run in one process, same machine.

Three figures, each against a baseline measured in the same invocation:

1. **calls/s at zero latency** against the loopback mock OpenAI-compatible server of
   ``throughput.py`` (its own process, latency 0): ``runner.run`` with ``best-of-n -o n=1``,
   ``hosted_vllm/mock``, cache off, tracing on, ``--concurrency`` requests in flight per
   worker; ``--executor ray --workers W`` against the local executor. At zero latency a
   loop is bound by the CPU a process spends per call, so this is what more processes buy.
2. **sandboxed verification throughput**: ``builtin:code`` tasks (``--code-copies`` copies
   of each) answered at once with their reference solution by a scripted model, verified in
   the loop by their visible tests and graded by the hidden ones, both in the ``bwrap``
   sandbox: tasks/s on Ray against tasks/s locally.
3. **where the CPU goes**: the CPU seconds per call of every process of the figure-1 runs
   (this driver, the Ray workers, Ray's own daemons, the mock server), and from them the
   ratio this machine's cores allow at those costs: ``(cores / CPU per call of the Ray
   run) / local calls/s``, the ratio a perfect scheduler would reach on these cores. On a
   2-core machine where the endpoint shares the cores, that ceiling is below 2 whatever the
   executor does; the driver's CPU per call also gives the rate at which the driver, not
   the workers, would become the limit (workers on free cores, the endpoint elsewhere).
4. **the single writer's ceiling**: the rows/s one ``TraceWriter`` commits (task, call,
   node and verdict records as workers return them, written then flushed into a fresh DuckDB
   file) against the rows/s the Ray run of figure 1 needed.

Ray starts locally with this machine's cores; the worker pool is started (and each side
warmed up) before anything is timed, so the figures are steady-state rates, not start-up.
Medians of ``--repeats``, sides alternating.

    python benchmarks/ray_scale.py [--calls 2000] [--concurrency 32] [--workers 2]
                                   [--code-copies 4] [--repeats 3] [--json]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

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
from throughput import MockServer, task_file

MODEL = "hosted_vllm/mock"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- CPU accounting -------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds (user + system) of this process and all its descendants, by role:
    ``roles`` names some pids; every other descendant counts as ``ray daemons``."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.roles: dict[int, str] = {os.getpid(): "driver"}
        self.totals: dict[str, dict[str, float]] = {}  # side -> role -> CPU s
        self.calls: dict[str, int] = {}

    def snapshot(self) -> dict[int, float]:
        me = self.psutil.Process()
        out: dict[int, float] = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except self.psutil.Error:
                continue
            out[proc.pid] = t.user + t.system
        return out

    def add(self, side: str, before: dict[int, float], after: dict[int, float], calls: int) -> None:
        by_role = self.totals.setdefault(side, {})
        for pid, secs in after.items():
            role = self.roles.get(pid, "ray daemons")
            by_role[role] = by_role.get(role, 0.0) + secs - before.get(pid, 0.0)
        self.calls[side] = self.calls.get(side, 0) + calls

    def per_call_ms(self, side: str) -> dict[str, float]:
        n = self.calls.get(side) or 1
        return {k: 1e3 * v / n for k, v in self.totals.get(side, {}).items() if v > 0.005}


def _meter(srv: MockServer, worker_pids: list[int]) -> CpuMeter | None:
    try:
        meter = CpuMeter()
    except ImportError:  # psutil comes with loopwright[train]; without it, no CPU figures
        print("  (no psutil: CPU per call not measured)")
        return None
    if srv._proc is not None:
        meter.roles[srv._proc.pid] = "mock server"
    for pid in worker_pids:
        meter.roles[pid] = "ray workers"
    return meter


def cpu_figures(meter: CpuMeter, local_rate: float, ray_rate: float) -> list[dict[str, Any]]:
    """Print where each side's CPU went; rows for the cores-bound ratio and driver cap."""
    cores = os.cpu_count() or 1
    costs = {side: meter.per_call_ms(side) for side in ("local", "ray")}
    for side, ms in costs.items():
        parts = ", ".join(f"{role} {v:.3f}" for role, v in sorted(ms.items(), key=lambda x: -x[1]))
        rate = local_rate if side == "local" else ray_rate
        used = sum(ms.values()) * rate / 1e3
        print(f"  CPU ms per call, {side:5}: {sum(ms.values()):.3f} ({parts}); {used:.2f} of "
              f"{cores} cores busy")  # fmt: skip
    ray_ms = sum(costs["ray"].values())
    allowed = cores / (ray_ms / 1e3) / local_rate
    driver_ms = costs["ray"].get("driver", 0.0)
    driver_cap = 1e3 / driver_ms if driver_ms else float("inf")
    print(
        f"  at these costs {cores} cores allow a ratio of {allowed:.2f} (Ray reached "
        f"{ray_rate / local_rate / allowed:.0%} of it); the driver alone caps a Ray run at "
        f"{driver_cap:,.0f} calls/s ({driver_cap / local_rate:.1f}x the local rate)"
    )
    return [
        {
            "figure": f"the ratio {cores} cores allow at the measured CPU per call (all "
            "processes of the Ray run, endpoint included) (baseline: the measured ratio)",
            "value": round(allowed, 3),
            "baseline": round(ray_rate / local_rate, 3),
            "ratio": round(ray_rate / local_rate / allowed, 3),
            "target": "",
        },
        {
            "figure": "calls/s at which the driver (one writer, Ray's returns) becomes the "
            "limit: 1 / its CPU per call (baseline: local calls/s)",
            "value": round(driver_cap),
            "baseline": round(local_rate, 1),
            "ratio": round(driver_cap / local_rate, 2),
            "target": "",
        },
    ]


# -- code tasks answered with their reference -------------------------------------------------
REFERENCES: dict[str, str] = {}


def code_reply(call: Any) -> str:  # a ModelCall
    user = call.messages[-1]["content"]
    for sig, code in REFERENCES.items():
        if sig in user:
            return f"Here is the function:\n```python\n{code}```\n"
    return "I do not know."


def code_tasks(workdir: Path, copies: int, first: int | None = None) -> tuple[Path, int]:
    """A task file of ``copies`` copies of the built-in code tasks (the ``first`` N of them),
    and how many tasks it holds."""
    data = Path(__file__).resolve().parents[1] / "loops/tasks/data/code_tasks.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line]
    rows = rows[:first]
    path = workdir / f"code-{copies}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for c in range(copies):
            for r in rows:
                REFERENCES[r["prompt"].strip()] = r["reference"]
                fh.write(json.dumps({**r, "id": f"{r['id']}-c{c}"}) + "\n")
    return path, copies * len(rows)


# -- sides ------------------------------------------------------------------------------------
class Side:
    def __init__(self, workdir: Path, executor: str, **cfg: Any) -> None:
        self.workdir = workdir
        self.executor = executor
        self.cfg = cfg
        self.runs = 0
        self.rows = 0  # trace rows the last run wrote
        self.meter: CpuMeter | None = None  # set: count every process's CPU of each run

    async def __call__(self, tasks: Path, expect_calls: int) -> tuple[float, str]:
        from loopwright.loops.execution.runner import RunConfig, run
        from loopwright.traces.store import TraceStore

        self.runs += 1
        db = self.workdir / f"{self.executor}-{self.runs}.duckdb"
        cfg = RunConfig(
            tasks=str(tasks), db=str(db), run_name=f"{self.executor}-{self.runs}",
            executor=self.executor, **self.cfg,
        )  # fmt: skip
        await asyncio.sleep(0.2)  # untimed: let the previous side's background work settle
        before = self.meter.snapshot() if self.meter else {}
        t0 = time.perf_counter()
        result = await run(cfg)
        secs = time.perf_counter() - t0
        if self.meter:
            self.meter.add(self.executor, before, self.meter.snapshot(), expect_calls)
        with TraceStore(db, read_only=True) as store:
            [row] = store.query(
                "SELECT (SELECT count(*) FROM calls) AS calls, (SELECT count(*) FROM calls WHERE "
                "error IS NOT NULL) AS errors, (SELECT count(*) FROM tasks) + (SELECT count(*) "
                "FROM calls) + (SELECT count(*) FROM nodes) + (SELECT count(*) FROM verdicts) AS rows"
            )
        self.rows = int(row["rows"])
        for p in (db, Path(f"{db}.wal")):
            p.unlink(missing_ok=True)
        p = result.progress
        n = p.total
        problem = ""
        if row["calls"] != expect_calls or row["errors"] or p.passed != n or p.failed:
            problem = (
                f"{self.executor}: expected {expect_calls} calls and {n} passed tasks; the trace "
                f"holds {row['calls']} calls ({row['errors']} errors), {p.passed} passed, "
                f"{p.failed} failed"
            )
        return secs, problem


async def measure(
    sides: dict[str, Side], tasks: Path, calls: int, repeats: int, problems: list[str]
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            secs, problem = await side(tasks, calls)
            times[name].append(secs)
            if problem:
                problems.append(problem)
    return {k: statistics.median(v) for k, v in times.items()}


def writer_ceiling(workdir: Path, tasks: int) -> tuple[float, int]:
    """Rows/s of one TraceWriter for records shaped like a best-of-n (n=1) task's."""
    from loopwright.traces import (
        CallRecord,
        NodeRecord,
        TaskRecord,
        TraceStore,
        TraceWriter,
        VerdictRecord,
        utcnow,
    )

    records: list[Any] = []
    for i in range(tasks):
        tid = f"t{i:06d}"
        base = TaskRecord(
            run_id="bench", task_id=tid, idx=i, kind="math", prompt=f"Task {i}: 2 + 3?",
            reference="5", status="running", started_at=utcnow(),
        )  # fmt: skip
        node = NodeRecord(run_id="bench", task_id=tid, role="generator", content="The answer is 5.")
        call = CallRecord(
            request_id=f"r{i}", run_id="bench", task_id=tid, node_id=node.node_id, model=MODEL,
            messages=json.dumps([{"role": "user", "content": base.prompt}]),
            output="The answer is 5.", prompt_tokens=12, completion_tokens=4,
        )  # fmt: skip
        verdicts = [
            VerdictRecord(
                run_id="bench",
                task_id=tid,
                node_id=node.node_id,
                stage=stage,
                verifier="math",
                passed=True,
            )
            for stage in ("in_loop", "graded")
        ]
        done = base.model_copy(update={"status": "done", "graded": True, "calls": 1})
        records += [base, call, *verdicts, node, done]
    db = workdir / "writer.duckdb"
    store = TraceStore(db)
    writer = TraceWriter(store)
    t0 = time.perf_counter()
    for r in records:
        writer.write(r)
    writer.flush(timeout=600)
    secs = time.perf_counter() - t0
    writer.close()
    store.close()
    return len(records) / secs, len(records)


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    import ray
    from loopwright.loops.execution.ray_executor import ray_pool
    from loopwright.loops.models.scripted import ScriptedModel

    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    try:
        with (
            MockServer(0.0, process=True) as srv,
            tempfile.TemporaryDirectory(prefix="loopwright-ray-scale-") as tmp,
            ray_pool(workers=args.workers) as pool,
        ):
            work = Path(tmp)
            print(
                f"{os.cpu_count()} CPUs, load average {_load()}; Ray {ray.__version__}, "
                f"{args.workers} workers; mock server on 127.0.0.1:{srv.port}, latency 0; "
                f"median of {args.repeats}"
            )
            common: dict[str, Any] = {
                "loop": "best-of-n", "options": {"n": 1}, "model": MODEL,
                "api_base": srv.base_url, "cache": False, "concurrency": args.concurrency,
                "verifier": "oracle",  # one request per task and a quick local check
            }  # fmt: skip
            sides = {ex: Side(work, ex, **common) for ex in ("local", "ray")}
            warm = task_file(work, min(args.calls, 200))
            await measure(sides, warm, min(args.calls, 200), 1, problems)
            tasks = task_file(work, args.calls)
            meter = _meter(srv, pool.pids())
            for side in sides.values():
                side.meter = meter
            med = await measure(sides, tasks, args.calls, args.repeats, problems)
            local_rate, ray_rate = args.calls / med["local"], args.calls / med["ray"]
            needed = sides["ray"].rows / med["ray"]
            print(
                f"  zero-latency calls/s: local {local_rate:7.1f}, ray x{args.workers} "
                f"{ray_rate:7.1f}; ratio {ray_rate / local_rate:.2f} (goal >= 1.7)"
            )
            rows.append(
                {
                    "figure": f"calls/s at zero latency, concurrency {args.concurrency} per "
                    f"worker: --executor ray --workers {args.workers} (baseline: local executor)",
                    "value": round(ray_rate, 1),
                    "baseline": round(local_rate, 1),
                    "ratio": round(ray_rate / local_rate, 3),
                    "target": ">= 1.7",
                }
            )
            if meter is not None:
                rows += cpu_figures(meter, local_rate, ray_rate)

            model = ScriptedModel(code_reply, name="ray-scale-code")  # travels to the workers
            code, n_code = code_tasks(work, args.code_copies, args.code_tasks)
            csides = {
                ex: Side(work, ex, loop="best-of-n", options={"n": 1}, model=model,
                         concurrency=args.concurrency, verifier="auto", sandbox="bwrap")
                for ex in ("local", "ray")
            }  # fmt: skip
            await measure(csides, code, n_code, 1, problems)  # warm-up
            cmed = await measure(csides, code, n_code, args.repeats, problems)
            cl, cr = n_code / cmed["local"], n_code / cmed["ray"]
            print(
                f"  sandboxed verification, {n_code} builtin:code tasks (visible tests + "
                f"graded, bwrap): local {cl:6.1f} tasks/s, ray {cr:6.1f}; ratio {cr / cl:.2f}"
            )
            rows.append(
                {
                    "figure": f"builtin:code tasks/s verified in bwrap (visible tests + grader), "
                    f"--executor ray --workers {args.workers} (baseline: local executor)",
                    "value": round(cr, 2),
                    "baseline": round(cl, 2),
                    "ratio": round(cr / cl, 3),
                    "target": "",
                }
            )

            ceiling, n_rows = writer_ceiling(work, args.writer_tasks)
            print(
                f"  single writer: {n_rows} rows in one TraceWriter at {ceiling:,.0f} rows/s; "
                f"the Ray run wrote {needed:,.0f} rows/s (headroom {ceiling / needed:.1f}x)"
            )
            rows.append(
                {
                    "figure": "single TraceWriter rows/s (task, call, node, verdict records) "
                    "(baseline: rows/s the zero-latency Ray run wrote)",
                    "value": round(ceiling),
                    "baseline": round(needed),
                    "ratio": round(ceiling / needed, 2),
                    "target": "",
                }
            )
    finally:
        ray.shutdown()
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    if problems:
        for r in rows:
            r["note"] = "; ".join(dict.fromkeys(problems))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="tasks (= calls) per mock run")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per worker")
    ap.add_argument("--workers", type=int, default=2, help="Ray worker actors")
    ap.add_argument("--code-copies", type=int, default=4, help="copies of the 36 code tasks")
    ap.add_argument("--code-tasks", type=int, default=None, help="the first N code tasks only")
    ap.add_argument("--writer-tasks", type=int, default=20000, help="tasks' records to write")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per side (median counts)")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(
        ap, argv, calls=20, concurrency=4, code_copies=1, code_tasks=4, writer_tasks=200, repeats=1
    )
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
