"""The built-in benchmark specs: each loads its hub-shaped parquet, a save_to_disk folder and
JSONL alike (small files built here, never copies of the datasets); GPQA's option orders;
LiveCodeBench's compressed tests decoded only in the sandbox; evalplus' expected outputs
computed from the canonical solution in the sandbox; the choice-letter grader."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.tasks import TASK_SOURCES, Task, load_task_set, load_tasks
from loopwright.loops.tasks.answers import extract_choice, normalise_answer
from loopwright.loops.tasks.benchmarks import permutation
from loopwright.loops.verify.base import make_verifier, resolve
from loopwright.loops.verify.graders import GRADERS, ChoiceLetter, CodeTests, grader_for
from loopwright.sandboxes import BwrapSandbox, SandboxLimits

SHARED = Path("/work/shared/data")
FORMS = ("parquet", "disk", "jsonl")


def write(rows: list[dict[str, Any]], tmp: Path, form: str, split: str = "test") -> Path:
    """``rows`` as the hub ships them (a split's parquet shard), a save_to_disk folder, or
    JSONL."""
    if form == "jsonl":
        path = tmp / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    if form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    import datasets

    path = tmp / "saved"
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    return path


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def sandbox_ok() -> None:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")


def grade(task: Task, program: str) -> bool:
    """Whether ``program`` passes the task's hidden tests (graded in the bwrap sandbox)."""
    verdict = CodeTests("bwrap", SandboxLimits(timeout_s=20))(task, f"```python\n{program}\n```")
    return verdict.passed


# -- the registry ----------------------------------------------------------------------------


def test_every_benchmark_is_a_source_with_an_optional_path() -> None:
    for name in ("gsm8k", "math", "math500", "aime24", "aime25", "gpqa-diamond", "gpqa",
                 "humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+",
                 "livecodebench", "apps"):  # fmt: skip
        source = TASK_SOURCES[name]
        assert source.arg_optional and source.usage.startswith(f"{name}[:PATH]")
    # a source without options still reads a "?" as part of its path
    assert TASK_SOURCES["gsm8k"].usage == "gsm8k[:PATH]"


# -- math ------------------------------------------------------------------------------------


def test_gsm8k_loads_each_form(tmp_path: Path, form: str) -> None:
    rows = [{"question": "q1", "answer": "so\n#### 1,250"}, {"question": "q2", "answer": "#### 7"}]
    tasks = load_tasks(f"gsm8k:{write(rows, tmp_path, form)}")
    assert [(t.id, t.prompt, t.reference, t.kind) for t in tasks] == [
        ("gsm8k-0", "q1", "1250", "math"), ("gsm8k-1", "q2", "7", "math")]  # fmt: skip


def test_math_reads_answers_or_the_boxed_answer_of_the_solution(tmp_path: Path, form: str) -> None:
    rows = [  # EleutherAI/hendrycks_math: no answer column
        {"problem": "p1", "level": "Level 2", "type": "Algebra",
         "solution": "so $x = \\boxed{\\frac{1}{2}}$ and \\boxed{3} is wrong... no: \\boxed{\\{4\\}}"},
        {"problem": "p2", "level": "Level 5", "type": "Geometry", "solution": "$\\boxed{12}$"},
    ]  # fmt: skip
    tasks = load_tasks(f"math:{write(rows, tmp_path, form)}")
    assert [t.reference for t in tasks] == ["\\{4\\}", "12"]
    assert [t.id for t in tasks] == ["math-0", "math-1"]
    assert tasks[0].blind().metadata == {"level": "Level 2", "type": "Algebra"}
    assert "solution" in tasks[0].metadata


def test_math500_keeps_ids_and_answers(tmp_path: Path, form: str) -> None:
    rows = [{"problem": "p", "solution": "s \\boxed{5}", "answer": "5", "subject": "Algebra",
             "level": 1, "unique_id": "test/algebra/1.json"}]  # fmt: skip
    [task] = load_tasks(f"math500:{write(rows, tmp_path, form)}")
    assert (task.id, task.reference, task.blind().metadata) == (
        "test/algebra/1.json", "5", {"subject": "Algebra", "level": 1})  # fmt: skip


@pytest.mark.parametrize(
    ("name", "rows", "want"),
    [
        ("aime24", [{"id": 60, "problem": "p", "answer": "023", "url": "u", "year": "2024"}],
         [("aime24-60", "p", "23")]),  # HuggingFaceH4/aime_2024
        ("aime24", [{"ID": "2024-I-1", "Problem": "p", "Solution": "s", "Answer": 204}],
         [("aime24-2024-I-1", "p", "204")]),  # Maxwell-Jia/AIME_2024
        ("aime25", [{"question": "p", "answer": "70"}], [("aime25-0", "p", "70")]),  # opencompass
        ("aime25", [{"id": "0", "problem": "p", "answer": "70"}], [("aime25-0", "p", "70")]),
    ],
)  # fmt: skip
def test_aime_reads_every_known_copy(
    tmp_path: Path, form: str, name: str, rows: list[dict[str, Any]], want: list[tuple[str, ...]]
) -> None:
    tasks = load_tasks(f"{name}:{write(rows, tmp_path, form, split='train')}")
    assert [(t.id, t.prompt, t.reference) for t in tasks] == want


def test_shared_gsm8k_and_math500_still_load() -> None:
    gsm = load_tasks(f"gsm8k:{SHARED / 'gsm8k/test.jsonl'}")
    assert len(gsm) == 1319 and gsm[0].id == "gsm8k-0" and gsm[0].reference == "18"
    m500 = load_task_set(f"math500:{SHARED / 'math500/test.jsonl'}")
    assert len(m500.tasks) == 500
    assert m500.tasks == load_tasks(f"math:{SHARED / 'math500/test.jsonl'}")
    assert m500.source.kind == "jsonl" and m500.source.location.endswith("math500/test.jsonl")


# -- GPQA ------------------------------------------------------------------------------------


def gpqa_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"Record ID": f"rec{i}", "Question": f"Question {i}?", "Correct Answer": f"right {i}",
         "Incorrect Answer 1": f"wrong {i}a", "Incorrect Answer 2": f"wrong {i}b",
         "Incorrect Answer 3": f"wrong {i}c", "Subdomain": "Physics", "Explanation": "because"}
        for i in range(n)
    ]  # fmt: skip


def test_gpqa_options_are_permuted_per_question_and_the_reference_follows(
    tmp_path: Path, form: str
) -> None:
    path = write(gpqa_rows(12), tmp_path, form, split="train")
    ts = load_task_set(f"gpqa-diamond:{path}")
    for i, t in enumerate(ts.tasks):
        assert t.kind == "choice" and t.id == f"gpqa-rec{i}"
        assert sorted(t.choices or []) == sorted([f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"])  # fmt: skip
        assert (t.choices or [])["ABCD".index(t.reference or "")] == f"right {i}"
        assert f"{t.reference}) right {i}" in t.prompt and "Answer: $LETTER" in t.prompt
        assert t.metadata["permutation"] == permutation(0, f"rec{i}")
        assert "explanation" not in t.blind().metadata and t.blind().choices == t.choices
    assert len({tuple(t.metadata["permutation"]) for t in ts.tasks}) > 1  # differ across questions
    assert len({t.reference for t in ts.tasks}) > 1
    assert ts.source.seeds == {"gpqa_permutation": 0}
    again = load_task_set(f"gpqa:{path}")  # the alias, another load: the same orders
    assert [t.choices for t in again.tasks] == [t.choices for t in ts.tasks]
    other = load_task_set(f"gpqa-diamond:{path}?seed=7")
    assert other.source.seeds == {"gpqa_permutation": 7}
    assert [t.choices for t in other.tasks] != [t.choices for t in ts.tasks]
    assert other.source.rows_sha256 != ts.source.rows_sha256


def test_gpqa_order_depends_on_the_question_not_its_row(tmp_path: Path) -> None:
    rows = gpqa_rows(5)
    first = load_tasks(f"gpqa-diamond:{write(rows, tmp_path, 'jsonl')}")
    (tmp_path / "r").mkdir()
    reversed_ = load_tasks(f"gpqa-diamond:{write(rows[::-1], tmp_path / 'r', 'jsonl')}")
    assert {t.id: t.choices for t in first} == {t.id: t.choices for t in reversed_}


# -- multiple choice: answers, grader, verifier ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Reasoning...\nAnswer: C", "C"),
        ("Answer: (B)", "B"),
        ("**Answer: D**", "D"),
        ("so the answer is (A).", "A"),
        ("Thus $\\boxed{B}$", "B"),
        ("Thus $\\boxed{\\text{C}}$", "C"),
        ("Between (A) and (D), I pick (D)", "D"),
        ("long reasoning\nC", "C"),
        ("Option B", "B"),
        ("Answer: A ... wait, Answer: C", "C"),
        ("A dog barks", None),
        ("Answer: E", None),  # not one of four options
        ("no idea", None),
    ],
)
def test_extract_choice(text: str, want: str | None) -> None:
    assert extract_choice(text) == want


def test_choice_letter_grades_the_letter_against_the_reference() -> None:
    task = Task(id="q", prompt="?", kind="choice", choices=["w", "x", "y", "z"], reference="C")
    grader = grader_for(task)
    assert isinstance(grader, ChoiceLetter) and "choice-letter" in GRADERS
    right, wrong, none = grader(task, "Answer: C"), grader(task, "Answer: B"), grader(task, "?")
    assert (right.passed, right.score, right.answer) == (True, 1.0, "C")
    assert (wrong.passed, wrong.answer) == (False, "B")
    assert (none.passed, none.answer) == (False, None) and "no choice letter" in none.feedback
    assert grader_for(task.model_copy(update={"reference": None})) is None
    assert normalise_answer("choice", "Answer: (b)\nAnswer: B") == "B"


def test_auto_verifier_of_a_choice_task_is_the_self_check() -> None:
    task = Task(id="q", prompt="?", kind="choice", choices=["a", "b"], reference="A")
    assert resolve("auto", "choice") == "self"
    verifier = make_verifier("auto", task.blind())
    assert verifier is not None and verifier.name == "self"


# -- HumanEval and HumanEval+ --------------------------------------------------------------------

HE_PROMPT = 'def add(a, b):\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n'
HE_TEST = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
)


def test_humaneval_reads_the_hub_schema(tmp_path: Path, form: str, sandbox_ok: None) -> None:
    rows = [{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": "    return a + b\n",
             "test": HE_TEST, "entry_point": "add"}]  # fmt: skip
    [task] = load_tasks(f"humaneval:{write(rows, tmp_path, form)}")
    assert (task.id, task.entry_point, task.metadata) == (
        "HumanEval/0",
        "add",
        {"test_style": "humaneval"},
    )
    assert task.blind().visible_tests == ["assert (add(1, 2)) == (3)"]
    assert grade(task, HE_PROMPT + "    return a + b\n")
    assert not grade(task, HE_PROMPT + "    return a - b\n")


PLUS_TEST = """import numpy as np

def is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def assertion(out, exp, atol):
    exact_match = out == exp
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match


def check(candidate):
    inputs = [[1, 2], [0.1, 0.2], [10, -3]]
    results = [3, 0.30000000000000004, 7]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(candidate(*inp), exp, 0)
"""


def test_humaneval_plus_hub_tests_run_without_numpy(
    tmp_path: Path, form: str, sandbox_ok: None
) -> None:
    rows = [{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "canonical_solution": "    return a + b\n",
             "entry_point": "add", "test": PLUS_TEST}]  # fmt: skip
    [task] = load_tasks(f"humaneval+:{write(rows, tmp_path, form)}")
    assert task.metadata["test_style"] == "humaneval"
    assert grade(task, HE_PROMPT + "    return a + b\n")
    assert grade(task, HE_PROMPT + "    return b + a + 0.0 if isinstance(a, float) else a + b\n")
    assert not grade(task, HE_PROMPT + "    return a + b + 1\n")


def test_humaneval_plus_release_outputs_come_from_the_canonical_solution_in_the_sandbox(
    tmp_path: Path, sandbox_ok: None
) -> None:
    marker = tmp_path / "ran-on-the-host"
    # a canonical solution that is off by one and tries to leave a mark: the expected
    # outputs are what IT returns, and the mark never lands on the host
    body = (f"    try:\n        open({str(marker)!r}, 'w').write('x')\n    except OSError:\n"
            "        pass\n    return a + b + 1\n")  # fmt: skip
    rows = [{"task_id": "HumanEval/0", "prompt": HE_PROMPT, "entry_point": "add",
             "canonical_solution": body, "base_input": [[1, 2], [0, 0]],
             "plus_input": [[5, 7], [-1, 1], [2.5, 0.25]], "atol": 0}]  # fmt: skip
    [task] = load_tasks(f"humaneval+:{write(rows, tmp_path, 'jsonl')}")
    assert not marker.exists()
    assert task.metadata["base_inputs"] == 2 and task.metadata["plus_inputs"] == 3
    assert task.metadata["inputs_without_output"] == 0
    assert grade(task, HE_PROMPT + "    return a + b + 1\n")
    assert not grade(task, HE_PROMPT + "    return a + b\n")


# -- MBPP and MBPP+ ------------------------------------------------------------------------------

MBPP_FULL = {"task_id": 11, "text": "Write a function to add up a list.", "code": "def total(xs):\n    return sum(xs)",
             "test_list": ["assert total([1, 2]) == 3", "assert total([]) == 0", "assert total(LIST) == 6"],
             "test_setup_code": "LIST = [1, 2, 3]", "challenge_test_list": []}  # fmt: skip
MBPP_SANITIZED = {"source_file": "x.py", "task_id": 12, "prompt": "Write a function to find the root.",
                  "code": "import math\ndef root(x):\n    return math.sqrt(x)",
                  "test_imports": ["import math"], "test_list": ["assert math.isclose(root(4), 2)"]}  # fmt: skip


@pytest.mark.parametrize("name", ["mbpp", "mbpp-sanitized"])
def test_mbpp_full_and_sanitized(tmp_path: Path, form: str, name: str, sandbox_ok: None) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "sanitized").mkdir()
    [full] = load_tasks(f"{name}:{write([MBPP_FULL], tmp_path / 'full', form)}")
    [sanitized] = load_tasks(f"{name}:{write([MBPP_SANITIZED], tmp_path / 'sanitized', form)}")
    assert full.id == "mbpp/11" and full.entry_point == "total"
    assert (
        full.prompt == '"""\nWrite a function to add up a list.\nassert total([1, 2]) == 3\n"""\n'
    )
    assert full.tests[2] == "LIST = [1, 2, 3]\nassert total(LIST) == 6"
    assert full.blind().visible_tests == [full.tests[0]] and full.blind().tests == []
    assert sanitized.entry_point == "root" and sanitized.tests == [
        "import math\nassert math.isclose(root(4), 2)"
    ]
    assert grade(full, MBPP_FULL["code"]) and not grade(full, "def total(xs):\n    return 0")
    assert grade(sanitized, MBPP_SANITIZED["code"])


MBPP_PLUS_TEST = PLUS_TEST.split("def check")[0] + (
    "inputs = [[[1, 2]], [[]], [[0.5, 0.25]]]\nresults = [3, 0, 0.75]\n"
    "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(total(*inp), exp, 0)\n"
)


def test_mbpp_plus_hub_schema(tmp_path: Path, form: str, sandbox_ok: None) -> None:
    rows = [{"task_id": 11, "code": "def total(xs):\n    return sum(xs)", "prompt": "Add up a list.",
             "source_file": "x", "test_imports": [], "test_list": ["assert total([1, 2]) == 3"],
             "test": MBPP_PLUS_TEST}]  # fmt: skip
    [task] = load_tasks(f"mbpp+:{write(rows, tmp_path, form)}")
    assert task.id == "Mbpp/11" and task.entry_point == "total"
    assert task.prompt == '"""\nAdd up a list.\nassert total([1, 2]) == 3\n"""\n'
    assert task.blind().visible_tests == ["assert total([1, 2]) == 3"]
    assert grade(task, "def total(xs):\n    return sum(xs)")
    assert not grade(task, "def total(xs):\n    return len(xs)")


def test_mbpp_plus_release_outputs_come_from_the_canonical_solution(
    tmp_path: Path, sandbox_ok: None
) -> None:
    rows = [{"task_id": "Mbpp/2", "entry_point": "similar_elements",
             "prompt": '"""\nFind the shared elements.\nassert set(similar_elements((3, 4), (4, 5))) == set((4,))\n"""\n',
             "canonical_solution": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
             "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]]], "plus_input": [[[1, 2], [3]], [[9, 8, 7], [7, 8]]],
             "atol": 0, "assertion": "assert set(similar_elements((3, 4), (4, 5))) == set((4,))"}]  # fmt: skip
    [task] = load_tasks(f"mbpp+:{write(rows, tmp_path, 'jsonl')}")
    assert task.id == "Mbpp/2" and task.metadata["test_style"] == "humaneval"
    assert task.blind().visible_tests == [
        "assert set(similar_elements((3, 4), (4, 5))) == set((4,))"
    ]
    # compared as sets (evalplus does so for this function): any order passes
    assert grade(
        task, "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))"
    )
    assert not grade(task, "def similar_elements(a, b):\n    return tuple(set(a) | set(b))")


# -- LiveCodeBench -------------------------------------------------------------------------------


def lcb_row(qid: str, private: str, **over: Any) -> dict[str, Any]:
    row = {
        "question_title": "Sum", "question_content": "Read two numbers, print their sum.",
        "platform": "atcoder", "question_id": qid, "contest_id": "abc1", "contest_date": "2024-09-01T00:00:00",
        "starter_code": "", "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": private, "metadata": "{}",
    }  # fmt: skip
    return {**row, **over}


PRIVATE = [{"input": "5 6\n", "output": "11\n", "testtype": "stdin"},
           {"input": "-1 1\n", "output": "0\n", "testtype": "stdin"}]  # fmt: skip


def compressed(value: Any) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(value))).decode()


def test_livecodebench_stdin_rows_in_each_form(tmp_path: Path, form: str, sandbox_ok: None) -> None:
    path = write([lcb_row("abc1_a", json.dumps(PRIVATE))], tmp_path, form)
    [task] = load_tasks(f"livecodebench:{path}")
    assert task.id == "lcb-abc1_a" and task.metadata["test_style"] == "io"
    assert task.metadata["io_cases"] == [["1 2\n", "3\n"], ["5 6\n", "11\n"], ["-1 1\n", "0\n"]]
    assert task.blind().metadata["visible_io_cases"] == [["1 2\n", "3\n"]]
    assert "### Question:\nRead two numbers" in task.prompt and "# YOUR CODE HERE" in task.prompt
    assert grade(task, "a, b = map(int, input().split())\nprint(a + b)")
    # The harness's prompt reaches the model as it is, not wrapped in a "complete the
    # function" prompt (a HumanEval stub still is).
    from loopwright.loops.prompts import draft_prompt

    assert draft_prompt(task.blind()) == task.prompt.rstrip()
    stub = Task(
        id="h", prompt='def f(x):\n    """Double x."""\n', kind="code", tests=["assert f(1) == 2"]
    )
    assert "```python\ndef f(x):" in draft_prompt(stub.blind())
    assert not grade(task, "a, b = map(int, input().split())\nprint(a * b)")


def test_livecodebench_functional_rows_call_the_solution_method(
    tmp_path: Path, sandbox_ok: None
) -> None:
    cases = lambda args, out: {"input": "\n".join(json.dumps(a) for a in args), "output": json.dumps(out),  # noqa: E731
                               "testtype": "functional"}  # fmt: skip
    row = lcb_row(
        "2727", json.dumps([cases([[3, 3], 6], [0, 1]), cases([[1, 5, 2], 7], [1, 2])]),
        platform="leetcode",
        starter_code="class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
        public_test_cases=json.dumps([cases([[2, 7, 11], 9], [0, 1])]),
        metadata=json.dumps({"func_name": "twoSum"}),
    )  # fmt: skip
    [task] = load_tasks(f"livecodebench:{write([row], tmp_path, 'jsonl')}")
    assert task.metadata["test_style"] == "asserts" and len(task.tests) == 3
    assert task.blind().visible_tests == task.tests[:1]
    assert "Solution().twoSum([2, 7, 11], 9)" in task.tests[0]
    good = ("from typing import List\nclass Solution:\n    def twoSum(self, nums, target):\n"
            "        seen = {}\n        for i, x in enumerate(nums):\n"
            "            if target - x in seen:\n                return (seen[target - x], i)\n"
            "            seen[x] = i\n")  # fmt: skip
    assert grade(task, good)  # a tuple counts as the list, as LiveCodeBench's checker has it
    assert not grade(
        task, "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"
    )


def test_livecodebench_compressed_private_tests_are_decoded_in_the_sandbox(
    tmp_path: Path, form: str, sandbox_ok: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_host_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle.loads ran on the host")

    monkeypatch.setattr(pickle, "loads", no_host_unpickling)
    path = write([lcb_row("abc1_a", compressed(json.dumps(PRIVATE)))], tmp_path, form)
    [task] = load_tasks(f"livecodebench:{path}")
    assert task.metadata["io_cases"] == [["1 2\n", "3\n"], ["5 6\n", "11\n"], ["-1 1\n", "0\n"]]


class _Mark:
    """Unpickling this writes a file: what unpickling downloaded data on the host would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (os.system, (f"touch {self.path}",))


def test_a_malicious_payload_never_runs_on_the_host(tmp_path: Path, sandbox_ok: None) -> None:
    marker = tmp_path / "unpickled-on-the-host"
    blob = base64.b64encode(zlib.compress(pickle.dumps(_Mark(str(marker))))).decode()
    path = write([lcb_row("abc1_a", blob)], tmp_path, "jsonl")
    with pytest.raises(UserError, match=r"private_test_cases"):
        load_tasks(f"livecodebench:{path}")
    assert not marker.exists()


def test_livecodebench_refuses_compressed_tests_without_an_isolating_sandbox(
    tmp_path: Path,
) -> None:
    path = write([lcb_row("abc1_a", compressed(json.dumps(PRIVATE)))], tmp_path, "jsonl")
    with pytest.raises(UserError, match=r"needs an isolating sandbox") as exc:
        load_tasks(f"livecodebench:{path}?sandbox=process")
    assert "\n" not in str(exc.value)


def test_livecodebench_release_files_and_dates(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text(json.dumps(lcb_row("a", json.dumps(PRIVATE))) + "\n")
    late = lcb_row("b", json.dumps(PRIVATE), contest_date="2025-03-01T00:00:00")
    (tmp_path / "test2.jsonl").write_text(json.dumps(late) + "\n")
    assert [t.id for t in load_tasks(f"livecodebench:{tmp_path}")] == ["lcb-a", "lcb-b"]
    assert [t.id for t in load_tasks(f"livecodebench:{tmp_path}?release=release_v1")] == ["lcb-a"]
    assert [t.id for t in load_tasks(f"livecodebench:{tmp_path}?release=v2")] == ["lcb-b"]
    assert [t.id for t in load_tasks(f"livecodebench:{tmp_path}?start_date=2025-01-01")] == [
        "lcb-b"
    ]


# -- APPS ----------------------------------------------------------------------------------------


def test_apps_stdin_and_call_based_rows(tmp_path: Path, form: str, sandbox_ok: None) -> None:
    rows = [
        {"problem_id": 1, "question": "Print the sum of two numbers.", "difficulty": "introductory",
         "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)"]), "url": "u",
         "input_output": json.dumps({"inputs": ["1 2\n", ["4 5"]], "outputs": ["3\n", ["9"]]}),
         "starter_code": ""},
        {"problem_id": 2, "question": "Return the doubled number.", "difficulty": "interview",
         "solutions": json.dumps(["def double(x):\n    return 2 * x"]), "url": "u",
         "input_output": json.dumps({"fn_name": "double", "inputs": [[2], [5]], "outputs": [[4], 10]}),
         "starter_code": "def double(x):\n    "},
        {"problem_id": 3, "question": "No tests.", "difficulty": "interview", "solutions": "[]",
         "url": "u", "input_output": "", "starter_code": ""},
    ]  # fmt: skip
    stdin, call = load_tasks(f"apps:{write(rows, tmp_path, form)}")
    assert stdin.id == "apps-1" and stdin.metadata["io_cases"] == [["1 2\n", "3\n"], ["4 5", "9"]]
    assert stdin.prompt.endswith("\nUse Standard Input format\nANSWER:\n")
    assert call.entry_point == "double" and call.prompt.endswith(
        "\nUse Call-Based format\nANSWER:\n"
    )
    assert grade(stdin, stdin.reference or "") and grade(call, call.reference or "")
    assert not grade(call, "def double(x):\n    return x")
    assert [
        t.id for t in load_tasks(f"apps:{write(rows, tmp_path, form)}?difficulty=interview")
    ] == ["apps-2"]


# -- the hub -------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stand-in hub: what was asked for, and the rows served per id (none: unreachable)."""
    from loopwright.loops.tasks.benchmarks import rows as rows_module
    from loopwright.loops.tasks.readers import Table
    from loopwright.loops.tasks.taskset import SourceInfo, rows_sha256

    state: dict[str, Any] = {"asked": [], "rows": {}}

    def read_table(location: str, *, config: str | None = None, split: str | None = None,
                   revision: str | None = None) -> Table:  # fmt: skip
        state["asked"].append((location, config, split))
        name = location.removeprefix("hf:")
        if name not in state["rows"]:
            raise UserError(f"cannot load {location}: no network")
        got = state["rows"][name]
        info = SourceInfo(kind="hub", location=name, config=config, split=split,
                          revision="c0ffee", rows_sha256=rows_sha256(got))  # fmt: skip
        return Table(got, info, [f"{location} row {i}" for i in range(len(got))], list(got[0]))

    monkeypatch.setattr(rows_module, "read_table", read_table)
    return state


def test_a_bare_name_loads_the_hub_copy(hub: dict[str, Any]) -> None:
    hub["rows"]["google-research-datasets/mbpp"] = [MBPP_FULL]
    ts = load_task_set("mbpp")
    assert hub["asked"] == [("hf:google-research-datasets/mbpp", "full", "test")]
    assert [t.id for t in ts.tasks] == ["mbpp/11"]
    assert (ts.source.kind, ts.source.location, ts.source.revision, ts.source.spec) == (
        "hub", "google-research-datasets/mbpp", "c0ffee", "mbpp")  # fmt: skip
    hub["asked"].clear()
    load_task_set("mbpp-sanitized?split=validation")
    assert hub["asked"] == [("hf:google-research-datasets/mbpp", "sanitized", "validation")]


def test_math_from_the_hub_reads_every_subject(hub: dict[str, Any]) -> None:
    hub["rows"]["EleutherAI/hendrycks_math"] = [{"problem": "p", "solution": "\\boxed{1}"}]
    tasks = load_tasks("math")
    assert len(hub["asked"]) == 7 and {a[1] for a in hub["asked"]} >= {"algebra", "precalculus"}
    assert [t.id for t in tasks] == [f"math-{i}" for i in range(7)]


def test_a_script_dataset_on_the_hub_says_how_to_load_it(hub: dict[str, Any]) -> None:
    with pytest.raises(UserError) as exc:
        load_tasks("livecodebench")
    msg = str(exc.value)
    assert hub["asked"] == [("hf:livecodebench/code_generation_lite", None, "test")]
    assert "\n" not in msg and "huggingface-cli download livecodebench/code_generation_lite" in msg
    assert "livecodebench:DIR" in msg
