"""The scripted model: deterministic replies for tests of loops — yours and ours.

Use it through the model client like any other model::

    model = ScriptedModel(["draft 1", "critique", "draft 2"])
    client = ModelClient(model.register())      # model string "scripted/<name>"

Replies come from a list (consumed in order) or a callable ``(messages, call_index) -> str``.
A reply may be a :class:`Fault` to make the provider raise a litellm error (rate limit,
timeout, 500, connection, bad request) or return a malformed response.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "rate_limit", "timeout", "server_error", "connection", "bad_request", "malformed"
]


@dataclass(frozen=True)
class Fault:
    """An injected provider failure instead of a reply."""

    kind: FaultKind
    retry_after: float | None = None
    """Seconds a rate-limit response asks the client to wait (sent as Retry-After)."""


@dataclass
class ScriptedCall:
    """What the scripted model was asked."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    index: int


class ScriptExhausted(Exception):
    """The scripted model was called more often than it has replies."""


_registry: dict[str, ScriptedModel] = {}
_names = itertools.count()


@dataclass
class ScriptedModel:
    replies: Sequence[str | Fault] | Callable[[list[dict[str, Any]], int], str | Fault]
    name: str = ""
    supports_n: bool = True
    """Whether one request may carry n>1 (exercise the client's fan-out by setting False)."""
    calls: list[ScriptedCall] = field(default_factory=list)
    prompt_tokens_per_call: int | None = None
    """Fixed prompt token count; default counts whitespace-separated words."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if not self.name:
            self.name = f"m{next(_names)}"

    @property
    def model_string(self) -> str:
        return f"scripted/{self.name}"

    def register(self) -> str:
        """Make this model reachable as ``scripted/<name>``; returns that string."""
        _registry[self.name] = self
        return self.model_string

    def next_reply(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> str | Fault:
        with self._lock:
            index = len(self.calls)
            self.calls.append(ScriptedCall(messages=messages, params=params, index=index))
        if callable(self.replies):
            return self.replies(messages, index)
        if index >= len(self.replies):
            raise ScriptExhausted(
                f"scripted model {self.name!r} has {len(self.replies)} replies "
                f"but was called {index + 1} times; last prompt: {_last_user(messages)[:200]!r}"
            )
        return self.replies[index]

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        if self.prompt_tokens_per_call is not None:
            return self.prompt_tokens_per_call
        return sum(len(str(m.get("content", "")).split()) for m in messages)


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def lookup(name: str) -> ScriptedModel:
    try:
        return _registry[name]
    except KeyError:
        from loopwright.loops.errors import unknown

        raise unknown("scripted model", name, _registry) from None
