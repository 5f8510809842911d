"""A Python function as a model: it sees each sample's whole call and returns its text.

    def model(call: ModelCall) -> str:
        if call.params.role == "critic":
            return "Looks right."
        return f"The answer is {call.params.seed or 0}."

    client = ModelClient(model=FunctionModel(model))

The function is called once per sample with a :class:`ModelCall` (the messages, the request's
settings and place in the run, ``n`` and the sample's ``index``) and returns a ``str`` or a
:class:`Completion` (for token counts or a logprob of its own), or an awaitable of one. It runs
on the event loop: a slow function should be ``async``. To fail a call the way a provider
does, raise a ``loopwright.loops.models.retry.ModelError`` (a ``TransientModelError`` is
retried); anything else it raises, or a reply of another type, is a bug and propagates with
its traceback.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from loopwright.loops.models.base import CallParams, Completion, ModelCall
from loopwright.loops.models.retry import BadRequest

Reply = str | Completion
ModelFunction = Callable[[ModelCall], Reply | Awaitable[Reply]]


class FunctionModel:
    """A model answered by ``fn(call) -> str | Completion``; in-process and free.

    ``name`` is the model string of the trace and the call cache (default
    ``function/<module>.<name of fn>``): two functions that answer differently need two names.
    ``supports_n``: whether one request may carry n>1 (else the client fans out).
    ``prompt_tokens_per_call``: the prompt token count of every request (default: the words
    of its messages). A ``str`` reply counts one completion token per word.
    """

    in_process = True

    def __init__(
        self,
        fn: ModelFunction,
        *,
        name: str | None = None,
        supports_n: bool = True,
        prompt_tokens_per_call: int | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or f"function/{_qualname(fn)}"
        self.supports_n = supports_n
        self.prompt_tokens_per_call = prompt_tokens_per_call
        self._count = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    async def generate(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Completion]:
        if n > 1 and not self.supports_n:
            raise BadRequest(f"model {self.name!r} serves one sample a request, not n={n}")
        prompt_tokens = self.count_prompt_tokens(messages)
        out: list[Completion] = []
        for _ in range(n):
            call = self._next_call(messages, params, n)
            reply = self.fn(call)
            if inspect.isawaitable(reply):
                reply = await reply
            out.append(self._completion(reply, prompt_tokens))
        return out

    def _next_call(self, messages: list[dict[str, Any]], params: CallParams, n: int) -> ModelCall:
        with self._lock:
            call = ModelCall(messages=messages, params=params, n=n, index=self._count)
            self._count += 1
            self.record(call)
        return call

    def record(self, call: ModelCall) -> None:
        """Called with every call, in index order, before it is answered (a subclass may
        keep them)."""

    def _completion(self, reply: object, prompt_tokens: int) -> Completion:
        if isinstance(reply, Completion):
            return reply
        if isinstance(reply, str):
            return Completion(
                text=reply,
                finish_reason="stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=len(reply.split()),
                cost_usd=0.0,
            )
        raise TypeError(
            f"model {self.name!r} returned {type(reply).__name__} {reply!r:.80}: "
            "a model function returns a str or a Completion"
        )

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        if self.prompt_tokens_per_call is not None:
            return self.prompt_tokens_per_call
        return sum(len(str(m.get("content", "")).split()) for m in messages)

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _qualname(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}" if module else name
