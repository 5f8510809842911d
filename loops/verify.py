"""In-loop verifiers and the held-out grader, chosen by task kind.

The in-loop verifier is what a loop may see and optimise; the grader is the final check
against the reference. Both are stored (``verdicts.stage``) so a loop that games its own
checks is visible. Math tasks are checked by the math checker (math-verify in a worker
process, lenient about units); code tasks get a verifier with the code-test tools.
"""

from __future__ import annotations

import json
import time
from typing import Protocol

from loopwright.loops.tasks import Task
from loopwright.tools import math_check
from loopwright.traces.records import VerdictRecord
from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """A verifier's judgement of one response."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    score: float = Field(description="1.0 pass, 0.0 fail; partial credit where a verifier has it.")
    answer: str | None = Field(None, description="The answer the verifier extracted.")
    feedback: str = ""
    verifier: str
    version: str
    latency_s: float = 0.0

    def record(
        self, *, run_id: str, task_id: str, node_id: str | None, stage: str
    ) -> VerdictRecord:
        return VerdictRecord(
            run_id=run_id,
            task_id=task_id,
            node_id=node_id,
            stage=stage,  # type: ignore[arg-type]
            verifier=self.verifier,
            verifier_version=self.version,
            passed=self.passed,
            score=self.score,
            feedback=self.feedback,
            details=json.dumps({"answer": self.answer}),
            latency_s=self.latency_s,
        )


class Verifier(Protocol):
    name: str

    def __call__(self, task: Task, response: str) -> Verdict: ...


class MathAnswer:
    """Pass when the response's final answer is equivalent to the task's reference.

    Blocking (sympy may run in the worker): call it through ``asyncio.to_thread`` from loops.
    """

    name = "math-answer"
    _checker: math_check.MathChecker | None = None  # one worker process per Python process

    def __call__(self, task: Task, response: str) -> Verdict:
        if MathAnswer._checker is None:
            MathAnswer._checker = math_check.MathChecker(policy="lenient")
        t0 = time.perf_counter()
        v = MathAnswer._checker.check(response, task.reference or "")
        return Verdict(
            passed=v.passed,
            score=1.0 if v.passed else 0.0,
            answer=v.extracted,
            feedback=v.feedback,
            verifier=self.name,
            version=f"{math_check.VERSION}-{v.policy}",
            latency_s=time.perf_counter() - t0,
        )


def verifier_for(task: Task) -> Verifier | None:
    """The in-loop verifier for a task, or None when none applies yet."""
    if task.kind == "math" and task.reference is not None:
        return MathAnswer()
    return None


def grader_for(task: Task) -> Verifier | None:
    """The held-out grader (compares with the reference)."""
    return verifier_for(task)


def extract_answer(task: Task, response: str) -> str | None:
    if task.kind == "math":
        return math_check.extract_answer(response)
    return None
