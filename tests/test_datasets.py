"""Any dataset as tasks: files, folders and hub ids read through a field map and a template,
each load with its provenance, and ``loopwright tasks SPEC --show N``. Offline: every file is
made here, and the hub is a monkeypatched ``datasets.load_dataset``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loop_testkit import cli_main
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import (
    DatasetTasks,
    FieldMap,
    Task,
    load_task_set,
    load_tasks,
    read_rows,
)
from loopwright.traces.store import TraceStore

ROWS: list[dict[str, Any]] = [
    {"question": "What is 2 + 2?", "answer": 4, "level": "easy", "solution": "2 + 2 = 4"},
    {"question": "What is 3 * 5?", "answer": 15, "level": "easy", "solution": "3 * 5 = 15"},
    {"question": "What is 0.5 + 0.25?", "answer": "0.75", "level": "hard", "solution": "..."},
]
MAP = "prompt=question&reference=answer&kind=math"


def parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_rows() -> list[dict[str, Any]]:
    """ROWS with every answer as text (a parquet column holds one type)."""
    return [{**r, "answer": str(r["answer"])} for r in ROWS]


# -- each kind of file and folder ----------------------------------------------------------------
def test_a_parquet_file_through_a_field_map(tmp_path: Path) -> None:
    path = parquet(tmp_path / "d.parquet", text_rows())
    spec = f"{path}?{MAP}&metadata=level,solution&public_metadata=level"
    ts = load_task_set(spec)
    assert [t.id for t in ts.tasks] == ["row-0", "row-1", "row-2"]
    first = ts.tasks[0]
    assert (first.prompt, first.kind, first.reference) == ("What is 2 + 2?", "math", "4")
    assert first.metadata == {"level": "easy", "solution": "2 + 2 = 4"}
    assert first.blind().metadata == {"level": "easy"}  # the solution is the grader's
    assert first.blind().reference is None
    src = ts.source
    assert (src.kind, src.location) == ("parquet", str(path.resolve()))
    assert src.fields == {
        "prompt": "question",
        "reference": "answer",
        "metadata": "level,solution",
        "public_metadata": "level",
    }
    assert load_tasks(src.spec) == ts.tasks  # the canonical spec loads the same tasks


def test_numbers_and_lists_as_references_read_like_native_jsonl(tmp_path: Path) -> None:
    rows = [{"q": "a", "r": 4}, {"q": "b", "r": 0.5}, {"q": "c", "r": [1, 2]}]
    tasks = load_tasks(f"{jsonl(tmp_path / 'r.jsonl', rows)}?prompt=q&reference=r")
    assert [t.reference for t in tasks] == ["4", "0.5", "[1, 2]"]
    nan = jsonl(tmp_path / "nan.jsonl", [{"q": "a", "r": float("nan")}])
    with pytest.raises(UserError, match=r"nan\.jsonl:1: field 'r' is NaN, which is not an answer"):
        load_tasks(f"{nan}?prompt=q&reference=r")


def test_csv_keeps_text_as_written_and_splits_assert_lines(tmp_path: Path) -> None:
    path = tmp_path / "code.csv"
    path.write_text(
        "name,text,tests,fn\n"
        'sq,"Write square(x).","assert square(2) == 4\nassert square(-3) == 9",square\n'
        'half,"Write half(x).","assert half(1) == 0.50",half\n',
        encoding="utf-8",
    )
    ts = load_task_set(f"{path}?id=name&prompt=text&entry_point=fn")
    sq = ts.tasks[0]
    assert (sq.id, sq.kind, sq.entry_point) == ("sq", "code", "square")  # tests -> code
    assert sq.tests == ["assert square(2) == 4", "assert square(-3) == 9"]
    assert sq.metadata["test_style"] == "asserts"
    assert ts.tasks[1].tests == ["assert half(1) == 0.50"]
    assert ts.source.kind == "csv"


def test_a_check_program_stays_one_test(tmp_path: Path) -> None:
    check = "def check(candidate):\n    assert candidate(2) == 4\n"
    rows = [{"prompt": "def sq(x):\n", "test": check, "entry_point": "sq"}]
    [task] = load_tasks(f"{parquet(tmp_path / 'h.parquet', rows)}?tests=test")
    assert task.tests == [check]
    assert task.metadata["test_style"] == "humaneval"


def test_json_files_an_array_an_object_holding_one_and_json_lines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "o.json").write_text(json.dumps({"version": 2, "data": ROWS}))
    jsonl(tmp_path / "l.json", ROWS)
    loaded = [load_tasks(f"{tmp_path / n}?{MAP}") for n in ("a.json", "o.json", "l.json")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert [t.reference for t in loaded[0]] == ["4", "15", "0.75"]
    assert load_task_set(f"{tmp_path / 'a.json'}?{MAP}").source.kind == "json"


def test_jsonl_with_a_field_map_and_without_it(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", ROWS)
    ts = load_task_set(f"{path}?{MAP}")
    assert ts.source.kind == "jsonl" and len(ts.tasks) == 3
    native = jsonl(tmp_path / "n.jsonl", [{"id": "a", "prompt": "p", "reference": "1"}])
    ts = load_task_set(str(native))  # no query: our own JSONL, as always
    assert ts.source.kind == "native" and ts.tasks[0].id == "a"
    with pytest.raises(UserError, match=r"d\.jsonl:1: missing field 'prompt'"):
        load_tasks(str(path))


def test_columns_named_like_task_fields_need_no_map(tmp_path: Path) -> None:
    rows = [{"id": "x1", "prompt": "Say hi.", "reference": "hi", "other": 1}]
    [task] = load_tasks(str(parquet(tmp_path / "plain.parquet", rows)))
    assert (task.id, task.prompt, task.reference, task.kind) == ("x1", "Say hi.", "hi", "text")
    assert task.metadata == {}


def test_a_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    one = tmp_path / "one"
    datasets.Dataset.from_list(text_rows()).save_to_disk(str(one))
    ts = load_task_set(f"{one}?{MAP}")
    assert ts.source.kind == "disk" and ts.source.revision  # the dataset's fingerprint
    assert [t.reference for t in ts.tasks] == ["4", "15", "0.75"]

    both = tmp_path / "both"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(text_rows()[:1]),
            "test": datasets.Dataset.from_list(text_rows()[1:]),
        }
    ).save_to_disk(str(both))
    ts = load_task_set(f"{both}?{MAP}")
    assert ts.source.split == "test" and len(ts.tasks) == 2  # test by default
    assert len(load_tasks(f"{both}?split=train&{MAP}")) == 1
    with pytest.raises(UserError, match=r"has no split 'dev'; its splits are: test, train$"):
        load_tasks(f"{both}?split=dev&{MAP}")

    two = tmp_path / "two"
    datasets.DatasetDict(
        {
            "a": datasets.Dataset.from_list(text_rows()[:1]),
            "b": datasets.Dataset.from_list(text_rows()[1:]),
        }
    ).save_to_disk(str(two))
    with pytest.raises(UserError, match=r"holds splits a, b: name one \(split=NAME\)$"):
        load_tasks(f"{two}?{MAP}")


def test_a_folder_of_parquet_files_in_the_hubs_layout(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    parquet(root / "data" / "train-00000-of-00001.parquet", text_rows()[:1])
    parquet(root / "data" / "test-00000-of-00002.parquet", text_rows()[1:2])
    parquet(root / "data" / "test-00001-of-00002.parquet", text_rows()[2:])
    ts = load_task_set(f"{root}?{MAP}")
    assert (ts.source.kind, ts.source.split) == ("parquet", "test")
    assert [t.reference for t in ts.tasks] == ["15", "0.75"]  # both shards, in order
    assert [t.reference for t in load_tasks(f"{root}?split=train&{MAP}")] == ["4"]
    plain = tmp_path / "plain"
    parquet(plain / "rows.parquet", [{"prompt": "p"}])
    assert load_tasks(str(plain))[0].prompt == "p"  # one split: whatever its name


def test_a_folder_without_data_keeps_the_native_message(tmp_path: Path) -> None:
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "easy.jsonl").write_text('{"prompt": "p"}\n')
    with pytest.raises(UserError, match=r"is a directory: give one \.jsonl file"):
        load_tasks(str(folder))


# -- field map, template, bad rows ---------------------------------------------------------------
def test_a_missing_mapped_column_is_one_line_naming_the_columns(tmp_path: Path) -> None:
    path = parquet(tmp_path / "data.parquet", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError) as exc:
        load_tasks(f"{path}?prompt=questoin")
    assert str(exc.value) == (
        "field map: column 'questoin' (prompt) is not in data.parquet; its columns are: "
        "answer, question"
    )
    with pytest.raises(UserError, match=r"column 'prompt' \(prompt\) is not in data\.parquet"):
        load_tasks(str(path))  # no prompt column and no map
    with pytest.raises(UserError, match=r"column 'lvl' \(metadata\) is not in"):
        load_tasks(f"{path}?prompt=question&metadata=lvl")
    with pytest.raises(UserError, match=r"did you mean 'reference'"):
        load_tasks(f"{path}?prompt=question&refrence=answer")
    with pytest.raises(UserError, match=r"public_metadata level: not a metadata key"):
        load_tasks(f"{path}?prompt=question&public_metadata=level")


def test_a_prompt_template_over_the_columns(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", text_rows())
    template = "Question: {question}\n(level {level})\nAnswer:"
    ds = DatasetTasks(source=str(path), template=template, fields=FieldMap(reference="answer"))
    ts = load_task_set(ds)
    assert ts.tasks[0].prompt == "Question: What is 2 + 2?\n(level easy)\nAnswer:"
    assert ts.source.template_sha256 is not None and ts.source.spec == ds.spec()
    assert DatasetTasks.parse(ds.spec()) == ds  # the canonical string round-trips
    assert load_tasks(ds.spec()) == ts.tasks
    with pytest.raises(UserError) as exc:
        load_tasks(f"{path}?template=%7Bquestoin%7D")
    assert str(exc.value) == (
        "prompt template: {questoin} is not a column of t.parquet; its columns are: answer, "
        "level, question, solution"
    )
    with pytest.raises(UserError, match=r"prompt template: .*literal brace"):
        DatasetTasks(source=str(path), template="{question")
    with pytest.raises(UserError, match=r"\{question\.upper\} is not a column name"):
        DatasetTasks(source=str(path), template="{question.upper}")


def test_multiple_choice_rows(tmp_path: Path) -> None:
    rows = [
        {"q": "Sky?", "opts": ["green", "blue"], "gold": 1},
        {"q": "Grass?", "opts": ["green", "blue"], "gold": "green"},
        {"q": "Sea?", "opts": ["green", "blue"], "gold": "b"},
    ]
    ts = load_task_set(f"{jsonl(tmp_path / 'mc.jsonl', rows)}?prompt=q&choices=opts&reference=gold")
    assert [t.kind for t in ts.tasks] == ["choice"] * 3
    assert [t.reference for t in ts.tasks] == ["B", "A", "B"]
    blind = ts.tasks[0].blind()
    assert blind.choices == ["green", "blue"] and blind.reference is None
    assert blind.prompt == "Sky?\n\nA) green\nB) blue"  # the model reads the options
    cols = [{"Question": "Sky?", "Right": "blue", "Wrong": "green", "gold": "blue"}]
    path = parquet(tmp_path / "cols.parquet", cols)
    spec = f"{path}?choices=Right,Wrong&reference=gold&template=%7BQuestion%7D%0A%7Bchoices_text%7D"
    [task] = load_tasks(spec)
    assert (task.choices, task.reference, task.prompt) == (
        ["blue", "green"], "A", "Sky?\nA) blue\nB) green"
    )  # fmt: skip
    bad = jsonl(tmp_path / "bad.jsonl", [{"q": "?", "opts": ["x", "y"], "gold": "z"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: reference 'z' is not a choice"):
        load_tasks(f"{bad}?prompt=q&choices=opts&reference=gold")


def test_one_bad_row_is_one_error_naming_it(tmp_path: Path) -> None:
    rows = [{"question": "q", "n": "1"}, {"question": "", "n": "2"}]
    path = parquet(tmp_path / "b.parquet", rows)
    with pytest.raises(UserError) as exc:
        load_tasks(f"{path}?prompt=question")
    assert str(exc.value) == f"{path} row 1: column 'question' (prompt) is empty"
    tests = parquet(tmp_path / "c.parquet", [{"prompt": "p", "tests": "assert f(\n"}])
    with pytest.raises(UserError, match=r"c\.parquet row 0: tests\[0\] is not valid Python"):
        load_tasks(f"{tests}?kind=code&entry_point=prompt")


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    rows = [{"k": "a", "p": "1"}, {"k": "b", "p": "2"}, {"k": "a", "p": "3"}]
    path = parquet(tmp_path / "dup.parquet", rows)
    with pytest.raises(UserError, match=r"task id 'a' appears twice \(rows 0 and 2\)"):
        load_tasks(f"{path}?id=k&prompt=p")
    assert [t.id for t in load_tasks(f"{path}?prompt=p")] == ["row-0", "row-1", "row-2"]


def test_limit_keeps_the_first_rows(tmp_path: Path) -> None:
    path = parquet(tmp_path / "d.parquet", text_rows())
    ts = load_task_set(f"{path}?{MAP}", limit=2)
    assert [t.id for t in ts.tasks] == ["row-0", "row-1"]
    assert ts.source.rows_sha256 != load_task_set(f"{path}?{MAP}").source.rows_sha256


# -- provenance --------------------------------------------------------------------------------
def test_the_rows_hash_is_stable_and_follows_the_rows(tmp_path: Path) -> None:
    a = load_task_set(f"{parquet(tmp_path / 'a.parquet', text_rows())}?{MAP}")
    again = load_task_set(f"{parquet(tmp_path / 'a2.parquet', text_rows())}?{MAP}")
    as_jsonl = load_task_set(f"{jsonl(tmp_path / 'a.jsonl', text_rows())}?{MAP}")
    assert a.source.rows_sha256 == again.source.rows_sha256 == as_jsonl.source.rows_sha256
    changed = text_rows()
    changed[1]["answer"] = "16"
    b = load_task_set(f"{parquet(tmp_path / 'b.parquet', changed)}?{MAP}")
    assert b.source.rows_sha256 != a.source.rows_sha256
    rows, info = read_rows(str(tmp_path / "a.parquet"))
    _, info2 = read_rows(str(tmp_path / "b.parquet"))
    assert rows == text_rows() and info.rows_sha256 != info2.rows_sha256


def test_every_spec_kind_has_a_source(tmp_path: Path) -> None:
    native = jsonl(tmp_path / "n.jsonl", [{"id": "a", "prompt": "p"}])
    ts = load_task_set(str(native))
    assert (ts.source.kind, ts.source.location, ts.source.spec) == (
        "native", str(native.resolve()), str(native)
    )  # fmt: skip
    ts = load_task_set("builtin:arithmetic?seed=3&n=4")
    assert (ts.source.kind, ts.source.spec, ts.source.seeds) == (
        "builtin", "builtin:arithmetic?seed=3&n=4", {"seed": 3}
    )  # fmt: skip
    assert (
        ts.source.rows_sha256 == load_task_set("builtin:arithmetic?seed=3&n=4").source.rows_sha256
    )
    tasks = [Task(id="x", prompt="p")]
    ts = load_task_set(tasks)
    assert ts.source.kind == "inline" and ts.source.spec.startswith("inline:1 tasks sha256=")
    assert ts.tasks == tasks


# -- the hub -------------------------------------------------------------------------------------
def test_a_hub_id_goes_through_datasets_load_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    asked: list[tuple[Any, ...]] = []

    def load_dataset(name: str, config: str | None = None, **kw: Any) -> Any:
        asked.append((name, config, kw))
        splits = {
            "train": datasets.Dataset.from_list(text_rows()[:1]),
            "test": datasets.Dataset.from_list(text_rows()[1:]),
        }
        return splits[kw["split"]] if kw.get("split") else datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    ts = load_task_set(f"hf:org/maths?config=main&revision=abc123&{MAP}")
    assert asked == [("org/maths", "main", {"split": None, "revision": "abc123"})]
    src = ts.source
    assert (src.kind, src.location, src.config, src.split, src.revision) == (
        "hub", "org/maths", "main", "test", "abc123"
    )  # fmt: skip
    assert src.spec == f"hf:org/maths?config=main&revision=abc123&{MAP.replace('&kind=math', '')}" \
        "&kind=math"  # fmt: skip
    assert [t.reference for t in ts.tasks] == ["15", "0.75"]
    ds = DatasetTasks(source="org/maths", split="train", fields=FieldMap(prompt="question"))
    assert ds.spec() == "hf:org/maths?split=train&prompt=question"
    assert load_task_set(ds).tasks[0].prompt == "What is 2 + 2?"

    def no_network(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("Couldn't reach 'org/maths' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError) as exc:
        load_tasks(f"hf:org/maths?{MAP}")
    assert "\n" not in str(exc.value)
    assert re.match(r"cannot load hf:org/maths: Couldn't reach .*HF_HUB_OFFLINE=1", str(exc.value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"offline \(HF_HUB_OFFLINE\): load it once online"):
        load_tasks(f"hf:org/maths?{MAP}")


# -- the command line and a run ------------------------------------------------------------------
def test_tasks_show_prints_what_the_loop_and_the_grader_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = parquet(tmp_path / "d.parquet", text_rows())
    spec = f"{path}?{MAP}&metadata=level,solution&public_metadata=level"
    code, out, err = cli_main(["tasks", spec, "--show", "2"], capsys)
    assert code == 0, err
    canonical = load_task_set(spec).source
    assert f"spec            {canonical.spec}\n" in out
    assert f"rows sha256     {canonical.rows_sha256}\n" in out
    assert "tasks           3 (showing 2)" in out
    blocks = out.split("what only the grader sees")
    assert len(blocks) == 3  # two tasks
    loop_part = blocks[0].split("what the loop sees")[1]
    assert "What is 2 + 2?" in loop_part and "level: easy" in loop_part
    assert "2 + 2 = 4" not in loop_part  # the solution is not shown as the loop's
    assert "reference: 4" in blocks[1] and "solution: 2 + 2 = 4" in blocks[1]

    code, out, err = cli_main(["tasks", spec, "--show", "1", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["count"] == 3 and data["source"]["kind"] == "parquet"
    [shown] = data["tasks"]
    assert shown["loop_sees"]["public_metadata"] == {"level": "easy"}
    assert "reference" not in shown["loop_sees"]
    assert shown["grader_only"] == {
        "reference": "4",
        "hidden_tests": [],
        "private_metadata": {"solution": "2 + 2 = 4"},
    }

    code, out, err = cli_main(["tasks", f"{path}?prompt=questoin"], capsys)
    assert code == 2
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "error: field map: column 'questoin' (prompt) is not in d.parquet; its columns are: "
        "answer, level, question, solution"
    ]


async def test_a_run_over_a_parquet_file_is_graded(tmp_path: Path) -> None:
    path = parquet(tmp_path / "d.parquet", text_rows())
    answers = {"What is 2 + 2?": "4", "What is 3 * 5?": "15", "What is 0.5 + 0.25?": "0.7"}

    def reply(call: ModelCall) -> str:
        user = next(m["content"] for m in reversed(call.messages) if m["role"] == "user")
        return next(f"The answer is {a}." for q, a in answers.items() if q in user)

    model = ScriptedModel(reply)
    spec = f"{path}?{MAP}"
    cfg = RunConfig(
        loop="self-refine", tasks=spec, model=model.register(), verifier="none",
        db=str(tmp_path / "t.duckdb"), options={"max_rounds": 0},
    )  # fmt: skip
    result = await run(cfg)
    assert result.summary["tasks"] == 3
    assert result.summary["graded_pass_rate"] == pytest.approx(2 / 3)  # 0.7 is wrong
    with TraceStore(cfg.db, read_only=True) as s:
        [stored] = s.query("SELECT tasks_spec FROM runs")
        refs = s.query("SELECT task_id, reference FROM tasks ORDER BY idx")
    assert stored["tasks_spec"] == spec
    assert [(r["task_id"], r["reference"]) for r in refs] == [
        ("row-0", "4"), ("row-1", "15"), ("row-2", "0.75")
    ]  # fmt: skip
