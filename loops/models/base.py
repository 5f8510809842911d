"""The model seam: what the client asks of a model, and what a model hands back.

A :class:`Model` turns one request (a conversation, its sampling settings, a number of
samples) into completions. Everything around the request — budget, cache, retries, timeout,
concurrency, tracing, fan-out when the model cannot sample ``n`` at once — is the client's
(``loopwright.loops.models.client``), so a model is only the call itself.

Implementations: ``LiteLLMModel`` (any litellm model string), ``HttpModel`` (direct
OpenAI-compatible JSON), ``EngineModel`` (the in-process llama.cpp engine, ``local/...``),
``FunctionModel`` (a Python function) and ``ScriptedModel`` (replies and faults for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from loopwright.traces.records import Role


@dataclass(frozen=True, slots=True)
class CallParams:
    """One request's sampling settings, and where in a run it was made."""

    temperature: float
    max_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    role: Role | None = None
    """The role the call is made in (generator, critic, judge, ...), when the caller said."""
    round: int | None = None
    task_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """One sample of one request.

    ``prompt_tokens`` is the request's prompt (the same on every completion of a request:
    the client charges it once). ``cost_usd`` is this completion's price; None lets the
    client price its tokens (in-process models cost 0).
    """

    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    logprob_mean: float | None = None


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What a function model sees of one sample it is asked for: the conversation, the
    request's settings and place in the run (``params.role``, ``params.round``,
    ``params.seed``, ...), how many samples the request asks for (``n``), and ``index``,
    this model's count of samples asked for before this one."""

    messages: list[dict[str, Any]]
    params: CallParams
    n: int
    index: int


@runtime_checkable
class Model(Protocol):
    """A model the client can sample from.

    ``name`` is the model string recorded in the trace (and part of the cache key).
    ``supports_n``: one request may ask for n>1 samples (else the client sends n requests
    of one, seeds ``seed + i``). ``in_process``: no network, so no timeout (a timed-out
    generation would keep running while its retry queues the same work) and no price.
    ``generate`` returns at least ``n`` completions, or raises a
    ``loopwright.loops.models.retry.ModelError`` for a provider failure (retried when it is a
    ``TransientModelError``); anything else it raises is a bug and propagates as such.
    A model object is picklable (a Ray run ships it to its workers).
    """

    @property
    def name(self) -> str: ...

    @property
    def supports_n(self) -> bool: ...

    @property
    def in_process(self) -> bool: ...

    async def generate(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Completion]: ...

    async def aclose(self) -> None: ...
