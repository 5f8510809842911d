"""What grading reports: progress counts, the report of one invocation, and the in-loop x
graded agreement table over a run's answers (the loop gaming its own checks shows here)."""

from __future__ import annotations

from dataclasses import dataclass

from loopwright.traces import TraceStore
from loopwright.traces.grading import agreement_counts
from pydantic import BaseModel, Field


@dataclass
class GradeProgress:
    """Counts so far, for a progress bar."""

    total: int
    done: int = 0
    passed: int = 0
    failed: int = 0
    errors: int = 0


class Agreement(BaseModel):
    """In-loop verdict x graded verdict over the runs' graded answers (now and before)."""

    in_loop_passed_graded_passed: int = 0
    in_loop_passed_graded_failed: int = Field(
        0, description="Answers the loop's own check passed and the grader failed: gaming."
    )
    in_loop_failed_graded_passed: int = 0
    in_loop_failed_graded_failed: int = 0
    undecided: int = Field(
        0,
        description="Graded answers outside the table: no in-loop pass/fail (only scorers "
        "judged them) or no graded pass/fail (a grader error).",
    )

    @property
    def agree(self) -> int:
        return self.in_loop_passed_graded_passed + self.in_loop_failed_graded_failed

    @property
    def disagree(self) -> int:
        return self.in_loop_passed_graded_failed + self.in_loop_failed_graded_passed


class GradeReport(BaseModel):
    """What one invocation found and did."""

    db: str = Field(description="Trace database.")
    runs: list[str] = Field(description="Run names graded.")
    sandbox: str = Field(description="Sandbox backend code tests ran in.")
    tasks: int = Field(description="Tasks of the runs.")
    answers: int = Field(description="Answer nodes: in-loop verified, non-empty content.")
    graded: int = Field(description="Answers graded now (one graded verdict each).")
    passed: int = Field(description="Of those, passed.")
    failed: int = Field(description="Of those, failed.")
    errors: int = Field(description="Of those, the grader raised (passed NULL recorded).")
    retried: int = Field(description="Of those, answers whose earlier grading had errored.")
    skipped: int = Field(description="Answers already graded (finals, earlier invocations).")
    no_grader: int = Field(description="Answers whose task has no grader (nothing written).")
    agreement: Agreement = Field(description="In-loop x graded over every graded answer.")
    wall_s: float = Field(description="Wall time of the invocation.")


def agreement(store: TraceStore, run_ids: list[str]) -> Agreement:
    """The 2x2 over every answer node of the runs that now has a graded verdict. Opinion
    verifiers (in-loop scorers, not checks) are left out of the in-loop side, as
    harvesting's labels leave them out."""
    a = Agreement()
    for r in agreement_counts(store, run_ids):
        if r["il"] is None or r["g"] is None:
            a.undecided += r["n"]
        else:
            field = (
                f"in_loop_{'passed' if r['il'] else 'failed'}_"
                f"graded_{'passed' if r['g'] else 'failed'}"
            )
            setattr(a, field, getattr(a, field) + r["n"])
    return a
