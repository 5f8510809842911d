"""The model client: budgeted, cached, traced, retried sampling from any ``Model``.

A ``Model`` (``base``) makes one request; around it the client does the rest: bounded
concurrency, retries of transient provider errors only (``retry``; the wait goes through an
injectable ``sleep``), a per-call timeout for models that are not in process, token/cost
accounting (pricing tokens the model did not price), n>1 in one request where the model
allows it (fan-out otherwise), a call cache keyed on request content *and sample index*, a
budget check before every request, and one trace row per sample. Which model serves a model
string is ``providers.resolve_model``'s choice; configuration and records are in ``config``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeGuard

from loopwright.loops.errors import ModelCallError, UserError
from loopwright.loops.models.base import CallParams, Completion, Model
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.config import (
    CallContext,
    ClientConfig,
    Sample,
    cache_key,
)
from loopwright.loops.models.parse import check_count
from loopwright.loops.models.pricing import token_cost
from loopwright.loops.models.providers import resolve_model
from loopwright.loops.models.retry import TooFewChoices, is_model_error, is_retryable
from loopwright.traces.queries import cache_has_rows, cache_lookup
from loopwright.traces.records import ROLES, CacheRecord, CallRecord, Role, new_id

if TYPE_CHECKING:
    from loopwright.traces.writer import TraceWriter

Sleep = Callable[[float], Awaitable[Any]]


class RequestFailed(ModelCallError):
    """A request failed with a provider error, after ``attempts`` tries."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ModelClient:
    """Sample completions; every sample is budgeted, cached and traced.

    ``model`` serves the calls (default: the one ``config.model`` names, see
    ``resolve_model``); given, its ``name`` is the model string of the trace. ``sleep`` waits
    between tries (default ``asyncio.sleep``; a test passes one that records the delays).
    """

    def __init__(
        self,
        config: ClientConfig | str | None = None,
        *,
        writer: TraceWriter | None = None,
        model: Model | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if isinstance(config, str) or config is None:
            default = model.name if model is not None else ClientConfig().model
            config = ClientConfig(model=config or default)
        if model is not None and config.model != model.name:
            config = config.model_copy(update={"model": model.name})
        self.config = config
        self.writer = writer
        self.backend: Model = model if model is not None else resolve_model(config)
        self.n_supported = self.backend.supports_n
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._db_had_cache: bool | None = None
        self._written_keys: set[str] = set()
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> str:
        """The model string, as the trace records it."""
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
        """Draw ``n`` completions. Raises BudgetExhausted before spending, ModelCallError
        after retries; a bug in the model (any error that is not a provider's) propagates.

        The ``n`` calls are reserved in ``budget`` (and its parents) until they are charged, so
        concurrent requests cannot together overshoot a call limit each one fits alone.
        ``role`` names the calls' role in the trace when ``context`` does not (a tool's
        default, e.g. ``judge``; tools name roles as plain strings).
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        if role is not None and (context is None or context.role is None):
            if not _is_role(role):
                raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
            context = dataclasses.replace(context or CallContext(), role=role)
        ctx = context or CallContext()
        params = CallParams(
            temperature=self.config.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.config.max_tokens,
            seed=seed,
            stop=None if stop is None else tuple(stop),
            role=ctx.role,
            round=ctx.round,
            task_id=ctx.task_id,
            run_id=ctx.run_id,
        )
        if budget is None:
            return await self._sample(messages, n, params, None, ctx)
        await budget.areserve(n)
        try:
            return await self._sample(messages, n, params, budget, ctx)
        finally:
            budget.release(n)

    async def _sample(
        self,
        messages: list[dict[str, Any]],
        n: int,
        params: CallParams,
        budget: Budget | None,
        ctx: CallContext,
    ) -> list[Sample]:
        # Unseeded sampling at temperature > 0 is not replayable, so it is never cached.
        cacheable = (
            self.config.cache
            and self.writer is not None
            and (params.temperature == 0 or params.seed is not None)
        )
        key = (
            cache_key(f"{self.model}@{self.config.api_base or ''}", messages, _key_params(params))
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
                samples, attempts = await self._draw(messages, params, n)
            except ModelCallError as exc:
                self._trace_failure(
                    request_id, messages, params, n, ctx, exc=exc, latency=time.perf_counter() - t0
                )
                raise
            latency = time.perf_counter() - t0
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

    async def _draw(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> tuple[list[Sample], int]:
        """``n`` fresh samples and the most tries one request took: one request when the model
        samples ``n`` at once, else (or once it answered an n>1 request with one choice) ``n``
        requests of one, seeds ``seed + i``."""
        if n > 1 and self.n_supported:
            try:
                return await self._request(messages, params, n)
            except RequestFailed as exc:
                if not isinstance(exc.__cause__, TooFewChoices):
                    raise
                self.n_supported = False  # the model ignores n: fan out from now on
        if n == 1:
            return await self._request(messages, params, 1)
        seed = params.seed
        parts = await asyncio.gather(
            *(
                self._request(
                    messages,
                    dataclasses.replace(params, seed=None if seed is None else seed + i),
                    1,
                )
                for i in range(n)
            )
        )
        samples: list[Sample] = []
        attempts = 0
        for i, (got, tries) in enumerate(parts):
            got[0].sample_index = i
            samples.extend(got)
            attempts = max(attempts, tries)
        return samples, attempts

    async def _once(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Sample]:
        model = self.backend
        async with self._semaphore():
            if model.in_process:
                # No timeout: it would only abandon work the engine goes on doing, and the
                # retry would queue the same work again behind it.
                got = await model.generate(messages, params, n)
            else:
                # A backstop for models that do not keep to their own timeout.
                async with asyncio.timeout(self.config.timeout_s + 5):
                    got = await model.generate(messages, params, n)
        check_count(len(got), n)
        return [self._fresh(i, c) for i, c in enumerate(got[:n])]

    async def _request(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> tuple[list[Sample], int]:
        policy = self.config.retry
        attempt = 1
        while True:
            try:
                return await self._once(messages, params, n), attempt
            except Exception as exc:
                if attempt < policy.max_attempts and is_retryable(exc):
                    await self._sleep(policy.delay(exc, attempt))
                    attempt += 1
                    continue
                if not is_model_error(exc):
                    raise  # a bug (in a model function, say), with its traceback
                if getattr(exc, "status_code", None) in (401, 403):
                    raise UserError(
                        f"{self.model}: the provider rejected the API key ({_first_line(exc)})"
                    ) from exc
                raise RequestFailed(
                    f"{type(exc).__name__}: {_first_line(exc)} (after {attempt} attempt(s))",
                    attempt,
                ) from exc

    def _fresh(self, i: int, c: Completion) -> Sample:
        """Choice ``i`` of a fresh answer: the request's prompt is charged on choice 0."""
        prompt_tokens = c.prompt_tokens if i == 0 else 0
        cost = c.cost_usd
        if cost is None:
            cost = (
                0.0
                if self.backend.in_process
                else token_cost(self.model, prompt_tokens, c.completion_tokens)
            )
        return Sample(
            text=c.text,
            node_id=new_id(),
            call_id=new_id(),
            sample_index=i,
            finish_reason=c.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=c.completion_tokens,
            cost_usd=cost,
            logprob_mean=c.logprob_mean,
            cache_hit=False,
        )

    async def aclose(self) -> None:
        """Release what the model holds (the http transport's connections; the loop's
        shutdown also closes those)."""
        await self.backend.aclose()

    def _may_be_cached(self, key: str) -> bool:
        """Skip the DB round trip when the cache table was empty and this key is new."""
        if self.writer is None or self.writer.store is None:  # a Ray worker's record sink
            return False
        if self._db_had_cache is None:
            self._db_had_cache = cache_has_rows(self.writer.store)
        return bool(self._db_had_cache) or key in self._written_keys

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
        params: CallParams,
        n: int,
        ctx: CallContext,
        *,
        exc: ModelCallError,
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
        params: CallParams,
        n: int,
        **fields: Any,
    ) -> CallRecord:
        """One ``calls`` row of a request: where it belongs, what was asked, plus ``fields``."""
        return CallRecord(
            request_id=request_id, run_id=ctx.run_id, task_id=ctx.task_id, loop=ctx.loop,
            round=ctx.round, role=ctx.role, model=self.model, messages=messages_json,
            temperature=params.temperature, max_tokens=params.max_tokens, n=n,
            seed=params.seed, **fields,
        )  # fmt: skip


def _key_params(params: CallParams) -> dict[str, Any]:
    """What of a request's settings its cache key covers (not where in a run it was made)."""
    return {
        "temperature": params.temperature,
        "max_tokens": params.max_tokens,
        "seed": params.seed,
        "stop": None if params.stop is None else list(params.stop),
    }


def _is_role(name: str) -> TypeGuard[Role]:
    return name in ROLES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
