"""Reading a trace database from another process while a run holds it for writing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from loopwright.traces import TraceStore, TraceStoreError, list_runs
from loopwright.traces.readserve import RemoteReadError, sidecar_path
from loopwright.traces.view import Viewer
from loopwright.traces.view.server import _json_default
from view_testkit import build_store

WRITER = textwrap.dedent(
    """
    import sys
    from loopwright.traces import TraceStore
    s = TraceStore(sys.argv[1])
    s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
              "VALUES ('r1', 'held', 'self-refine', 'm', 'running')")
    print("ready", flush=True)
    sys.stdin.readline()  # hold the file until the test says so
    s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
              "VALUES ('r2', 'after', 'self-refine', 'm', 'done')")
    s.close()
    print("closed", flush=True)
    """
)


@pytest.fixture
def held(tmp_path: Path):
    db = tmp_path / "t.duckdb"
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "ready"
    yield db, p
    if p.poll() is None:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=30)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopwright.loops.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_another_process_reads_while_a_writer_holds_the_file(held) -> None:
    db, p = held
    assert sidecar_path(db).exists()
    assert oct(sidecar_path(db).stat().st_mode & 0o777) == "0o600"
    with TraceStore(db, read_only=True) as s:
        assert s.remote
        assert [r["name"] for r in list_runs(s)] == ["held"]
        # the viewer must never write: the service answers SELECTs only
        with pytest.raises(RemoteReadError, match="SELECT"):
            s.query("DELETE FROM runs")
        with pytest.raises(RemoteReadError, match="SELECT"):
            s.query("SELECT 1; DELETE FROM runs")
        with pytest.raises(TraceStoreError, match="only query"):
            s.cursor()
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "closed"
    p.wait(timeout=30)
    assert not sidecar_path(db).exists()
    with TraceStore(db, read_only=True) as s:  # the writer gone: a plain read-only open
        assert not s.remote
        assert {r["name"] for r in list_runs(s)} == {"held", "after"}


def test_loopwright_runs_works_from_another_terminal(held) -> None:
    db, _ = held
    out = cli("runs", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "held" in out.stdout


def test_a_listener_that_cannot_prove_the_token_gets_nothing(held) -> None:
    """The sidecar names the live writer's port but a token the writer does not hold (as if
    an old sidecar survived next to a new writer): the reader refuses the writer's proof, so
    it sends no query, and since the file is locked it says so in one line."""
    db, _ = held
    side = sidecar_path(db)
    good = side.read_text()
    info = json.loads(good)
    side.write_text(json.dumps({**info, "token": "ab" * 32}))
    try:
        with pytest.raises(TraceStoreError, match="cannot prove it holds") as exc:
            TraceStore(db, read_only=True)
        assert "locked by process" in str(exc.value)
        out = cli("runs", "--db", str(db))
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "cannot prove it holds" in out.stderr
    finally:
        side.write_text(good)


def test_a_stale_sidecar_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    TraceStore(db, serve_reads=False).close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    # a writer that crashed left its sidecar; nothing listens on that port any more
    side = sidecar_path(db)
    stale = {"version": 2, "host": "127.0.0.1", "port": 9, "token": "a" * 64,
             "pid": int(dead.stdout), "hostname": socket.gethostname()}  # fmt: skip
    for text in (
        json.dumps(stale),
        '{"host": "127.0.0.1", "port": 9, "token": "x", "pid": 1}',  # an older writer's
        "{not json",
    ):
        side.write_text(text)
        side.chmod(0o600)
        with TraceStore(db, read_only=True) as s:
            assert not s.remote
            assert list_runs(s) == []


def test_a_writer_killed_mid_read_leaves_the_reader_a_direct_read(held) -> None:
    db, p = held
    with TraceStore(db, read_only=True) as s:
        assert s.remote and [r["name"] for r in list_runs(s)] == ["held"]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        # the connection is gone mid-session: the next read opens the file itself
        assert [r["name"] for r in list_runs(s)] == ["held"]
        assert not s.remote
    assert sidecar_path(db).exists()  # left behind by kill -9: its pid is dead
    out = cli("runs", "--db", str(db))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "held" in out.stdout


def test_two_writable_stores_in_one_process_share_the_service(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    first = TraceStore(db)
    second = TraceStore(db)  # e.g. a sweep's bookkeeping while its run writes
    side = sidecar_path(db).read_text()
    first.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                  "VALUES ('r1', 'one', 'l', 'm', 'running')")  # fmt: skip
    first.close()
    assert sidecar_path(db).read_text() == side  # the first closing took nothing away
    reader = subprocess.run(
        [sys.executable, "-c", "import sys; from loopwright.traces import TraceStore, list_runs;"
         "s = TraceStore(sys.argv[1], read_only=True); print(s.remote, len(list_runs(s)))",
         str(db)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reader.stdout.split() == ["True", "1"], reader.stderr
    second.close()
    assert not sidecar_path(db).exists()


def _pages(db: Path) -> dict[str, Any]:
    """Every viewer page and the report's and CLI's reads, as JSON text."""
    from loopwright.loops.analysis.report_data import load_sweep
    from loopwright.traces import resolve_runs, run_summary

    v = Viewer(db)
    runs = v.answer("runs", {})["rows"]
    names = sorted(r["name"] for r in runs)
    out: dict[str, Any] = {"runs": runs, "list_runs": None, "sweeps": v.answer("sweeps", {})}
    for name in names:
        out[f"run {name}"] = v.answer("run", {"name": name})
        tasks = v.answer("tasks", {"run": name, "filter": "failed", "sort": "tokens"})
        out[f"tasks {name}"] = tasks
        for t in tasks["rows"][:2]:
            tree = v.answer("task", {"run": name, "task": t["task_id"]})
            out[f"task {name} {t['task_id']}"] = tree
            for n in tree["nodes"][:3]:
                node = v.answer("node", {"id": n["node_id"]})
                out[f"node {n['node_id']}"] = node
                for c in node["calls"][:1]:
                    out[f"call {c['call_id']}"] = v.answer("call", {"id": c["call_id"]})
    out["compare"] = v.answer("compare", {"a": names[0], "b": names[1], "filter": "differ"})
    out["improve"] = v.answer("improve", {})
    out["sweep"] = v.answer("sweep", {"name": "grid"})
    out["report"] = _unordered(load_sweep(str(db), "grid"))
    with TraceStore(db, read_only=True) as s:
        out["remote"] = s.remote
        out["list_runs"] = list_runs(s)
        ids = resolve_runs(s, str(db), names)
        out["summaries"] = {n: run_summary(s, r["run_id"]) for n, r in ids.items()}
    return json.loads(json.dumps(out, default=_json_default, sort_keys=True))


def _unordered(v: Any) -> Any:
    """The report's data with every list and mapping in a canonical order (its queries
    leave the order of a point's tasks to DuckDB)."""
    if hasattr(v, "__dataclass_fields__"):
        return {k: _unordered(getattr(v, k)) for k in v.__dataclass_fields__}
    if isinstance(v, dict):
        return sorted(([repr(k), _unordered(x)] for k, x in v.items()), key=repr)
    if isinstance(v, list | tuple | set):
        return sorted((_unordered(x) for x in v), key=repr)
    return v


def test_every_viewer_page_and_report_reads_the_same_through_the_service(
    tmp_path: Path,
) -> None:
    """The queries the viewer, the CLI and the report send pass the read service's checks
    (CTEs, window functions, FILTER, json_extract_string, duckdb_tables()...) and give the
    same rows as a direct read."""
    db = build_store(tmp_path, sweep=True)
    writer = TraceStore(db)  # holds the file and serves reads, as a run does
    try:
        through = _pages(db)
    finally:
        writer.close()
    direct = _pages(db)
    assert through.pop("remote") is True and direct.pop("remote") is False
    assert through == direct
