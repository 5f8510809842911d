"""One writer per process: a queue drained by a thread into batched Arrow inserts.

Each batch is one transaction, so a crash loses at most the batch in flight. A task's
``done`` row is queued after its nodes, calls and verdicts, so a task that reads as done
in the database always has its whole trace.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
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

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything queued so far is committed."""
        barrier = _Barrier()
        self._q.put(barrier)
        if not barrier.done.wait(timeout):
            raise TimeoutError("trace writer did not flush in time")
        if self._error is not None:
            raise RuntimeError("trace writer failed") from self._error

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("trace writer failed") from self._error

    # -- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        count = 0
        deadline = time.monotonic() + self.interval_s
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._q.get(timeout=timeout) if count else self._q.get()
            except queue.Empty:
                item = None
            barriers: list[_Barrier] = []
            stop = False
            if item is _STOP:
                stop = True
            elif isinstance(item, _Barrier):
                barriers.append(item)
            elif item is not None:
                if count == 0:
                    deadline = time.monotonic() + self.interval_s
                pending[_TABLE_OF[type(item)]].append(item.row())
                count += 1
            # Drain whatever else is already queued without waiting.
            while not stop and count < self.batch_rows:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                elif isinstance(nxt, _Barrier):
                    barriers.append(nxt)
                else:
                    pending[_TABLE_OF[type(nxt)]].append(nxt.row())
                    count += 1
            if count and (
                stop or barriers or count >= self.batch_rows or time.monotonic() >= deadline
            ):
                self._commit(pending)
                pending = defaultdict(list)
                count = 0
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
