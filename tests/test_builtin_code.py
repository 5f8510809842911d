"""builtin:code and the CodeTests verifier, against the real bwrap sandbox."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.tasks import Task, builtin_code, load_tasks
from loopwright.loops.verify import CodeTests, grade_many, grader_for, verdict_record, verifier_for
from loopwright.loops.verify import graders as verify
from loopwright.loops.verify.verifiers import Oracle, VisibleTests
from loopwright.sandboxes import BwrapSandbox, SandboxLimits, SandboxUnavailable
from loopwright.sandboxes.base import INSTALL_HINT
from loopwright.tools.code_tests import VERSION


@pytest.fixture(scope="module")
def bwrap() -> str:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")
    return "bwrap"


def fenced(code: str) -> str:
    return f"Here is the function:\n```python\n{code}```\nIt works."


def by_entry(name: str) -> Task:
    return next(t for t in builtin_code() if t.entry_point == name)


# -- the data ------------------------------------------------------------------------------


def test_set_shape() -> None:
    tasks = builtin_code()
    assert 30 <= len(tasks) <= 40
    assert [t.id for t in tasks] == [f"code-{i:03d}" for i in range(1, len(tasks) + 1)]
    for t in tasks:
        assert t.kind == "code"
        assert t.entry_point and t.prompt.startswith(f"def {t.entry_point}(")
        assert ">>> " in t.prompt, t.id  # a worked example in the docstring
        assert t.prompt.rstrip().endswith('"""')  # a completion can continue it
        assert 5 <= len(t.tests) <= 8, t.id
        assert all(test.startswith(f"assert {t.entry_point}(") for test in t.tests)
        assert t.reference is not None and t.reference.startswith(t.prompt)
        assert t.metadata["test_style"] == "asserts"
    assert Counter(t.metadata["category"] for t in tasks) == {
        "number": 12,
        "string": 12,
        "list": 12,
    }
    assert set(Counter(t.metadata["difficulty"] for t in tasks)) == {"easy", "medium", "hard"}


def test_loader_is_deterministic_per_seed() -> None:
    ids = [t.id for t in builtin_code()]
    assert [t.id for t in load_tasks("builtin:code")] == ids  # no seed: file order
    a = load_tasks("builtin:code?seed=7")
    assert a == load_tasks("builtin:code?seed=7")
    assert [t.id for t in a] != ids and sorted(t.id for t in a) == ids
    assert [t.id for t in load_tasks("builtin:code?seed=8")] != [t.id for t in a]
    assert load_tasks("builtin:code?seed=7&n=5") == a[:5]
    assert load_tasks("builtin:code", limit=3) == builtin_code()[:3]
    assert len(load_tasks("builtin:code?n=500")) == len(ids)  # n past the end keeps all


def test_bad_query_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"builtin:code takes \?seed=INT&n=INT"):
        load_tasks("builtin:code?shuffle=1")


# -- every task, in the real sandbox ----------------------------------------------------------


def test_every_reference_passes_its_hidden_tests(bwrap: str) -> None:
    tasks = builtin_code()
    verdicts = grade_many([(t, fenced(t.reference or "")) for t in tasks], sandbox=bwrap)
    failed = {
        t.id: v.feedback for t, v in zip(tasks, verdicts, strict=True) if not (v and v.passed)
    }
    assert failed == {}
    assert all(v is not None and v.score == 1.0 for v in verdicts)


def test_a_stub_fails_every_task(bwrap: str) -> None:
    tasks = builtin_code()
    stubs = [(t, fenced(t.prompt + "    return None\n")) for t in tasks]
    verdicts = grade_many(stubs, sandbox=bwrap)
    passed = [t.id for t, v in zip(tasks, verdicts, strict=True) if v is None or v.passed]
    assert passed == []
    assert all(v is not None and v.score < 1.0 for v in verdicts)


# -- the verdict ------------------------------------------------------------------------------


def test_verdict_carries_name_version_score_feedback_and_code(bwrap: str) -> None:
    task = by_entry("absolute_difference")
    body = "    return a - b\n"  # right only when a >= b
    v = CodeTests(bwrap)(task, fenced(task.prompt + body))
    assert (v.verifier, v.version) == ("code-tests", f"{VERSION}-bwrap")
    assert not v.passed
    assert v.score == pytest.approx(3 / 5)  # (10, 3), (4, 4) and (-2, -9) pass
    assert (
        v.feedback
        == "test 0 failed at test line 1: assert absolute_difference(3, 10) == 7 -- got -7"
    )
    assert v.answer == task.prompt + body
    assert v.details == {
        "test_style": "asserts",
        "tests_passed": 3,
        "tests_total": 5,
        "timed_out": False,
        "killed_by": None,
        "sandbox": "bwrap",
    }
    rec = verdict_record(v, run_id="r", task_id=task.id, node_id="n", stage="in_loop")
    assert (rec.verifier, rec.verifier_version) == ("code-tests", f"{VERSION}-bwrap")
    assert json.loads(rec.details or "{}")["tests_passed"] == 3


def test_body_only_completion_continues_the_prompt(bwrap: str) -> None:
    task = by_entry("reverse_string")
    v = CodeTests(bwrap)(task, "    return s[::-1]\n")
    assert v.passed, v.feedback


def test_prose_only_response_fails_with_load_feedback(bwrap: str) -> None:
    task = by_entry("add_numbers")
    v = CodeTests(bwrap)(task, "I think you should add the two numbers together.")
    assert not v.passed and v.score == 0.0
    assert v.feedback.startswith("the solution failed to load: SyntaxError")


def test_infinite_loop_is_a_timeout_not_a_hang(bwrap: str) -> None:
    task = by_entry("collatz_steps")
    forever = fenced(task.prompt + "    while True:\n        pass\n")
    v = CodeTests(bwrap, limits=SandboxLimits(timeout_s=2))(task, forever)
    assert not v.passed and v.details["timed_out"] is True
    assert "timed out after 2s" in v.feedback
    [w] = grade_many([(task, forever)], sandbox=bwrap, limits=SandboxLimits(timeout_s=1))
    assert w is not None and "timed out after 1s" in w.feedback


def test_humaneval_and_io_styles_from_native_jsonl(tmp_path: Path, bwrap: str) -> None:
    rows = [
        {
            "id": "he",
            "kind": "code",
            "prompt": "def double(x):\n",
            "entry_point": "double",
            "tests": [
                "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"
            ],
        },
        {
            "id": "io",
            "kind": "code",
            "prompt": "Read two integers from one line of stdin and print their sum.",
            "test_style": "io",
            "io_cases": [["2 3\n", "5\n"], {"input": "7 0\n", "output": "7"}],
        },
    ]
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    he, io = load_tasks(str(path))
    assert he.metadata["test_style"] == "humaneval"  # inferred from def check(
    assert io.metadata == {"test_style": "io", "io_cases": [["2 3\n", "5\n"], ["7 0\n", "7"]]}

    good_he = fenced("def double(x):\n    return 2 * x\n")
    good_io = fenced("a, b = map(int, input().split())\nprint(a + b)\n")
    bad_io = fenced("a, b = map(int, input().split())\nprint(a - b)\n")
    v_he, v_io, v_bad = grade_many([(he, good_he), (io, good_io), (io, bad_io)], sandbox=bwrap)
    assert v_he is not None and v_he.passed and v_he.details["test_style"] == "humaneval"
    assert v_io is not None and v_io.passed and v_io.details["tests_total"] == 2
    assert v_bad is not None and not v_bad.passed
    assert v_bad.score == 0.5 and "case 0 failed: wrong output" in v_bad.feedback


# -- choosing and batching ----------------------------------------------------------------------


def test_verifier_and_grader_for_code_tasks() -> None:
    task = builtin_code(n=1)[0]
    loop_side = verifier_for(task)
    assert isinstance(loop_side, VisibleTests) and not loop_side.oracle
    assert isinstance(grader_for(task), CodeTests)
    assert isinstance(verifier_for(task, name="oracle"), Oracle)
    assert grader_for(task, sandbox="process").version.endswith("-process")  # type: ignore[union-attr]
    untested = Task(id="u", prompt="def f():\n", kind="code")
    assert verifier_for(untested) is None and grader_for(untested) is None


def test_unknown_sandbox_backend_lists_the_valid_ones() -> None:
    with pytest.raises(UserError, match=r"unknown sandbox backend 'bwarp' — did you mean 'bwrap'"):
        CodeTests("bwarp")


def test_grade_many_keeps_order_and_skips_ungradable(bwrap: str) -> None:
    tasks = builtin_code(n=6)
    text = Task(id="t", prompt="Write a haiku.")
    items = [(t, fenced(t.reference or "") if i % 2 else "nope") for i, t in enumerate(tasks)]
    verdicts = grade_many([*items, (text, "an old silent pond")], concurrency=3, sandbox=bwrap)
    assert verdicts[-1] is None
    assert [v.passed for v in verdicts[:-1] if v] == [False, True] * 3
    assert [v.passed for v in grade_many(items, concurrency=1, sandbox=bwrap) if v] == [
        False,
        True,
    ] * 3


def test_sandbox_unavailable_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(name: str) -> None:
        raise SandboxUnavailable(f"bwrap not found on PATH: {INSTALL_HINT}")

    monkeypatch.setattr(verify, "get_sandbox", unavailable)
    monkeypatch.setattr(verify, "_sandboxes", {})
    task = builtin_code(n=1)[0]
    with pytest.raises(UserError) as exc:
        CodeTests("bwrap")(task, "    return a + b\n")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "bwrap not found on PATH" in msg
    assert "apt-get install bubblewrap" in msg
    assert "--sandbox process" in msg
    assert msg.count("apt-get install bubblewrap") == 1  # the backend's hint is not repeated
    assert re.search(r"UserError|Traceback", msg) is None


def test_sandbox_failing_mid_run_is_a_user_error_too(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        name = "bwrap"

        def run_python(self, *args: object, **kwargs: object) -> None:
            raise SandboxUnavailable("the warm bwrap worker did not start (no slots)")

    monkeypatch.setattr(verify, "_sandboxes", {"bwrap": Broken()})
    task = builtin_code(n=1)[0]
    with pytest.raises(UserError, match=r"worker did not start \(no slots\)\): install bubblewrap"):
        CodeTests("bwrap")(task, "    return a + b\n")
