"""One writer per process: a queue drained by a thread into batched Arrow inserts.

Each batch is one transaction, so a crash loses at most the batch in flight. A task's
``done`` row is queued after its nodes, calls and verdicts, so a task that reads as done
in the database always has its whole trace.

Nothing is lost whatever the text: every string is repaired on its way into a row
(``records.repair_row``; each repaired value gets a ``text_repairs`` row), and a batch the
database refuses is written again one row at a time, so only a row that is itself refused
misses its table — and that row goes to ``write_errors`` (as JSON text, with the reason)
instead. The writer fails only when even that is impossible (the file cannot be written at
all); every later ``write``/``flush``/``close`` then raises :class:`TraceWriterError`.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections import defaultdict
from typing import Any

from loopwright.traces.records import (
    CacheRecord,
    CallRecord,
    NodeRecord,
    TaskRecord,
    VerdictRecord,
    repair_row,
    repair_text,
    utcnow,
)
from loopwright.traces.schema import JSON_COLUMNS, ROW_KEYS
from loopwright.traces.store import TraceStore, TraceStoreError

_TABLE_OF: dict[type, str] = {
    NodeRecord: "nodes",
    CallRecord: "calls",
    VerdictRecord: "verdicts",
    TaskRecord: "tasks",
    CacheRecord: "call_cache",
}
_VERB = {"tasks": "INSERT OR REPLACE", "call_cache": "INSERT OR IGNORE"}
# Tables whose rows may repeat within a batch: the last version of each row is kept.
_KEYS = {table: ROW_KEYS[table] for table in _VERB}
# Row by row, a task's row goes last: a task that reads as done keeps its whole trace.
_LAST = ("tasks",)


class TraceWriterError(TraceStoreError, RuntimeError):
    """The writer cannot store rows at all; the message is one line naming the cause."""


class _Barrier:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = repair_text(text[0])[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def row_key(table: str, row: dict[str, Any]) -> str | None:
    """The value(s) that identify ``row`` in ``table``, as one string (``/`` between parts)."""
    cols = ROW_KEYS.get(table)
    if not cols:
        return None
    return "/".join(str(row.get(c)) for c in cols)


def repairs_rows(table: str, row: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``row`` repaired for ``table``, and one ``text_repairs`` row per value changed."""
    fixed, fixes = repair_row(row, JSON_COLUMNS.get(table, frozenset()))
    if not fixes:
        return row, []
    now = utcnow()
    key = row_key(table, fixed)
    return fixed, [
        {
            "run_id": fixed.get("run_id"),
            "task_id": fixed.get("task_id"),
            "table_name": table,
            "row_key": key,
            "field": field,
            "joined_pairs": rep.joined,
            "replaced": rep.replaced,
            "created_at": now,
        }
        for field, rep in fixes.items()
    ]


class TraceWriter:
    """Queue trace records from any thread or coroutine; a background thread writes them."""

    def __init__(
        self, store: TraceStore, *, batch_rows: int = 2000, interval_s: float = 0.25
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.interval_s = interval_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._urgent = threading.Event()
        self._error: TraceWriterError | None = None
        self.rows_written = 0
        self.text_repairs = 0
        """Values repaired on their way into a row (each also has a ``text_repairs`` row)."""
        self.rows_refused = 0
        """Rows the database refused, kept in ``write_errors`` instead of their table."""
        self._thread = threading.Thread(
            target=self._run, name="loopwright-trace-writer", daemon=True
        )
        self._thread.start()

    @property
    def failed(self) -> TraceWriterError | None:
        """Why the writer stopped writing, or None while it works."""
        return self._error

    def write(
        self, record: NodeRecord | CallRecord | VerdictRecord | TaskRecord | CacheRecord
    ) -> None:
        """Queue one record; returns at once."""
        if self._error is not None:
            raise self._raised()
        if type(record) not in _TABLE_OF:
            raise TypeError(f"not a trace record: {type(record).__name__}")
        self._q.put(record)
        if self._q.qsize() >= self.batch_rows:
            self._urgent.set()

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything queued so far is committed."""
        barrier = _Barrier()
        self._q.put(barrier)
        self._urgent.set()
        if not barrier.done.wait(timeout):
            raise TimeoutError("trace writer did not flush in time")
        if self._error is not None:
            raise self._raised()

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._urgent.set()
            self._thread.join()
        if self._error is not None:
            raise self._raised()

    def _raised(self) -> TraceWriterError:
        assert self._error is not None
        exc = TraceWriterError(str(self._error))
        exc.__cause__ = self._error.__cause__
        return exc

    # -- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        # The thread wakes once per batch, not once per record: a wake-up per record costs a
        # GIL hand-off each, which the event loop producing the records pays for.
        while True:
            first = self._q.get()  # the first record of a batch, or a barrier, or stop
            if first is not _STOP and not isinstance(first, _Barrier):
                self._urgent.wait(self.interval_s)  # let the batch fill (flush/close cut it short)
            self._urgent.clear()
            pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
            barriers: list[_Barrier] = []
            stop = False
            count = 0
            item: Any = first
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Barrier):
                    barriers.append(item)
                else:
                    self._add(pending, item)
                    count += 1
                    if count >= self.batch_rows:  # commit this much; the rest is next
                        self._urgent.set()
                        break
                if stop:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if pending:
                self._commit(pending)
            for b in barriers:
                b.done.set()
            if stop:
                return

    def _add(self, pending: dict[str, list[dict[str, Any]]], record: Any) -> None:
        table = _TABLE_OF.get(type(record))
        try:
            if table is None:
                raise TypeError(f"not a trace record: {type(record).__name__}")
            row, repairs = repairs_rows(table, record.row())
        except Exception as exc:  # a record that cannot even become a row: kept as text
            pending["write_errors"].append(
                _error_row(table or type(record).__name__, _as_dict(record), exc)
            )
            return
        pending[table].append(row)
        if repairs:
            pending["text_repairs"].extend(repairs)

    def _commit(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        if self._error is not None:
            return
        for table, key in _KEYS.items():  # keep the last version of each row in the batch
            if table in pending:
                pending[table] = list(
                    {tuple(r[k] for k in key): r for r in pending[table]}.values()
                )
        cur = self.store.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            for table, rows in pending.items():
                self._insert(cur, table, rows)
            cur.execute("COMMIT")
        except Exception:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
        else:
            self._count(pending)
            return
        try:
            self._commit_rows(cur, pending)
        except BaseException as exc:  # surface on the next write/flush, keep the thread alive
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            err = TraceWriterError(f"trace writer failed: {_one_line(exc)}")
            # Drop the frames: they pin DuckDB objects (and the batch) until shutdown.
            err.__cause__ = exc.with_traceback(None)
            self._error = err

    def _commit_rows(self, cur: Any, pending: dict[str, list[dict[str, Any]]]) -> None:
        """The batch was refused: write it one row at a time, a refused row to write_errors.
        Raises only when a row can be written neither to its table nor to write_errors."""
        order = [t for t in pending if t not in _LAST] + [t for t in _LAST if t in pending]
        for table in order:
            for row in pending[table]:
                try:
                    cur.execute("BEGIN TRANSACTION")
                    self._insert(cur, table, [row])
                    cur.execute("COMMIT")
                except Exception as exc:
                    with contextlib.suppress(Exception):
                        cur.execute("ROLLBACK")
                    if table == "write_errors":
                        raise
                    try:
                        cur.execute("BEGIN TRANSACTION")
                        self._insert(cur, "write_errors", [_error_row(table, row, exc)])
                        cur.execute("COMMIT")
                    except Exception:
                        raise exc from None  # the row's own reason names the cause
                    self.rows_refused += 1
                else:
                    self._count({table: [row]})

    def _insert(self, cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa  # imported by the first write, not by every reader of the store

        batch = pa.Table.from_pylist(rows)  # noqa: F841  (DuckDB scans it by name)
        verb = _VERB.get(table, "INSERT")
        cur.execute(f"{verb} INTO {table} BY NAME SELECT * FROM batch")

    def _count(self, written: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in written.items():
            if table == "text_repairs":
                self.text_repairs += len(rows)
            elif table == "write_errors":
                self.rows_refused += len(rows)
            else:
                self.rows_written += len(rows)


def _as_dict(record: Any) -> dict[str, Any]:
    try:
        return dict(record.row())
    except Exception:
        return {"repr": repr(record)}


def _error_row(table: str, row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A ``write_errors`` row: the refused row as JSON text (repaired, never refused itself)."""
    try:
        record = json.dumps(row, default=str)
    except (TypeError, ValueError, RecursionError):
        record = json.dumps({"repr": repr(row)})
    return {
        "run_id": _text(row.get("run_id")),
        "task_id": _text(row.get("task_id")),
        "table_name": table,
        "error": _one_line(exc),
        "record": repair_text(record)[0],
        "created_at": utcnow(),
    }


def _text(value: Any) -> str | None:
    return None if value is None else repair_text(str(value))[0]
