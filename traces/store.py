"""The DuckDB trace store: one file per project, opened once per process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb
from loopwright.traces.schema import SCHEMA_VERSION, TABLES


class TraceStoreError(Exception):
    """The trace database cannot be opened or has an unknown schema."""


class TraceStore:
    """Owns the DuckDB connection. Each thread gets its own cursor (DuckDB's rule)."""

    def __init__(self, path: str | Path = "loopwright.duckdb", *, read_only: bool = False) -> None:
        self.path = str(path)
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise TraceStoreError(f"no trace database at {self.path}: run `loopwright run` first")
        try:
            self._con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            first = str(exc).splitlines()[0]
            raise TraceStoreError(
                f"cannot open {self.path}: {first} (is another loopwright process using it?)"
            ) from exc
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        if not read_only:
            self._migrate()
        else:
            self._check_version()

    def _migrate(self) -> None:
        for ddl in TABLES.values():
            self._con.execute(ddl)
        row = self._con.execute("SELECT max(version) FROM schema_version").fetchone()
        current = row[0] if row else None
        if current is None or current < SCHEMA_VERSION:
            self._con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        elif current > SCHEMA_VERSION:
            raise TraceStoreError(
                f"{self.path} has trace schema v{current}, newer than this loopwright "
                f"(v{SCHEMA_VERSION}): upgrade loopwright"
            )

    def _check_version(self) -> None:
        try:
            row = self._con.execute("SELECT max(version) FROM schema_version").fetchone()
        except duckdb.CatalogException as exc:
            raise TraceStoreError(f"{self.path} is not a loopwright trace database") from exc
        if row is None or row[0] is None or row[0] > SCHEMA_VERSION:
            raise TraceStoreError(f"{self.path} has an unsupported trace schema version")

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor private to the calling thread."""
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cur = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run SQL and return rows as dicts."""
        cur = self.cursor().execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        self.cursor().execute(sql, params or [])

    def close(self) -> None:
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
