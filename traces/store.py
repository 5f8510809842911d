"""The DuckDB trace store: one file per project, opened once per process.

A process that opens the file for writing also serves reads to other local processes
(readserve.py); a read-only open that finds the file locked by such a process reads through
it, so ``loopwright runs`` and ``loopwright view`` work while a run writes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import duckdb
from loopwright.traces.readserve import (
    ReadServer,
    RemoteReader,
    RemoteReadError,
    acquire_server,
    release_server,
    sidecar_path,
)
from loopwright.traces.schema import ADDED_COLUMNS, SCHEMA_VERSION, TABLES

# A reader (``loopwright runs``, one viewer page) holds the file for milliseconds; a writer
# that finds it locked waits this long for it before giving up.
LOCK_WAIT_S = 5.0


class TraceStoreError(Exception):
    """The trace database cannot be opened or has an unknown schema."""


class TraceStore:
    """Owns the DuckDB connection. Each thread gets its own cursor (DuckDB's rule)."""

    def __init__(
        self,
        path: str | Path = "loopwright.duckdb",
        *,
        read_only: bool = False,
        serve_reads: bool = True,
    ) -> None:
        self.path = str(path)
        self._remote: RemoteReader | None = None
        self._server: ReadServer | None = None
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        on_disk = self.path != ":memory:"
        if read_only and on_disk and not Path(self.path).exists():
            raise TraceStoreError(f"no trace database at {self.path}: run `loopwright run` first")
        if read_only and on_disk and self._try_remote():
            self._check_version()
            return
        con = self._connect(read_only)
        if con is None:  # locked by a writer that serves reads: self._remote answers
            self._check_version()
            return
        self._con = con
        if not read_only:
            self._migrate()
            if on_disk and serve_reads:
                self._server = acquire_server(self.path)
        else:
            self._check_version()

    @property
    def remote(self) -> bool:
        """True when reads go through the process that is writing the file."""
        return self._remote is not None

    def _try_remote(self) -> bool:
        if not sidecar_path(self.path).exists():
            return False
        try:
            self._remote = RemoteReader(self.path)
        except (OSError, ValueError, KeyError):  # a stale sidecar: its writer has gone
            return False
        return True

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection | None:
        deadline = time.monotonic() + (0.0 if read_only else LOCK_WAIT_S)
        while True:
            try:
                return duckdb.connect(self.path, read_only=read_only)
            except duckdb.IOException as exc:
                first = str(exc).splitlines()[0]
                # A writer that started after our sidecar check: read through it.
                if read_only and "lock" in first.lower() and self._try_remote():
                    return None
                if "lock" in first.lower() and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise TraceStoreError(
                    f"cannot open {self.path}: {first} (is another loopwright process using it?)"
                ) from exc

    def _migrate(self) -> None:
        for ddl in TABLES.values():
            self._con.execute(ddl)
        row = self._con.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] if row else None
        if current is None or current < SCHEMA_VERSION:
            for version, table, column, kind in ADDED_COLUMNS:
                if current is not None and current < version:
                    self._con.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
                    )
            self._con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        elif current > SCHEMA_VERSION:
            raise TraceStoreError(
                f"{self.path} has trace schema v{current}, newer than this loopwright "
                f"(v{SCHEMA_VERSION}): upgrade loopwright"
            )

    def _check_version(self) -> None:
        try:
            rows = self.query("SELECT max(version) AS v FROM schema_version")
        except duckdb.CatalogException as exc:
            raise TraceStoreError(f"{self.path} is not a loopwright trace database") from exc
        except RemoteReadError as exc:
            raise TraceStoreError(
                f"cannot read {self.path} through the read service of the process writing it: {exc}"
            ) from exc
        row = rows[0]["v"] if rows else None
        if row is None or row > SCHEMA_VERSION:
            raise TraceStoreError(f"{self.path} has an unsupported trace schema version")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor private to the calling thread."""
        if self._remote is not None:
            raise TraceStoreError(
                f"{self.path} is being written by process {self._remote.pid}: "
                "only query() reads work until it finishes"
            )
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run SQL and return rows as dicts."""
        if self._remote is not None:
            return self._remote.query(sql, params)
        cur = self.cursor().execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        self.cursor().execute(sql, params or [])

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            return
        if self._server is not None:
            release_server(self._server)
            self._server = None
        with self._cursors_lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
        self._local = threading.local()
        self._con.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
