"""Math-answer checker: extraction, math-verify equivalence in a worker process, timeouts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopwright.tools import MathChecker, MathVerdict, check_number, extract_answer, math_check
from loopwright.tools.errors import UserError
from loopwright.tools.math_check import MathCheckError, MathCheckUnavailable

MATH500 = Path("/work/shared/data/math500/test.jsonl")


@pytest.fixture(scope="module")
def strict() -> Iterator[MathChecker]:
    c = MathChecker("strict")
    yield c
    c.close()


@pytest.fixture(scope="module")
def lenient() -> Iterator[MathChecker]:
    c = MathChecker("lenient")
    yield c
    c.close()


# --- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the result is \boxed{\frac{1}{\sqrt{2}}} here", r"\frac{1}{\sqrt{2}}"),
        (r"first \boxed{3} then \boxed{x^{2}+1}.", "x^{2}+1"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"$\boxed{\$1,000}$", "1000"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("So the answer is 3.5.", "3.5"),
        ("The answer is $18 dollars. Then more text 99.", "18 dollars"),
        ("Therefore the answer is **42**", "42"),
        ("The answer is: x = 5.\nDone", "x = 5"),
        ("I got 12 and then 1,000.", "1000"),
        ("it costs $-7.25.", "-7.25"),
        ("no digits here", None),
        ("", None),
        (r"\boxed{unbalanced", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_numeric_stand_in_still_works() -> None:
    assert check_number("#### 72", "72").passed
    assert not check_number("#### 71", "72").passed


# --- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac{3}{4}}", "3/4"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
        (r"\boxed{x=5}", "5"),  # math-verify accepts an equation against its right-hand side
        (r"\boxed{(1,2)}", "(1,2)"),  # parsed as the open interval (1, 2)
        (r"\boxed{[1,2]}", r"\left[1, 2\right]"),
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3, \pi/2)"),
        (r"\boxed{10\%}", "10"),  # math-verify itself accepts this, so strict passes too
        ("#### 1,000", "1000"),  # fast path
        ("The answer is 0.5.", "1/2"),  # fast path
    ],
)
def test_equivalent_strict(strict: MathChecker, response: str, reference: str) -> None:
    v = strict.check(response, reference)
    assert v.passed, v
    assert not v.timed_out
    assert v.policy == "strict"
    assert v.feedback == "the final answer is correct"


@pytest.mark.parametrize(
    ("response", "reference"),
    [
        ("1/3", "0.33"),
        (r"\boxed{\frac{1}{3}}", "0.33"),
        (r"\boxed{(1,2)}", "[1,2]"),  # open vs closed interval
        (r"\boxed{2\sqrt{3}}", r"\sqrt{8}"),
        ("#### 71", "72"),
        ("no answer at all", "5"),
    ],
)
def test_not_equivalent(
    strict: MathChecker, lenient: MathChecker, response: str, reference: str
) -> None:
    for checker in (strict, lenient):
        v = checker.check(response, reference)
        assert not v.passed, v
        assert not v.timed_out
        assert "\n" not in v.feedback


def test_lenient_only_units(strict: MathChecker, lenient: MathChecker) -> None:
    response = "She pays 6 * 3. The answer is 18 dollars."
    assert strict.check(response, "18").passed  # math-verify reads the number itself
    assert not strict.check("The answer is Evelyn.", r"\text{Evelyn}").passed
    v = lenient.check("The answer is Evelyn.", r"\text{Evelyn}")
    assert v.passed and v.policy == "lenient" and v.extracted == "Evelyn"
    assert lenient.check("The answer is 10 percent.", "10").passed
    assert lenient.check(r"\boxed{10\%}", "10").passed
    assert not lenient.check("The answer is 19 apples.", "18").passed


def test_verdict_shape(strict: MathChecker) -> None:
    v = strict.check(r"\boxed{7}", "8")
    assert isinstance(v, MathVerdict)
    assert v.extracted == "7" and v.reference == "8"
    assert v.feedback == "the final answer 7 does not match the expected answer"
    with pytest.raises(Exception):  # noqa: B017  (frozen pydantic model)
        v.passed = True  # type: ignore[misc]
    missing = strict.check("nothing here", "8")
    assert missing.extracted is None and missing.feedback == "no final answer found"


def test_bad_policy() -> None:
    with pytest.raises(ValueError):
        MathChecker("loose")  # type: ignore[arg-type]


# --- timeouts and threads ---------------------------------------------------------------------


@pytest.mark.slow
def test_pathological_input_times_out_and_worker_recovers() -> None:
    # sympy evaluates 9^(9^(9^9)) forever (checked: > 20 s in a plain process).
    checker = MathChecker("strict", timeout=2.0)
    try:
        assert checker.check(r"\boxed{\sqrt{4}}", "2").passed  # warm up: worker startup excluded
        t0 = time.monotonic()
        v = checker.check(r"\boxed{9^{9^{9^{9}}}}", "1")
        elapsed = time.monotonic() - t0
        assert v.timed_out and not v.passed, v
        assert elapsed < checker.timeout + 3, elapsed
        assert "in time" in v.feedback
        # the killed worker is replaced on the next call
        after = checker.check(r"\boxed{2\sqrt{2}}", r"\sqrt{8}")
        assert after.passed and not after.timed_out
    finally:
        checker.close()


def test_check_from_non_main_thread(strict: MathChecker) -> None:
    results: list[MathVerdict] = []

    def run() -> None:
        results.append(strict.check(r"\boxed{\dfrac{3}{4}}", "0.75"))
        results.append(strict.check(r"\boxed{2\sqrt{2}}", r"\sqrt{8}"))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 6
    assert all(r.passed for r in results), results


async def test_check_via_asyncio_to_thread(strict: MathChecker) -> None:
    verdicts = await asyncio.gather(
        asyncio.to_thread(strict.check, r"\boxed{\frac{1}{2}}", "0.5"),
        asyncio.to_thread(strict.check, r"\boxed{\frac{1}{3}}", "0.33"),
    )
    assert [v.passed for v in verdicts] == [True, False]


@pytest.mark.parametrize(
    ("response", "reference", "passed"),
    [
        ("The answer is 56.", "56", True),
        ("The answer is 1,000.", "1000", True),
        ("56", "56.0", True),
        ("The answer is **12**.", "12", True),
        ("The answer is 55.", "56", False),
        ("", "56", False),
    ],
)
def test_check_quick_decides_plain_numbers_without_the_worker(
    response: str, reference: str, passed: bool
) -> None:
    fresh = MathChecker("strict")
    try:
        v = fresh.check_quick(response, reference)
        assert v is not None and v.passed is passed
        assert v == fresh.check(response, reference)
        assert fresh._worker is None  # nothing was started
    finally:
        fresh.close()


def test_check_quick_leaves_symbolic_answers_to_the_worker(strict: MathChecker) -> None:
    assert strict.check_quick(r"\boxed{\frac{1}{2}}", "0.5") is None
    assert strict.check(r"\boxed{\frac{1}{2}}", "0.5").passed
    # Anything beyond a lone number goes to math-verify, which reads the whole response.
    assert strict.check_quick("The answer is 3/4.", "0.75") is None
    assert strict.check("The answer is 3/4.", "0.75").passed
    assert strict.check_quick("2 + 2 = 4, so 5 is wrong.", "5") is None
    assert not strict.check("I cannot tell.", "56").passed


async def test_run_grader_skips_the_thread_only_when_the_check_is_quick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from loopwright.loops.tasks import Task
    from loopwright.loops.verify import MathAnswer, run_grader

    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(args[1])
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    half = Task(id="h", prompt="?", kind="math", reference="0.5")
    plain = await run_grader(MathAnswer(), half, "The answer is 0.5.")
    symbolic = await run_grader(MathAnswer(), half, r"\boxed{\frac{1}{2}}")
    assert plain.passed and symbolic.passed
    assert hops == [r"\boxed{\frac{1}{2}}"]


# --- the worker process -----------------------------------------------------------------------


def _fake_worker(monkeypatch: pytest.MonkeyPatch, source: str, *args: str) -> None:
    """Start ``python -c source PARENT_SYS_PATH *args`` as the worker from now on."""
    monkeypatch.setattr(
        math_check,
        "_worker_command",
        lambda: [sys.executable, "-c", source, json.dumps(sys.path), *args],
    )


_FAKE_HEAD = """\
import json, os, sys
sys.path[:] = json.loads(sys.argv[1])
from loopwright.tools import _math_worker as w
"""

DIES_ON_EVERY_JOB = _FAKE_HEAD + "w._send(1, {'ready': True}); w._recv(0); os._exit(9)\n"

DIES_ON_THE_FIRST_JOB_ONLY = (
    _FAKE_HEAD
    + """\
marker = sys.argv[2]
if os.path.exists(marker):
    w.main([sys.argv[1], str(os.getppid())])
else:
    open(marker, "w").close()
    w._send(1, {"ready": True}); w._recv(0); os._exit(9)
"""
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie nobody has reaped yet is gone too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_worker_runs_our_module_not_the_callers_main() -> None:
    checker = MathChecker("strict")
    try:
        checker.start()
        assert checker._worker is not None
        cmdline = Path(f"/proc/{checker._worker.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0] == sys.executable.encode()
        assert b"from loopwright.tools._math_worker import main; main()" in cmdline[3]
        assert not any(b"multiprocessing" in part for part in cmdline)
        assert checker.check(r"\boxed{\frac{1}{2}}", "0.5").passed
    finally:
        checker.close()


def test_a_worker_killed_while_idle_is_replaced() -> None:
    checker = MathChecker("strict")
    try:
        checker.start()
        assert checker._worker is not None
        pid = checker._worker.proc.pid
        os.kill(pid, signal.SIGKILL)
        checker._worker.proc.wait(30)
        assert checker.check(r"\boxed{2\sqrt{2}}", r"\sqrt{8}").passed
        assert checker._worker is not None and checker._worker.proc.pid != pid
    finally:
        checker.close()


def test_a_worker_that_dies_once_is_replaced_and_the_check_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_worker(monkeypatch, DIES_ON_THE_FIRST_JOB_ONLY, str(tmp_path / "died"))
    checker = MathChecker("strict")
    try:
        v = checker.check(r"\boxed{\frac{1}{2}}", "0.5")
        assert v.passed and not v.timed_out
        assert (tmp_path / "died").exists()  # the first worker did die on the job
    finally:
        checker.close()


def test_a_check_the_worker_keeps_dying_on_raises_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_worker(monkeypatch, DIES_ON_EVERY_JOB)
    checker = MathChecker("strict")
    try:
        with pytest.raises(MathCheckError, match="died twice") as info:
            checker.check(r"\boxed{\frac{1}{2}}", "0.5")
        assert not isinstance(info.value, UserError)  # one answer's problem, not the setup's
        # answers that need no worker are still decided
        assert checker.check("The answer is 7.", "7").passed
    finally:
        checker.close()


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (["-c", "import sys; print('no maths here', file=sys.stderr); sys.exit(3)"],
         "exit code 3: no maths here"),
        (["-c", "raise ImportError('math_verify is missing')"], "math_verify is missing"),
    ],
)  # fmt: skip
def test_a_worker_that_cannot_start_raises_one_line_saying_why(
    monkeypatch: pytest.MonkeyPatch, command: list[str], reason: str
) -> None:
    monkeypatch.setattr(math_check, "_worker_command", lambda: [sys.executable, *command])
    checker = MathChecker("strict")
    try:
        with pytest.raises(MathCheckUnavailable) as info:
            checker.check(r"\boxed{\frac{1}{2}}", "0.5")
        message = str(info.value)
        assert isinstance(info.value, UserError) and "\n" not in message
        assert message.startswith("math answers cannot be checked here")
        assert reason in message and "pip install" in message
        assert checker._worker is None
    finally:
        checker.close()


def test_a_missing_interpreter_raises_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_check, "_worker_command", lambda: ["/nonexistent/python3"])
    with pytest.raises(MathCheckUnavailable, match="could not be started"):
        MathChecker("strict").start()


def test_a_worker_that_never_says_ready_is_killed_and_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        math_check,
        "_worker_command",
        lambda: [sys.executable, "-c", "import time; time.sleep(600)"],
    )
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(math_check.subprocess, "Popen", recording)
    with pytest.raises(MathCheckUnavailable, match="did not start within 1 s"):
        math_check._Worker(startup_timeout=1.0)
    assert len(started) == 1 and started[0].poll() is not None  # killed, not left behind


def test_lone_surrogates_and_long_responses_cross_the_pipe(strict: MathChecker) -> None:
    assert strict.check("half a pair \ud83d, then $\\boxed{\\frac{1}{2}}$", "0.5").passed
    long = "word " * 200_000 + r"so $\boxed{\frac{3}{4}}$"  # 1 MB: more than a pipe holds
    v = strict.check(long, "0.75")
    assert v.passed, v


def test_the_worker_exits_when_its_parent_dies(tmp_path: Path) -> None:
    parent = (
        "import os, sys\n"
        "from loopwright.tools.math_check import MathChecker\n"
        "c = MathChecker('strict'); c.start()\n"
        "print(c._worker.proc.pid, flush=True)\n"
        "os._exit(0)\n"  # no cleanup at all: as a kill -9 leaves it
    )
    done = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _gone(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"worker {pid} outlived its parent")


# --- MATH-500 references against themselves ---------------------------------------------------


def _math500_answers(n: int = 10) -> list[str]:
    if not MATH500.exists():
        return []
    with MATH500.open() as f:
        return [json.loads(line)["answer"] for _, line in zip(range(n), f, strict=False)]


@pytest.mark.skipif(not MATH500.exists(), reason="MATH-500 data not present")
@pytest.mark.parametrize("answer", _math500_answers())
def test_math500_reference_matches_itself(strict: MathChecker, answer: str) -> None:
    v = strict.check(f"The final answer is $\\boxed{{{answer}}}$.", answer)
    assert v.passed, v


# --- answer shapes, against math-verify's own verdicts ----------------------------------------

# (reference, response): structured answers that a "last number" pre-extraction destroys.
SHAPES = [
    (r"\frac{1}{3}", r"So the probability is $\frac13$."),
    (r"\frac{1}{3}", r"We get $k = \frac{1}{3}$."),
    (r"\frac{1}{3}", r"We get $k = 3$."),
    ("(1, 2)", r"The point is $(1, 2)$."),
    ("2", r"The point is $(1, 2)$."),
    ("(1, 2)", r"The point is $(2, 1)$."),
    (r"\{1, 2\}", r"The set of roots is $\{2, 1\}$."),
    (r"\{1, 2\}", r"The set of roots is $\{1, 3\}$."),
    ("[0, 1)", r"The solution set is $x \in [0, 1)$."),
    ("[0, 1)", r"The solution set is $x \in [0, 1]$."),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$"),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"$\begin{pmatrix} 1 & 2 \\ 3 & 5 \end{pmatrix}$"),
    ("4", r"$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$"),
    ("3, 5", r"The roots are $\boxed{3}$ and $\boxed{5}$."),
    ("5", r"First $\boxed{3}$, then corrected: $\boxed{5}$."),
    ("5", r"$x = 5$"),
    (r"\sqrt{2}", r"The side is $\boxed{\sqrt 2}$."),
    (r"\sqrt{2}", r"The side is $\boxed{2}$."),
    ("0.5", r"\boxed{\frac{1}{2}}"),
    ("10", "Tom has 3 bags with 2 each, 3 * 2 = 6, and 4 more: 6 + 4 = 10."),
    ("42", "The total is 40 + 2 = 42 apples.\n#### 42"),
    ("7", "The answer is 7."),
    ("7", "The answer is 8."),
    ("18", "The answer is 18 dollars."),
    (r"2\pi", r"The circumference is $\boxed{2\pi}$."),
    (r"2\pi", r"The circumference is $\boxed{\pi}$."),
]  # fmt: skip


def _math_verify_says(reference: str, response: str) -> bool:
    """math-verify's default call, as its README shows it."""
    from math_verify import parse, verify

    gold = parse(reference if "$" in reference else f"${reference}$")
    return bool(verify(gold, parse(response)))


@pytest.mark.parametrize(("reference", "response"), SHAPES)
def test_checker_agrees_with_math_verify_on_answer_shapes(
    strict: MathChecker, reference: str, response: str
) -> None:
    assert strict.check(response, reference).passed is _math_verify_says(reference, response)


def test_checker_shapes_are_not_trivially_one_verdict(strict: MathChecker) -> None:
    verdicts = [_math_verify_says(r, p) for r, p in SHAPES]
    assert 8 <= sum(verdicts) <= len(SHAPES) - 8


def test_lenient_accepts_text_and_units_after_a_marker(lenient: MathChecker) -> None:
    assert lenient.check("The answer is Evelyn.", r"\text{Evelyn}").passed
    assert not lenient.check("The answer is Evelyn.", r"\text{Bob}").passed
    assert lenient.check(r"The answer is \boxed{18\text{ dollars}}.", "18").passed
    assert not lenient.check("The answer is 19 dollars.", "18").passed
