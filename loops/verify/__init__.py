"""Verification in two roles: in-loop verifiers (what a loop may see) and the held-out grader.

- ``base``: ``Verdict``, the ``LoopVerifier`` contract and its registry
  (``register_verifier``, ``make_verifier``, ``--verifier NAME``), the ``Grader`` protocol,
  ``run_verifier`` and ``run_grader``.
- ``graders``: the held-out graders against the answer key (math equivalence, hidden tests),
  their registry and ``grader_for``.
- ``functions``: ``@verifier`` and ``@grader``, which make either from a plain function, and
  ``as_verifier``.
- ``verifiers``: the shipped in-loop verifiers (visible-tests, self, consistency, judge,
  reward, none, and the opt-in oracle).
"""

from __future__ import annotations

from typing import Any

from loopwright.loops.options import NoOptions
from loopwright.loops.tasks import Task
from loopwright.loops.verify import verifiers as _shipped  # noqa: F401  (fills the registry)
from loopwright.loops.verify.base import (
    AUTO,
    DEFAULTS,
    VERIFIERS,
    Grader,
    LoopVerifier,
    Verdict,
    VerifyContext,
    check_verifier,
    is_oracle,
    make_verifier,
    register_verifier,
    resolve,
    run_grader,
    run_verifier,
    verdict_record,
    verifier_names,
)
from loopwright.loops.verify.functions import (
    FunctionGrader,
    FunctionVerifier,
    as_verifier,
    grader,
    verifier,
)
from loopwright.loops.verify.graders import (
    DEFAULT_GRADERS,
    GRADERS,
    CodeTests,
    MathAnswer,
    check_grader,
    extract_answer,
    grade_many,
    grader_for,
    grader_names,
    register_grader,
    shared_sandbox,
)
from loopwright.sandboxes import DEFAULT_BACKEND


def verifier_for(
    task: Task, *, sandbox: str = DEFAULT_BACKEND, name: str = AUTO, options: dict | None = None
) -> LoopVerifier[Any] | None:
    """The in-loop verifier of ``task`` under ``--verifier name`` (None: it has none)."""
    return make_verifier(name, task, options=options, sandbox=sandbox)


__all__ = [
    "AUTO",
    "DEFAULTS",
    "DEFAULT_GRADERS",
    "GRADERS",
    "VERIFIERS",
    "CodeTests",
    "FunctionGrader",
    "FunctionVerifier",
    "Grader",
    "LoopVerifier",
    "MathAnswer",
    "NoOptions",
    "Verdict",
    "VerifyContext",
    "as_verifier",
    "check_grader",
    "check_verifier",
    "extract_answer",
    "grade_many",
    "grader",
    "grader_for",
    "grader_names",
    "is_oracle",
    "make_verifier",
    "register_grader",
    "register_verifier",
    "resolve",
    "run_grader",
    "run_verifier",
    "shared_sandbox",
    "verdict_record",
    "verifier",
    "verifier_for",
    "verifier_names",
]
