"""Reading a trace database from another process while a run holds it for writing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from loopwright.traces import TraceStore, TraceStoreError, list_runs
from loopwright.traces.readserve import RemoteReadError, sidecar_path

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
    out = subprocess.run(
        [sys.executable, "-m", "loopwright.loops.cli.main", "runs", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "held" in out.stdout


def test_a_wrong_token_is_refused(held) -> None:
    db, _ = held
    side = sidecar_path(db)
    good = side.read_text()
    side.write_text(good.replace('"token": "', '"token": "x'))
    try:
        with pytest.raises(TraceStoreError, match="bad token"):
            TraceStore(db, read_only=True)
    finally:
        side.write_text(good)


def test_a_stale_sidecar_is_ignored(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    TraceStore(db, serve_reads=False).close()
    # a writer that crashed left its sidecar; nothing listens on that port any more
    sidecar_path(db).write_text('{"host": "127.0.0.1", "port": 9, "token": "x", "pid": 1}')
    with TraceStore(db, read_only=True) as s:
        assert not s.remote
        assert list_runs(s) == []


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
