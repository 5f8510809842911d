"""loopwright's own litellm providers: ``local/`` (the in-process engine) and ``scripted/``
(test doubles with faults). Appended to ``litellm.custom_provider_map`` on import, keeping any
provider the user registered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import litellm
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage
from loopwright.loops.models import scripted
from loopwright.loops.models.local_model import LocalEngine, LocalModelError

_local_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="loopwright-local")


def _response(
    model: str, texts: Sequence[tuple[str, str, int, float | None]], prompt_tokens: int
) -> ModelResponse:
    choices = []
    for i, (text, finish, _tok, lp) in enumerate(texts):
        ch = Choices(index=i, finish_reason=finish, message=Message(role="assistant", content=text))
        ch._loopwright = {"completion_tokens": _tok, "logprob_mean": lp}  # type: ignore[attr-defined]
        choices.append(ch)
    completion = sum(t[2] for t in texts)
    return ModelResponse(
        model=model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
        ),
    )


class _LocalProvider(CustomLLM):
    async def acompletion(  # type: ignore[override]
        self, model: str, messages: list, optional_params: dict, **_: Any
    ) -> ModelResponse:
        engine = LocalEngine.get(model)
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(
                _local_pool, engine.generate, messages, optional_params
            )
        except LocalModelError as exc:
            raise litellm.BadRequestError(str(exc), model=model, llm_provider="local") from exc
        texts = [
            (c["text"], c["finish_reason"], c["completion_tokens"], c["logprob_mean"])
            for c in out["choices"]
        ]
        return _response(f"local/{model}", texts, out["prompt_tokens"])


def _raise_fault(fault: scripted.Fault, model: str) -> None:
    kind, p = fault.kind, "scripted"
    req = httpx.Request("POST", "http://scripted.invalid/v1/chat/completions")
    if kind == "rate_limit":
        headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
        resp = httpx.Response(429, headers=headers, request=req)
        raise litellm.RateLimitError(
            "scripted rate limit", llm_provider=p, model=model, response=resp
        )
    if kind == "timeout":
        raise litellm.Timeout("scripted timeout", model=model, llm_provider=p)
    if kind == "server_error":
        resp = httpx.Response(500, request=req)
        raise litellm.InternalServerError(
            "scripted 500", llm_provider=p, model=model, response=resp
        )
    if kind == "connection":
        raise litellm.APIConnectionError(
            "scripted connection reset", llm_provider=p, model=model, request=req
        )
    if kind == "bad_request":
        resp = httpx.Response(400, request=req)
        raise litellm.BadRequestError("scripted 400", model=model, llm_provider=p, response=resp)


class _ScriptedProvider(CustomLLM):
    async def acompletion(  # type: ignore[override]
        self, model: str, messages: list, optional_params: dict, **_: Any
    ) -> ModelResponse:
        sm = scripted.lookup(model)
        n = int(optional_params.get("n") or 1)
        if n > 1 and not sm.supports_n:
            raise litellm.BadRequestError("n>1 not supported", model=model, llm_provider="scripted")
        texts: list[tuple[str, str, int, float | None]] = []
        for _i in range(n):
            try:
                reply = sm.next_reply(messages, dict(optional_params))
            except scripted.ScriptExhausted as exc:  # a test bug, not a transient error
                raise litellm.BadRequestError(
                    str(exc), model=model, llm_provider="scripted"
                ) from exc
            if isinstance(reply, scripted.Fault):
                if reply.kind == "malformed":
                    return ModelResponse(model=f"scripted/{model}", choices=[])
                _raise_fault(reply, model)
            else:
                texts.append((reply, "stop", len(reply.split()), None))
        return _response(f"scripted/{model}", texts, sm.count_prompt_tokens(messages))


def install() -> None:
    """Append our providers to litellm's map, keeping any the user registered (and replacing
    only earlier copies of ours, e.g. after a module reload); quiet litellm's banners."""
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    ours: dict[str, CustomLLM] = {"local": _LocalProvider(), "scripted": _ScriptedProvider()}
    kept = [p for p in (litellm.custom_provider_map or []) if p.get("provider") not in ours]
    added: list[Any] = [{"provider": n, "custom_handler": h} for n, h in ours.items()]
    litellm.custom_provider_map = [*kept, *added]
