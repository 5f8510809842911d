"""``loopwright view`` page times on a large store, each against a raw DuckDB query of the
same rows measured in the same run, and the cost a watching viewer puts on a writing run.

Store: harvest.py's synthetic builder (``--calls`` model calls, default 1M, over 10 runs),
plus one generated MCTS-shaped task with a ``--tree``-node tree (default 1,000) whose every
node has a call and a verdict.

* page figures: median seconds of the viewer's HTTP answer for what one page fetches (over
  loopback, JSON encoded, store opened read-only per request as the viewer does); baseline:
  ``duckdb.connect(read_only=True)`` + the plain SELECT of the same rows + close. Target:
  under a second each (the ratio says what the viewer layer adds).
* browser figures (when Debian's chromium and playwright are present): navigation to the
  page drawn, in headless chromium; baseline: the same page's API answer.
* writer figure: seconds for the trace writer to commit ``--writer-calls`` call rows while a
  reader queries it through the read service every 50 ms (30x the viewer's live refresh),
  against the same writes with nobody reading. Target <= 1.05.

    python benchmarks/view_pages.py [--calls 1000000] [--tree 1000] [--repeats 5] [--json]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke
from harvest import build
from loopwright.traces import CallRecord, TraceStore, TraceWriter
from loopwright.traces.view import Viewer

TREE_RUN, TREE_TASK = "big", "big-task"


def add_tree(store: TraceStore, n: int, run: str = TREE_RUN, task: str = TREE_TASK) -> None:
    """One run with one task whose tree has ``n`` nodes (3 children each, heap order), a call
    and an in-loop verdict per node: the shape of a large MCTS search."""
    rid = f"run-{run}"
    store.execute(
        "INSERT INTO runs (run_id, name, loop, model, config, status, started_at, finished_at) "
        "VALUES (?, ?, 'mcts', 'synthetic/m', '{}', 'done', now(), now())",
        [rid, run],
    )
    store.execute(
        "INSERT INTO tasks (run_id, task_id, idx, kind, prompt, reference, final_answer, "
        "final_node_id, verdict, graded, stop_reason, rounds, total_tokens, calls, wall_s, "
        "status) VALUES (?, ?, 0, 'math', 'What is 2 + 3?', '5', '5', ?, true, true, "
        "'verified', 8, ?, ?, 12.5, 'done')",
        [rid, task, f"{task}-n{n - 1}", 120 * n, n],
    )
    base = "SELECT ? AS run_id, ? AS task_id, i, ? || '-n' || i AS node_id FROM range(?) r(i)"
    store.execute(
        f"""INSERT INTO nodes BY NAME SELECT node_id,
            CASE WHEN i > 0 THEN task_id || '-n' || ((i - 1) // 3) END AS parent_id,
            run_id, task_id, 'mcts' AS loop, 'synthetic/m' AS model,
            CASE WHEN i = 0 THEN 'root' ELSE 'expander' END AS role,
            CAST(floor(ln(2 * i + 1) / ln(3) + 1e-9) AS INTEGER) AS depth, i // 3 AS round,
            'Attempt ' || i || ': 2 + 3 = ' || (i % 7) || '. The answer is ' || (i % 7) || '.'
                AS content, CAST(i % 7 AS VARCHAR) AS answer, (i % 7 = 5)::DOUBLE AS score,
            (i % 10) / 10.0 AS value, 1 + (?::INTEGER - i) // 50 AS visits,
            i = ? - 1 AS is_final, now() AS created_at FROM ({base})""",
        [n, n - 1, rid, task, task, n],
    )
    store.execute(
        f"""INSERT INTO calls BY NAME SELECT node_id || '-c' AS call_id, node_id AS request_id,
            run_id, task_id, node_id, 'mcts' AS loop, 'expander' AS role, 'synthetic/m' AS model,
            '[{{"role": "user", "content": "What is 2 + 3?"}}]' AS messages, 0.8 AS temperature,
            1 AS n, 0 AS sample_index, 'The answer is ' || (i % 7) AS output,
            100 AS prompt_tokens, 20 AS completion_tokens, 0.5 AS latency_s, 1 AS attempts,
            false AS cache_hit, now() AS created_at FROM ({base})""",
        [rid, task, task, n],
    )
    store.execute(
        f"""INSERT INTO verdicts BY NAME SELECT node_id || '-v' AS verdict_id, run_id, task_id,
            node_id, 'in_loop' AS stage, 'math-answer' AS verifier, i % 7 = 5 AS passed,
            'checked' AS feedback, now() AS created_at FROM ({base})""",
        [rid, task, task, n],
    )


def _median_s(fn: Any, repeats: int) -> float:
    fn()  # warm: the OS page cache, the viewer's first import of the static files
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return bytes(r.read())


def _raw(db: Path, sqls: list[tuple[str, list[Any]]]) -> None:
    con = duckdb.connect(str(db), read_only=True)
    try:
        for sql, params in sqls:
            con.execute(sql, params).fetchall()
    finally:
        con.close()


def page_rows(db: Path, v: Viewer, repeats: int) -> list[dict[str, Any]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        run = con.execute("SELECT name, run_id FROM runs WHERE name <> ? LIMIT 1", [TREE_RUN])
        name, rid = run.fetchone()  # type: ignore[misc]
        (task,) = con.execute(
            "SELECT task_id FROM tasks WHERE run_id = ? ORDER BY idx LIMIT 1", [rid]
        ).fetchone()  # type: ignore[misc]
        (node,) = con.execute(
            "SELECT node_id FROM nodes WHERE run_id = ? AND task_id = ? LIMIT 1", [rid, task]
        ).fetchone()  # type: ignore[misc]
        (call,) = con.execute("SELECT call_id FROM calls LIMIT 1").fetchone()  # type: ignore[misc]
        other = con.execute("SELECT name FROM runs WHERE name NOT IN (?, ?) LIMIT 1",
                            [name, TREE_RUN]).fetchone()[0]  # type: ignore[index]  # fmt: skip
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                  for t in ("calls", "nodes", "tasks")}  # fmt: skip
    finally:
        con.close()
    q = urllib.parse.quote
    u = v.url + "api/"
    pages: list[tuple[str, list[str], list[tuple[str, list[Any]]]]] = [
        ("runs page", ["runs?limit=50"],
         [("SELECT * FROM runs LIMIT 50", []),
          ("SELECT run_id, count(*), sum(total_tokens) FROM tasks GROUP BY run_id", [])]),
        ("run page (run + first 100 tasks)", [f"run?name={q(name)}", f"tasks?run={q(name)}"],
         [("SELECT * FROM runs WHERE name = ?", [name]),
          ("SELECT * FROM tasks WHERE run_id = ? ORDER BY idx LIMIT 100", [rid])]),
        ("run page, filter disagree", [f"tasks?run={q(name)}&filter=disagree"],
         [("SELECT * FROM tasks WHERE run_id = ? AND verdict <> graded ORDER BY idx LIMIT 100",
           [rid])]),
        ("task page (tree + a node)", [f"task?run={q(name)}&task={q(task)}", f"node?id={q(node)}"],
         [("SELECT * FROM nodes WHERE run_id = ? AND task_id = ?", [rid, task]),
          ("SELECT * FROM calls WHERE node_id = ?", [node])]),
        (f"task page, {counts_tree(db)}-node tree", [f"task?run={TREE_RUN}&task={TREE_TASK}"],
         [("SELECT * FROM nodes WHERE task_id = ?", [TREE_TASK]),
          ("SELECT * FROM verdicts WHERE task_id = ?", [TREE_TASK])]),
        ("open a call", [f"call?id={q(call)}"], [("SELECT * FROM calls WHERE call_id = ?", [call])]),
        ("compare two runs (100 tasks)", [f"compare?a={q(name)}&b={q(other)}"],
         [("SELECT * FROM tasks a JOIN tasks b USING (task_id) WHERE a.run_id = ? AND "
           "b.run_id = (SELECT run_id FROM runs WHERE name = ?) LIMIT 100", [rid, other])]),
    ]  # fmt: skip
    rows = []
    for title, routes, sqls in pages:
        got = _median_s(lambda routes=routes: [_get(u + r) for r in routes], repeats)
        base = _median_s(lambda sqls=sqls: _raw(db, sqls), repeats)
        rows.append({"figure": f"view {title}: s (baseline: raw duckdb of the same rows)",
                     "value": got, "baseline": base, "ratio": got / base, "target": "< 1 s"})  # fmt: skip
        print(f"{title:45s} {got * 1000:8.1f} ms   raw {base * 1000:7.1f} ms   x{got / base:.1f}")
    print("store: " + ", ".join(f"{k} {n:,}" for k, n in counts.items()))
    return rows


def counts_tree(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM nodes WHERE task_id = ?",
                               [TREE_TASK]).fetchone()[0])  # type: ignore[index]  # fmt: skip
    finally:
        con.close()


def browser_rows(v: Viewer, repeats: int) -> list[dict[str, Any]]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("browser: playwright not installed, skipped")
        return []
    if not Path("/usr/bin/chromium").exists():
        print("browser: no /usr/bin/chromium (make sysdeps), skipped")
        return []
    rows = []
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        page = b.new_page()
        for title, path, ready, api in (
            ("runs page", "", "#runs", "runs?limit=50"),
            (
                "1,000-node task page",
                f"run/{TREE_RUN}/task/{TREE_TASK}",
                "#node-panel #calls",
                f"task?run={TREE_RUN}&task={TREE_TASK}",
            ),
        ):

            def load(path: str = path, ready: str = ready) -> None:
                page.goto(v.url + path)
                page.wait_for_selector(ready)

            got = _median_s(load, repeats)
            base = _median_s(lambda api=api: _get(v.url + "api/" + api), repeats)
            rows.append({"figure": f"view in chromium, {title} drawn: s (baseline: its API answer)",
                         "value": got, "baseline": base, "ratio": got / base, "target": "< 1 s"})  # fmt: skip
            print(f"chromium {title:36s} {got * 1000:8.1f} ms   api {base * 1000:7.1f} ms")
        b.close()
    return rows


def _write(db: Path, calls: int, reading: bool) -> float:
    if db.exists():
        db.unlink()
    store = TraceStore(db)
    writer = TraceWriter(store)
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with TraceStore(db, read_only=True) as s:
                s.query("SELECT count(*) AS n FROM calls")
            stop.wait(0.05)

    t = threading.Thread(target=reader) if reading else None
    try:
        if t:
            t.start()
        t0 = time.perf_counter()
        for i in range(calls):
            writer.write(CallRecord(request_id=f"r{i}", run_id="r", task_id=f"t{i % 97}",
                                    model="m", messages="[]", output="The answer is 5."))  # fmt: skip
        writer.flush()
        took = time.perf_counter() - t0
    finally:
        stop.set()
        if t:
            t.join()
        writer.close()
        store.close()
    return took


def writer_rows(work: Path, calls: int, repeats: int) -> list[dict[str, Any]]:
    off, on = [], []
    _write(work / "w.duckdb", calls // 4, reading=True)  # warm: imports, first DuckDB file
    for _ in range(repeats):  # alternate, so drift in machine load hits both sides alike
        off.append(_write(work / "w.duckdb", calls, reading=False))
        on.append(_write(work / "w.duckdb", calls, reading=True))
    a, b = statistics.median(on), statistics.median(off)
    print(f"writer, {calls} call rows: {a:.2f} s with a reader every 50 ms, {b:.2f} s alone "
          f"-> x{a / b:.3f}")  # fmt: skip
    return [{"figure": f"writer: s for {calls:,} call rows while read every 50 ms "
             "(baseline: nobody reading)", "value": a, "baseline": b, "ratio": a / b,
             "target": "<= 1.05"}]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1_000_000, help="calls rows in the store")
    ap.add_argument("--tree", type=int, default=1000, help="nodes in the big task's tree")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    ap.add_argument("--writer-calls", type=int, default=20000, help="rows for the writer figure")
    ap.add_argument("--db", type=Path, help="reuse (or keep) this store")
    ap.add_argument("--no-browser", action="store_true", help="skip the chromium figures")
    ap.add_argument("--json", action="store_true", help="print a final JSON line of rows")
    args = _smoke.parse_args(ap, argv, calls=2000, tree=50, repeats=1, writer_calls=200)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="view-bench-") as tmp:
        work = Path(tmp)
        db = args.db or work / "traces.duckdb"
        if not db.exists():
            t0 = time.perf_counter()
            build(db, args.calls, seed=7)
            with TraceStore(db, serve_reads=False) as s:
                add_tree(s, args.tree)
            print(f"built {db} in {time.perf_counter() - t0:.1f} s "
                  f"({db.stat().st_size / 2**20:.0f} MiB)")  # fmt: skip
        with Viewer(db, port=0) as v:
            rows = page_rows(db, v, args.repeats)
            if not args.no_browser:
                rows += browser_rows(v, args.repeats)
        rows += writer_rows(work, args.writer_calls, max(3, args.repeats))
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
