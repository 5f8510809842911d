"""Verdicts, the two verification roles, and the registry of in-loop verifiers.

A *grader* (``Grader``: ``grader(task, response) -> Verdict``, blocking) compares a response
with the task's answer key and runs after the loop, held out. An *in-loop verifier*
(``LoopVerifier``) is what a loop may see and optimise; it gets the task without its answer
key (``Task.blind()``) unless it is the ``oracle`` (the grader's own check, opt-in, for
upper-bound studies). Verifiers that ask a model (``self``, ``consistency``, ``judge``)
sample through the loop's context, so their calls are budgeted, cached and traced like every
other call.

In-loop verifiers live in a registry like loops do: ``register_verifier(MyVerifier)`` (or the
``@verifier`` decorator on a function) and ``--verifier NAME``.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.options import NoOptions
from loopwright.loops.tasks import TASK_KINDS, Task
from loopwright.tools.verdict import Verdict
from loopwright.traces.records import VerdictRecord
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from loopwright.loops.models.client import ModelClient
    from loopwright.loops.models.config import Sample
    from loopwright.traces.records import Role

ALL_KINDS: tuple[str, ...] = TASK_KINDS
"""Every task kind (``Task.kind``): what a verifier or grader judges unless it names some."""

Stage = Literal["in_loop", "graded"]
"""Where a verdict was reached: inside the loop (a verifier) or after it (the grader)."""

OptionsT = TypeVar("OptionsT", bound=BaseModel)


def verdict_record(
    v: Verdict, *, run_id: str, task_id: str, node_id: str | None, stage: Stage
) -> VerdictRecord:
    """The ``verdicts`` row of ``v`` for a node of a run."""
    return VerdictRecord(
        run_id=run_id,
        task_id=task_id,
        node_id=node_id,
        stage=stage,
        verifier=v.verifier,
        verifier_version=v.version,
        passed=v.passed,
        score=v.score,
        feedback=v.feedback,
        details=json.dumps({"answer": v.answer, **v.details}),
        latency_s=v.latency_s,
    )


class Grader(Protocol):
    """The held-out grader: a blocking check of a response against the task's answer key.

    It receives the keyed task (reference, hidden tests, every metadata key). A grader may
    also have ``applies(task) -> bool`` (whether it can grade ``task``; default: yes) and
    ``quick(task, response) -> Verdict | None`` (a verdict without blocking, or None).
    """

    name: str

    def __call__(self, task: Task, response: str) -> Verdict: ...


class VerifyContext(Protocol):
    """What an in-loop verifier may use: the loop's sampling (budgeted and traced), the
    clients by role, and a per-task memo. ``LoopContext`` is one."""

    task: Task
    memo: dict[str, Any]

    def client_for(self, role: Role) -> ModelClient: ...

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        role: Role,
        round_: int,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[Sample]: ...

    def call_seed(self, role: Role, round_: int, extra: int = 0) -> int: ...


class LoopVerifier(ABC, Generic[OptionsT]):
    """An in-loop verifier. Subclasses set ``name``, ``kinds`` and ``Options`` (and name it
    as the type parameter, ``class Mine(LoopVerifier[MyOptions])``, so ``self.options`` is
    typed).

    ``oracle`` is True only for verifiers that read the task's answer key; everything that
    shows a run that used one says so.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ALL_KINDS
    oracle: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: OptionsT, *, sandbox: str = "bwrap") -> None:
        self.options: OptionsT = options
        self.sandbox = sandbox

    def applies(self, task: Task) -> bool:
        """Whether this verifier can judge ``task`` (else the task runs without one)."""
        return task.kind in self.kinds

    def bind(self, task: Task) -> LoopVerifier[OptionsT]:
        """The verifier for ``task`` (the keyed task, answer key included: only the oracle
        keeps it; loops get ``task.blind()``). Returns a verifier for that task alone when
        it holds per-task state, so one instance may serve many tasks."""
        return self

    @abstractmethod
    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        """Judge ``response`` to ``task`` (the blind view); may sample through ``ctx``."""


VERIFIERS: dict[str, type[LoopVerifier[Any]]] = {}
DEFAULTS: dict[str, str] = {"code": "visible-tests", "math": "self", "text": "self"}
"""The verifier a run uses per task kind when ``--verifier`` is ``auto``; see docs/verifiers.md."""

AUTO = "auto"


V = TypeVar("V", bound=type[LoopVerifier[Any]])


def register_verifier(cls: V) -> V:
    """Add an in-loop verifier class to the registry (usable as a class decorator);
    ``--verifier NAME`` then runs it."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if cls.name == AUTO:
        raise TypeError(f"{cls.__name__}: {AUTO!r} is reserved (the default per task kind)")
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
) -> LoopVerifier[Any] | None:
    """The in-loop verifier for ``task`` under ``--verifier name`` (None: the task has none)."""
    resolved = resolve(name, task.kind)
    if resolved == "none":
        return None
    opts = check_verifier(resolved, options if name != AUTO else None)
    verifier = VERIFIERS[resolved](opts or NoOptions(), sandbox=sandbox)
    return verifier.bind(task) if verifier.applies(task) else None


async def run_grader(grader: Grader, task: Task, response: str) -> Verdict:
    """``grader(task, response)`` off the event loop, unless it can answer without blocking.

    A thread hop costs a GIL hand-off and a wake-up of the loop: ~1 ms of CPU per task at 64
    in flight (benchmarks/throughput.py), more than the check itself for plain numbers.
    """
    quick = getattr(grader, "quick", None)
    v: Verdict | None = quick(task, response) if quick is not None else None
    if v is None:
        v = await asyncio.to_thread(grader, task, response)
    return signed(v, grader)


async def run_verifier(
    verifier: LoopVerifier[Any], task: Task, response: str, ctx: VerifyContext
) -> Verdict:
    """Run an in-loop verifier on ``response`` with the loop's context."""
    return signed(await verifier.verify(ctx, task, response), verifier)


def signed(v: Verdict, by: Grader | LoopVerifier[Any]) -> Verdict:
    """``v`` with the name (and version, else ``unversioned``) of who judged, where the
    verdict left them empty: no verdict row is stored without them."""
    if v.verifier and v.version:
        return v
    version = v.version or getattr(by, "version", None) or "unversioned"
    return v.model_copy(update={"verifier": v.verifier or by.name, "version": str(version)})
