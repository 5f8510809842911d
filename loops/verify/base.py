"""Verdicts, the two verification roles, and the registry of in-loop verifiers.

A *check* (``Check``: ``check(task, response) -> Verdict``, blocking) compares a response with
the task's answer key: the held-out grader is one. An *in-loop verifier* (``LoopVerifier``) is
what a loop may see and optimise; it gets the task without its answer key unless it is the
``oracle`` (the grader's own check, opt-in, for upper-bound studies). Verifiers that ask a
model (``self``, ``consistency``, ``judge``) sample through the loop's context, so their calls
are budgeted, cached and traced like every other call.

Verifiers live in a registry like loops do: ``register(MyVerifier)`` and ``--verifier NAME``.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.tasks import Task
from loopwright.tools.verdict import Verdict
from loopwright.traces.records import VerdictRecord
from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from loopwright.loops.models.client import ModelClient
    from loopwright.loops.models.config import Sample


def verdict_record(
    v: Verdict, *, run_id: str, task_id: str, node_id: str | None, stage: str
) -> VerdictRecord:
    """The ``verdicts`` row of ``v`` for a node of a run."""
    return VerdictRecord(
        run_id=run_id,
        task_id=task_id,
        node_id=node_id,
        stage=stage,  # type: ignore[arg-type]
        verifier=v.verifier,
        verifier_version=v.version,
        passed=v.passed,
        score=v.score,
        feedback=v.feedback,
        details=json.dumps({"answer": v.answer, **v.details}),
        latency_s=v.latency_s,
    )


class Check(Protocol):
    """A blocking check of a response against the task's answer key (the grader's kind)."""

    name: str

    def __call__(self, task: Task, response: str) -> Verdict: ...


Verifier = Check  # the name earlier releases used for a check


class VerifyContext(Protocol):
    """What an in-loop verifier may use: the loop's sampling (budgeted and traced), the
    clients by role, and a per-task memo. ``LoopContext`` is one."""

    task: Task
    memo: dict[str, Any]

    def client_for(self, role: str) -> ModelClient: ...

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        role: str,
        round_: int,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[Sample]: ...

    def call_seed(self, role: str, round_: int, extra: int = 0) -> int: ...


class NoOptions(BaseModel):
    """A verifier without options."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LoopVerifier(ABC):
    """An in-loop verifier. Subclasses set ``name``, ``kinds`` and ``Options``.

    ``oracle`` is True only for verifiers that read the task's answer key; everything that
    shows a run that used one says so.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("math", "code", "text")
    oracle: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel, *, sandbox: str = "bwrap") -> None:
        self.options = options
        self.sandbox = sandbox

    def applies(self, task: Task) -> bool:
        """Whether this verifier can judge ``task`` (else the task runs without one)."""
        return task.kind in self.kinds

    def bind(self, task: Task) -> LoopVerifier:
        """The verifier for ``task`` (the full task, answer key included: only the oracle
        keeps it; loops get ``task.blind()``)."""
        return self

    @abstractmethod
    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        """Judge ``response`` to ``task``; may sample through ``ctx``."""


VERIFIERS: dict[str, type[LoopVerifier]] = {}
DEFAULTS: dict[str, str] = {"code": "visible-tests", "math": "self", "text": "self"}
"""The verifier a run uses per task kind when ``--verifier`` is ``auto``; see docs/verifiers.md."""

AUTO = "auto"


def register(cls: type[LoopVerifier]) -> type[LoopVerifier]:
    """Add an in-loop verifier class to the registry (usable as a decorator)."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    VERIFIERS[cls.name] = cls
    return cls


def verifier_names() -> list[str]:
    return [AUTO, *sorted(VERIFIERS)]


def check_verifier(name: str, options: dict[str, Any] | None = None) -> BaseModel | None:
    """Validate a verifier name and its options before anything runs (one-line errors)."""
    if name == AUTO:
        if options:
            raise UserError("--verifier-option needs a --verifier NAME (not auto)")
        return None
    if name not in VERIFIERS:
        raise unknown("verifier", name, verifier_names())
    try:
        return VERIFIERS[name].Options(**(options or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"verifier {name} option {field}: {err['msg']}") from None


def resolve(name: str, kind: str) -> str:
    """The verifier name used for a task of ``kind`` under ``--verifier name``."""
    return DEFAULTS.get(kind, "self") if name == AUTO else name


def is_oracle(name: str) -> bool:
    cls = VERIFIERS.get(name)
    return bool(cls and cls.oracle)


def make_verifier(
    name: str, task: Task, *, options: dict[str, Any] | None = None, sandbox: str = "bwrap"
) -> LoopVerifier | None:
    """The in-loop verifier for ``task`` under ``--verifier name`` (None: the task has none)."""
    resolved = resolve(name, task.kind)
    if resolved == "none":
        return None
    opts = check_verifier(resolved, options if name != AUTO else None)
    verifier = VERIFIERS[resolved](opts or NoOptions(), sandbox=sandbox)
    return verifier.bind(task) if verifier.applies(task) else None


async def run_check(check: Check, task: Task, response: str) -> Verdict:
    """``check(task, response)`` off the event loop, unless it can answer without blocking.

    A thread hop costs a GIL hand-off and a wake-up of the loop: ~1 ms of CPU per task at 64
    in flight (benchmarks/throughput.py), more than the check itself for plain numbers.
    """
    quick = getattr(check, "quick", None)
    if quick is not None:
        v = quick(task, response)
        if v is not None:
            return v  # type: ignore[no-any-return]
    return await asyncio.to_thread(check, task, response)


async def run_verifier(
    verifier: LoopVerifier | Check, task: Task, response: str, ctx: VerifyContext | None = None
) -> Verdict:
    """Run an in-loop verifier (with the loop's context) or a blocking check."""
    if isinstance(verifier, LoopVerifier):
        if ctx is None:
            raise TypeError(f"verifier {verifier.name} needs the loop's context")
        return await verifier.verify(ctx, task, response)
    return await run_check(verifier, task, response)
