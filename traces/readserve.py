"""Reads for other processes while this one writes the trace database.

DuckDB lets one process open a file for writing and then no other process may open it at all
(not even read-only: "Could not set lock on file"). So the writing process answers reads
itself: a thread listens on 127.0.0.1 on a free port and advertises it, with a random token,
in a sidecar file next to the database (``<db>.readers.json``, mode 0600, so only a user who
may read the directory's private files can query). A reader that finds the file locked
connects there instead and gets the rows as Arrow IPC, read from the writer's own connection:
the same committed snapshot the writer's next transaction starts from, so nothing a run
writes is copied, delayed or lost. Only single SELECT statements are accepted.

Why not snapshots: copying a 1M-call file costs seconds of the writer's disk time per copy
and shows stale rows; why not DuckDB's own client-server: it has none for plain files.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
import socket
import struct
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

SIDECAR_SUFFIX = ".readers.json"
_REQ = struct.Struct("!I")  # request: length-prefixed JSON
_RESP = struct.Struct("!cQ")  # response: b"K" + Arrow IPC stream, or b"E" + UTF-8 message
_MAX_REQUEST = 1 << 20


class RemoteReadError(Exception):
    """The writing process refused or failed a read (bad SQL, not a SELECT, bad token)."""


def sidecar_path(db_path: str | Path) -> Path:
    """Where the process writing ``db_path`` advertises its read service."""
    return Path(str(db_path) + SIDECAR_SUFFIX)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("read service closed the connection")
        buf += chunk
    return bytes(buf)


_servers: dict[str, tuple[ReadServer, int]] = {}
_servers_lock = threading.Lock()


def acquire_server(path: str) -> ReadServer:
    """The read service for ``path`` in this process, started by its first writable store.

    A process may hold several writable stores on one file at once (a sweep's bookkeeping
    while a run writes): they share one service and one sidecar, which lives until the last
    of them closes, so closing one never takes reads away from the others.
    """
    key = os.path.realpath(path)
    with _servers_lock:
        srv, n = _servers.get(key, (None, 0))
        if srv is None:
            srv = ReadServer(path)
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


class ReadServer:
    """Serves SELECTs to other local processes over a connection of this one's."""

    def __init__(self, path: str) -> None:
        self.path = path
        # In-process connections to one file share DuckDB's database instance: this one sees
        # every commit of the writer's, and outlives whichever store closes first.
        self._con = duckdb.connect(path)
        self._token = secrets.token_hex(16)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self.sidecar = sidecar_path(path)
        self._write_sidecar()
        self._thread = threading.Thread(
            target=self._accept, name="loopwright-read-server", daemon=True
        )
        self._thread.start()

    def _write_sidecar(self) -> None:
        info = {"host": "127.0.0.1", "port": self.port, "token": self._token, "pid": os.getpid()}
        tmp = self.sidecar.with_name(self.sidecar.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, self.sidecar)  # readers never see half a file

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._serve, args=(conn,), name="loopwright-read", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        # One cursor per client connection, closed with it: a cursor is DuckDB's unit of
        # thread safety, and the writer's own cursors stay untouched.
        cur = self._con.cursor()
        try:
            with conn:
                while True:
                    try:
                        (n,) = _REQ.unpack(_recv_exact(conn, _REQ.size))
                    except ConnectionError:
                        return
                    if n > _MAX_REQUEST:
                        return
                    req = json.loads(_recv_exact(conn, n))
                    try:
                        payload = b"K" + self._answer(cur, req)
                    except (duckdb.Error, RemoteReadError, KeyError, TypeError) as exc:
                        payload = b"E" + str(exc).encode()
                    except Exception as exc:  # a bug here must reach the reader, not vanish
                        payload = b"E" + f"read service bug: {type(exc).__name__}: {exc}".encode()
                    conn.sendall(_RESP.pack(payload[:1], len(payload) - 1) + payload[1:])
        except OSError:
            return
        finally:
            cur.close()

    def _answer(self, cur: duckdb.DuckDBPyConnection, req: dict[str, Any]) -> bytes:
        if not hmac.compare_digest(str(req.get("token", "")), self._token):
            raise RemoteReadError("bad token")
        sql = str(req["sql"])
        stmts = cur.extract_statements(sql)
        if len(stmts) != 1 or stmts[0].type != duckdb.StatementType.SELECT:
            raise RemoteReadError("the read service runs one SELECT statement only")
        table = cur.sql(sql, params=req.get("params") or None).to_arrow_table()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return sink.getvalue().to_pybytes()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._con.close()
        # Remove the sidecar only if it is still ours (a newer writer may have replaced it).
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.sidecar.read_text()).get("token") == self._token:
                self.sidecar.unlink()


def _plain(v: Any) -> Any:
    # DuckDB's HUGEINT sums arrive through Arrow as Decimal(38, 0); a local connection gives int.
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


class RemoteReader:
    """A client of a writing process's ReadServer, found through the sidecar file."""

    def __init__(self, db_path: str | Path, *, timeout_s: float = 30.0) -> None:
        info = json.loads(sidecar_path(db_path).read_text())
        self.pid = int(info.get("pid", 0))
        self._token = str(info["token"])
        self._sock = socket.create_connection((info["host"], int(info["port"])), timeout=2.0)
        self._sock.settimeout(timeout_s)
        self._lock = threading.Lock()  # one request at a time on this connection

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        req = json.dumps({"token": self._token, "sql": sql, "params": params or []}).encode()
        with self._lock:
            self._sock.sendall(_REQ.pack(len(req)) + req)
            kind, n = _RESP.unpack(_recv_exact(self._sock, _RESP.size))
            body = _recv_exact(self._sock, n)
        if kind == b"E":
            raise RemoteReadError(body.decode(errors="replace"))
        table = pa.ipc.open_stream(body).read_all()
        cols = table.column_names
        out = []
        for row in table.to_pylist():
            out.append({c: _plain(row[c]) for c in cols})
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
