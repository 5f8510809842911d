"""End-to-end throughput against a loopback mock OpenAI-compatible server with fixed latency.

A minimal HTTP/1.1 server (asyncio, stdlib only) answers ``POST /v1/chat/completions`` with a
valid ``chat.completion`` (usage included) after ``--latency`` seconds, serving any number of
requests concurrently. It runs in its own process (as a real endpoint would: in-process, its
timers would wait on the client's GIL and every client's CPU would look like server latency),
binds 127.0.0.1 on a free port, and stops when the benchmark ends, when the benchmark's process
goes away, or after a hard timeout, whichever comes first.

loopwright is driven as a user would drive it: ``loopwright.loops.execution.runner.run`` with
``loop="best-of-n", options={"n": 1}, model="openai/mock", api_base=<the server>``, call cache
off, tracing into a fresh temporary DuckDB file, over math tasks the mock always answers right
(one model call per task), at each ``--concurrency`` level. The timed span is the whole
``run()``. After each run the trace must hold exactly one call per task (no cache hits).

Figure per level: achieved calls/s against the ideal ``concurrency / latency`` calls/s, i.e.
``ratio = ideal_time / measured_time`` with ``ideal_time = calls * latency / concurrency``
(target >= 0.9 at 64). At the highest level two sides measured in the same run show where
the gap is: a raw aiohttp client (what the server and the loopback can do) and bare
``litellm.acompletion`` (what litellm's OpenAI path can do on this machine).

    python benchmarks/throughput.py [--latency 1.0] [--levels 1,16,64] [--rounds 20] [--json]
    python benchmarks/throughput.py --profile      # cProfile one more run at the top level

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported
# litellm's OpenAI path wants a key; the mock server ignores it. Never printed.
os.environ.setdefault("OPENAI_API_KEY", "sk-loopwright-mock")

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

REPLY = "The answer is 5."
MODEL = "openai/mock"
HARD_TIMEOUT_S = 900.0


# -- the mock server -------------------------------------------------------------------------
class _Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies; responses in request order."""

    def __init__(self, server: MockServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.count(1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, path, _ = [*lines[0].split(" ", 2), "", ""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._send(411, {"error": {"message": "chunked bodies are not supported"}}, 0)
                self.close_after = True
                return
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            if headers.get("connection", "").lower() == "close":
                self.close_after = True
            self.server.handle(self, method, path, body)

    def _send(self, status: int, payload: dict[str, Any], delay: float) -> None:
        blob = json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(blob)}\r\n"
            f"connection: {'close' if self.close_after else 'keep-alive'}\r\n\r\n"
        ).encode()
        if delay > 0:
            self.server.loop.call_later(delay, self._write, head + blob, self.close_after)
        else:
            self._write(head + blob, self.close_after)

    def _write(self, data: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class MockServer:
    """A loopback OpenAI-compatible chat-completions server with a fixed latency.

    ``with MockServer(latency=0.05) as srv: ... srv.base_url ...``; it also stops by itself
    after ``hard_timeout_s``. ``requests`` counts the chat completions it answered.
    ``process=True`` serves from a child process (a ``str`` reply only); else from a thread.
    """

    def __init__(
        self,
        latency: float = 0.05,
        *,
        reply: str | Callable[[dict[str, Any]], str] = REPLY,
        hard_timeout_s: float = HARD_TIMEOUT_S,
        process: bool = False,
    ) -> None:
        if process and not isinstance(reply, str):
            raise ValueError("a server in its own process needs a fixed str reply")
        self.latency = latency
        self.reply = reply
        self.hard_timeout_s = hard_timeout_s
        self.process = process
        self._counts = [0, 0]  # requests, connections (the child's, in process mode)
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._serve, name="mock-openai", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> int:
        return self._stats()[0]

    @property
    def connections(self) -> int:
        return self._stats()[1]

    def _stats(self) -> list[int]:
        if self._proc is None:
            return self._counts
        with urllib.request.urlopen(self.base_url + "/stats", timeout=10) as r:
            return [int(x) for x in json.loads(r.read())]

    def count(self, which: int) -> None:
        self._counts[which] += 1

    def start(self) -> MockServer:
        if self.process:
            # The child serves until its stdin closes (our stop, or our death) or its timeout.
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve",
                 "--latency", repr(self.latency), "--reply", str(self.reply),
                 "--hard-timeout", repr(self.hard_timeout_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line.startswith("port "):
                self.stop()
                raise RuntimeError("mock server process did not start")
            self.port = int(line.split()[1])
            return self
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("mock server did not start")
        if self._error is not None:
            raise RuntimeError("mock server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._proc is not None:
            proc, self._proc = self._proc, None
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            return
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(10)

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.loop.create_server(lambda: _Http(self), "127.0.0.1", 0, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.loop.call_later(self.hard_timeout_s, self._shutdown)
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.loop.stop()

    def handle(self, conn: _Http, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path.rstrip("/").endswith("/stats"):
            conn._send(200, self._counts, 0)  # type: ignore[arg-type]
            return
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            conn._send(404, {"error": {"message": f"no route {method} {path}"}}, 0)
            return
        try:
            req = json.loads(body)
            messages = req["messages"]
        except (ValueError, KeyError, TypeError):
            conn._send(400, {"error": {"message": "expected a JSON body with messages"}}, 0)
            return
        self.count(0)
        n = int(req.get("n") or 1)
        text = self.reply(req) if callable(self.reply) else self.reply
        prompt_tokens = max(1, sum(len(str(m.get("content", "")).split()) for m in messages))
        completion_tokens = len(text.split())
        conn._send(
            200,
            {
                "id": f"chatcmpl-mock-{self._counts[0]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(req.get("model", "mock")),
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens * n,
                    "total_tokens": prompt_tokens + completion_tokens * n,
                },
            },
            self.latency,
        )


def serve_forever(latency: float, reply: str, hard_timeout_s: float) -> None:
    """``--serve``: print ``port N``, serve until stdin closes or the hard timeout."""
    srv = MockServer(latency, reply=reply, hard_timeout_s=hard_timeout_s).start()
    print(f"port {srv.port}", flush=True)
    watchdog = threading.Timer(hard_timeout_s + 5, os._exit, (0,))
    watchdog.daemon = True
    watchdog.start()
    with contextlib.suppress(OSError, KeyboardInterrupt):
        sys.stdin.read()
    srv.stop()


# -- sides -----------------------------------------------------------------------------------
def _question(i: int) -> str:
    return f"Task {i}: Ana has 2 apples and gets 3 more. How many apples does Ana have now?"


def task_file(workdir: Path, n: int) -> Path:
    path = workdir / f"tasks-{n}.jsonl"
    if not path.exists():
        with path.open("w", encoding="utf-8") as fh:
            for i in range(n):
                row = {"id": f"t{i:06d}", "prompt": _question(i), "kind": "math", "reference": "5"}
                fh.write(json.dumps(row) + "\n")
    return path


class LoopwrightSide:
    """A real best-of-n (n=1) run through ``runner.run``, traced into a fresh DuckDB file."""

    def __init__(self, api_base: str, workdir: Path, transport: str = "auto") -> None:
        self.api_base = api_base
        self.workdir = workdir
        self.transport = transport
        self.runs = 0

    async def __call__(self, n: int, concurrency: int) -> str:
        """Run ``n`` tasks; returns a problem description, or "" when the trace is right."""
        from loopwright.loops.execution.runner import RunConfig, run
        from loopwright.traces.store import TraceStore

        self.runs += 1
        cfg = RunConfig(
            loop="best-of-n",
            options={"n": 1},
            model=MODEL,
            api_base=self.api_base,
            transport=self.transport,
            tasks=str(task_file(self.workdir, n)),
            concurrency=concurrency,
            cache=False,
            db=str(self.workdir / f"run-{self.runs}.duckdb"),
            run_name=f"throughput-{self.runs}",
            verifier="oracle",  # one request per task, a quick local check, as the baselines
        )
        result = await run(cfg)
        with TraceStore(cfg.db, read_only=True) as store:
            [row] = store.query(
                "SELECT count(*) AS calls, count(*) FILTER (WHERE cache_hit) AS hits, "
                "count(*) FILTER (WHERE error IS NOT NULL) AS errors FROM calls WHERE run_id = ?",
                [result.run_id],
            )
        p = result.progress
        Path(cfg.db).unlink(missing_ok=True)
        Path(cfg.db + ".wal").unlink(missing_ok=True)
        if row["calls"] != n or row["hits"] or row["errors"] or p.passed != n or p.failed:
            return (
                f"expected {n} calls, all passed; the trace holds {row['calls']} calls "
                f"({row['hits']} cache hits, {row['errors']} errors), {p.passed}/{n} passed, "
                f"{p.failed} failed"
            )
        return ""


def bare_litellm(api_base: str) -> Callable[[int, int], Awaitable[str]]:
    import litellm

    async def side(n: int, concurrency: int) -> str:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> bool:
            async with sem:
                resp = await litellm.acompletion(
                    model=MODEL,
                    api_base=api_base,
                    messages=[{"role": "user", "content": _question(i)}],
                    timeout=120.0,
                    num_retries=0,
                    max_retries=0,
                    temperature=0.8,
                    max_tokens=256,
                    seed=i,
                )
            return resp.choices[0].message.content == REPLY

        ok = sum(await asyncio.gather(*(one(i) for i in range(n))))
        return "" if ok == n else f"{n - ok} of {n} replies were wrong"

    return side


def raw_aiohttp(api_base: str) -> Callable[[int, int], Awaitable[str]]:
    import aiohttp

    async def side(n: int, concurrency: int) -> str:
        sem = asyncio.Semaphore(concurrency)
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:

            async def one(i: int) -> bool:
                body = {
                    "model": "mock",
                    "messages": [{"role": "user", "content": _question(i)}],
                }
                async with sem, session.post(f"{api_base}/chat/completions", json=body) as r:
                    data = await r.json()
                return data["choices"][0]["message"]["content"] == REPLY

            ok = sum(await asyncio.gather(*(one(i) for i in range(n))))
        return "" if ok == n else f"{n - ok} of {n} replies were wrong"

    return side


# -- measurement -----------------------------------------------------------------------------
async def timed(fn: Callable[[int, int], Awaitable[str]], n: int, conc: int) -> tuple[float, str]:
    await asyncio.sleep(0.2)  # let the previous side's background work settle (untimed)
    t0 = time.perf_counter()
    problem = await fn(n, conc)
    return time.perf_counter() - t0, problem


def calls_for(args: argparse.Namespace, conc: int) -> int:
    return max(args.min_calls, args.rounds * conc)


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    top = max(levels)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    with (
        MockServer(args.latency, process=True) as srv,
        tempfile.TemporaryDirectory(prefix="loopwright-throughput-") as tmp,
    ):
        lw = LoopwrightSide(srv.base_url, Path(tmp))
        print(
            f"mock OpenAI server on 127.0.0.1:{srv.port}, latency {args.latency * 1000:.0f} ms; "
            f"loopwright best-of-n (n=1) via runner.run, model {MODEL}, cache off, tracing on; "
            f"median of {args.repeats}; {os.cpu_count()} CPUs, load average {_load()}"
        )
        # Warm-up: imports, litellm's client cache, the connection pool, DuckDB.
        await timed(lw, min(calls_for(args, top), 2 * top), top)
        for conc in levels:
            n = calls_for(args, conc)
            before = srv.requests
            times: list[float] = []
            for _ in range(args.repeats):
                secs, problem = await timed(lw, n, conc)
                times.append(secs)
                if problem:
                    problems.append(f"concurrency {conc}: {problem}")
            served = srv.requests - before
            if served != n * args.repeats:
                problems.append(
                    f"concurrency {conc}: the server answered {served} requests, "
                    f"expected {n * args.repeats}"
                )
            secs = statistics.median(times)
            ideal = n * args.latency / conc
            rate, ideal_rate = n / secs, conc / args.latency
            print(
                f"  concurrency {conc:>3}: {n:>5} calls in {secs:6.2f} s = {rate:7.1f} calls/s; "
                f"ideal {ideal:5.2f} s = {ideal_rate:7.1f} calls/s; ratio {ideal / secs:.2f}"
            )
            rows.append(
                {
                    "figure": f"calls/s, concurrency {conc}, {args.latency * 1000:.0f} ms latency "
                    f"(baseline: ideal concurrency/latency)",
                    "value": round(rate, 1),
                    "baseline": round(ideal_rate, 1),
                    "ratio": round(ideal / secs, 3),
                    "target": ">= 0.9" if conc == top else "",
                }
            )

        # Where the gap is: the same calls at the top level without loopwright.
        n = calls_for(args, top)
        floor_rates: dict[str, float] = {}
        sides: tuple[tuple[str, Callable[[int, int], Awaitable[str]]], ...] = (
            ("raw aiohttp client", raw_aiohttp(srv.base_url)),
            ("bare litellm.acompletion", bare_litellm(srv.base_url)),
            ("loopwright via litellm", LoopwrightSide(srv.base_url, Path(tmp), "litellm")),
        )
        for name, side in sides:
            await timed(side, min(n, 2 * top), top)  # warm-up
            times = []
            for _ in range(args.repeats):
                secs, problem = await timed(side, n, top)
                times.append(secs)
                if problem:
                    problems.append(f"{name}: {problem}")
            floor_rates[name] = n / statistics.median(times)
            print(
                f"  {name:<25} at {top}: {floor_rates[name]:7.1f} calls/s "
                f"(ratio to ideal {floor_rates[name] * args.latency / top:.2f})"
            )
        bare = floor_rates["bare litellm.acompletion"]
        via = floor_rates["loopwright via litellm"]
        rows.append(
            {
                "figure": f"calls/s, concurrency {top}: loopwright run with --transport litellm "
                "vs bare litellm.acompletion on the same server",
                "value": round(via, 1),
                "baseline": round(bare, 1),
                "ratio": round(via / bare, 3),
                "target": "",
            }
        )
        rows.append(
            {
                "figure": f"calls/s, concurrency {top}: raw aiohttp client (mock-server floor) "
                "vs ideal",
                "value": round(floor_rates["raw aiohttp client"], 1),
                "baseline": round(top / args.latency, 1),
                "ratio": round(floor_rates["raw aiohttp client"] * args.latency / top, 3),
                "target": "",
            }
        )
        print(f"  server: {srv.requests} requests on {srv.connections} connections")

        if args.profile:
            await profile(lw, calls_for(args, top), top)
    for p in problems:
        print(f"WARNING: {p}", file=sys.stderr)
    if problems:
        for r in rows:
            r["note"] = "; ".join(problems)
    return rows


async def profile(side: LoopwrightSide, n: int, conc: int) -> None:
    prof = cProfile.Profile()
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    prof.enable()
    problem = await side(n, conc)
    prof.disable()
    wall = time.perf_counter() - t0
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(f"\n== cProfile, loopwright run, main thread: {n} calls at {conc}, {wall:.2f} s wall")
    if problem:
        print(f"   (the profiled run was wrong: {problem})")
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(25)
    text = out.getvalue()
    for p in sorted(set(sys.path), key=len, reverse=True):
        if p and len(p) > 1:
            text = text.replace(p + os.sep, "")
    print(text)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Hosted chat APIs answer short prompts in ~0.5-3 s. At tens of ms the ceiling is the CPU
    # litellm spends per call (~8-17 ms here), not orchestration: see benchmarks/README.md.
    ap.add_argument("--latency", type=float, default=1.0, help="server latency, seconds")
    ap.add_argument("--levels", default="1,16,64", help="comma-separated concurrency levels")
    ap.add_argument("--rounds", type=int, default=20, help="calls per level = rounds x level")
    ap.add_argument("--min-calls", type=int, default=60, help="at least this many per level")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per level (median counts)")
    ap.add_argument("--profile", action="store_true", help="cProfile one more top-level run")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reply", default=REPLY, help=argparse.SUPPRESS)
    ap.add_argument("--hard-timeout", type=float, default=HARD_TIMEOUT_S, help=argparse.SUPPRESS)
    args = _smoke.parse_args(ap, argv, latency=0.05, levels="1,4", rounds=2, min_calls=4, repeats=1)
    if args.serve:
        serve_forever(args.latency, args.reply, args.hard_timeout)
        return 0
    rows = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
