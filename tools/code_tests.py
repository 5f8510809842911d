"""Code-tests verifier: run a candidate program against tests inside a sandbox.

Three test styles, one typed result (``CodeTestResult``):

* ``run_humaneval`` — HumanEval: ``code + test + check(entry_point)``; one test unit.
* ``run_asserts`` — MBPP: each ``assert`` line is its own test, all in ONE sandbox run.
* ``run_io`` — APPS: stdin/stdout cases, one sandbox run per case.

The first two run a harness in the sandbox that keeps the candidate in a process of its own:
the harness process reads the spec (the code, the tests and a random nonce), deletes it,
makes itself non-dumpable and only then starts the candidate's interpreter, which holds two
pipes to the harness and nothing else. The tests run in the harness process; the
candidate's functions are stand-ins that ask the candidate's process, and what comes back
is plain data (exact ``int``, ``str``, ``list``, ...) or an opaque handle that is equal only
to itself, so a crafted ``__eq__``, ``__bool__`` or ``__hash__`` never decides a test.
Results go to the harness's own stdout, one JSON line per test marked with the nonce; a run
without the harness's closing "done" line fails every test it has no result for
(``os._exit(0)`` or killing the harness is not a pass). docs/verifiers.md says what this
defends against and what it does not.

``extract_code`` pulls the program out of a model response (fenced blocks, a bare ``def``,
or a body-only completion of the prompt).
"""

from __future__ import annotations

import re

from loopwright.sandboxes import ExecResult, Sandbox, SandboxLimits, get_sandbox
from loopwright.tools.code_extract import extract_code
from loopwright.tools.code_harness import run_harness, run_program
from loopwright.tools.code_results import (
    CodeTestResult,
    ExecSummary,
    TestOutcome,
    killed_message,
    short,
    stderr_tail,
    summary,
)

VERSION = "code-tests-2"


def _prepare(
    sandbox: Sandbox | None, limits: SandboxLimits | None
) -> tuple[Sandbox, SandboxLimits]:
    return sandbox if sandbox is not None else get_sandbox(), limits or SandboxLimits()


# --- public runners ---------------------------------------------------------------------


def run_humaneval(
    code: str,
    test: str,
    entry_point: str,
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
) -> CodeTestResult:
    """HumanEval: ``code``, then ``test`` (defines ``check``), then ``check(entry_point)``.

    One test unit; it passes when ``check`` returns and the program exits 0.
    """
    sb, lim = _prepare(sandbox, limits)
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be an identifier: {entry_point!r}")
    program = f"{test}\n\ncheck({entry_point})\n"
    return run_harness(code, [program], [f"check({entry_point})"], sb, lim, entry_point)


def run_asserts(
    code: str,
    asserts: list[str],
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
    *,
    entry_point: str | None = None,
) -> CodeTestResult:
    """MBPP: run each assert statement as its own test after loading ``code`` once.

    All asserts share one sandbox run (and so ``limits.timeout_s``); a test still
    running when time runs out is reported as timed out, the ones after it as not run.
    ``entry_point`` names the function under test; only that name of the solution may
    shadow a builtin (``sum``, ``max``...) in the asserts.
    """
    sb, lim = _prepare(sandbox, limits)
    if entry_point is not None and not entry_point.isidentifier():
        raise ValueError(f"entry_point must be an identifier: {entry_point!r}")
    names = [f"test {i}" for i in range(len(asserts))]
    return run_harness(code, list(asserts), names, sb, lim, entry_point)


def _normalise(out: str) -> list[str]:
    return [" ".join(line.split()) for line in out.strip().splitlines()]


def run_io(
    code: str,
    cases: list[tuple[str, str]],
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
    *,
    stop_on_failure: bool = False,
) -> CodeTestResult:
    """APPS: run ``code`` once per (stdin, expected stdout) case; compare whitespace-normalised.

    Each case gets its own sandbox run and its own ``limits``. With ``stop_on_failure``
    the cases after the first failure are reported as not run. The comparison happens
    here, on the host: the expected output never enters the sandbox, and the program
    controls only its own stdout and exit status (a case passes only on exit 0).
    """
    sb, lim = _prepare(sandbox, limits)
    outcomes: list[TestOutcome] = []
    results: list[ExecResult] = []
    feedback: str | None = None
    timed_out = False
    for i, (stdin, expected) in enumerate(cases):
        name = f"case {i}"
        if stop_on_failure and feedback is not None:
            outcomes.append(TestOutcome(index=i, name=name, passed=False, error="not run"))
            continue
        r = run_program(code, stdin, sb, lim)
        results.append(r)
        timed_out = timed_out or r.timed_out
        err: str | None = None
        if not r.ok:
            err = killed_message(r, lim)
            if r.killed_by is None and r.exit_code not in (None, 0):
                tail = stderr_tail(r.stderr)
                line = _last_main_line(r.stderr)
                err = (tail or err) + (f" (line {line})" if line else "")
        elif _normalise(r.stdout) != _normalise(expected):
            err = "wrong output"
        outcomes.append(TestOutcome(index=i, name=name, passed=err is None, error=err))
        if err is not None and feedback is None:
            feedback = (
                f"{name} failed: {err}\n"
                f"input: {short(stdin.strip())!r}\n"
                f"expected: {short(expected.strip())!r}\n"
                f"got: {short(r.stdout.strip())!r}"
            )
    passed_n = sum(o.passed for o in outcomes)
    ok = bool(cases) and passed_n == len(cases)
    if ok:
        feedback = f"all {len(cases)} cases passed"
    return CodeTestResult(
        passed=ok,
        tests_total=len(cases),
        tests_passed=passed_n,
        outcomes=outcomes,
        feedback=feedback or "no cases to run",
        timed_out=timed_out,
        exec=summary(results) if results else ExecSummary(exit_code=None, duration_s=0.0, runs=0),
    )


def _last_main_line(stderr: str) -> int | None:
    found = re.findall(r'File "(?:[^"]*/)?main\.py", line (\d+)', stderr)
    return int(found[-1]) if found else None


__all__ = [
    "VERSION",
    "CodeTestResult",
    "ExecSummary",
    "TestOutcome",
    "extract_code",
    "run_asserts",
    "run_humaneval",
    "run_io",
]
