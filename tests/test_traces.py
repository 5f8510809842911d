"""The DuckDB trace store: schema, the background writer, and the query helpers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from loopwright.traces.queries import cache_lookup
from loopwright.traces.records import (
    ANSWER_ROLES,
    CANDIDATE_ROLES,
    FEEDBACK_ROLES,
    MODEL_ROLES,
    RATING_ROLES,
    ROLES,
    CacheRecord,
    CallRecord,
    NodeRecord,
    TaskRecord,
    VerdictRecord,
)
from loopwright.traces.runs import discard_partial_tasks, task_statuses
from loopwright.traces.schema import SCHEMA_VERSION, TABLES
from loopwright.traces.store import TraceStore, TraceStoreError
from loopwright.traces.writer import TraceWriter, TraceWriterError
from pydantic import ValidationError

# -- helpers -------------------------------------------------------------------------------


def _task(run_id: str, task_id: str, status: str = "done", **kw) -> TaskRecord:
    return TaskRecord(
        run_id=run_id, task_id=task_id, idx=0, kind="math", prompt="1+1?", status=status, **kw
    )


def _node(run_id: str, task_id: str, **kw) -> NodeRecord:
    return NodeRecord(run_id=run_id, task_id=task_id, role="generator", content="2", **kw)


def _call(run_id: str, task_id: str, **kw) -> CallRecord:
    return CallRecord(
        request_id="r", run_id=run_id, task_id=task_id, model="scripted/x", messages="[]", **kw
    )


def _verdict(run_id: str, task_id: str, **kw) -> VerdictRecord:
    return VerdictRecord(
        run_id=run_id, task_id=task_id, stage="in_loop", verifier="math", passed=True, **kw
    )


def _cache(key: str, i: int, output: str = "out") -> CacheRecord:
    return CacheRecord(cache_key=key, sample_index=i, model="scripted/x", output=output)


def _count(store: TraceStore, table: str, where: str = "", params: list | None = None) -> int:
    sql = f"SELECT count(*) AS n FROM {table}" + (f" WHERE {where}" if where else "")
    return store.query(sql, params)[0]["n"]


def _wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# -- schema --------------------------------------------------------------------------------


def test_schema_creates_every_table_and_one_version_row(store: TraceStore) -> None:
    tables = {r["table_name"] for r in store.query("SELECT table_name FROM duckdb_tables()")}
    assert set(TABLES) <= tables
    rows = store.query("SELECT version FROM schema_version")
    assert rows == [{"version": SCHEMA_VERSION}]


def test_reopening_does_not_add_a_second_version_row(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    TraceStore(path).close()
    with TraceStore(path) as s:
        assert s.query("SELECT count(*) AS n FROM schema_version") == [{"n": 1}]
    with TraceStore(path, read_only=True) as s:
        assert s.query("SELECT max(version) AS v FROM schema_version") == [{"v": SCHEMA_VERSION}]


def test_a_version_3_file_gets_the_tasks_worker_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with TraceStore(path) as s:  # make it look like a file written before the column existed
        s.execute("ALTER TABLE tasks DROP COLUMN worker")
        s.execute("DELETE FROM schema_version")
        s.execute("INSERT INTO schema_version (version) VALUES (3)")
        s.execute(
            "INSERT INTO tasks (run_id, task_id, idx, prompt, status) "
            "VALUES ('r', 't1', 0, 'old', 'done')"
        )
    with TraceStore(path) as s:
        versions = [r["version"] for r in s.query("SELECT version FROM schema_version")]
        assert versions == [3, SCHEMA_VERSION]
        assert s.query("SELECT task_id, prompt, worker FROM tasks") == [
            {"task_id": "t1", "prompt": "old", "worker": None}
        ]
        w = TraceWriter(s)
        w.write(TaskRecord(run_id="r", task_id="t2", idx=1, kind="math", prompt="new",
                           status="done", worker="node-a:123"))  # fmt: skip
        w.close()
        rows = s.query("SELECT task_id, worker FROM tasks ORDER BY idx")
    assert rows == [{"task_id": "t1", "worker": None}, {"task_id": "t2", "worker": "node-a:123"}]


def test_a_version_5_file_gets_the_answer_key_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with TraceStore(path) as s:  # a file written before tasks kept their answer keys
        s.execute("ALTER TABLE tasks DROP COLUMN answer_key")
        s.execute("DELETE FROM schema_version")
        s.execute("INSERT INTO schema_version (version) VALUES (5)")
        s.execute(
            "INSERT INTO tasks (run_id, task_id, idx, prompt, status) "
            "VALUES ('r', 't1', 0, 'old', 'done')"
        )
    with TraceStore(path, read_only=True) as s:  # a reader does not migrate, and still reads
        assert s.query("SELECT task_id FROM tasks") == [{"task_id": "t1"}]
    key = json.dumps({"id": "t2", "prompt": "new", "reference": "2", "tests": ["assert 1"]})
    with TraceStore(path) as s:
        versions = [r["version"] for r in s.query("SELECT version FROM schema_version")]
        assert versions == [5, SCHEMA_VERSION] and SCHEMA_VERSION >= 6
        w = TraceWriter(s)
        w.write(_task("r", "t2", answer_key=key))
        w.close()
        rows = s.query("SELECT task_id, prompt, answer_key FROM tasks ORDER BY task_id")
    assert rows == [
        {"task_id": "t1", "prompt": "old", "answer_key": None},
        {"task_id": "t2", "prompt": "1+1?", "answer_key": key},
    ]


def test_roles_are_one_literal_with_groups_read_off_it() -> None:
    assert set(ANSWER_ROLES) == {"generator", "refiner", "expander", "rollout"}
    assert set(CANDIDATE_ROLES) < set(ANSWER_ROLES) and "rollout" not in CANDIDATE_ROLES
    assert set(MODEL_ROLES) == set(ANSWER_ROLES) | set(FEEDBACK_ROLES) | set(RATING_ROLES)
    assert set(ROLES) == set(MODEL_ROLES) | {"root", "vote", "evidence", "refused"}
    assert len(ROLES) == len(set(ROLES))
    assert _node("r", "t").role == "generator"
    with pytest.raises(ValidationError, match="role"):
        NodeRecord(run_id="r", task_id="t", role="drafter")
    with pytest.raises(ValidationError, match="role"):
        _call("r", "t", role="drafter")


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.duckdb"
    with TraceStore(path) as s:
        s.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(TraceStoreError, match="newer"):
        TraceStore(path)
    with pytest.raises(TraceStoreError):
        TraceStore(path, read_only=True)


def test_read_only_open_of_missing_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.duckdb"
    with pytest.raises(TraceStoreError, match="no trace database"):
        TraceStore(path, read_only=True)
    assert not path.exists(), "a read-only open must not create the file"


def test_read_only_open_of_a_foreign_duckdb_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE foo (x INTEGER)")
    con.close()
    with pytest.raises(TraceStoreError, match="not a loopwright"):
        TraceStore(path, read_only=True)


# -- writer --------------------------------------------------------------------------------


def test_rows_are_batched_and_flush_makes_them_visible(store: TraceStore) -> None:
    w = TraceWriter(store, batch_rows=10_000, interval_s=30.0)
    try:
        for i in range(5):
            w.write(_node("run", f"t{i}"))
        time.sleep(0.3)
        assert _count(store, "nodes") == 0, "nothing should commit before the batch is due"
        w.flush()
        assert _count(store, "nodes") == 5
        assert w.rows_written == 5
    finally:
        w.close()


def test_full_batch_commits_without_flush(store: TraceStore) -> None:
    w = TraceWriter(store, batch_rows=3, interval_s=30.0)
    try:
        for i in range(3):
            w.write(_node("run", f"t{i}"))
        assert _wait_for(lambda: _count(store, "nodes") == 3)
    finally:
        w.close()


def test_interval_commits_without_flush(store: TraceStore) -> None:
    w = TraceWriter(store, batch_rows=10_000, interval_s=0.05)
    try:
        w.write(_node("run", "t"))
        assert _wait_for(lambda: _count(store, "nodes") == 1)
    finally:
        w.close()


def test_close_commits_what_is_queued(store: TraceStore) -> None:
    w = TraceWriter(store, batch_rows=10_000, interval_s=30.0)
    w.write(_verdict("run", "t"))
    w.write(_call("run", "t"))
    w.close()
    assert _count(store, "verdicts") == 1
    assert _count(store, "calls") == 1


def test_records_round_trip_with_their_values(store: TraceStore, writer: TraceWriter) -> None:
    node = _node("run", "t", parent_id="p", depth=2, round=1, score=0.5, is_final=True)
    call = _call("run", "t", node_id=node.node_id, n=4, seed=7, sample_index=2, attempts=3)
    verdict = _verdict("run", "t", node_id=node.node_id, details=json.dumps({"k": 1}))
    for rec in (node, call, verdict):
        writer.write(rec)
    writer.flush()
    got = store.query("SELECT * FROM nodes")[0]
    assert (got["node_id"], got["parent_id"], got["depth"], got["round"]) == (
        node.node_id,
        "p",
        2,
        1,
    )
    assert got["score"] == 0.5 and got["is_final"] is True
    c = store.query("SELECT * FROM calls")[0]
    assert (c["n"], c["seed"], c["sample_index"], c["attempts"]) == (4, 7, 2, 3)
    v = store.query("SELECT * FROM verdicts")[0]
    assert json.loads(v["details"]) == {"k": 1}
    assert v["node_id"] == node.node_id


def test_task_rows_upsert_last_write_wins_within_one_batch(
    store: TraceStore, writer: TraceWriter
) -> None:
    writer.write(_task("run", "t1", status="running"))
    writer.write(_task("run", "t1", status="done", final_answer="2"))
    writer.flush()
    rows = store.query("SELECT status, final_answer FROM tasks")
    assert rows == [{"status": "done", "final_answer": "2"}]


def test_task_rows_upsert_last_write_wins_across_batches(
    store: TraceStore, writer: TraceWriter
) -> None:
    writer.write(_task("run", "t1", status="running"))
    writer.write(_task("run", "t2", status="running"))
    writer.flush()
    writer.write(_task("run", "t1", status="done", final_answer="2", calls=3))
    writer.flush()
    writer.write(_task("run", "t1", status="failed", error="boom"))
    writer.flush()
    assert task_statuses(store, "run") == {"t1": "failed", "t2": "running"}
    row = store.query("SELECT * FROM tasks WHERE task_id = 't1'")[0]
    # A replace, not a merge: fields of the earlier version do not survive.
    assert row["final_answer"] is None and row["calls"] == 0 and row["error"] == "boom"


def test_task_rows_are_keyed_by_run_and_task(store: TraceStore, writer: TraceWriter) -> None:
    writer.write(_task("run-a", "t1", status="done"))
    writer.write(_task("run-b", "t1", status="running"))
    writer.flush()
    assert task_statuses(store, "run-a") == {"t1": "done"}
    assert task_statuses(store, "run-b") == {"t1": "running"}


def test_call_cache_ignores_duplicates(store: TraceStore, writer: TraceWriter) -> None:
    writer.write(_cache("k", 0, "first"))
    writer.flush()
    writer.write(_cache("k", 0, "second"))
    writer.write(_cache("k", 1, "other sample"))
    writer.flush()  # must not raise a primary-key violation
    rows = store.query("SELECT sample_index, output FROM call_cache ORDER BY sample_index")
    assert rows == [
        {"sample_index": 0, "output": "first"},
        {"sample_index": 1, "output": "other sample"},
    ]


def test_duplicate_cache_rows_in_one_batch_do_not_fail(
    store: TraceStore, writer: TraceWriter
) -> None:
    writer.write(_cache("k", 0, "a"))
    writer.write(_cache("k", 0, "b"))
    writer.flush()
    assert _count(store, "call_cache") == 1


def test_a_refused_row_goes_to_write_errors_and_its_batch_is_stored(store: TraceStore) -> None:
    w = TraceWriter(store, interval_s=30.0)
    store.execute("DROP TABLE verdicts")
    w.write(_task("run", "t", status="done"))
    verdict = _verdict("run", "t", feedback="kept")
    w.write(verdict)
    w.write(_node("run", "t"))
    w.flush(timeout=10)
    # The rest of the batch is stored; the refused row is kept, with the reason, as JSON text.
    assert _count(store, "tasks") == 1
    assert _count(store, "nodes") == 1
    [err] = store.query("SELECT * FROM write_errors")
    assert (err["run_id"], err["task_id"], err["table_name"]) == ("run", "t", "verdicts")
    assert "verdicts" in err["error"] and "\n" not in err["error"]
    kept = json.loads(err["record"])
    assert kept["verdict_id"] == verdict.verdict_id and kept["feedback"] == "kept"
    assert (w.rows_written, w.rows_refused) == (2, 1)
    # The writer keeps working.
    w.write(_node("run", "t2"))
    w.close()
    assert _count(store, "nodes") == 2


def test_writer_fails_only_when_a_row_can_be_kept_nowhere(store: TraceStore) -> None:
    w = TraceWriter(store, interval_s=30.0)
    store.execute("DROP TABLE verdicts")
    store.execute("DROP TABLE write_errors")
    w.write(_task("run", "t", status="done"))
    w.write(_verdict("run", "t"))
    with pytest.raises(TraceWriterError, match=r"^trace writer failed: ") as info:
        w.flush(timeout=10)
    assert isinstance(info.value, RuntimeError)  # what callers already catch
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, duckdb.Error)
    assert w.failed is not None
    # The task row, whose trace is incomplete, was not stored as done.
    assert _count(store, "tasks") == 0
    # The thread is still alive (flush did not time out) and keeps reporting the failure.
    with pytest.raises(RuntimeError, match="trace writer failed"):
        w.write(_node("run", "t"))
    with pytest.raises(RuntimeError, match="trace writer failed"):
        w.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_writer_surfaces_an_unwritable_record_instead_of_dying(store: TraceStore) -> None:
    class MyNode(NodeRecord):
        pass

    w = TraceWriter(store, interval_s=30.0)
    try:
        w.write(MyNode(run_id="run", task_id="t", role="generator"))
    except (TypeError, ValueError, RuntimeError):
        return  # rejecting it up front is fine too
    with pytest.raises(RuntimeError, match="trace writer failed"):
        w.flush(timeout=2)


# -- queries -------------------------------------------------------------------------------


def _seed_run(writer: TraceWriter, run_id: str, statuses: dict[str, str]) -> None:
    for task_id, status in statuses.items():
        # Two of each child row per task, to catch a delete that only removes one.
        for _ in range(2):
            writer.write(_node(run_id, task_id))
            writer.write(_call(run_id, task_id))
            writer.write(_verdict(run_id, task_id))
        writer.write(_task(run_id, task_id, status=status))
    writer.flush()


def _children(store: TraceStore, run_id: str, task_id: str) -> dict[str, int]:
    return {
        t: _count(store, t, "run_id = ? AND task_id = ?", [run_id, task_id])
        for t in ("nodes", "calls", "verdicts")
    }


def test_discard_partial_tasks_only_touches_unfinished_tasks_of_that_run(
    store: TraceStore, writer: TraceWriter
) -> None:
    _seed_run(writer, "A", {"t1": "done", "t2": "running", "t3": "failed", "t4": "pending"})
    _seed_run(writer, "B", {"t1": "done", "t2": "running", "t3": "failed"})

    discarded = discard_partial_tasks(store, "A")

    assert sorted(discarded) == ["t2", "t3", "t4"]
    full = {"nodes": 2, "calls": 2, "verdicts": 2}
    empty = {"nodes": 0, "calls": 0, "verdicts": 0}
    assert _children(store, "A", "t1") == full
    for t in ("t2", "t3", "t4"):
        assert _children(store, "A", t) == empty, t
    for t in ("t1", "t2", "t3"):
        assert _children(store, "B", t) == full, f"run B, {t}"
    assert task_statuses(store, "B") == {"t1": "done", "t2": "running", "t3": "failed"}


def test_discard_partial_tasks_with_nothing_to_discard(
    store: TraceStore, writer: TraceWriter
) -> None:
    _seed_run(writer, "A", {"t1": "done"})
    assert discard_partial_tasks(store, "A") == []
    assert discard_partial_tasks(store, "no-such-run") == []
    assert _children(store, "A", "t1") == {"nodes": 2, "calls": 2, "verdicts": 2}


def test_cache_lookup_needs_every_sample(store: TraceStore, writer: TraceWriter) -> None:
    writer.write(_cache("k", 1, "s1"))
    writer.write(_cache("k", 0, "s0"))
    writer.write(_cache("gap", 0, "g0"))
    writer.write(_cache("gap", 2, "g2"))
    writer.write(_cache("no-zero", 1, "z1"))
    writer.write(_cache("no-zero", 2, "z2"))
    writer.flush()

    assert cache_lookup(store, "missing", 1) is None
    assert cache_lookup(store, "k", 3) is None
    rows = cache_lookup(store, "k", 2)
    assert rows is not None
    assert [(r["sample_index"], r["output"]) for r in rows] == [(0, "s0"), (1, "s1")]
    one = cache_lookup(store, "k", 1)
    assert one is not None and [r["output"] for r in one] == ["s0"]
    assert cache_lookup(store, "gap", 2) is None
    assert cache_lookup(store, "gap", 3) is None
    assert cache_lookup(store, "no-zero", 2) is None


# -- crash safety --------------------------------------------------------------------------

_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from loopwright.traces.records import CallRecord, NodeRecord, TaskRecord
    from loopwright.traces.store import TraceStore
    from loopwright.traces.writer import TraceWriter, TraceWriterError

    store = TraceStore(sys.argv[1])
    w = TraceWriter(store, batch_rows=50, interval_s=0.01)

    def task(tid, status):
        return TaskRecord(run_id="R", task_id=tid, idx=int(tid[1:]), kind="math",
                          prompt="p" + tid, final_answer="a" + tid, status=status)

    for i in range(40):
        tid = f"t{i}"
        n = NodeRecord(run_id="R", task_id=tid, role="generator", content="c" + tid)
        w.write(n)
        w.write(CallRecord(request_id="q" + tid, run_id="R", task_id=tid, node_id=n.node_id,
                           model="scripted/x", messages="[]", output="c" + tid))
        w.write(task(tid, "done"))
    w.flush()
    print("FLUSHED", flush=True)

    # More work in flight when the process dies.
    for i in range(40, 4000):
        tid = f"t{i}"
        w.write(NodeRecord(run_id="R", task_id=tid, role="generator", content="c" + tid))
        w.write(task(tid, "running"))
    os.kill(os.getpid(), 9)
    """
)


def test_flushed_done_tasks_survive_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    assert "FLUSHED" in proc.stdout

    with TraceStore(path, read_only=True) as s:
        done = s.query(
            "SELECT task_id, prompt, final_answer FROM tasks "
            "WHERE run_id = 'R' AND status = 'done' ORDER BY idx"
        )
        assert [r["task_id"] for r in done] == [f"t{i}" for i in range(40)]
        assert all(r["prompt"] == "p" + r["task_id"] for r in done)
        assert all(r["final_answer"] == "a" + r["task_id"] for r in done)
        # Their whole trace is there too, joined up.
        joined = s.query(
            "SELECT t.task_id FROM tasks t JOIN nodes n USING (run_id, task_id) "
            "JOIN calls c ON c.node_id = n.node_id "
            "WHERE t.status = 'done' AND n.content = 'c' || t.task_id "
            "AND c.output = n.content"
        )
        assert sorted(r["task_id"] for r in joined) == sorted(f"t{i}" for i in range(40))
        # Whatever in-flight rows made it are whole rows, never torn ones.
        assert s.query("SELECT count(*) AS n FROM tasks WHERE prompt IS NULL") == [{"n": 0}]
