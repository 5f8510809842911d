"""A direct client for OpenAI-compatible chat-completions endpoints (vLLM, SGLang, llama.cpp),
and :class:`HttpModel`, the model that uses it.

litellm spends ~10 ms of CPU on every call (parameter mapping, response objects, logging
tasks); on two cores that caps a run at ~60 calls/s however fast the server is. For a
self-hosted OpenAI-compatible server nothing of that is needed: the request is the OpenAI
JSON body and the answer is the OpenAI JSON answer. This module posts it with one shared
aiohttp session per event loop (~1 ms of CPU per call). ``benchmarks/throughput.py`` measures
both paths. aiohttp is imported on the first request.

Errors are raised as ``EndpointError`` (an HTTP status, with the response headers so that a
Retry-After is honoured), ``EndpointConnectionError``, ``EndpointGarbage`` (all model errors,
see ``retry``) or ``asyncio.TimeoutError``; the model client decides what is retried.
Nothing here logs a request, a reply or a key.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from loopwright.loops.models.base import CallParams, Completion
from loopwright.loops.models.parse import parse_json
from loopwright.loops.models.retry import ConnectionFailed, MalformedResponse, ModelError

if TYPE_CHECKING:
    import aiohttp

# Providers whose wire format is OpenAI's chat completions, and where their key lives.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "hosted_vllm": ("HOSTED_VLLM_API_KEY",),
}


class EndpointError(ModelError):
    """The endpoint answered with an HTTP error status (retried on 408, 429 and 5xx)."""

    def __init__(self, status_code: int, message: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.headers = dict(headers)


class EndpointConnectionError(ConnectionFailed):
    """The endpoint could not be reached, or dropped the connection."""


class EndpointGarbage(MalformedResponse):
    """The endpoint answered 2xx with a body that is not a chat completion."""


def supports(model: str, api_base: str | None) -> bool:
    """True when ``model`` at ``api_base`` speaks OpenAI's chat-completions JSON."""
    return api_base is not None and model.split("/", 1)[0] in PROVIDERS


def api_key(model: str) -> str | None:
    for var in PROVIDERS.get(model.split("/", 1)[0], ()):
        if os.environ.get(var):
            return os.environ[var]
    return None


_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_closers: dict[int, AsyncGenerator[None, None]] = {}
_starting: set[asyncio.Task[None]] = set()


async def _closer(s: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    """Started once per session; the loop finalises it at shutdown (``asyncio.run`` does), so
    the session is closed even when nobody called ``close_session``."""
    try:
        yield
    finally:
        _closers.pop(id(s), None)
        await close_session(s)


def session() -> aiohttp.ClientSession:
    """The running loop's shared session (created on first use)."""
    import aiohttp

    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        # The model client's semaphore bounds requests in flight; the pool must not.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        s = aiohttp.ClientSession(connector=connector)
        _sessions[loop] = s
        gen = _closer(s)
        _closers[id(s)] = gen
        task = loop.create_task(_start(gen))
        _starting.add(task)
        task.add_done_callback(_starting.discard)
    return s


async def _start(gen: AsyncGenerator[None, None]) -> None:
    await gen.__anext__()


async def close_session(s: aiohttp.ClientSession | None = None) -> None:
    """Close the running loop's session (or ``s``); safe to call twice."""
    if s is None:
        s = _sessions.get(asyncio.get_running_loop())
    if s is None:
        return
    for loop, known in list(_sessions.items()):
        if known is s:
            del _sessions[loop]
    gen = _closers.pop(id(s), None)
    if not s.closed:
        await s.close()
    if gen is not None:
        await gen.aclose()


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        text = str(msg if msg is not None else data)
    except ValueError:
        text = body.decode("utf-8", "replace")
    return " ".join(text.split())[:300] or "(empty body)"


async def chat(
    model: str,
    api_base: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    timeout: float | None,
) -> dict[str, Any]:
    """POST one chat completion; returns the decoded JSON answer.

    ``model`` is the litellm-style string (``hosted_vllm/NAME``); the server sees ``NAME``.
    ``params`` are OpenAI body fields (temperature, max_tokens, seed, stop, n).
    """
    import aiohttp

    body = {"model": model.split("/", 1)[1], "messages": messages, **params}
    headers = {"content-type": "application/json"}
    key = api_key(model)
    if key:
        headers["authorization"] = f"Bearer {key}"
    url = api_base.rstrip("/") + "/chat/completions"
    try:
        async with session().post(
            url,
            data=json.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise EndpointError(resp.status, _message(raw), resp.headers)
    except aiohttp.ClientResponseError as exc:
        raise EndpointError(exc.status, exc.message, exc.headers or {}) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's timeouts subclass both
            raise
        raise EndpointConnectionError(f"{type(exc).__name__}: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError:
        raise EndpointGarbage(f"not JSON: {raw[:80]!r}") from None
    if not isinstance(data, dict):
        raise EndpointGarbage(f"expected a JSON object, got {type(data).__name__}")
    return data


class HttpModel:
    """A model behind an OpenAI-compatible endpoint (``openai/NAME`` or ``hosted_vllm/NAME``
    with an ``api_base``), reached with :func:`chat`. A ``hosted_vllm/`` server is
    self-hosted and costs 0; an ``openai/`` model is priced by the client from its tokens."""

    in_process = False
    supports_n = True  # a server that ignores n answers with one choice: the client fans out

    def __init__(self, name: str, api_base: str, *, timeout_s: float | None = None) -> None:
        if not supports(name, api_base):
            raise ValueError(f"{name!r} at {api_base!r} is not an OpenAI-compatible endpoint")
        self.name = name
        self.api_base = api_base
        self.timeout_s = timeout_s
        self._priced = name.split("/", 1)[0] != "hosted_vllm"

    async def generate(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Completion]:
        body: dict[str, Any] = {"temperature": params.temperature, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop is not None:
            body["stop"] = list(params.stop)
        if n > 1:
            body["n"] = n
        data = await chat(self.name, self.api_base, messages, body, timeout=self.timeout_s)
        return parse_json(data, n, priced=self._priced)

    async def aclose(self) -> None:
        """Close the running loop's shared session (the loop's shutdown also does)."""
        await close_session()
