"""The model client: budgeted, cached, traced, retried sampling over litellm or the direct
OpenAI-compatible transport.

Async, bounded concurrency, tenacity retries on transient provider errors only (``retry``),
per-call timeout, token/cost accounting, n>1 in one request where the provider allows it
(fan-out otherwise), a call cache keyed on request content *and sample index*, a budget check
before every request, and one trace row per sample. Configuration and records are in
``config``; loopwright's own litellm providers in ``providers``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import litellm
from loopwright.loops.errors import ModelCallError, UserError
from loopwright.loops.models import http_transport, providers
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.config import (
    CallContext,
    ClientConfig,
    Sample,
    cache_key,
    supports_n,
    uses_http,
)
from loopwright.loops.models.parse import parse_json, parse_response
from loopwright.loops.models.retry import TooFewChoices, is_retryable
from loopwright.traces.queries import cache_lookup
from loopwright.traces.records import CacheRecord, CallRecord, new_id
from loopwright.traces.writer import TraceWriter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

providers.install()


class ModelClient:
    """Sample completions; every sample is budgeted, cached and traced."""

    def __init__(
        self, config: ClientConfig | str | None = None, *, writer: TraceWriter | None = None
    ) -> None:
        if isinstance(config, str) or config is None:
            config = ClientConfig(model=config or ClientConfig().model)
        self.config = config
        self.writer = writer
        self.http = uses_http(config.model, config.api_base, config.transport)
        self.n_supported = True if self.http else supports_n(config.model)
        self._free = config.model.split("/", 1)[0] in ("local", "scripted")
        self._price: tuple[float, float] | None = None  # USD per prompt / completion token
        # In-process models cannot hang on a network: a timeout would only abandon work the
        # engine goes on doing, and the retry would queue the same work again behind it.
        self._in_process = self._free
        self._db_had_cache: bool | None = None
        self._written_keys: set[str] = set()
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> str:
        return self.config.model

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:
            self._sem = asyncio.Semaphore(self.config.concurrency)
            self._sem_loop = loop
        return self._sem

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        budget: Budget | None = None,
        context: CallContext | None = None,
        role: str | None = None,
    ) -> list[Sample]:
        """Draw ``n`` completions. Raises BudgetExhausted before spending, ModelCallError after retries.

        The ``n`` calls are reserved in ``budget`` (and its parents) until they are charged, so
        concurrent requests cannot together overshoot a call limit each one fits alone.
        ``role`` names the calls' role in the trace when ``context`` does not (a tool's
        default, e.g. ``judge``).
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        if role is not None and (context is None or context.role is None):
            context = dataclasses.replace(context or CallContext(), role=role)
        if budget is None:
            return await self._sample(
                messages, n, temperature, max_tokens, seed, stop, None, context
            )
        await budget.areserve(n)
        try:
            return await self._sample(
                messages, n, temperature, max_tokens, seed, stop, budget, context
            )
        finally:
            budget.release(n)

    async def _sample(
        self,
        messages: list[dict[str, Any]],
        n: int,
        temperature: float | None,
        max_tokens: int | None,
        seed: int | None,
        stop: list[str] | None,
        budget: Budget | None,
        context: CallContext | None,
    ) -> list[Sample]:
        ctx = context or CallContext()
        params: dict[str, Any] = {
            "temperature": self.config.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
            "seed": seed,
            "stop": stop,
        }
        # Unseeded sampling at temperature > 0 is not replayable, so it is never cached.
        cacheable = (
            self.config.cache
            and self.writer is not None
            and (params["temperature"] == 0 or seed is not None)
        )
        key = (
            cache_key(f"{self.model}@{self.config.api_base or ''}", messages, params)
            if cacheable
            else None
        )
        samples: list[Sample] | None = None
        request_id = new_id()
        attempts = 0
        latency = 0.0
        if key is not None and self.writer is not None and self._may_be_cached(key):
            rows = await asyncio.to_thread(cache_lookup, self.writer.store, key, n)
            if rows is not None:
                samples = [self._from_cache(r, i) for i, r in enumerate(rows)]
        if samples is None:
            t0 = time.perf_counter()
            try:
                if n > 1 and self.n_supported:
                    try:
                        samples, attempts = await self._request(messages, params, n)
                    except ModelCallError as exc:
                        if not isinstance(exc.__cause__, TooFewChoices):
                            raise
                        self.n_supported = False  # the server ignores n: fan out from now on
                if n == 1:
                    samples, attempts = await self._request(messages, params, n)
                elif not self.n_supported:  # fan out: n requests of one sample, derived seeds
                    parts = await asyncio.gather(
                        *(
                            self._request(
                                messages, {**params, "seed": None if seed is None else seed + i}, 1
                            )
                            for i in range(n)
                        )
                    )
                    samples = []
                    for i, (got, tries) in enumerate(parts):
                        got[0].sample_index = i
                        samples.extend(got)
                        attempts = max(attempts, tries)
            except ModelCallError as exc:
                self._trace_failure(
                    request_id, messages, params, n, ctx, exc, time.perf_counter() - t0
                )
                raise
            latency = time.perf_counter() - t0
            assert samples is not None
            if key is not None and self.writer is not None:
                self._written_keys.add(key)
                for s in samples:
                    self.writer.write(
                        CacheRecord(cache_key=key, model=self.model, **s.output_fields())
                    )
        if budget is not None:
            budget.charge(
                sum(s.prompt_tokens for s in samples),
                sum(s.completion_tokens for s in samples),
                len(samples),
                sum(s.cost_usd for s in samples),
            )
        if self.writer is not None:
            msg_json = json.dumps(messages)
            for s in samples:
                self.writer.write(
                    self._call_record(
                        request_id,
                        ctx,
                        msg_json,
                        params,
                        n,
                        call_id=s.call_id,
                        node_id=s.node_id,
                        **s.output_fields(),
                        latency_s=latency,
                        attempts=attempts,
                        cache_hit=s.cache_hit,
                        cache_key=key,
                    )
                )
        return samples

    async def _once(
        self, messages: list[dict[str, Any]], kwargs: dict[str, Any], n: int
    ) -> list[Sample]:
        cfg = self.config
        timeout = None if self._in_process else cfg.timeout_s
        async with self._semaphore():
            # Backstop for providers (custom ones included) that ignore litellm's timeout.
            async with asyncio.timeout(None if timeout is None else timeout + 5):
                if self.http:
                    body = {k: v for k, v in kwargs.items() if k != "api_base"}
                    data = await http_transport.chat(
                        cfg.model, str(cfg.api_base), messages, body, timeout=timeout
                    )
                    return parse_json(data, n, self._token_cost)
                resp = await litellm.acompletion(
                    model=cfg.model,
                    messages=messages,
                    timeout=timeout,
                    num_retries=0,
                    max_retries=0,
                    **kwargs,
                )
        return parse_response(resp, n, self._cost(resp))

    async def _request(
        self, messages: list[dict[str, Any]], params: dict[str, Any], n: int
    ) -> tuple[list[Sample], int]:
        cfg = self.config
        kwargs: dict[str, Any] = {k: v for k, v in params.items() if v is not None}
        if n > 1:
            kwargs["n"] = n
        if cfg.api_base:
            kwargs["api_base"] = cfg.api_base
        attempts = 1
        try:
            # The first try skips the retry machinery: most calls succeed at once.
            try:
                return await self._once(messages, kwargs, n), 1
            except Exception as exc:
                if not is_retryable(exc) or cfg.retry.max_attempts == 1:
                    raise
                await asyncio.sleep(cfg.retry.delay(exc, 1))
            retrying = AsyncRetrying(
                retry=retry_if_exception(is_retryable),
                stop=stop_after_attempt(cfg.retry.max_attempts - 1),
                wait=lambda st: cfg.retry.delay(
                    st.outcome.exception() if st.outcome else None, st.attempt_number + 1
                ),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number + 1
                    samples = await self._once(messages, kwargs, n)
        except Exception as exc:
            if isinstance(exc, litellm.AuthenticationError) or (
                isinstance(exc, http_transport.EndpointError) and exc.status_code in (401, 403)
            ):
                raise UserError(
                    f"{cfg.model}: the provider rejected the API key ({_first_line(exc)})"
                ) from exc
            err = ModelCallError(
                f"{type(exc).__name__}: {_first_line(exc)} (after {attempts} attempt(s))"
            )
            err.attempts = attempts  # type: ignore[attr-defined]
            raise err from exc
        return samples, attempts

    def _token_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """litellm's price table, looked up once per client; unpriced models cost 0."""
        if self._free or self.model.startswith("hosted_vllm/"):
            return 0.0
        if self._price is None:
            try:
                p, c = litellm.cost_per_token(
                    model=self.model, prompt_tokens=1, completion_tokens=1
                )
                self._price = (float(p), float(c))
            except Exception:  # not in the cost map: "unknown", recorded as 0
                self._price = (0.0, 0.0)
        return prompt_tokens * self._price[0] + completion_tokens * self._price[1]

    async def aclose(self) -> None:
        """Release the http transport's connections (the loop's shutdown also does)."""
        if self.http:
            await http_transport.close_session()

    def _may_be_cached(self, key: str) -> bool:
        """Skip the DB round trip when the cache table was empty and this key is new."""
        if self.writer is None or self.writer.store is None:  # a Ray worker's record sink
            return False
        if self._db_had_cache is None:
            rows = self.writer.store.query("SELECT EXISTS (SELECT 1 FROM call_cache) AS any")
            self._db_had_cache = bool(rows[0]["any"])
        return bool(self._db_had_cache) or key in self._written_keys

    def _cost(self, resp: Any) -> float:
        if self._free:
            return 0.0
        hidden = getattr(resp, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")  # litellm already priced it
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=resp)
            except Exception:  # a model missing from the cost map costs "unknown", i.e. 0
                cost = 0.0
        return float(cost or 0.0)

    def _from_cache(self, row: dict[str, Any], i: int) -> Sample:
        return Sample(
            text=row["output"] or "",
            node_id=new_id(),
            call_id=new_id(),
            sample_index=i,
            finish_reason=row["finish_reason"],
            prompt_tokens=int(row["prompt_tokens"] or 0),
            completion_tokens=int(row["completion_tokens"] or 0),
            cost_usd=float(row["cost_usd"] or 0.0),
            logprob_mean=row["logprob_mean"],
            cache_hit=True,
        )

    def _trace_failure(
        self,
        request_id: str,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        n: int,
        ctx: CallContext,
        exc: Exception,
        latency: float,
    ) -> None:
        if self.writer is None:
            return
        self.writer.write(
            self._call_record(
                request_id,
                ctx,
                json.dumps(messages),
                params,
                n,
                latency_s=latency,
                attempts=getattr(exc, "attempts", self.config.retry.max_attempts),
                error=str(exc),
            )
        )

    def _call_record(
        self,
        request_id: str,
        ctx: CallContext,
        messages_json: str,
        params: dict[str, Any],
        n: int,
        **fields: Any,
    ) -> CallRecord:
        """One ``calls`` row of a request: where it belongs, what was asked, plus ``fields``."""
        return CallRecord(
            request_id=request_id, run_id=ctx.run_id, task_id=ctx.task_id, loop=ctx.loop,
            round=ctx.round, role=ctx.role, model=self.model, messages=messages_json,
            temperature=params["temperature"], max_tokens=params["max_tokens"], n=n,
            seed=params["seed"], **fields,
        )  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
