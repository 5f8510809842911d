"""Reads for other processes while this one writes the trace database.

DuckDB lets one process open a file for writing and then no other process may open it at all
(not even read-only: "Could not set lock on file"). So the writing process answers reads
itself: a thread listens on 127.0.0.1 on a free port and advertises it, with a random token,
in a sidecar file next to the database (``<db>.readers.json``). A reader that finds the file
locked connects there and gets the rows as Arrow IPC, read from the writer's own database:
the same committed snapshot the writer's next transaction starts from, so nothing a run
writes is copied, delayed or lost.

What protects what (docs/view.md, "Reading a file a run is writing", says it for users):

- The sidecar is written through a temp file of random name, created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600, then renamed over the sidecar: another user
  who can write the folder can neither read the token from a file they created in advance
  nor make the writer write through a symlink.
- A reader uses a sidecar only if it is a regular file (not a symlink) of its own uid, mode
  0600, naming a loopback host, this machine and a live process; otherwise it says why and
  opens the file directly (which works once the writer has gone).
- The token never crosses the socket. The reader sends a nonce, the server answers with
  HMAC(token, both nonces) and the reader sends its own HMAC only once that checks: a stale
  or foreign listener on the advertised port learns nothing and gets no query, and a reader
  gives it up after a short deadline.
- Unauthenticated connections have a short deadline and a cap (the oldest is dropped first),
  authenticated ones a cap of their own; running out of file descriptors (EMFILE) on accept
  sheds a connection and the service keeps accepting.
- Queries must be one SELECT that reads only the trace tables (schema.py) and CTEs of its
  own, through built-in scalar, aggregate and window functions: no table function but
  ``duckdb_tables()``/``duckdb_columns()``, no file paths, no functions with side effects.
  Extension auto-install and auto-load are off in the writer's database. A result is capped
  in size, and a query is interrupted when its client goes away or it runs too long.

Why not snapshots: copying a 1M-call file costs seconds of the writer's disk time per copy
and shows stale rows; why not DuckDB's own client-server: it has none for plain files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import select
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
from loopwright.traces.schema import TABLES
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".readers.json"
SIDECAR_VERSION = 2
MAGIC = b"LWR2"  # first bytes a reader sends: protocol and version
_NONCE = 32
_REQ = struct.Struct("!I")  # request: length-prefixed JSON
_RESP = struct.Struct("!cQ")  # response: b"K" + Arrow IPC stream, or b"E" + UTF-8 message
_MAX_REQUEST = 1 << 20
_MAX_SIDECAR = 4096

MAX_PENDING = 64
"""Connections that have not proved the token yet; past this the oldest is dropped."""
MAX_READERS = 32
"""Authenticated connections served at once; past this a new one is told so and closed."""
AUTH_DEADLINE_S = 5.0
"""A connection must finish the handshake this soon after it is accepted (both ends)."""
CONNECT_S = 2.0
IDLE_S = 300.0
"""An authenticated connection that sends nothing for this long is closed."""
QUERY_DEADLINE_S = 60.0
"""A query still running after this long is interrupted and its reader told so."""
MAX_RESPONSE_BYTES = 128 << 20
"""A result larger than this (as Arrow IPC) is refused with an error, not sent."""
BATCH_ROWS = 1024

TRACE_TABLES = frozenset(TABLES)
TABLE_FUNCTIONS = frozenset({"duckdb_tables", "duckdb_columns"})
"""The only table functions a query may call: the catalog of this database, nothing else."""
DENIED_FUNCTIONS = frozenset(
    {
        # settings, session state, sequences, logging, sleeping
        "current_setting", "getvariable", "nextval", "currval", "setval", "setseed",
        "sleep_ms", "pg_sleep", "write_log", "stats", "vector_type",
        # functions that plan or run SQL given as text, or read the catalog through it
        "json_serialize_plan", "json_execute_serialized_sql", "query", "query_table",
        "get_block_size", "pg_get_constraintdef", "pg_get_viewdef", "format_type",
    }
)  # fmt: skip
_TABLE_REFS = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "EMPTY_FROM",
     "SHOW_REF", "PIVOT", "CTE", "COLUMN_DATA", "DELIM_GET", "BOUND_TABLE_REF", "INVALID"}
)  # fmt: skip
_ALLOWED_REFS = frozenset(
    {"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "EMPTY_FROM"}
)


class RemoteReadError(Exception):
    """The writing process refused or failed a read (bad SQL, not allowed, too large)."""


class ReadServiceUnavailable(RemoteReadError):
    """No usable read service: no sidecar, a sidecar that fails a check, or a listener that
    cannot prove it holds the token. ``quiet`` when it is the ordinary case of no writer."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quiet = quiet


class ReadServiceLost(RemoteReadError):
    """The connection to the read service broke or timed out during a query."""


class SidecarInfo(BaseModel):
    """What a writer advertises in ``<db>.readers.json``."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(ge=SIDECAR_VERSION, le=SIDECAR_VERSION)
    host: str
    port: int = Field(ge=1, le=65535)
    token: str = Field(pattern=r"^[0-9a-f]{64}$")
    pid: int = Field(gt=0)
    hostname: str


def sidecar_path(db_path: str | Path) -> Path:
    """Where the process writing ``db_path`` advertises its read service."""
    return Path(str(db_path) + SIDECAR_SUFFIX)


def _temp_path(sidecar: Path) -> Path:
    """A fresh, unguessable name next to the sidecar to write it through."""
    return sidecar.with_name(f".{sidecar.name}.{secrets.token_hex(12)}.tmp")


def _write_sidecar(sidecar: Path, info: SidecarInfo) -> None:
    data = info.model_dump_json().encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        tmp = _temp_path(sidecar)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:  # somebody made that name first: never write through it
            continue
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, sidecar)  # atomic; replaces a planted symlink, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return
    raise FileExistsError(f"no free temp name next to {sidecar}")


def _open_own_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file of this uid with no group/other bits;
    raises ReadServiceUnavailable naming what is wrong otherwise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ReadServiceUnavailable(f"no read service is advertised ({path} does not exist)",
                                     quiet=True) from None  # fmt: skip
    if stat.S_ISLNK(st.st_mode):
        raise ReadServiceUnavailable(f"{path} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise ReadServiceUnavailable(f"{path} is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ReadServiceUnavailable(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ReadServiceUnavailable(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ReadServiceUnavailable(
                f"{path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
            )
        if st.st_mode & 0o077:
            raise ReadServiceUnavailable(
                f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; a writer makes it 0600"
            )
        data = f.read(_MAX_SIDECAR + 1)
    if len(data) > _MAX_SIDECAR:
        raise ReadServiceUnavailable(f"{path} is too large to be a sidecar")
    return data


def read_sidecar(db_path: str | Path) -> SidecarInfo:
    """The checked sidecar of ``db_path``; ReadServiceUnavailable says why it is unusable."""
    path = sidecar_path(db_path)
    data = _open_own_file(path)
    try:
        info = SidecarInfo.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "file"
        raise ReadServiceUnavailable(f"{path} is malformed ({where}: {first['msg']})") from None
    try:
        loopback = ipaddress.ip_address(info.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ReadServiceUnavailable(f"{path} names host {info.host!r}, not a loopback address")
    if info.hostname != socket.gethostname():
        raise ReadServiceUnavailable(
            f"{path} was written on {info.hostname!r}, not on this machine", quiet=True
        )
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        raise ReadServiceUnavailable(
            f"{path} is stale: process {info.pid} is not running", quiet=True
        ) from None
    except PermissionError:
        raise ReadServiceUnavailable(
            f"{path} is stale: process {info.pid} belongs to another user"
        ) from None
    return info


def _mac(key: bytes, label: bytes, cnonce: bytes, snonce: bytes) -> bytes:
    return hmac.new(key, b"loopwright-read/" + label + cnonce + snonce, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the connection was closed")
        buf += chunk
    return bytes(buf)


# -- what a query may do --------------------------------------------------------------------


class QueryRefused(RemoteReadError):
    """A statement the read service does not run."""


class QueryGuard:
    """Checks that a statement is one SELECT over the trace tables (and its own CTEs) that
    calls only built-in scalar, aggregate and window functions without side effects."""

    _builtin: frozenset[str] | None = None  # the same in every database of this process
    _builtin_lock = threading.Lock()

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        with QueryGuard._builtin_lock:
            if QueryGuard._builtin is None:
                rows = con.execute(
                    "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
                    "WHERE internal AND database_name = 'system' "
                    "AND NOT coalesce(has_side_effects, false) "
                    "AND function_type IN ('scalar', 'aggregate', 'window', 'macro')"
                ).fetchall()
                QueryGuard._builtin = frozenset(r[0] for r in rows)
            self.functions = QueryGuard._builtin - DENIED_FUNCTIONS
        self._seen: dict[str, None] = {}  # statements already checked (bounded)
        self._lock = threading.Lock()

    def check(self, cur: duckdb.DuckDBPyConnection, sql: str) -> None:
        with self._lock:
            if sql in self._seen:
                return
        stmts = cur.extract_statements(sql)
        if len(stmts) != 1 or stmts[0].type != duckdb.StatementType.SELECT:
            raise QueryRefused("the read service runs one SELECT statement only")
        rows = cur.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
        try:
            tree: dict[str, Any] = json.loads(rows[0][0]) if rows else {"error": True}
            if tree.get("error"):
                raise QueryRefused(
                    "the read service cannot check this statement: "
                    f"{tree.get('error_message', '?')}"
                )
            statements = tree.get("statements") or []
            if len(statements) != 1:
                raise QueryRefused("the read service runs one SELECT statement only")
            self._walk(statements[0], frozenset())
        except RecursionError:
            raise QueryRefused("the statement is nested too deeply to check") from None
        with self._lock:
            if len(self._seen) >= 512:
                self._seen.clear()
            self._seen[sql] = None

    def _walk(self, obj: Any, scope: frozenset[str]) -> None:
        if isinstance(obj, list):
            for item in obj:
                self._walk(item, scope)
            return
        if not isinstance(obj, dict):
            return
        skip: set[str] = set()
        if isinstance(obj.get("cte_map"), dict):  # a query node: its CTEs come into scope
            skip.add("cte_map")
            for entry in obj["cte_map"].get("map") or []:
                name = str(entry["key"]).lower()
                body = entry["value"]["query_node"]
                recursive = isinstance(body, dict) and body.get("type") == "RECURSIVE_CTE_NODE"
                self._walk(body, scope | {name} if recursive else scope)
                scope = scope | {name}
        if "class" in obj:  # an expression
            if "function_name" in obj:
                self._function(obj, table=False)
        elif obj.get("type") in _TABLE_REFS:
            kind = obj["type"]
            if kind not in _ALLOWED_REFS:
                raise QueryRefused(f"the read service does not run {kind} clauses")
            if kind == "BASE_TABLE":
                self._table(obj, scope)
            elif kind == "TABLE_FUNCTION":
                fn = obj.get("function") or {}
                self._function(fn, table=True)
                skip.add("function")
                self._walk({k: v for k, v in fn.items() if k != "function_name"}, scope)
        for key, value in obj.items():
            if key not in skip and isinstance(value, dict | list):
                self._walk(value, scope)

    def _table(self, ref: dict[str, Any], scope: frozenset[str]) -> None:
        name = str(ref.get("table_name", ""))
        schema = str(ref.get("schema_name") or "").lower()
        catalog = str(ref.get("catalog_name") or "")
        low = name.lower()
        if catalog or schema not in ("", "main"):
            full = ".".join(p for p in (catalog, schema, name) if p)
            raise QueryRefused(f"the read service reads the trace tables only, not {full!r}")
        if (not schema and low in scope) or low in TRACE_TABLES:
            return
        raise QueryRefused(
            f"the read service reads the trace tables only, not {name!r} "
            f"(tables: {', '.join(sorted(TRACE_TABLES))})"
        )

    def _function(self, fn: dict[str, Any], *, table: bool) -> None:
        name = str(fn.get("function_name", "")).lower()
        if fn.get("schema") or fn.get("catalog"):
            raise QueryRefused(
                f"the read service does not call schema-qualified functions ({name})"
            )
        allowed = TABLE_FUNCTIONS if table else self.functions
        if name not in allowed:
            what = "table function" if table else "function"
            raise QueryRefused(f"the read service does not run the {what} {name!r}")


# -- the server -----------------------------------------------------------------------------

_servers: dict[str, tuple[ReadServer, int]] = {}
_servers_lock = threading.Lock()


def acquire_server(path: str) -> ReadServer | None:
    """The read service for ``path`` in this process, started by its first writable store.

    A process may hold several writable stores on one file at once (a sweep's bookkeeping
    while a run writes): they share one service and one sidecar, which lives until the last
    of them closes, so closing one never takes reads away from the others. None when the
    service cannot be advertised (a folder that is not writable): the run goes on, and other
    processes cannot read the file until it finishes.
    """
    key = os.path.realpath(path)
    with _servers_lock:
        srv, n = _servers.get(key, (None, 0))
        if srv is None:
            try:
                srv = ReadServer(path)
            except OSError as exc:
                log.warning(
                    "cannot advertise reads of %s to other processes (%s): they can read it "
                    "once this process finishes",
                    path,
                    exc.strerror or exc,
                )
                return None
        _servers[key] = (srv, n + 1)
        return srv


def release_server(srv: ReadServer) -> None:
    with _servers_lock:
        key = os.path.realpath(srv.path)
        _, n = _servers[key]
        if n > 1:
            _servers[key] = (srv, n - 1)
            return
        del _servers[key]
    srv.close()


@dataclass
class _Pending:
    conn: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    cnonce: bytes = b""
    snonce: bytes = b""


@dataclass
class _Running:
    conn: socket.socket
    cur: duckdb.DuckDBPyConnection
    deadline: float
    why: str | None = None  # set when the server interrupts it


class ReadServer:
    """Serves checked SELECTs to other local processes of the same user."""

    def __init__(self, path: str) -> None:
        self.path = path
        # In-process connections to one file share DuckDB's database instance: this one sees
        # every commit of the writer's, and outlives whichever store closes first.
        self._con = duckdb.connect(path)
        try:
            for setting in ("autoinstall_known_extensions", "autoload_known_extensions"):
                self._con.execute(f"SET {setting} = false")
            self.guard = QueryGuard(self._con)
            self._setup()
        except BaseException:
            self._con.close()
            raise

    def _setup(self) -> None:
        self._token = secrets.token_hex(32)
        self._key = self._token.encode()
        self.stats: dict[str, int] = dict.fromkeys(
            ("accepted", "authenticated", "refused", "dropped", "accept_errors", "interrupted",
             "too_large", "busy"), 0,
        )  # fmt: skip
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, _Pending] = {}  # insertion order: oldest first
        self._readers: dict[socket.socket, threading.Thread] = {}
        self._running: dict[int, _Running] = {}
        with contextlib.ExitStack() as undo:  # everything opened here, if a step fails
            self._sock = socket.create_server(("127.0.0.1", 0), backlog=128)
            undo.callback(self._sock.close)
            self._sock.setblocking(False)
            self.port: int = self._sock.getsockname()[1]
            self._wake_r, self._wake_w = socket.socketpair()
            undo.callback(self._wake_r.close)
            undo.callback(self._wake_w.close)
            self._wake_r.setblocking(False)
            self._reserve: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            undo.callback(os.close, self._reserve)
            self._sel = selectors.DefaultSelector()
            undo.callback(self._sel.close)
            self._sel.register(self._sock, selectors.EVENT_READ)
            self._sel.register(self._wake_r, selectors.EVENT_READ)
            self.sidecar = sidecar_path(self.path)
            _write_sidecar(
                self.sidecar,
                SidecarInfo(version=SIDECAR_VERSION, host="127.0.0.1", port=self.port,
                            token=self._token, pid=os.getpid(), hostname=socket.gethostname()),
            )  # fmt: skip
            undo.pop_all()
        self._thread = threading.Thread(target=self._loop, name="loopwright-read-server",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    # -- accepting and authenticating (one thread, non-blocking) ---------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._tick()
            except Exception:  # a bug here must not end the service silently
                log.exception("read service of %s: unexpected error (still serving)", self.path)
                time.sleep(0.1)
        for p in list(self._pending.values()):
            self._drop(p)
        self._sel.close()

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = 0.5
        if self._pending:
            timeout = min(timeout, max(0.0, next(iter(self._pending.values())).deadline - now))
        if self._running:
            timeout = min(timeout, 0.1)
        for key, _ in self._sel.select(timeout):
            if key.fileobj is self._sock:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            else:
                p = self._pending.get(key.fileobj)  # type: ignore[call-overload]
                if p is not None:
                    self._advance(p)
        now = time.monotonic()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self.stats["refused"] += 1
            self._drop(p)
        self._watch_queries(now)

    def _accept(self) -> None:
        for _ in range(MAX_PENDING):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._closed.is_set():
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.stats["accept_errors"] += 1
                    if self._pending:  # free a descriptor of a connection not yet trusted
                        self._drop(self._victim())
                        self.stats["dropped"] += 1
                        continue
                    self._shed()
                    time.sleep(0.05)
                return  # ECONNABORTED and the like: the next readiness event retries
            self.stats["accepted"] += 1
            conn.setblocking(False)
            if len(self._pending) >= MAX_PENDING:
                self._drop(self._victim())
                self.stats["dropped"] += 1
            self._pending[conn] = _Pending(conn, time.monotonic() + AUTH_DEADLINE_S)
            self._sel.register(conn, selectors.EVENT_READ)

    def _victim(self) -> _Pending:
        """The pending connection to drop: the oldest that has sent nothing (a reader sends
        its hello as soon as it connects), else the oldest."""
        for p in self._pending.values():
            if not p.buf and not p.snonce and not _readable(p.conn):
                return p
        return next(iter(self._pending.values()))

    def _shed(self) -> None:
        """Out of descriptors with none of ours to free: accept one waiting connection on
        the reserved descriptor and close it, so the queue drains instead of spinning."""
        if self._reserve is None:
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = self._sock.accept()
            conn.close()
            self.stats["dropped"] += 1
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _drop(self, p: _Pending) -> None:
        self._pending.pop(p.conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(p.conn)
        with contextlib.suppress(OSError):
            p.conn.close()

    def _advance(self, p: _Pending) -> None:
        need = (len(MAGIC) + _NONCE if not p.snonce else 32) - len(p.buf)
        try:
            data = p.conn.recv(need)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(p)
            return
        p.buf += data
        if len(data) < need:  # the rest of this step is still on its way
            return
        if not p.snonce:  # the reader's hello: answer with proof that we hold the token
            if p.buf[: len(MAGIC)] != MAGIC:
                self.stats["refused"] += 1
                self._drop(p)
                return
            p.cnonce, p.snonce = bytes(p.buf[len(MAGIC) :]), secrets.token_bytes(_NONCE)
            p.buf.clear()
            answer = p.snonce + _mac(self._key, b"server", p.cnonce, p.snonce)
            try:
                sent = p.conn.send(answer)
            except OSError:
                sent = 0
            if sent != len(answer):
                self._drop(p)
            return
        if not hmac.compare_digest(bytes(p.buf), _mac(self._key, b"client", p.cnonce, p.snonce)):
            self.stats["refused"] += 1
            self._drop(p)
            return
        self._pending.pop(p.conn, None)
        self._sel.unregister(p.conn)
        self.stats["authenticated"] += 1
        self._admit(p.conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(IDLE_S)
        t = threading.Thread(target=self._serve, args=(conn,), name="loopwright-read",
                             daemon=True)  # fmt: skip
        with self._lock:
            busy = len(self._readers) >= MAX_READERS
            if not busy:
                self._readers[conn] = t
        if busy:
            self.stats["busy"] += 1
            msg = f"the read service already serves {MAX_READERS} readers: try again".encode()
            with contextlib.suppress(OSError):
                conn.settimeout(0.5)
                conn.sendall(_RESP.pack(b"E", len(msg)) + msg)
            conn.close()
            return
        try:
            t.start()
        except RuntimeError:  # no thread to be had: treat as busy
            with self._lock:
                self._readers.pop(conn, None)
            conn.close()

    # -- interrupting queries whose reader left or whose time is up ------------------------
    def _watch_queries(self, now: float) -> None:
        with self._lock:
            running = list(self._running.values())
        for r in running:
            why = None
            if now >= r.deadline:
                why = f"the query ran longer than {QUERY_DEADLINE_S:g} s and was stopped"
            elif _hung_up(r.conn):
                why = _READER_LEFT
            if why is not None:
                with self._lock:
                    if r.why is None and any(x is r for x in self._running.values()):
                        r.why = why
                        self.stats["interrupted"] += 1
                        r.cur.interrupt()

    # -- serving one authenticated reader (a thread each) ----------------------------------
    def _serve(self, conn: socket.socket) -> None:
        cur = self._con.cursor()
        try:
            with conn:
                while not self._closed.is_set():
                    try:
                        (n,) = _REQ.unpack(_recv_exact(conn, _REQ.size))
                        if n > _MAX_REQUEST:
                            _send(conn, b"E", b"request too large")
                            return
                        body = _recv_exact(conn, n)
                    except (OSError, ConnectionError):
                        return
                    kind, payload = self._answer(cur, conn, body)
                    if kind is None:  # the reader left mid-query
                        return
                    _send(conn, kind, payload)
        except OSError:
            return
        finally:
            with self._lock:
                self._readers.pop(conn, None)
            cur.close()

    def _answer(
        self, cur: duckdb.DuckDBPyConnection, conn: socket.socket, body: bytes
    ) -> tuple[bytes | None, bytes]:
        try:
            req = json.loads(body)
            sql = req["sql"]
            params = req.get("params") or None
            if not isinstance(sql, str) or not isinstance(params, list | None):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return b"E", b"malformed request"
        try:
            return b"K", self._run(cur, conn, sql, params)
        except _Interrupted as exc:
            if exc.why == _READER_LEFT:
                return None, b""
            return b"E", exc.why.encode()
        except (duckdb.Error, RemoteReadError) as exc:
            return b"E", str(exc).encode()
        except Exception as exc:  # a bug here must reach the reader, not vanish
            return b"E", f"read service bug: {type(exc).__name__}: {exc}".encode()

    def _run(
        self,
        cur: duckdb.DuckDBPyConnection,
        conn: socket.socket,
        sql: str,
        params: list[Any] | None,
    ) -> bytes:
        self.guard.check(cur, sql)
        run = _Running(conn, cur, time.monotonic() + QUERY_DEADLINE_S)
        key = id(run)
        with self._lock:
            self._running[key] = run
        self._wake()
        try:
            reader = cur.sql(sql, params=params).to_arrow_reader(BATCH_ROWS)
            import pyarrow as pa  # only when rows travel: not on every open of the store

            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, reader.schema) as w:
                for batch in reader:
                    w.write_batch(batch)
                    if sink.tell() > MAX_RESPONSE_BYTES:
                        reader.close()
                        self.stats["too_large"] += 1
                        raise RemoteReadError(
                            f"the result is larger than {MAX_RESPONSE_BYTES >> 20} MiB: "
                            "narrow the query (fewer columns, a LIMIT)"
                        )
            return bytes(sink.getvalue().to_pybytes())
        except duckdb.InterruptException:
            raise _Interrupted(run.why or "the query was interrupted") from None
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def running_queries(self) -> int:
        with self._lock:
            return len(self._running)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake()
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for r in self._running.values():
                r.why = "the writing process closed the database"
                r.cur.interrupt()
            readers = list(self._readers.items())
        for conn, _ in readers:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _, t in readers:
            t.join(timeout=10)
        for s in (self._wake_r, self._wake_w):
            s.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self._con.close()
        # Remove the sidecar only if it is still ours (a newer writer may have replaced it).
        with contextlib.suppress(OSError, ValueError, ReadServiceUnavailable):
            info = json.loads(_open_own_file(self.sidecar))
            if hmac.compare_digest(str(info.get("token")), self._token):
                self.sidecar.unlink()


_READER_LEFT = "the reader went away"


class _Interrupted(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _readable(conn: socket.socket) -> bool:
    try:
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _hung_up(conn: socket.socket) -> bool:
    """True once the peer closed its end (or the socket failed)."""
    try:
        poller = select.poll()
        poller.register(conn, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
    except (OSError, ValueError):
        return True
    bad = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
    return any(ev & bad for _, ev in events)


def _send(conn: socket.socket, kind: bytes, payload: bytes) -> None:
    conn.sendall(_RESP.pack(kind, len(payload)) + payload)


# -- the client -----------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    # DuckDB's HUGEINT sums arrive through Arrow as Decimal(38, 0); a local connection gives int.
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


class RemoteReader:
    """A client of a writing process's ReadServer, found through its checked sidecar.

    Raises ReadServiceUnavailable (with the reason) when the sidecar fails a check or the
    listener cannot prove within ``AUTH_DEADLINE_S`` that it holds the token.
    """

    def __init__(self, db_path: str | Path) -> None:
        info = read_sidecar(db_path)
        self.pid = info.pid
        self._where = f"{info.host}:{info.port}"
        key = info.token.encode()
        last: Exception | None = None
        for _ in range(3):  # a connection dropped under a flood of others is tried again
            try:
                self._sock = self._handshake(info, key)
                break
            except ConnectionError as exc:
                last = exc
            except OSError as exc:
                raise ReadServiceUnavailable(
                    f"the read service at {self._where} (process {info.pid}) failed: {exc}"
                ) from None
        else:
            raise ReadServiceUnavailable(
                f"the read service at {self._where} (process {info.pid}) closed the "
                f"connection during the handshake: {last}"
            )
        self._lock = threading.Lock()  # one request at a time on this connection

    def _handshake(self, info: SidecarInfo, key: bytes) -> socket.socket:
        try:
            sock = socket.create_connection((info.host, info.port), timeout=CONNECT_S)
        except ConnectionRefusedError:
            raise ReadServiceUnavailable(
                f"nothing listens at {self._where}: the sidecar is stale", quiet=True
            ) from None
        except OSError as exc:
            raise ReadServiceUnavailable(f"cannot connect to {self._where}: {exc}") from None
        try:
            deadline = time.monotonic() + AUTH_DEADLINE_S
            cnonce = secrets.token_bytes(_NONCE)
            sock.settimeout(AUTH_DEADLINE_S)
            sock.sendall(MAGIC + cnonce)
            reply = _recv_exact(sock, _NONCE + 32, deadline)
            snonce, proof = reply[:_NONCE], reply[_NONCE:]
            if not hmac.compare_digest(proof, _mac(key, b"server", cnonce, snonce)):
                raise ReadServiceUnavailable(
                    f"the process listening at {self._where} cannot prove it holds the "
                    f"sidecar's token: it is not the writer (process {info.pid})"
                )
            sock.sendall(_mac(key, b"client", cnonce, snonce))
            sock.settimeout(QUERY_DEADLINE_S + 30.0)
            return sock
        except TimeoutError:
            sock.close()
            raise ReadServiceUnavailable(
                f"the process listening at {self._where} did not complete the handshake "
                f"within {AUTH_DEADLINE_S:g} s: it is not a read service that answers"
            ) from None
        except BaseException:
            sock.close()
            raise

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        req = json.dumps({"sql": sql, "params": params or []}).encode()
        with self._lock:
            try:
                self._sock.sendall(_REQ.pack(len(req)) + req)
                kind, n = _RESP.unpack(_recv_exact(self._sock, _RESP.size))
                if kind not in (b"K", b"E") or n > MAX_RESPONSE_BYTES + (1 << 20):
                    raise ConnectionError("a malformed answer")
                body = _recv_exact(self._sock, n)
            except TimeoutError:
                self.close()
                raise ReadServiceLost(
                    f"the read service of process {self.pid} did not answer in time"
                ) from None
            except (OSError, ConnectionError, struct.error) as exc:
                self.close()
                raise ReadServiceLost(
                    f"lost the read service of process {self.pid} mid-read ({exc})"
                ) from None
        if kind == b"E":
            raise RemoteReadError(body.decode(errors="replace"))
        import pyarrow as pa

        table = pa.ipc.open_stream(body).read_all()
        cols = table.column_names
        return [{c: _plain(row[c]) for c in cols} for row in table.to_pylist()]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on a reply
        with contextlib.suppress(OSError):
            self._sock.close()
