"""Nothing lost whatever the text: surrogate code points are repaired on their way into the
store and counted; a row the database refuses is kept in write_errors, never taking its batch
down; a writer that cannot write at all fails its run in one line, and --resume continues it;
a run killed before or just after its run row commits can be resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import duckdb
import pytest
from loop_testkit import SELF_REFINE_STEPS, cli_main, write_jsonl
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.records import (
    CallRecord,
    NodeRecord,
    TaskRecord,
    VerdictRecord,
    repair_json_text,
    repair_text,
)
from loopwright.traces.runs import discard_partial_tasks, run_summary
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter, TraceWriterError

HIGH, LOW = "\ud83d", "\ude00"  # the two halves of U+1F600, each alone a lone surrogate
FFFD = "\ufffd"


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _lone_surrogates(text: str) -> int:
    """Surrogates not part of a high+low pair."""
    lone, i = 0, 0
    while i < len(text):
        c = ord(text[i])
        if 0xD800 <= c <= 0xDBFF and i + 1 < len(text) and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            i += 2
            continue
        lone += 0xD800 <= c <= 0xDFFF
        i += 1
    return lone


def query(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(sql, params)


# -- the repair rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stored", "joined", "replaced"),
    [
        ("plain ascii", "plain ascii", 0, 0),
        ("déjà vu 😀", "déjà vu 😀", 0, 0),
        (f"split {HIGH}", f"split {FFFD}", 0, 1),
        (f"{LOW} first", f"{FFFD} first", 0, 1),
        (f"pair {HIGH}{LOW} arrived as two", "pair 😀 arrived as two", 1, 0),
        (f"{HIGH}{HIGH}{LOW}{LOW}", f"{FFFD}😀{FFFD}", 1, 2),
        ("bad byte \udcff from argv", f"bad byte {FFFD} from argv", 0, 1),
    ],
)
def test_repair_text_joins_pairs_and_replaces_lone_surrogates(
    text: str, stored: str, joined: int, replaced: int
) -> None:
    out, rep = repair_text(text)
    assert out == stored
    assert (rep.joined, rep.replaced) == (joined, replaced)
    out.encode("utf-8")  # storable


def test_repair_json_text_fixes_escaped_lone_surrogates_at_any_depth() -> None:
    deep = "[" * 100_000 + json.dumps(f"x{HIGH}") + "]" * 100_000
    out, rep = repair_json_text(deep)
    assert rep.replaced == 1
    assert out == "[" * 100_000 + '"x\\ufffd"' + "]" * 100_000
    con = duckdb.connect()
    con.execute("CREATE TABLE j (v JSON)")
    with pytest.raises(duckdb.Error):  # what the store refuses without the repair
        con.execute("INSERT INTO j VALUES (?)", [json.dumps({"k": HIGH})])
    cases = {
        json.dumps({f"key{LOW}": [f"a{HIGH}", "b"]}): {f"key{FFFD}": [f"a{FFFD}", "b"]},
        json.dumps(f"kept pair {HIGH}{LOW}"): "kept pair 😀",  # valid JSON: left alone
        json.dumps("\\ud83d is text, not an escape"): "\\ud83d is text, not an escape",
        '"\\\\\\ud83d"': f"\\{FFFD}",  # an escaped backslash, then an escaped lone surrogate
    }
    for text, value in cases.items():
        out, _ = repair_json_text(text)
        con.execute("INSERT INTO j VALUES (?)", [out])
        assert json.loads(out) == value, text


# -- the writer ----------------------------------------------------------------------------------


def test_a_batch_with_unencodable_and_refused_rows_stores_every_good_row(
    store: TraceStore,
) -> None:
    w = TraceWriter(store, interval_s=30.0)  # one batch: everything below commits together
    good = [NodeRecord(run_id="R", task_id=f"t{i}", role="generator", content=f"ok {i}")
            for i in range(20)]  # fmt: skip
    bad_text = NodeRecord(run_id="R", task_id="t0", role="generator", content=f"half {HIGH}")
    call = CallRecord(
        request_id="q", run_id="R", task_id="t0", model="scripted/x",
        messages=json.dumps([{"role": "user", "content": f"say {LOW}"}]), output=f"{HIGH}{LOW}",
    )  # fmt: skip
    clash = NodeRecord(**{**good[3].model_dump(), "content": "same node id twice"})
    broken_json = VerdictRecord(
        run_id="R", task_id="t1", stage="in_loop", verifier="math", details="{not json"
    )
    huge = CallRecord(request_id="h", run_id="R", task_id="t2", model="m", messages="[]",
                      seed=10**23)  # fmt: skip
    for rec in [*good[:10], bad_text, call, clash, broken_json, huge, *good[10:]]:
        w.write(rec)
    w.write(TaskRecord(run_id="R", task_id=f"t{HIGH}", idx=0, kind="math",
                       prompt=f"p {HIGH}", status="done"))  # fmt: skip
    w.close()

    contents = {r["content"] for r in store.query("SELECT content FROM nodes")}
    assert contents == {f"ok {i}" for i in range(20)} | {f"half {FFFD}"}
    [c] = store.query("SELECT messages, output FROM calls")
    assert c["output"] == "😀"
    assert json.loads(c["messages"]) == [{"role": "user", "content": f"say {FFFD}"}]
    assert store.query("SELECT task_id, prompt FROM tasks") == [
        {"task_id": f"t{FFFD}", "prompt": f"p {FFFD}"}
    ]
    # The rows the database refused (a duplicate key, JSON that is not JSON, a seed beyond
    # BIGINT) are kept, with the reason.
    errors = store.query("SELECT table_name, error, record FROM write_errors ORDER BY 1")
    assert [e["table_name"] for e in errors] == ["calls", "nodes", "verdicts"]
    assert json.loads(errors[0]["record"])["seed"] == 10**23
    assert json.loads(errors[1]["record"])["content"] == "same node id twice"
    assert json.loads(errors[2]["record"])["details"] == "{not json"
    assert all("\n" not in e["error"] for e in errors)
    fixes = store.query(
        "SELECT table_name, field, joined_pairs, replaced FROM text_repairs ORDER BY 1, 2"
    )
    assert fixes == [
        {"table_name": "calls", "field": "messages", "joined_pairs": 0, "replaced": 1},
        {"table_name": "calls", "field": "output", "joined_pairs": 1, "replaced": 0},
        {"table_name": "nodes", "field": "content", "joined_pairs": 0, "replaced": 1},
        {"table_name": "tasks", "field": "prompt", "joined_pairs": 0, "replaced": 1},
        {"table_name": "tasks", "field": "task_id", "joined_pairs": 0, "replaced": 1},
    ]
    assert (w.rows_written, w.rows_refused, w.text_repairs) == (23, 3, 5)


def test_resume_discards_the_repairs_and_errors_of_unfinished_tasks(store: TraceStore) -> None:
    w = TraceWriter(store)
    for tid, status in (("done", "done"), ("open", "running")):
        w.write(NodeRecord(run_id="R", task_id=tid, role="generator", content=HIGH))
        w.write(VerdictRecord(run_id="R", task_id=tid, stage="in_loop", verifier="m",
                              details="[oops"))  # fmt: skip
        w.write(TaskRecord(run_id="R", task_id=tid, idx=0, kind="math", prompt="p", status=status))
    w.close()
    assert discard_partial_tasks(store, "R") == ["open"]
    for table in ("text_repairs", "write_errors"):
        rows = store.query(f"SELECT task_id FROM {table}")
        assert [r["task_id"] for r in rows] == ["done"], table


# -- runs ----------------------------------------------------------------------------------------

SPLIT_REPLIES = {
    # A server that splits an emoji sends its halves in different chunks: each reply here
    # holds a lone half, or a pair that arrived as two code points.
    "generate": f"{HIGH} Let me think. The answer is 0.",
    "critique": f"The sum is off {LOW}.",
    "refine": f"Again {HIGH}{LOW}: the answer is 0.",
}


def split_reply(call: ModelCall) -> str:
    return SPLIT_REPLIES[SELF_REFINE_STEPS[str(call.params.role)]]


def _tasks(path: Path, n: int, prompt: str = "What is {i} + 1?") -> str:
    rows = [
        {"id": f"t{i:02d}", "prompt": prompt.format(i=i), "kind": "math", "reference": str(i + 1)}
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def _config(tmp_path: Path, model: str, tasks: str, **kw: Any) -> RunConfig:
    kw.setdefault("options", {"max_rounds": 2})
    kw.setdefault("db", str(tmp_path / "t.duckdb"))
    kw.setdefault("verifier", "oracle")
    return RunConfig(loop="self-refine", tasks=tasks, model=model, backoff_base_s=0.0, **kw)


async def test_a_model_that_emits_lone_surrogates_has_every_call_stored(tmp_path: Path) -> None:
    model = ScriptedModel(split_reply)
    cfg = _config(tmp_path, model.register(), _tasks(tmp_path / "t.jsonl", 10), run_name="split")
    result = await run(cfg)

    # Always wrong at max_rounds=2: generate, critique, refine, critique, refine per task.
    assert len(model.calls) == 50
    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "done"
    calls = query(cfg.db, "SELECT call_id, output FROM calls WHERE run_id = ?", [result.run_id])
    assert len(calls) == 50
    expected = {repair_text(r)[0] for r in SPLIT_REPLIES.values()}
    assert expected == {
        f"{FFFD} Let me think. The answer is 0.",
        f"The sum is off {FFFD}.",
        "Again 😀: the answer is 0.",
    }
    assert {c["output"] for c in calls} == expected
    nodes = query(cfg.db, "SELECT content FROM nodes WHERE run_id = ?", [result.run_id])
    assert len(nodes) == 50 and {n["content"] for n in nodes} == expected
    tasks = query(cfg.db, "SELECT status, calls FROM tasks WHERE run_id = ?", [result.run_id])
    assert [(t["status"], t["calls"]) for t in tasks] == [("done", 5)] * 10
    # Every prompt that carried an earlier reply was stored too, repaired inside its JSON.
    stored = [json.loads(r["messages"]) for r in query(cfg.db, "SELECT messages FROM calls")]
    assert not any(_has_surrogate(json.dumps(m, ensure_ascii=False)) for m in stored)
    carried = sum(_has_surrogate(json.dumps(c.messages, ensure_ascii=False)) for c in model.calls)
    assert carried == 40  # every critique and refinement prompt
    # A pair that arrived as two code points is valid JSON once escaped: only prompts with a
    # lone half needed a repair.
    lone = sum(_lone_surrogates(json.dumps(c.messages, ensure_ascii=False)) > 0
               for c in model.calls)  # fmt: skip
    assert lone == 30
    pairs = sum(f"{HIGH}{LOW}" in json.dumps(c.messages, ensure_ascii=False) for c in model.calls)
    assert pairs > 0
    assert sum("😀" in json.dumps(m, ensure_ascii=False) for m in stored) == pairs

    # The repairs are counted: each repaired value once.
    by_field = {
        (r["table_name"], r["field"]): r
        for r in query(
            cfg.db,
            "SELECT table_name, field, count(DISTINCT row_key) AS n, sum(joined_pairs) AS j, "
            "sum(replaced) AS r FROM text_repairs WHERE run_id = ? GROUP BY ALL",
            [result.run_id],
        )
    }
    assert set(by_field) == {("calls", "output"), ("calls", "messages"), ("nodes", "content")}
    assert by_field["calls", "output"]["n"] == 50
    assert (by_field["calls", "output"]["j"], by_field["calls", "output"]["r"]) == (20, 30)
    assert by_field["nodes", "content"]["n"] == 50
    assert by_field["calls", "messages"]["n"] == lone
    assert result.summary["text_repairs"] == 50 + 50 + lone
    assert result.summary["write_errors"] == 0
    assert (result.summary["done"], result.summary["calls"]) == (10, 50)


async def test_a_task_file_with_lone_surrogates_runs_to_done(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    # As a JSON escape (legal JSON) and as the id of a task too.
    path.write_text(
        json.dumps({"id": f"s{HIGH}", "prompt": f"What is 1 + 1? {HIGH}", "kind": "math",
                    "reference": "2"}) + "\n"
        + json.dumps({"id": "plain", "prompt": f"What is 2 + 1? {HIGH}{LOW}", "kind": "math",
                      "reference": "3"}) + "\n"
    )  # fmt: skip
    model = ScriptedModel(
        lambda c: f"The answer is {2 if '1 + 1' in c.messages[-1]['content'] else 3}."
    )
    cfg = _config(tmp_path, model.register(), str(path), run_name="bad-task", options={})
    result = await run(cfg)

    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "done"
    rows = query(cfg.db, "SELECT task_id, prompt, reference, status FROM tasks ORDER BY idx")
    assert rows == [
        {"task_id": f"s{FFFD}", "prompt": f"What is 1 + 1? {FFFD}", "reference": "2",
         "status": "done"},
        {"task_id": "plain", "prompt": "What is 2 + 1? 😀", "reference": "3", "status": "done"},
    ]  # fmt: skip
    assert query(cfg.db, "SELECT DISTINCT task_id FROM calls ORDER BY 1") == [
        {"task_id": "plain"},
        {"task_id": f"s{FFFD}"},
    ]
    assert result.summary["graded_pass_rate"] == 1.0
    fields = query(
        cfg.db,
        "SELECT table_name, field, count(DISTINCT row_key) AS n FROM text_repairs "
        "GROUP BY ALL ORDER BY ALL",
    )
    # The lone half is repaired where it is stored: in the task row's prompt, in its answer
    # key (the keyed task, prompt included) and in the call that carries the prompt (JSON's
    # escaped pair is one character once parsed: nothing to do).
    # The id is a key: the task holds its stored form from the start, so resume, seeds and
    # every row agree on it.
    assert [tuple(f.values()) for f in fields] == [
        ("calls", "messages", 1),
        ("tasks", "answer_key", 1),
        ("tasks", "prompt", 1),
    ]
    assert result.summary["text_repairs"] == 3
    # Resuming finds the task done under its stored id: nothing runs again.
    again = await run(cfg.model_copy(update={"resume": True}))
    assert again.progress.skipped == 2
    assert len(model.calls) == 2


async def test_a_run_name_with_undecodable_bytes_is_stored_and_resumable(tmp_path: Path) -> None:
    name = "exp-\udcff"  # what argv holds for the byte 0xff (surrogateescape)
    model = ScriptedModel(lambda call: "The answer is 1.")
    tasks = _tasks(tmp_path / "t.jsonl", 2, prompt="What is {i} + 1? (tasks: \udcfe)")
    cfg = _config(tmp_path, model.register(), tasks, run_name=name)
    result = await run(cfg)
    assert result.name == f"exp-{FFFD}"
    [runrow] = query(cfg.db, "SELECT name, status FROM runs")
    assert runrow == {"name": f"exp-{FFFD}", "status": "done"}
    again = await run(cfg.model_copy(update={"resume": True}))
    assert again.run_id == result.run_id and again.progress.skipped == 2


async def test_a_writer_that_cannot_write_fails_its_run_in_one_line_and_resume_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = {"on": False}
    real_insert = TraceWriter._insert

    def insert(self: TraceWriter, cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
        if broken["on"]:
            raise duckdb.IOException("IO Error: could not write to file: No space left on device")
        real_insert(self, cur, table, rows)

    monkeypatch.setattr(TraceWriter, "_insert", insert)

    def reply(call: ModelCall) -> str:
        if call.index == 12:
            broken["on"] = True  # the disk fills up mid-run
        return split_reply(call)

    n = 8
    model = ScriptedModel(reply)
    cfg = _config(tmp_path, model.register(), _tasks(tmp_path / "t.jsonl", n), run_name="full")
    with pytest.raises(TraceWriterError) as info:
        await run(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert "No space left on device" in msg and "--resume --run-name full" in msg
    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "failed"
    done_before = {
        r["task_id"] for r in query(cfg.db, "SELECT task_id FROM tasks WHERE status = 'done'")
    }
    assert len(done_before) < n

    broken["on"] = False  # the cause is fixed
    model2 = ScriptedModel(split_reply, name=model.name)
    model2.register()
    result = await run(cfg.model_copy(update={"resume": True}))
    assert result.progress.skipped == len(done_before)
    rows = query(cfg.db, "SELECT task_id, status, calls FROM tasks ORDER BY idx")
    assert [(r["task_id"], r["status"], r["calls"]) for r in rows] == [
        (f"t{i:02d}", "done", 5) for i in range(n)
    ]
    # Every task's trace is there exactly once.
    per_task = query(
        cfg.db, "SELECT task_id, count(*) AS n FROM calls GROUP BY 1 HAVING count(*) <> 5"
    )
    assert per_task == []
    assert query(cfg.db, "SELECT status FROM runs") == [{"status": "done"}]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    import loopwright.loops.execution.runner as runner
    from loopwright.loops.execution.runner import RunConfig, run
    from loopwright.loops.models.scripted import ScriptedModel

    ScriptedModel(lambda call: "The answer is 0.", name="killed").register()
    cfg = RunConfig.model_validate_json(sys.argv[1])
    if sys.argv[2] == "before-run-row":
        def die(*args, **kwargs):
            os._exit(9)  # killed while its run row was being written

        runner.insert_run = die
        on_progress = None
    else:
        def on_progress(p):
            os._exit(9)  # killed the moment the run has started

    asyncio.run(run(cfg, on_progress))
    print("NOT KILLED")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before-run-row", "after-start"])
async def test_a_run_killed_right_after_start_can_be_resumed(tmp_path: Path, when: str) -> None:
    n = 4
    cfg = _config(
        tmp_path, "scripted/killed", _tasks(tmp_path / "t.jsonl", n), run_name="early",
        options={"max_rounds": 0},
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, cfg.model_dump_json(), when],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert "NOT KILLED" not in proc.stdout
    runs = query(cfg.db, "SELECT status FROM runs")
    assert runs == ([] if when == "before-run-row" else [{"status": "running"}])

    model = ScriptedModel(lambda call: "The answer is 0.", name="killed")
    model.register()
    result = await run(cfg.model_copy(update={"resume": True}))
    assert result.name == "early"
    assert result.started == (when == "before-run-row")
    assert len(model.calls) == n
    assert query(cfg.db, "SELECT name, status FROM runs") == [{"name": "early", "status": "done"}]
    rows = query(cfg.db, "SELECT status FROM tasks")
    assert [r["status"] for r in rows] == ["done"] * n


def test_a_writer_failure_is_one_line_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def insert(self: TraceWriter, cur: Any, table: str, rows: list[dict[str, Any]]) -> None:
        raise duckdb.IOException("IO Error: disk I/O error")

    monkeypatch.setattr(TraceWriter, "_insert", insert)
    model = ScriptedModel(lambda call: "The answer is 1.")
    tasks = _tasks(tmp_path / "t.jsonl", 2)
    db = str(tmp_path / "t.duckdb")
    args = ["run", "self-refine", "--tasks", tasks, "--model", model.register(), "--db", db,
            "--run-name", "io", "--verifier", "oracle"]  # fmt: skip
    code, _, err = cli_main(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2
    assert "Traceback" not in err
    assert lines[-1].startswith("error: trace writer failed: IOException: IO Error: disk I/O")
    assert lines[-1].endswith("continue it with --resume --run-name io")
    with TraceStore(db, read_only=True) as s:
        assert s.query("SELECT status FROM runs") == [{"status": "failed"}]
        assert run_summary(s, s.query("SELECT run_id FROM runs")[0]["run_id"])["tasks"] == 0


def test_sweep_and_lineage_rows_with_lone_surrogates_are_stored(store: TraceStore) -> None:
    from loopwright.traces.lineage import ModelRecord, add_model, get_round, set_round
    from loopwright.traces.sweeps import PointRow, insert_sweep

    half = "\ud83d"
    point = PointRow(
        point_id="p1", strategy=f"best-of-n{half}", loop="best-of-n", model=f"m{half}", seed=0,
        param="n", value=2, options={"note": f"x{half}"}, run_name=f"r{half}", derived=False,
    )  # fmt: skip
    insert_sweep(
        store, name=f"s{half}", tasks_spec="builtin:arithmetic", grid="best-of-n:n=2",
        config=json.dumps({"name": f"s{half}"}), config_hash="h", points=[point],
    )  # fmt: skip
    [sweep] = store.query("SELECT name, config FROM sweeps")
    assert sweep["name"] == "s\ufffd"
    assert json.loads(sweep["config"]) == {"name": "s\ufffd"}
    [p] = store.query("SELECT strategy, model, options, run_name FROM sweep_points")
    assert (p["strategy"], p["model"], p["run_name"]) == ("best-of-n\ufffd", "m\ufffd", "r\ufffd")
    assert json.loads(p["options"]) == {"note": "x\ufffd"}

    add_model(
        store,
        ModelRecord(
            model_id=f"local/m{half}.gguf", parent=None, base="b", improve="s", round=1,
            method="rest-em", path=f"m{half}.gguf", data_hash="h", data_rows=1,
            train_config={"lr": 1e-5, "note": half}, final_loss=None, train_s=1.0,
        ),
    )  # fmt: skip
    [m] = store.query("SELECT model_id, path, train_config, round FROM models")
    assert (m["model_id"], m["path"], m["round"]) == ("local/m\ufffd.gguf", "m\ufffd.gguf", 1)
    assert json.loads(m["train_config"]) == {"lr": 1e-5, "note": "\ufffd"}
    set_round(store, "s", 1, stage="train", error=f"bad {half}", metrics={"k": half})
    row = get_round(store, "s", 1)
    assert row is not None
    assert (row["stage"], row["error"], row["metrics"]) == ("train", "bad \ufffd", {"k": "\ufffd"})
