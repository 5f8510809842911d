"""Verifiers and graders written as plain functions.

``@verifier`` turns a function into a registered in-loop verifier (a ``LoopVerifier``
subclass: ``--verifier NAME`` runs it), ``@grader`` into a registered held-out ``Grader``::

    @verifier
    def answer_is_even(answer):            # parameters by name, any subset
        return answer is not None and int(answer) % 2 == 0

    @grader(name="exact")
    def exact(task, response):
        return response.strip() == task.reference

The function takes, by parameter name, any of ``task`` (the blind task for a verifier, the
keyed task for a grader), ``response`` (the whole text), ``answer`` (the answer part for the
task's kind: the final answer for math, the program for code, the stripped response for
text; None when a math response names no answer) and, for verifiers only, ``ctx`` (the
loop's ``VerifyContext``: ``ctx.sample(...)`` is budgeted and traced) and ``options`` (the
typed ``options=`` model). It may be ``async``. It returns:

- a ``bool``: passed, score 1.0 or 0.0;
- a ``float`` in [0, 1]: the score; passed when ``score >= threshold`` (0.5 unless given);
- a ``Verdict``: kept, with its ``verifier``/``version`` set to the function's.

The name defaults to the function's (underscores as hyphens), the version to a hash of the
function's source, so editing the function changes the version stored on its verdicts.
Anything else returned (None, a string, a score outside [0, 1]) is an error, and so is an
exception raised by the function: the runner fails that task with the traceback; it is never
a pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, overload

from loopwright.loops.errors import UserError
from loopwright.loops.options import NoOptions
from loopwright.loops.tasks import Task
from loopwright.loops.verify.base import (
    ALL_KINDS,
    LoopVerifier,
    Verdict,
    VerifyContext,
    register_verifier,
)
from loopwright.loops.verify.graders import extract_answer, register_grader
from loopwright.sandboxes import DEFAULT_BACKEND
from pydantic import BaseModel, ValidationError

VERIFIER_PARAMS: tuple[str, ...] = ("task", "response", "answer", "ctx", "options")
"""What a function verifier may take, by parameter name."""

GRADER_PARAMS: tuple[str, ...] = ("task", "response", "answer")
"""What a function grader may take, by parameter name."""

DEFAULT_THRESHOLD = 0.5
"""A float score passes at or above this unless the decorator says otherwise."""


def answer_of(task: Task, response: str) -> str | None:
    """The ``answer`` a function verifier or grader receives: the final answer for math,
    the program for code, the stripped response for text."""
    if task.kind == "text":
        return response.strip()
    return extract_answer(task, response)


@dataclass(frozen=True)
class _Function:
    """A user's function with what it takes, its name, version and pass threshold."""

    fn: Callable[..., Any]
    params: tuple[str, ...]
    name: str
    version: str
    threshold: float
    role: str  # "verifier" or "grader", for messages

    @classmethod
    def of(
        cls,
        fn: Callable[..., Any],
        *,
        role: str,
        allowed: tuple[str, ...],
        name: str | None,
        version: str | None,
        threshold: float,
    ) -> _Function:
        if not callable(fn) or isinstance(fn, type):
            raise TypeError(f"@{role} decorates a function, not {fn!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"@{role}: threshold must be in [0, 1], not {threshold}")
        label = getattr(fn, "__qualname__", repr(fn))
        params = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(
                    f"{role} {label}: parameter {p.name!r} must be an ordinary named "
                    f"parameter (the {role} passes {', '.join(allowed)} by name)"
                )
            if p.name not in allowed:
                raise TypeError(
                    f"{role} {label}: unknown parameter {p.name!r} (a {role} function takes "
                    f"any of {', '.join(allowed)}, by name)"
                )
            params.append(p.name)
        default_name = getattr(fn, "__name__", "").replace("_", "-").strip("-")
        if not (name or default_name) or (name is None and default_name == "<lambda>"):
            raise TypeError(f"@{role} on {label}: give it a name=")
        return cls(
            fn=fn,
            params=tuple(params),
            name=name or default_name,
            version=version or source_version(fn),
            threshold=threshold,
            role=role,
        )

    def arguments(self, task: Task, response: str, **more: Any) -> dict[str, Any]:
        given = {"task": task, "response": response, **more}
        if "answer" in self.params:
            given["answer"] = answer_of(task, response)
        return {p: given[p] for p in self.params}

    def verdict(self, result: Any, task: Task, response: str, t0: float) -> Verdict:
        """What the function returned as a Verdict with this function's name and version."""
        if type(result).__module__ == "numpy" and hasattr(result, "item"):
            result = result.item()  # a NumPy bool or float
        latency = time.perf_counter() - t0
        if isinstance(result, Verdict):
            return result.model_copy(
                update={
                    "verifier": self.name,
                    "version": self.version,
                    "answer": result.answer
                    if result.answer is not None
                    else answer_of(task, response),
                    "latency_s": result.latency_s or latency,
                }
            )
        if isinstance(result, bool):
            passed, score = result, float(result)
        elif isinstance(result, numbers.Real):
            score = float(result)
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise ValueError(
                    f"{self.role} {self.name} returned the score {result!r}: a float score "
                    "must be in [0, 1] (return a Verdict for other scales)"
                )
            passed = score >= self.threshold
        else:
            raise TypeError(
                f"{self.role} {self.name} returned {type(result).__name__} "
                f"({result!r:.80}): return a Verdict, a bool or a float score in [0, 1]"
            )
        return Verdict(
            passed=passed,
            score=score,
            answer=answer_of(task, response),
            verifier=self.name,
            version=self.version,
            latency_s=latency,
            details={"threshold": self.threshold} if not isinstance(result, bool) else {},
        )


def source_version(fn: Callable[..., Any]) -> str:
    """A version for ``fn``: a hash of its source (of its bytecode where the source cannot
    be read, e.g. a function typed at a prompt)."""
    try:
        blob = inspect.getsource(fn).encode("utf-8", "surrogatepass")
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        blob = (code.co_code + repr(code.co_consts).encode()) if code else repr(fn).encode()
    return "fn-" + hashlib.sha256(blob).hexdigest()[:12]


class FunctionVerifier(LoopVerifier[Any]):
    """An in-loop verifier made by ``@verifier`` from a function (``function`` below)."""

    function: ClassVar[_Function]
    version: ClassVar[str]
    description = "a function verifier"

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        f = self.function
        t0 = time.perf_counter()
        result = f.fn(**f.arguments(task, response, ctx=ctx, options=self.options))
        if inspect.isawaitable(result):
            result = await result
        return f.verdict(result, task, response, t0)


class FunctionGrader:
    """A held-out grader made by ``@grader`` from a function; it receives the keyed task.

    Calling it grades (blocking; an ``async`` function runs on its own event loop), so it
    can be tried by hand: ``exact(task, response)``.
    """

    def __init__(self, function: _Function, kinds: tuple[str, ...], description: str) -> None:
        self.function = function
        self.name = function.name
        self.version = function.version
        self.kinds = kinds
        self.description = description
        self.__wrapped__ = function.fn
        self.__doc__ = function.fn.__doc__

    def applies(self, task: Task) -> bool:
        return task.kind in self.kinds

    def __call__(self, task: Task, response: str) -> Verdict:
        f = self.function
        t0 = time.perf_counter()
        result = f.fn(**f.arguments(task, response))
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return f.verdict(result, task, response, t0)

    def __repr__(self) -> str:
        return f"<grader {self.name} {self.version}>"


def _description(fn: Callable[..., Any], given: str | None, role: str) -> str:
    if given:
        return given
    doc = inspect.getdoc(fn)
    return doc.strip().splitlines()[0] if doc else f"a function {role}"


def _kinds(kinds: tuple[str, ...] | list[str] | str, role: str) -> tuple[str, ...]:
    out = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in out if k not in ALL_KINDS]
    if bad or not out:
        raise ValueError(f"@{role}: kinds must be some of {', '.join(ALL_KINDS)}, not {out}")
    return out


def function_verifier(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    version: str | None = None,
    kinds: tuple[str, ...] | list[str] | str = ALL_KINDS,
    options: type[BaseModel] = NoOptions,
    threshold: float = DEFAULT_THRESHOLD,
    description: str | None = None,
) -> type[FunctionVerifier]:
    """The ``LoopVerifier`` class of ``fn`` (not registered; ``@verifier`` registers it)."""
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise TypeError(f"@verifier: options must be a pydantic model class, not {options!r}")
    f = _Function.of(
        fn, role="verifier", allowed=VERIFIER_PARAMS, name=name, version=version,
        threshold=threshold,
    )  # fmt: skip
    namespace = {
        "name": f.name,
        "version": f.version,
        "description": _description(fn, description, "verifier"),
        "kinds": _kinds(kinds, "verifier"),
        "Options": options,
        "function": f,
        "__module__": getattr(fn, "__module__", __name__),
        "__qualname__": getattr(fn, "__qualname__", f.name),
        "__doc__": fn.__doc__,
        "__wrapped__": fn,
    }
    cls_name = getattr(fn, "__name__", "function_verifier")
    return type(cls_name, (FunctionVerifier,), namespace)


@overload
def verifier(fn: Callable[..., Any], /) -> type[FunctionVerifier]: ...


@overload
def verifier(
    *,
    name: str | None = None,
    version: str | None = None,
    kinds: tuple[str, ...] | list[str] | str = ALL_KINDS,
    options: type[BaseModel] = NoOptions,
    threshold: float = DEFAULT_THRESHOLD,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], type[FunctionVerifier]]: ...


def verifier(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    version: str | None = None,
    kinds: tuple[str, ...] | list[str] | str = ALL_KINDS,
    options: type[BaseModel] = NoOptions,
    threshold: float = DEFAULT_THRESHOLD,
    description: str | None = None,
) -> type[FunctionVerifier] | Callable[[Callable[..., Any]], type[FunctionVerifier]]:
    """Make ``fn`` a registered in-loop verifier (``--verifier NAME``); see the module text.

    ``kinds``: the task kinds it judges (others run without a verifier); ``options``: a
    pydantic model of its ``--verifier-option``s, passed as ``options``; ``threshold``: the
    score a float return needs to pass.
    """

    def make(f: Callable[..., Any]) -> type[FunctionVerifier]:
        cls = function_verifier(
            f, name=name, version=version, kinds=kinds, options=options, threshold=threshold,
            description=description,
        )  # fmt: skip
        register_verifier(cls)
        return cls

    return make(fn) if fn is not None else make


@overload
def grader(fn: Callable[..., Any], /) -> FunctionGrader: ...


@overload
def grader(
    *,
    name: str | None = None,
    version: str | None = None,
    kinds: tuple[str, ...] | list[str] | str = ALL_KINDS,
    threshold: float = DEFAULT_THRESHOLD,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], FunctionGrader]: ...


def grader(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    version: str | None = None,
    kinds: tuple[str, ...] | list[str] | str = ALL_KINDS,
    threshold: float = DEFAULT_THRESHOLD,
    description: str | None = None,
) -> FunctionGrader | Callable[[Callable[..., Any]], FunctionGrader]:
    """Make ``fn`` a registered held-out grader: it receives the keyed task (reference,
    hidden tests, every metadata key); see the module text. ``kinds``: the task kinds it
    grades (others get no graded verdict)."""

    def make(f: Callable[..., Any]) -> FunctionGrader:
        function = _Function.of(
            f, role="grader", allowed=GRADER_PARAMS, name=name, version=version,
            threshold=threshold,
        )  # fmt: skip
        g = FunctionGrader(
            function, _kinds(kinds, "grader"), _description(f, description, "grader")
        )
        register_grader(g)
        return g

    return make(fn) if fn is not None else make


def as_verifier(
    obj: LoopVerifier[Any] | type[LoopVerifier[Any]] | Callable[..., Any],
    *,
    options: dict[str, Any] | None = None,
    sandbox: str = DEFAULT_BACKEND,
) -> LoopVerifier[Any]:
    """An in-loop verifier from what a user hands over: a ``LoopVerifier`` instance (as is),
    a ``LoopVerifier`` class (made with ``options``), or a function, decorated or plain (a
    plain one is wrapped as ``@verifier`` would, without registering it). Bind it to each
    task (``bind``) before use, as ``make_verifier`` does."""
    if isinstance(obj, LoopVerifier):
        if options:
            raise UserError(
                f"verifier options go with a verifier class or function, not an instance "
                f"of {type(obj).__name__}: construct it with its options"
            )
        return obj
    cls = obj if isinstance(obj, type) else None
    if cls is None:
        if not callable(obj):
            raise TypeError(f"not a verifier: {obj!r}")
        cls = function_verifier(obj)
    if not issubclass(cls, LoopVerifier):
        raise TypeError(f"{cls.__name__} is not a LoopVerifier subclass")
    try:
        opts = cls.Options(**(options or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"verifier {cls.name} option {field}: {err['msg']}") from None
    return cls(opts, sandbox=sandbox)


__all__ = [
    "DEFAULT_THRESHOLD",
    "GRADER_PARAMS",
    "VERIFIER_PARAMS",
    "FunctionGrader",
    "FunctionVerifier",
    "answer_of",
    "as_verifier",
    "function_verifier",
    "grader",
    "source_version",
    "verifier",
]
