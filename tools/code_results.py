"""What running a program against its tests gives: one typed result (``CodeTestResult``) and
the short feedback texts built from what the sandbox reported.
"""

from __future__ import annotations

from loopwright.sandboxes import ExecResult, SandboxLimits
from pydantic import BaseModel, ConfigDict, Field

MAX_FIELD = 300  # characters kept of reprs, inputs and outputs in feedback


class TestOutcome(BaseModel):
    """One test unit's result."""

    __test__ = False  # not a pytest class

    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    passed: bool
    error: str | None = None
    """One line: why it failed (exception, assertion, timeout, mismatch)."""


class ExecSummary(BaseModel):
    """What the sandbox reported, summed over the runs behind one result."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None
    """Exit code of the last run (None when it was killed)."""
    duration_s: float
    """Wall-clock seconds over all runs."""
    runs: int = 1
    killed_by: str | None = None


class CodeTestResult(BaseModel):
    """The verdict of running a program against its tests."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    tests_total: int
    tests_passed: int
    outcomes: list[TestOutcome] = Field(default_factory=list)
    feedback: str
    """Short text for a refiner: the first failure, or "all N tests passed"."""
    timed_out: bool = False
    exec: ExecSummary

    @property
    def score(self) -> float:
        """Fraction of tests passed (0.0 when there are none)."""
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


def short(s: str, n: int = MAX_FIELD) -> str:
    s = s if len(s) <= n else s[: n - 3] + "..."
    return s


def one_line(s: str, n: int = MAX_FIELD) -> str:
    return short(" ".join(s.split()), n)


def summary(results: list[ExecResult]) -> ExecSummary:
    last = results[-1]
    killed = next((r.killed_by for r in results if r.killed_by), None)
    return ExecSummary(
        exit_code=last.exit_code,
        duration_s=round(sum(r.duration_s for r in results), 4),
        runs=len(results),
        killed_by=killed,
    )


def killed_message(r: ExecResult, limits: SandboxLimits) -> str:
    if r.timed_out:
        return f"timed out after {limits.timeout_s:g}s"
    if r.killed_by == "memory":
        return f"ran out of memory (limit {limits.memory_mb} MiB)"
    if r.killed_by == "output":
        return f"too much output (limit {limits.max_output_bytes} bytes)"
    if r.killed_by == "cpu":
        return f"CPU time limit exceeded ({limits.effective_cpu_s}s)"
    if r.exit_code is not None and r.exit_code < 0:
        return f"killed by signal {-r.exit_code}"
    return f"exited with code {r.exit_code}"


def stderr_tail(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return one_line(lines[-1]) if lines else ""
