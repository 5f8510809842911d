"""The read service against hostile neighbours: another local user who can write the
database's folder, a stale or foreign listener on the advertised port, floods of idle
connections, and SELECTs that try to reach past the trace tables.

Each test proves the attack failed where it matters: the file the attacker planted is
untouched and holds no token, the listener received nothing secret, the reader got the real
rows, the service kept answering, the refused query reached nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from loopwright.traces import TraceStore, TraceStoreError, list_runs
from loopwright.traces import readserve as rs
from loopwright.traces import store as store_mod
from loopwright.traces.readserve import RemoteReader, sidecar_path
from loopwright.traces.store import ReadServiceError

NOBODY = 65534

WRITER = textwrap.dedent(
    """
    import json, os, resource, sys
    import loopwright.traces.readserve as rs
    from loopwright.traces import TraceStore
    db, opts = sys.argv[1], json.loads(sys.argv[2])
    for k, v in opts.get("consts", {}).items():
        setattr(rs, k, v)
    s = TraceStore(db)
    for i in range(opts.get("runs", 3)):
        s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                  "VALUES (?, ?, 'l', 'm', 'done')", [f"r{i}", f"run-{i}"])
    srv = rs._servers[os.path.realpath(db)][0]
    def fds():
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError:
            return -1
    if "nofile_headroom" in opts:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds() + opts["nofile_headroom"], hard))
    print(json.dumps({"fds": fds(), "port": srv.port}), flush=True)
    for line in sys.stdin:
        if line.strip() != "stats":
            break
        print(json.dumps({**srv.stats, "running": srv.running_queries(), "fds": fds()}),
              flush=True)
    s.close()
    print("closed", flush=True)
    """
)


class Writer:
    """A process that holds the database for writing and serves reads, as a run does."""

    def __init__(self, db: Path, **opts: Any) -> None:
        self.db = db
        self.p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.p.stdout is not None and self.p.stdin is not None
        line = self.p.stdout.readline()
        assert line, self.p.stderr.read() if self.p.stderr else ""
        self.ready = json.loads(line)
        self.err: str | None = None

    def stats(self) -> dict[str, int]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("stats\n")
        self.p.stdin.flush()
        return dict(json.loads(self.p.stdout.readline()))

    def close(self) -> str:
        """Stop it; returns what it printed to its terminal's stderr."""
        if self.err is None:
            out, self.err = self.p.communicate("\n", timeout=60)
            assert "closed" in out or self.p.returncode != 0
        return self.err


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    w = Writer(tmp_path / "t.duckdb")
    yield w
    w.close()


def wait_for(pred: Any, timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopwright.loops.cli.main", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def a_store(db: Path, runs: int = 3) -> Path:
    with TraceStore(db, serve_reads=False) as s:
        for i in range(runs):
            s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                      "VALUES (?, ?, 'l', 'm', 'done')", [f"r{i}", f"run-{i}"])  # fmt: skip
    return db


def names(db: Path) -> list[str]:
    with TraceStore(db, read_only=True) as s:
        return sorted(r["name"] for r in list_runs(s))


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return int(p.stdout)


def sidecar_text(port: int, token: str, **over: Any) -> str:
    info = {"version": 2, "host": "127.0.0.1", "port": port, "token": token,
            "pid": os.getpid(), "hostname": socket.gethostname(), **over}  # fmt: skip
    return json.dumps(info)


def plant(path: Path, text: str, mode: int = 0o600, uid: int | None = None) -> None:
    path.write_text(text)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)


class Listener:
    """Something else on the advertised port: it records what it receives and, if
    ``answer``, replies with forged bytes; otherwise it accepts and never answers."""

    def __init__(self, answer: bool, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.answer = answer
        self.received = bytearray()
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = False
        self.sock.settimeout(0.1)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        forged = json.dumps({"rows": "forged"}).encode()
        end = time.monotonic() + 30
        while not self._stop and time.monotonic() < end:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.received += data
            if self.answer:  # a proof it cannot compute, then a made-up answer
                with contextlib.suppress(OSError):
                    conn.sendall(secrets.token_bytes(64) + b"K" + forged)

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for c in self._held:
            c.close()


# -- the sidecar and its temp file --------------------------------------------------------


def test_a_guessed_temp_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user who guessed the temp names plants a file of their own (to get the token)
    and a symlink (to make the writer truncate a file of their choice): neither is used."""
    db = tmp_path / "t.duckdb"
    theirs, link = tmp_path / ".guess-1.tmp", tmp_path / ".guess-2.tmp"
    plant(theirs, "attacker's file", mode=0o666, uid=NOBODY)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link.symlink_to(victim)
    guesses = iter([theirs, link])
    real = rs._temp_path
    monkeypatch.setattr(rs, "_temp_path", lambda s: next(guesses, None) or real(s))
    with TraceStore(db):
        assert theirs.read_text() == "attacker's file" and theirs.stat().st_uid == NOBODY
        assert victim.read_text() == "precious" and link.is_symlink()
        side = sidecar_path(db)
        st = os.lstat(side)
        assert not side.is_symlink() and st.st_uid == os.geteuid()
        assert st.st_mode & 0o777 == 0o600
        token = json.loads(side.read_text())["token"]
        assert token not in theirs.read_text()
        with TraceStore(db, read_only=True) as r:  # and the service works
            assert r.remote and list_runs(r) == []
    assert list(tmp_path.glob(".t.duckdb.readers.json.*.tmp")) == []  # no temp file left


def test_a_symlink_planted_at_the_sidecar_path_is_replaced_not_followed(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    sidecar_path(db).symlink_to(victim)
    with TraceStore(db):
        assert victim.read_text() == "precious"
        assert not sidecar_path(db).is_symlink()
        assert os.lstat(sidecar_path(db)).st_mode & 0o777 == 0o600
    assert victim.read_text() == "precious"


def test_a_sidecar_that_cannot_be_written_leaves_the_run_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(sidecar: Path, info: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rs, "_write_sidecar", refuse)
    db = tmp_path / "t.duckdb"
    before = len(os.listdir("/proc/self/fd"))
    with caplog.at_level(logging.WARNING, logger=rs.__name__), TraceStore(db) as s:
        s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                  "VALUES ('r', 'kept', 'l', 'm', 'done')")  # fmt: skip
    assert "cannot advertise reads" in caplog.text and "Permission denied" in caplog.text
    assert not sidecar_path(db).exists()
    assert len(os.listdir("/proc/self/fd")) <= before  # its socket and friends were closed
    assert names(db) == ["kept"]


@pytest.mark.parametrize(
    "case",
    ["another uid", "group-readable", "symlink", "dead pid", "0.0.0.0 host", "other machine",
     "malformed", "wrong types", "too large", "a directory"],
)  # fmt: skip
def test_a_sidecar_that_fails_a_check_is_ignored(tmp_path: Path, case: str) -> None:
    """Planted next to a file no writer holds, pointing at a listener of the planter's: the
    reader never connects to it and reads the file directly."""
    db = a_store(tmp_path / "t.duckdb")
    side = sidecar_path(db)
    listener = Listener(answer=True)
    good = sidecar_text(listener.port, secrets.token_hex(32))
    try:
        if case == "another uid":
            plant(side, good, uid=NOBODY)
        elif case == "group-readable":
            plant(side, good, mode=0o644)
        elif case == "symlink":
            plant(tmp_path / "elsewhere.json", good)
            side.symlink_to(tmp_path / "elsewhere.json")
        elif case == "dead pid":
            plant(side, sidecar_text(listener.port, "a" * 64, pid=dead_pid()))
        elif case == "0.0.0.0 host":
            plant(side, sidecar_text(listener.port, "a" * 64, host="0.0.0.0"))
        elif case == "other machine":
            plant(side, sidecar_text(listener.port, "a" * 64, hostname="elsewhere"))
        elif case == "malformed":
            plant(side, "{not json")
        elif case == "wrong types":
            plant(side, json.dumps({**json.loads(good), "port": "x", "pid": [1]}))
        elif case == "too large":
            plant(side, good + " " * 10_000)
        else:
            side.mkdir()
        assert names(db) == ["run-0", "run-1", "run-2"]
        assert listener.connections == 0
        if case in ("another uid", "malformed", "a directory"):
            out = cli("runs", "--db", str(db))
            assert out.returncode == 0 and "run-0" in out.stdout, out.stderr
            assert "Traceback" not in out.stderr
            assert len(out.stderr.strip().splitlines()) <= 1
    finally:
        listener.close()


def test_a_sidecar_that_fails_a_check_next_to_a_locked_file_gives_one_line(writer: Writer) -> None:
    side = sidecar_path(writer.db)
    good = side.read_text()
    os.chmod(side, 0o644)
    try:
        with pytest.raises(TraceStoreError) as exc:
            TraceStore(writer.db, read_only=True)
        msg = str(exc.value)
        assert "locked by process" in msg and "mode 0644" in msg and "\n" not in msg
        out = cli("runs", "--db", str(writer.db))
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "mode 0644" in out.stderr
    finally:
        os.chmod(side, 0o600)
    assert side.read_text() == good
    assert names(writer.db) == ["run-0", "run-1", "run-2"]


# -- stale sidecars and foreign listeners -------------------------------------------------


def test_after_kill_9_whatever_listens_on_the_stale_port_gets_nothing(tmp_path: Path) -> None:
    w = Writer(tmp_path / "t.duckdb")
    port, side = w.ready["port"], sidecar_path(w.db)
    token = json.loads(side.read_text())["token"]
    w.p.kill()
    w.p.wait(timeout=30)
    listener = Listener(answer=True, port=port)  # somebody else takes the port
    try:
        # its pid is dead: the reader does not even connect
        assert names(w.db) == ["run-0", "run-1", "run-2"]
        assert listener.connections == 0
        # a recycled pid (alive): the reader connects, but the listener cannot prove the
        # token, so the reader sends neither the token nor a query and serves no forged row
        info = json.loads(side.read_text())
        plant(side, json.dumps({**info, "pid": os.getpid()}))
        assert names(w.db) == ["run-0", "run-1", "run-2"]
        out = cli("runs", "--db", str(w.db))
        assert out.returncode == 0 and "run-0" in out.stdout and "forged" not in out.stdout
        assert "Traceback" not in out.stderr, out.stderr
        assert listener.connections >= 2
        got = bytes(listener.received)
        assert got and token.encode() not in got and bytes.fromhex(token) not in got
        assert b"SELECT" not in got.upper() and b"runs" not in got
    finally:
        listener.close()


def test_a_listener_that_never_answers_does_not_hang_the_reader(tmp_path: Path) -> None:
    db = a_store(tmp_path / "t.duckdb")
    listener = Listener(answer=False)
    token = secrets.token_hex(32)
    plant(sidecar_path(db), sidecar_text(listener.port, token))
    try:
        out = cli("runs", "--db", str(db))  # the old client waited 30 s, then a traceback
        assert out.returncode == 0 and "run-0" in out.stdout, out.stderr
        assert "Traceback" not in out.stderr
        assert "did not complete the handshake" in out.stderr  # said once, then read directly
        assert listener.connections >= 1
        got = bytes(listener.received)
        assert token.encode() not in got and b"SELECT" not in got.upper()
    finally:
        listener.close()


# -- floods, descriptors, malformed traffic -----------------------------------------------


def flood(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return out


def test_idle_connections_cannot_exhaust_descriptors_or_lock_out_a_reader(
    writer: Writer,
) -> None:
    idle = flood(writer.ready["port"], rs.MAX_PENDING + 150)
    try:
        assert len(idle) > rs.MAX_PENDING
        stats = wait_for(lambda: (s := writer.stats())["accepted"] >= len(idle) and s)
        # the service holds at most MAX_PENDING of them (plus the odd one in flight)
        assert stats["fds"] - writer.ready["fds"] <= rs.MAX_PENDING + 2
        assert stats["dropped"] + stats["refused"] >= len(idle) - rs.MAX_PENDING - 2
        # the flood is still open on our side: a reader is still answered
        assert names(writer.db) == ["run-0", "run-1", "run-2"]
    finally:
        for s in idle:
            s.close()
    assert writer.close() == ""


def test_the_service_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    w = Writer(tmp_path / "t.duckdb", nofile_headroom=12)  # EMFILE after a dozen connections
    idle = flood(w.ready["port"], 60)
    try:
        wait_for(lambda: w.stats()["accept_errors"] > 0)
        assert names(w.db) == ["run-0", "run-1", "run-2"]  # still accepting, flood or not
    finally:
        for s in idle:
            s.close()
    assert names(w.db) == ["run-0", "run-1", "run-2"]
    assert w.stats()["accept_errors"] > 0
    err = w.close()
    assert "Traceback" not in err, err


def test_malformed_unauthenticated_traffic_prints_nothing(writer: Writer) -> None:
    port = writer.ready["port"]
    hello = rs.MAGIC + secrets.token_bytes(32)
    for payload in (
        secrets.token_bytes(100),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        rs.MAGIC + b"short",
        hello + secrets.token_bytes(32),  # a hello, then a proof without the token
        b"\xff\xff\xff\xff" + b"{}",  # a huge length prefix
        b"",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    stats = writer.stats()
    assert stats["refused"] >= 3 and stats["authenticated"] == 0
    assert names(writer.db) == ["run-0", "run-1", "run-2"]
    assert writer.close() == ""


# -- what a query may do ------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TraceStore, TraceStore, Path]]:
    """A writable store in this process (serving reads) and a reader through its service."""
    db = tmp_path / "t.duckdb"
    w = TraceStore(db)
    for i in range(30):
        w.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                  "VALUES (?, ?, 'l', 'm', 'done')", [f"r{i}", f"run-{i:02d}"])  # fmt: skip
    r = TraceStore(db, read_only=True)
    assert r.remote
    try:
        yield w, r, tmp_path
    finally:
        r.close()
        w.close()


def server_of(db: Path) -> rs.ReadServer:
    return rs._servers[os.path.realpath(db)][0]


def test_queries_that_reach_past_the_trace_tables_are_refused(served) -> None:
    w, r, tmp = served
    secret = tmp / "secret.csv"
    secret.write_text("word\nSECRET-4217\n")
    w.execute("CREATE TABLE private_notes (note VARCHAR)")
    w.execute("INSERT INTO private_notes VALUES ('SECRET-4217')")
    wal = Path(w.path + ".wal")
    assert wal.exists()  # rows since the last checkpoint: a checkpoint would fold it away
    out = tmp / "copied.csv"
    attacks = {
        f"SELECT * FROM read_text('{secret}')": "read_text",
        f"SELECT content FROM read_blob('{secret}')": "read_blob",
        f"SELECT * FROM '{secret}'": "trace tables only",
        f"SELECT * FROM read_csv('{secret}')": "read_csv",
        "SELECT * FROM glob('*')": "glob",
        "SELECT * FROM read_csv('https://example.invalid/x.csv')": "read_csv",
        "SELECT * FROM 'https://example.invalid/x.parquet'": "trace tables only",
        "SELECT * FROM checkpoint()": "checkpoint",
        "SELECT * FROM force_checkpoint()": "force_checkpoint",
        "SELECT * FROM private_notes": "trace tables only",
        "WITH x AS (SELECT * FROM private_notes) SELECT * FROM x": "trace tables only",
        "SELECT * FROM query('SELECT * FROM private_notes')": "query",
        f"SELECT name FROM runs WHERE name IN (SELECT content FROM read_text('{secret}'))": "read_text",
        "SELECT * FROM duckdb_settings()": "duckdb_settings",
        "SELECT current_setting('home_directory')": "current_setting",
        "SELECT * FROM information_schema.tables": "trace tables only",
        f"COPY runs TO '{out}'": "SELECT",
        "CHECKPOINT": "SELECT",
        "INSTALL httpfs": "SELECT",
        f"ATTACH '{tmp / 'other.duckdb'}'": "SELECT",
        "SET enable_external_access = true": "SELECT",
        "SELECT " + "abs(" * 900 + "1" + ")" * 900: "nested too deeply",
    }  # fmt: skip
    for sql, why in attacks.items():
        with pytest.raises(ReadServiceError, match=why) as exc:
            r.query(sql)
        assert "SECRET" not in str(exc.value), sql
    assert wal.exists() and not out.exists() and not (tmp / "other.duckdb").exists()
    assert w.query("SELECT count(*) AS n FROM duckdb_extensions() WHERE installed "
                   "AND extension_name = 'httpfs'") == [{"n": 0}]  # fmt: skip
    settings = w.query(
        "SELECT name, value FROM duckdb_settings() WHERE name IN "
        "('autoinstall_known_extensions', 'autoload_known_extensions') ORDER BY name"
    )
    assert [s["value"] for s in settings] == ["false", "false"]
    # and what the viewer and the CLI send still works
    assert r.query("SELECT 1 AS one FROM duckdb_tables() WHERE table_name = ? LIMIT 1",
                   ["runs"]) == [{"one": 1}]  # fmt: skip
    assert len(list_runs(r)) == 30


def test_a_huge_result_is_capped(served, monkeypatch: pytest.MonkeyPatch) -> None:
    w, r, _ = served
    monkeypatch.setattr(rs, "MAX_RESPONSE_BYTES", 1 << 20)
    with pytest.raises(ReadServiceError, match="larger than 1 MiB"):
        r.query("SELECT repeat('x', 10000) AS s FROM runs a, runs b")  # ~9 MB
    assert server_of(Path(w.path)).stats["too_large"] == 1
    assert len(list_runs(r)) == 30  # the same connection goes on answering


LONG = (
    "SELECT count(*) AS n FROM runs a, runs b, runs c, runs d, runs e, runs f, runs g, runs h "
    "WHERE hash(a.name || h.name) % 7 = 3"
)  # 30^8 rows: hours of work


def test_a_query_is_interrupted_when_its_reader_goes_away(served) -> None:
    w, _, _ = served
    srv = server_of(Path(w.path))
    reader = RemoteReader(w.path)
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            reader.query(LONG)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=ask)
    t.start()
    wait_for(lambda: srv.running_queries() == 1)
    reader.close()  # the reader gives up (Ctrl-C, a closed browser tab)
    wait_for(lambda: srv.running_queries() == 0)  # not hours later
    t.join(timeout=60)
    assert srv.stats["interrupted"] == 1 and errors
    with TraceStore(w.path, read_only=True) as r:
        assert len(list_runs(r)) == 30


def test_a_query_past_the_deadline_is_stopped(served, monkeypatch: pytest.MonkeyPatch) -> None:
    w, r, _ = served
    monkeypatch.setattr(rs, "QUERY_DEADLINE_S", 1.0)
    with pytest.raises(ReadServiceError, match="longer than 1 s"):
        r.query(LONG)
    assert server_of(Path(w.path)).running_queries() == 0
    assert len(list_runs(r)) == 30


# -- opening the database -------------------------------------------------------------------


def test_a_new_database_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "new.duckdb"
        with TraceStore(db) as s:
            s.execute("INSERT INTO runs (run_id, name, loop, model, status) "
                      "VALUES ('r', 'n', 'l', 'm', 'done')")  # fmt: skip
            assert db.stat().st_mode & 0o777 == 0o600
        assert db.stat().st_mode & 0o777 == 0o600
        other = tmp_path / "after.txt"
        other.write_text("x")
        assert other.stat().st_mode & 0o777 == 0o644  # the umask is back as it was
    finally:
        os.umask(old)


def test_a_foreign_duckdb_file_is_refused_not_converted(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE measurements (x INTEGER)")
    con.close()
    with pytest.raises(TraceStoreError, match="not a loopwright trace store") as exc:
        TraceStore(path)
    assert "measurements" in str(exc.value)
    con = duckdb.connect(str(path), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == [
        "measurements"
    ]
    con.close()
    out = cli("runs", "--db", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # an empty DuckDB file (no tables) is a fine place to start a store
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    TraceStore(empty).close()


def test_open_failures_say_what_they_are(
    tmp_path: Path, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"not a database " * 1000)
    for path, ro, want in [
        (tmp_path, False, "is a directory"),
        (tmp_path, True, "is a directory"),
        (garbage, False, "not a DuckDB database file"),
        (garbage, True, "not a DuckDB database file"),
        (tmp_path / "no" / "such.duckdb", False, "folder does not exist"),
    ]:
        with pytest.raises(TraceStoreError, match=want) as exc:
            TraceStore(path, read_only=ro)
        assert "another loopwright" not in str(exc.value)
    monkeypatch.setattr(store_mod, "LOCK_WAIT_S", 0.2)
    with pytest.raises(TraceStoreError, match=r"another loopwright process using it\?") as exc:
        TraceStore(writer.db)
    assert f"process {writer.p.pid}" in str(exc.value)
    out = cli("runs", "--db", str(garbage))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a DuckDB database file" in out.stderr


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user may enter (pytest's own tmp folders are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="lw-open-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("where", ["readable folder", "private folder"])
def test_a_file_of_another_user_says_permission_denied(
    tmp_path: Path, open_dir: Path, where: str
) -> None:
    db = a_store((open_dir if where == "readable folder" else tmp_path) / "t.duckdb")
    code = textwrap.dedent(
        """
        import os, sys
        from loopwright.traces.store import TraceStore, TraceStoreError
        os.setgid(65534); os.setuid(65534)
        for ro in (False, True):
            try:
                TraceStore(sys.argv[1], read_only=ro)
            except TraceStoreError as exc:
                print(exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("permission denied" in ln for ln in lines), out
    assert "another loopwright" not in out.stdout
