"""The DuckDB trace store: one file per project, opened once per process.

A process that opens the file for writing also serves reads to other local processes
(readserve.py); a read-only open that finds the file locked by such a process reads through
it, so ``loopwright runs`` and ``loopwright view`` work while a run writes. When that process
dies mid-read, the reader opens the file itself (its lock went with it).

A new database file is created mode 0600 (the process umask is narrowed while DuckDB creates
it). DuckDB creates its write-ahead log (``<db>.wal``) and spill folder (``<db>.tmp``) itself,
again and again, with the process umask: docs/view.md says what that leaves readable.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
from loopwright.traces.readserve import (
    ReadServer,
    ReadServiceLost,
    ReadServiceUnavailable,
    RemoteReader,
    RemoteReadError,
    acquire_server,
    release_server,
)
from loopwright.traces.schema import ADDED_COLUMNS, SCHEMA_VERSION, TABLES

log = logging.getLogger(__name__)

# A reader (``loopwright runs``, one viewer page) holds the file for milliseconds; a writer
# that finds it locked waits this long for it before giving up.
LOCK_WAIT_S = 5.0
READ_LOCK_WAIT_S = 1.0
"""A reader that finds the file locked looks this long for the writer's read service (a
writer advertises it just after it opens the file)."""


class TraceStoreError(Exception):
    """The trace database cannot be opened or has an unknown schema."""


class ReadServiceError(TraceStoreError, RemoteReadError):
    """The process writing the database refused or could not answer a read."""


def _is_lock_error(exc: BaseException) -> bool:
    return "could not set lock" in str(exc).lower()


def describe_open_error(path: str, exc: BaseException) -> str:
    """One line saying why DuckDB could not open ``path``, and what to do."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^[A-Za-z ]*Error: ", "", first)
    low = first.lower()
    if _is_lock_error(exc):
        pid = re.search(r"\(PID (\d+)\)", first)
        who = f"process {pid.group(1)}" if pid else "another process"
        return (
            f"cannot open {path}: it is locked by {who} (is another loopwright process using it?)"
        )
    if "not a valid duckdb database file" in low:
        return (
            f"cannot open {path}: it is not a DuckDB database file; "
            "give a loopwright trace database or a new file name"
        )
    if "is a directory" in low:
        return f"cannot open {path}: it is a directory; give a database file name"
    if "permission denied" in low:
        return (
            f"cannot open {path}: permission denied (check the file's and folder's owner and mode)"
        )
    if "no such file or directory" in low:
        return f"cannot open {path}: its folder does not exist"
    if "read-only file system" in low:
        return f"cannot open {path}: the file system is read-only"
    return f"cannot open {path}: {first}"


def _stat(path: str) -> os.stat_result | None:
    """``os.stat`` of ``path``, None if it does not exist; a TraceStoreError naming what is
    wrong when it cannot be looked at (a folder on the way not readable, not a folder)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise TraceStoreError(
            f"cannot open {path}: permission denied (check the file's and folder's owner and mode)"
        ) from None
    except NotADirectoryError:
        raise TraceStoreError(f"cannot open {path}: a part of the path is not a folder") from None
    except OSError as exc:
        raise TraceStoreError(f"cannot open {path}: {exc.strerror or exc}") from None


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
        self._con: duckdb.DuckDBPyConnection | None = None
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        self._switch_lock = threading.Lock()
        on_disk = self.path != ":memory:"
        st = _stat(self.path) if on_disk else None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise TraceStoreError(
                f"cannot open {self.path}: it is a directory; give a database file name"
            )
        if read_only and on_disk:
            if st is None:
                raise TraceStoreError(
                    f"no trace database at {self.path}: run `loopwright run` first"
                )
            self._open_for_reading()
            return
        self._con = self._connect(read_only)
        try:
            if read_only:
                self._check_version()
                return
            self._refuse_foreign()
            self._migrate()
        except BaseException:
            self._con.close()
            raise
        if on_disk and serve_reads:
            self._server = acquire_server(self.path)

    @property
    def remote(self) -> bool:
        """True when reads go through the process that is writing the file."""
        return self._remote is not None

    # -- opening ---------------------------------------------------------------------------
    def _try_remote(self) -> ReadServiceUnavailable | None:
        """Connect to the writer's read service; the reason it cannot be used otherwise."""
        try:
            self._remote = RemoteReader(self.path)
        except ReadServiceUnavailable as exc:
            return exc
        return None

    def _open_for_reading(self) -> None:
        refused = self._try_remote()
        deadline = time.monotonic() + READ_LOCK_WAIT_S
        while self._remote is None:
            try:
                self._con = duckdb.connect(self.path, read_only=True)
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise TraceStoreError(describe_open_error(self.path, exc)) from None
                if refused is None or refused.quiet:  # a writer that is only starting
                    refused = self._try_remote()
                if self._remote is None and (
                    time.monotonic() >= deadline or (refused is not None and not refused.quiet)
                ):
                    why = refused.reason if refused else "it advertises no read service"
                    raise TraceStoreError(
                        f"{describe_open_error(self.path, exc)}; its reads cannot be served: {why}"
                    ) from None
                if self._remote is None:
                    time.sleep(0.05)
                continue
            if refused is not None and not refused.quiet:
                log.warning("ignored the read service sidecar: %s; read %s directly",
                            refused.reason, self.path)  # fmt: skip
            break
        try:
            self._check_version()
        except BaseException:
            self.close()
            raise

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + (0.0 if read_only else LOCK_WAIT_S)
        create = not read_only and self.path != ":memory:" and not os.path.lexists(self.path)
        while True:
            try:
                if not create:
                    return duckdb.connect(self.path, read_only=read_only)
                # The file holds every prompt and output: only its owner may read it.
                # (umask is process-wide; it is narrowed for the moment of creation only.)
                old = os.umask(0o077)
                try:
                    return duckdb.connect(self.path)
                finally:
                    os.umask(old)
            except duckdb.Error as exc:
                if _is_lock_error(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise TraceStoreError(describe_open_error(self.path, exc)) from None

    def _refuse_foreign(self) -> None:
        """A DuckDB file that holds tables but is no trace store is not ours to convert."""
        assert self._con is not None
        names = {
            r[0]
            for r in self._con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "UNION ALL SELECT view_name FROM duckdb_views() "
                "WHERE NOT internal AND database_name = current_database()"
            ).fetchall()
        }
        if names and "schema_version" not in names:
            shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
            raise TraceStoreError(
                f"{self.path} is a DuckDB database but not a loopwright trace store (it holds "
                f"{shown}); loopwright will not add its tables to it: give a new file name "
                "or an existing trace database"
            )

    def _migrate(self) -> None:
        assert self._con is not None
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
        except ReadServiceError as exc:
            raise TraceStoreError(
                f"cannot read {self.path} through the read service of the process writing it: {exc}"
            ) from exc
        row = rows[0]["v"] if rows else None
        if row is None or row > SCHEMA_VERSION:
            raise TraceStoreError(f"{self.path} has an unsupported trace schema version")

    # -- reading and writing ---------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor private to the calling thread."""
        if self._remote is not None or self._con is None:
            pid = self._remote.pid if self._remote is not None else "?"
            raise TraceStoreError(
                f"{self.path} is being written by process {pid}: "
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
        remote = self._remote
        if remote is not None:
            try:
                return remote.query(sql, params)
            except ReadServiceLost as exc:
                self._read_directly(exc)  # the writer died mid-read: its lock went with it
            except RemoteReadError as exc:
                raise ReadServiceError(str(exc)) from None
        cur = self.cursor().execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def _read_directly(self, lost: ReadServiceLost) -> None:
        with self._switch_lock:
            if self._remote is None:
                return  # another thread switched already
            try:
                con = duckdb.connect(self.path, read_only=True)
            except duckdb.Error as exc:
                raise ReadServiceError(
                    f"{lost}; and {describe_open_error(self.path, exc)}: try again"
                ) from None
            self._remote.close()
            self._remote = None
            self._con = con

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        self.cursor().execute(sql, params or [])

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None
        if self._server is not None:
            release_server(self._server)
            self._server = None
        with self._cursors_lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
        self._local = threading.local()
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
