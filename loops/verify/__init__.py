"""Verification in two roles: in-loop verifiers (what a loop may see) and the held-out grader.

- ``base``: ``Verdict``, the ``LoopVerifier`` contract, the registry (``register``,
  ``make_verifier``, ``--verifier NAME``) and ``run_verifier``.
- ``checks``: the grader's checks against the answer key (math equivalence, hidden tests).
- ``verifiers``: the shipped in-loop verifiers (visible-tests, self, consistency, judge,
  reward, none, and the opt-in oracle).
"""

from __future__ import annotations

from loopwright.loops.tasks import Task
from loopwright.loops.verify import verifiers as _shipped  # noqa: F401  (fills the registry)
from loopwright.loops.verify.base import (
    AUTO,
    DEFAULTS,
    VERIFIERS,
    Check,
    LoopVerifier,
    Verdict,
    Verifier,
    VerifyContext,
    check_verifier,
    is_oracle,
    make_verifier,
    register,
    resolve,
    run_check,
    run_verifier,
    verdict_record,
    verifier_names,
)
from loopwright.loops.verify.checks import (
    CodeTests,
    MathAnswer,
    extract_answer,
    grader_for,
    shared_sandbox,
    verify_many,
)
from loopwright.sandboxes import DEFAULT_BACKEND


def verifier_for(
    task: Task, *, sandbox: str = DEFAULT_BACKEND, name: str = AUTO, options: dict | None = None
) -> LoopVerifier | None:
    """The in-loop verifier of ``task`` under ``--verifier name`` (None: it has none)."""
    return make_verifier(name, task, options=options, sandbox=sandbox)


__all__ = [
    "AUTO",
    "DEFAULTS",
    "VERIFIERS",
    "Check",
    "CodeTests",
    "LoopVerifier",
    "MathAnswer",
    "Verdict",
    "Verifier",
    "VerifyContext",
    "check_verifier",
    "extract_answer",
    "grader_for",
    "is_oracle",
    "make_verifier",
    "register",
    "resolve",
    "run_check",
    "run_verifier",
    "shared_sandbox",
    "verdict_record",
    "verifier_for",
    "verifier_names",
    "verify_many",
]
