"""One writer per process: a queue drained by a thread into batched Arrow inserts.

Each batch is one transaction, so a crash loses at most the batch in flight. A task's
``done`` row is queued after its nodes, calls and verdicts, so a task that reads as done
in the database always has its whole trace.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import defaultdict
from typing import Any

import pyarrow as pa
from loopwright.traces.records import (
    CacheRecord,
    CallRecord,
    NodeRecord,
    TaskRecord,
    VerdictRecord,
)
from loopwright.traces.store import TraceStore

_TABLE_OF: dict[type, str] = {
    NodeRecord: "nodes",
    CallRecord: "calls",
    VerdictRecord: "verdicts",
    TaskRecord: "tasks",
    CacheRecord: "call_cache",
}
_KEYS = {"tasks": ("run_id", "task_id"), "call_cache": ("cache_key", "sample_index")}


class _Barrier:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


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
        self._error: BaseException | None = None
        self.rows_written = 0
        self._thread = threading.Thread(
            target=self._run, name="loopwright-trace-writer", daemon=True
        )
        self._thread.start()

    def write(
        self, record: NodeRecord | CallRecord | VerdictRecord | TaskRecord | CacheRecord
    ) -> None:
        """Queue one record; returns at once."""
        if self._error is not None:
            raise RuntimeError("trace writer failed") from self._error
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
            raise RuntimeError("trace writer failed") from self._error

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._urgent.set()
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("trace writer failed") from self._error

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
                    pending[_TABLE_OF[type(item)]].append(item.row())
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

    def _commit(self, pending: dict[str, list[dict[str, Any]]]) -> None:
        if self._error is not None:
            return
        cur = self.store.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            for table, rows in pending.items():
                key = _KEYS.get(table)
                if key:  # keep the last version of each row in the batch
                    rows = list({tuple(r[k] for k in key): r for r in rows}.values())
                batch = pa.Table.from_pylist(rows)  # noqa: F841  (DuckDB scans it by name)
                verb = (
                    "INSERT OR REPLACE"
                    if table == "tasks"
                    else ("INSERT OR IGNORE" if table == "call_cache" else "INSERT")
                )
                cur.execute(f"{verb} INTO {table} BY NAME SELECT * FROM batch")
                self.rows_written += len(rows)
            cur.execute("COMMIT")
        except BaseException as exc:  # surface on the next write/flush, keep the thread alive
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            # Drop the frames: they pin DuckDB objects (and the batch) until shutdown.
            self._error = exc.with_traceback(None)
