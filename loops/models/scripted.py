"""The scripted model: deterministic replies for tests of loops — yours and ours.

Pass it to a run or a client like any model::

    model = ScriptedModel(["draft 1", "critique", "draft 2"])
    client = ModelClient(model=model)
    await run(RunConfig(loop="self-refine", tasks=..., model=model))

or register it and name it by its model string ``scripted/<name>`` (what a ``--plugin`` file
does for the CLI)::

    ScriptedModel(reply, name="mine").register()   # --model scripted/mine

Replies come from a list (consumed in order, one per sample) or a function of the call
(:class:`~loopwright.loops.models.base.ModelCall`: ``call.messages``, ``call.index``,
``call.params.role``, ``call.params.round``, ``call.params.seed``, ``call.n``). A reply may
be a :class:`Fault`: the provider failure it names is raised instead (rate limit, timeout,
500, connection, bad request, malformed answer), as the error types the client retries or
records.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from loopwright.loops.models.base import Completion, ModelCall
from loopwright.loops.models.function_model import FunctionModel, Reply
from loopwright.loops.models.retry import (
    BadRequest,
    ConnectionFailed,
    MalformedResponse,
    ModelTimeout,
    RateLimited,
    ServerError,
)

FaultKind = Literal[
    "rate_limit", "timeout", "server_error", "connection", "bad_request", "malformed"
]


@dataclass(frozen=True)
class Fault:
    """An injected provider failure instead of a reply."""

    kind: FaultKind
    retry_after: float | None = None
    """Seconds a rate-limit response asks the client to wait (its Retry-After)."""

    def error(self) -> Exception:
        """The error a provider failing this way raises."""
        if self.kind == "rate_limit":
            return RateLimited("scripted 429 rate limit", retry_after=self.retry_after)
        if self.kind == "timeout":
            return ModelTimeout("scripted timeout")
        if self.kind == "server_error":
            return ServerError("scripted 500 server error")
        if self.kind == "connection":
            return ConnectionFailed("scripted connection reset")
        if self.kind == "bad_request":
            return BadRequest("scripted 400 bad request")
        return MalformedResponse("scripted malformed answer: no choices")


class ScriptExhausted(BadRequest):
    """The scripted model was called more often than it has replies (a failed call, never
    retried: the script is what is wrong)."""


ScriptedReply = str | Completion | Fault
ScriptedFunction = Callable[[ModelCall], ScriptedReply | Awaitable[ScriptedReply]]

_registry: dict[str, ScriptedModel] = {}
_names = itertools.count()
PREFIX = "scripted/"


class ScriptedModel(FunctionModel):
    """Replies from a list or a function of the call; every call is kept in ``calls``.

    ``name`` defaults to a fresh ``scripted/m<k>``; a name without the ``scripted/`` prefix
    gets it. ``supports_n=False`` exercises the client's fan-out.
    """

    def __init__(
        self,
        replies: Sequence[ScriptedReply] | ScriptedFunction,
        *,
        name: str = "",
        supports_n: bool = True,
        prompt_tokens_per_call: int | None = None,
    ) -> None:
        if not name:
            name = f"m{next(_names)}"
        name = name if name.startswith(PREFIX) else PREFIX + name
        super().__init__(
            self._scripted_reply,
            name=name,
            supports_n=supports_n,
            prompt_tokens_per_call=prompt_tokens_per_call,
        )
        self.replies = replies
        self.calls: list[ModelCall] = []

    def register(self) -> str:
        """Make this model reachable by its model string; returns that string."""
        _registry[self.name.removeprefix(PREFIX)] = self
        return self.name

    def record(self, call: ModelCall) -> None:
        self.calls.append(call)

    def _scripted_reply(self, call: ModelCall) -> Reply | Awaitable[Reply]:
        if not callable(self.replies):
            if call.index >= len(self.replies):
                raise ScriptExhausted(
                    f"scripted model {self.name!r} has {len(self.replies)} replies but was "
                    f"called {call.index + 1} times; last prompt: "
                    f"{_last_user(call.messages)[:200]!r}"
                )
            return _unfault(self.replies[call.index])
        got = self.replies(call)
        return _unfault_later(got) if inspect.isawaitable(got) else _unfault(got)


def _unfault(reply: ScriptedReply) -> Reply:
    """``reply``, or the error its Fault names raised."""
    if isinstance(reply, Fault):
        raise reply.error()
    return reply


async def _unfault_later(reply: Awaitable[ScriptedReply]) -> Reply:
    return _unfault(await reply)


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def lookup(name: str) -> ScriptedModel:
    """The model registered as ``scripted/<name>``."""
    try:
        return _registry[name]
    except KeyError:
        from loopwright.loops.errors import unknown

        raise unknown("scripted model", name, _registry) from None
