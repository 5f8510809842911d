"""Orchestration overhead: bare model calls/s versus the same calls through a loopwright run.

Four sides, measured alternately ``--repeats`` times after a warm-up; the median counts:

* ``bare litellm mock``     -- ``litellm.acompletion(model="openai/gpt-4o-mini",
  mock_response=...)`` at ``--concurrency``; the figure the issue names.
* ``bare scripted model``   -- ``ScriptedModel.generate`` called directly (the model seam, no
  client), with the same request settings the loopwright client sends.
* ``model in 1-node graph`` -- the same call as the only node of a LangGraph graph.
* ``loopwright self-refine`` -- ``loopwright.loops.execution.runner.run`` over ``--calls`` math tasks
  whose reference is 5; the scripted model answers "The answer is 5.", so every task is one
  generator call plus an in-loop verify (and the held-out grade): exactly one call per task.
  Tracing goes into a fresh temporary DuckDB file per repetition; the timed span is the
  whole ``run()`` (store open, schema, writer, final flush and summary included).

Neither ``ClientConfig`` nor ``RunConfig`` can pass ``mock_response`` through, so the
loopwright side uses a scripted model. Ratio (b), loopwright versus bare calls of that same
model, is the apples-to-apples orchestration overhead; ratio (a) compares with the
mock_response figure from the issue.

    python benchmarks/overhead.py [--calls 2000] [--concurrency 64] [--cache] [--profile]

Exits 0 whatever the ratio; it is a benchmark, not a test.
"""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported anywhere

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
import litellm
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import CallParams
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.prompts import render
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

REPLY = "The answer is 5."
MOCK_MODEL = "openai/gpt-4o-mini"
# What the self-refine loop sends on its first call (see loops/graphs/self_refine.py).
TEMPERATURE = 0.7
MAX_TOKENS = 256


def _question(i: int) -> str:
    return f"Task {i}: Ana has 2 apples and gets 3 more. How many apples does Ana have now?"


def _messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": render("self_refine", "system")},
        {"role": "user", "content": render("self_refine", "generate_math", question=_question(i))},
    ]


async def _fan_out(n: int, concurrency: int, call: Callable[[int], Awaitable[Any]]) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await call(i)

    await asyncio.gather(*(one(i) for i in range(n)))


# -- the three sides -----------------------------------------------------------------------
async def bare_mock(n: int, concurrency: int) -> int:
    async def call(i: int) -> None:
        resp = await litellm.acompletion(
            model=MOCK_MODEL, messages=_messages(i), mock_response=REPLY
        )
        assert resp.choices[0].message.content == REPLY

    await _fan_out(n, concurrency, call)
    return n


def _params(i: int) -> CallParams:
    """The settings the loopwright client sends for a generator call."""
    return CallParams(temperature=TEMPERATURE, max_tokens=MAX_TOKENS, seed=i, role="generator")


def bare_scripted_factory(model: ScriptedModel) -> Callable[[int, int], Awaitable[int]]:
    async def bare_scripted(n: int, concurrency: int) -> int:
        async def call(i: int) -> None:
            [got] = await model.generate(_messages(i), _params(i), 1)
            assert got.text == REPLY

        await _fan_out(n, concurrency, call)
        return n

    return bare_scripted


def langgraph_floor_factory(model: ScriptedModel) -> Callable[[int, int], Awaitable[int]]:
    """The bare model call inside a one-node LangGraph graph: the best a loop executed by
    LangGraph can do, so the gap between this side and loopwright is loopwright's own cost."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict, total=False):
        i: int
        out: str

    async def node(state: S) -> dict[str, Any]:
        [got] = await model.generate(_messages(state["i"]), _params(state["i"]), 1)
        return {"out": got.text}

    g = StateGraph(S)
    g.add_node("generate", node)
    g.add_edge(START, "generate")
    g.add_edge("generate", END)
    graph = g.compile()

    async def langgraph_floor(n: int, concurrency: int) -> int:
        async def call(i: int) -> None:
            out = await graph.ainvoke({"i": i})
            assert out["out"] == REPLY

        await _fan_out(n, concurrency, call)
        return n

    return langgraph_floor


class LoopwrightSide:
    """A real self-refine run over ``n`` tasks, traced into a fresh DuckDB file each time."""

    def __init__(self, model: str, workdir: Path, *, cache: bool) -> None:
        self.model = model
        self.workdir = workdir
        self.cache = cache
        self.runs = 0
        self.last_check: dict[str, Any] = {}

    def task_file(self, n: int) -> Path:
        path = self.workdir / f"tasks-{n}.jsonl"
        if not path.exists():
            with path.open("w", encoding="utf-8") as fh:
                for i in range(n):
                    row = {"id": f"t{i:06d}", "prompt": _question(i), "kind": "math"}
                    fh.write(json.dumps({**row, "reference": "5"}) + "\n")
        return path

    def config(self, n: int, concurrency: int) -> RunConfig:
        self.runs += 1
        return RunConfig(
            loop="self-refine",
            tasks=str(self.task_file(n)),
            model=self.model,
            db=str(self.workdir / f"run-{self.runs}.duckdb"),
            run_name=f"overhead-{self.runs}",
            concurrency=concurrency,
            cache=self.cache,
            # The reference check is a quick local verdict (one call per task), as the bare
            # baseline does; a self-check would add a model call per task to what is timed.
            verifier="oracle",
        )

    async def __call__(self, n: int, concurrency: int) -> int:
        cfg = self.config(n, concurrency)
        self._pending = (cfg, await run(cfg))
        return n

    def check(self, n: int) -> None:
        """Outside the timed span: the run did exactly ``n`` real calls, all verified."""
        cfg, result = self._pending
        with TraceStore(cfg.db, read_only=True) as store:
            [row] = store.query(
                "SELECT count(*) AS calls, count(*) FILTER (WHERE cache_hit) AS hits "
                "FROM calls WHERE run_id = ?",
                [result.run_id],
            )
        p = result.progress
        self.last_check = {"calls": row["calls"], "cache_hits": row["hits"], "passed": p.passed}
        if row["calls"] != n or row["hits"] or p.passed != n or p.failed:
            print(
                f"WARNING: loopwright run made {row['calls']} calls ({row['hits']} cache hits), "
                f"{p.passed}/{n} passed, {p.failed} failed -- expected {n} real calls, all passed",
                file=sys.stderr,
            )
        Path(cfg.db).unlink(missing_ok=True)


# -- measurement ---------------------------------------------------------------------------
SETTLE_S = 0.3
"""Pause after each measurement (untimed) so litellm's background logging of one side does
not spill into the next side's timing."""


async def timed(
    fn: Callable[[int, int], Awaitable[int]], n: int, concurrency: int
) -> tuple[float, float, float]:
    """Wall seconds, process CPU seconds (all threads) and event-loop-thread CPU seconds."""
    await asyncio.sleep(SETTLE_S)
    m0, c0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
    await fn(n, concurrency)
    return time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0


def _profile_writer_thread(profiles: list[cProfile.Profile]) -> Callable[[], None]:
    """Profile the trace-writer thread too (cProfile sees only the thread that enables it)."""
    original = TraceWriter._run

    def _run(self: TraceWriter) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    TraceWriter._run = _run  # type: ignore[method-assign]

    def restore() -> None:
        TraceWriter._run = original  # type: ignore[method-assign]

    return restore


_ROOT_FUNCS = {"<method 'run' of '_contextvars.Context' objects>", "_run_once", "_run"}
_LOOPWRIGHT_DIRS = tuple(
    str(Path(p).resolve()) + os.sep
    for p in (
        Path(__file__).resolve().parents[1] / "loops",
        Path(__file__).resolve().parents[1] / "traces",
    )
)
Func = tuple[str, int, str]


def _kind(func: Func) -> str:
    file = func[0]
    if file.startswith(_LOOPWRIGHT_DIRS) or f"{os.sep}loopwright{os.sep}" in file:
        return "loopwright"
    if f"{os.sep}litellm{os.sep}" in file:
        return "litellm"
    if f"{os.sep}langgraph{os.sep}" in file or f"{os.sep}langchain_core{os.sep}" in file:
        return "langgraph"
    if func[2] in _ROOT_FUNCS and ("asyncio" in file or file == "~"):
        return "root"
    return "neutral"


_PROVIDER = "scripted model (both sides run it)"


def _label(func: Func) -> str:
    file, _line, name = func
    if file.endswith((f"{os.sep}scripted.py", f"{os.sep}function_model.py")):
        return _PROVIDER
    for d in _LOOPWRIGHT_DIRS:
        if file.startswith(d):
            file = os.path.join(os.path.basename(d.rstrip(os.sep)), file[len(d) :])
    return f"{file}:{name}"


def owners(stats: pstats.Stats) -> dict[str, float]:
    """Main-thread self time by owner: the nearest frame up the stack that is loopwright code
    (per function), LangGraph/langchain-core, or litellm running in its own task.

    Library and stdlib time (pydantic, uuid, queue, json, asyncio ...) goes to whoever called
    it, split by cProfile's per-caller edges. litellm code called straight from a loopwright
    function (e.g. ``completion_cost`` in the client) is that function's overhead, not litellm's
    share of the call, since the bare side does not pay it.
    """
    raw: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Func, dict[str, float]] = {}

    def mix(f: Func, depth: int = 0) -> dict[str, float]:
        if f in memo:
            return memo[f]
        kind = _kind(f)
        if kind == "loopwright":
            return {_label(f): 1.0}
        if kind == "langgraph":
            return {"langgraph / langchain-core": 1.0}
        if kind == "root" or depth > 60:
            return {"asyncio event loop": 1.0}
        memo[f] = {"asyncio event loop": 1.0}  # cycle guard
        callers = raw[f][4] if f in raw else {}
        weights: dict[str, float] = {}
        total = 0.0
        for caller, edge in callers.items():
            w = edge[3] or edge[2] or 1e-9
            total += w
            ck = _kind(caller)
            if kind == "litellm" and ck != "loopwright":
                sub = {"litellm": 1.0} if ck != "litellm" else mix(caller, depth + 1)
            else:
                sub = mix(caller, depth + 1)
            for k, v in sub.items():
                weights[k] = weights.get(k, 0.0) + w * v
        if not total:
            result = {"litellm": 1.0} if kind == "litellm" else {"asyncio event loop": 1.0}
        else:
            result = {k: v / total for k, v in weights.items()}
        memo[f] = result
        return result

    out: dict[str, float] = {}
    for f, (_cc, _nc, tt, _ct, callers) in raw.items():
        kind = _kind(f)
        if kind in ("loopwright", "langgraph") or not callers:
            parts = [(tt, mix(f))]
        else:  # split this function's own time by caller edge
            parts = []
            for caller, edge in callers.items():
                ck = _kind(caller)
                if kind == "litellm" and ck not in ("loopwright", "litellm"):
                    parts.append((edge[2], {"litellm": 1.0}))
                else:
                    parts.append((edge[2], mix(caller)))
        for secs, m in parts:
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + secs * v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


async def profile_loopwright(side: LoopwrightSide, n: int, concurrency: int) -> None:
    writer_profiles: list[cProfile.Profile] = []
    restore = _profile_writer_thread(writer_profiles)
    prof = cProfile.Profile()
    await asyncio.sleep(SETTLE_S)
    try:
        t0 = time.perf_counter()
        prof.enable()
        await side(n, concurrency)
        prof.disable()
        wall = time.perf_counter() - t0
    finally:
        restore()
    side.check(n)

    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"\n== cProfile, loopwright side, main thread: {n} calls, {wall:.2f} s wall under the "
        f"profiler, {total:.2f} s profiled"
    )
    split = owners(stats)
    ours = {k: v for k, v in split.items() if k.startswith(("loops" + os.sep, "traces" + os.sep))}
    print("   main-thread time by owner (library and stdlib time charged to its caller):")
    for part in ("litellm", _PROVIDER, "langgraph / langchain-core", "asyncio event loop"):
        secs = split.get(part, 0.0)
        print(f"     {part:<44} {secs:6.2f} s  {100 * secs / total:5.1f}%")
    secs = sum(ours.values())
    print(f"     {'loopwright code, all':<44} {secs:6.2f} s  {100 * secs / total:5.1f}%")
    for part, secs in list(ours.items())[:10]:
        print(f"       {part:<42} {secs:6.2f} s  {100 * secs / total:5.1f}%")
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    print(_trim(out.getvalue()))

    if writer_profiles:
        wout = io.StringIO()
        wstats = pstats.Stats(writer_profiles[0], stream=wout)
        for extra in writer_profiles[1:]:
            wstats.add(extra)
        wtotal = wstats.total_tt  # type: ignore[attr-defined]
        print(f"== cProfile, trace-writer thread: {wtotal:.2f} s (mostly idle in queue.get)")
        wstats.sort_stats("tottime").print_stats(8)
        print(_trim(wout.getvalue()))


def _trim(text: str) -> str:
    """Shorten interpreter and site-packages paths so the profile table fits a terminal."""
    for p in sorted(set(sys.path), key=len, reverse=True):
        if p and len(p) > 1:
            text = text.replace(p + os.sep, "")
    return text


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    n, conc = args.calls, args.concurrency
    bare_model = ScriptedModel(lambda call: REPLY, name="overhead-bare")
    lw_model = ScriptedModel(lambda call: REPLY, name="overhead-loopwright").register()

    with tempfile.TemporaryDirectory(prefix="loopwright-overhead-") as tmp:
        side = LoopwrightSide(lw_model, Path(tmp), cache=args.cache)
        sides: dict[str, Callable[[int, int], Awaitable[int]]] = {
            "bare litellm mock": bare_mock,
            "bare scripted model": bare_scripted_factory(bare_model),
            "model in 1-node graph": langgraph_floor_factory(bare_model),
            "loopwright self-refine": side,
        }
        print(
            f"loopwright overhead: {n} calls/side, concurrency {conc}, median of "
            f"{args.repeats} alternating repeats after {args.warmup} warm-up calls/side\n"
            f"loopwright: self-refine run, tracing on (DuckDB), call cache "
            f"{'ON (fresh DB: every lookup misses)' if args.cache else 'OFF'}\n"
            f"python {sys.version.split()[0]}, litellm {_litellm_version()}, "
            f"{os.cpu_count()} CPUs, load average {_load()}"
        )
        for fn in sides.values():
            await timed(fn, args.warmup, conc)
            if fn is side:
                side.check(args.warmup)
        wall: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        loop_cpu: dict[str, list[float]] = {name: [] for name in sides}
        for rep in range(args.repeats):
            for name, fn in sides.items():
                w, c, lc = await timed(fn, n, conc)
                if fn is side:
                    side.check(n)
                wall[name].append(w)
                cpu[name].append(c)
                loop_cpu[name].append(lc)
                print(
                    f"  rep {rep + 1}: {name:<24} {w:7.2f} s  {n / w:7.1f} calls/s  "
                    f"cpu {c:6.2f} s (event-loop thread {lc:6.2f} s)"
                )

        med = {name: statistics.median(ts) for name, ts in wall.items()}
        med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
        med_loop = {name: statistics.median(ts) for name, ts in loop_cpu.items()}
        rate = {name: n / s for name, s in med.items()}
        base_mock, base_scr = rate["bare litellm mock"], rate["bare scripted model"]
        print(
            f"\n{'side':<24} {'calls':>6} {'seconds':>8} {'calls/s':>8} "
            f"{'vs mock':>8} {'vs scripted':>12} {'cpu s':>7} {'loop-thread cpu s':>18}"
        )
        for name in sides:
            print(
                f"{name:<24} {n:>6} {med[name]:>8.2f} {rate[name]:>8.1f} "
                f"{rate[name] / base_mock:>8.2f} {rate[name] / base_scr:>12.2f} "
                f"{med_cpu[name]:>7.2f} {med_loop[name]:>18.2f}"
            )
        lw = rate["loopwright self-refine"]
        cpu_ratio = med_cpu["bare scripted model"] / med_cpu["loopwright self-refine"]
        print(
            f"\nloopwright call cache: {'on' if args.cache else 'off'}; "
            f"load average now {_load()} on {os.cpu_count()} CPUs"
            + ("  (busy machine: expect noise)" if os.getloadavg()[0] > 1.5 else "")
        )
        print(f"(a) loopwright / bare litellm mock_response:          {lw / base_mock:.2f}")
        print(
            f"(b) loopwright / bare calls of the same model:        {lw / base_scr:.2f}  (= below)"
        )
        print(f"    (b) on CPU time instead of wall time:              {cpu_ratio:.2f}")
        floor = rate["model in 1-node graph"] / base_scr
        print(f"(c) LangGraph floor: 1-node graph / bare calls:       {floor:.2f}")
        print(
            f"(d) loopwright / 1-node LangGraph graph:              {lw / rate['model in 1-node graph']:.2f}"
        )
        print(f"overhead ratio (loopwright / bare litellm mock): {lw / base_mock:.2f} (>= 0.80)")

        if args.profile:
            await profile_loopwright(side, n, conc)
    graph = rate["model in 1-node graph"]
    return [
        {
            "figure": f"calls/s at concurrency {conc}: self-refine run (scripted model) vs bare "
            "litellm mock_response",
            "value": round(lw, 1),
            "baseline": round(base_mock, 1),
            "ratio": round(lw / base_mock, 3),
            "target": ">= 0.80",
        },
        {
            "figure": f"calls/s at concurrency {conc}: self-refine run vs the same call in a "
            "1-node LangGraph graph",
            "value": round(lw, 1),
            "baseline": round(graph, 1),
            "ratio": round(lw / graph, 3),
            "target": "",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per side per repetition")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    ap.add_argument("--warmup", type=int, default=300, help="warm-up calls per side")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repetitions (median)")
    ap.add_argument(
        "--cache",
        action="store_true",
        help="run loopwright with its call cache on (fresh DB, so lookups all miss); default off",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile one more loopwright run")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, calls=20, warmup=5, repeats=1, concurrency=8)
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


def _litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
