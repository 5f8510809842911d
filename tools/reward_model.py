"""A reward model over HTTP: scores (question, answer) on an OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any, Literal

from loopwright.tools.errors import UserError, unknown
from loopwright.tools.judgements import VERSION
from loopwright.tools.verdict import Verdict
from pydantic import BaseModel, ConfigDict, Field

RewardEndpoint = Literal["pooling", "classify", "chat"]
_FROZEN = ConfigDict(frozen=True)


class RewardScore(BaseModel):
    """A reward model's score of one answer."""

    model_config = _FROZEN

    model: str = Field(description="The reward model's name on the server.")
    endpoint: RewardEndpoint = Field(description="The response shape that was asked for.")
    score: float | None = Field(
        description="The reward, on the model's own scale; None on failure."
    )
    parsed: bool = Field(description="True when a numeric score was found.")
    raw: str = Field(description="The response body (first 2000 characters).")
    attempts: int = Field(description="HTTP requests made, retries included.")
    answer_chars: int = Field(description="Length of the scored answer.")
    error: str | None = Field(None, description="Why there is no score.")
    latency_s: float = Field(0.0, description="Wall time, retries included.")

    def to_verdict(self, threshold: float = 0.0) -> Verdict:
        """Passed when the reward reaches ``threshold``; the verdict score is the raw reward."""
        return Verdict(
            passed=self.score is not None and self.score >= threshold,
            score=self.score if self.score is not None else 0.0,
            answer=None if self.score is None else f"{self.score:.6g}",
            feedback=f"reward {self.score:.4g}"
            if self.score is not None
            else f"no reward: {self.error}",
            verifier="reward-model",
            version=f"{VERSION}@{self.model}",
            latency_s=self.latency_s,
        )


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.retry_after = retry_after


_PATHS: dict[str, str] = {
    "pooling": "/pooling",
    "classify": "/classify",
    "chat": "/chat/completions",
}


class RewardModel:
    """Score (question, answer) with a reward model on an OpenAI-compatible server.

    Accepted shapes (``endpoint=``):

    - ``pooling`` — vLLM ``POST {api_base}/pooling`` with chat ``messages``; the reward is the
      last value of ``data[0].data`` (a number, a list, or per-token rows: last row, last value).
    - ``classify`` — vLLM ``POST {api_base}/classify`` with ``input`` = question and answer; the
      reward is the last of ``data[0].probs`` (one class: its value; two: the positive class).
    - ``chat`` — ``POST {api_base}/chat/completions`` with user/assistant messages (NVIDIA
      NIM-style reward models). The reward is the message content when it is a number, else
      the ``score_key`` of ``"name:value, ..."`` content (default ``reward``, then
      ``helpfulness``, then the first), else ``choices[0].logprobs.content[0].logprob``.

    Any response with a top-level numeric ``score`` or ``reward`` is read from there. A
    trailing ``/v1`` is dropped from ``api_base`` for pooling/classify (vLLM serves them at
    the root). Retries 429, 5xx, timeouts and connection errors; honours Retry-After.
    """

    def __init__(
        self,
        api_base: str,
        model: str,
        api_key_env: str | None = None,
        *,
        endpoint: RewardEndpoint = "pooling",
        score_key: str | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        if endpoint not in _PATHS:
            raise unknown("reward endpoint", endpoint, _PATHS)
        if not api_base.startswith(("http://", "https://")):
            raise UserError(
                f"reward model api_base must start with http:// or https://, got {api_base!r}"
            )
        self.api_base = api_base.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.endpoint = endpoint
        self.score_key = score_key
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._key()  # fail fast on a missing key

    def __repr__(self) -> str:  # the key is never part of it
        return f"RewardModel({self.url!r}, model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def url(self) -> str:
        base = self.api_base
        if self.endpoint != "chat" and base.endswith("/v1"):
            base = base[: -len("/v1")]
        return base + _PATHS[self.endpoint]

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UserError(
                f"reward model {self.model} needs ${self.api_key_env} in the environment: "
                "export it, or pass api_key_env=None for an open endpoint"
            )
        return key

    def _body(self, question: str, answer: str) -> dict[str, Any]:
        if self.endpoint == "classify":
            return {"model": self.model, "input": f"{question}\n\n{answer}"}
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return {"model": self.model, "messages": messages}

    def _wait(self, exc: BaseException | None, attempt: int) -> float:
        hinted = exc.retry_after if isinstance(exc, _RetryableStatus) else None
        if hinted is not None:
            return min(hinted, self.backoff_max_s)
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))

    async def score(self, question: str, answer: str, budget: Any = None) -> RewardScore:
        """The reward for ``answer``. Transport failures give score=None; a bad key or URL raises."""
        import httpx
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if budget is not None:
            budget.check()
        t0 = time.perf_counter()
        attempts = 0

        def result(score: float | None, raw: str, error: str | None) -> RewardScore:
            return RewardScore(
                model=self.model, endpoint=self.endpoint, score=score, parsed=score is not None,
                raw=raw[:2000], attempts=attempts, answer_chars=len(answer), error=error,
                latency_s=time.perf_counter() - t0,
            )  # fmt: skip

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
            stop=stop_after_attempt(self.max_attempts),
            wait=lambda st: self._wait(
                st.outcome.exception() if st.outcome else None, st.attempt_number
            ),
            reraise=True,
        )
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        resp = await http.post(
                            self.url, json=self._body(question, answer), headers=headers
                        )
                        if resp.status_code == 429 or resp.status_code >= 500:
                            raise _RetryableStatus(resp.status_code, _retry_after(resp.headers))
        except (_RetryableStatus, httpx.TransportError) as exc:
            return result(None, "", f"{type(exc).__name__}: {exc} (after {attempts} attempt(s))")
        finally:
            if budget is not None and attempts:
                budget.charge(0, 0, 1, 0.0)
        if resp.status_code in (401, 403):
            hint = f"check ${self.api_key_env}" if self.api_key_env else "pass api_key_env=NAME"
            raise UserError(
                f"reward model at {self.url} refused the request (HTTP {resp.status_code}): {hint}"
            )
        if resp.status_code == 404:
            raise UserError(
                f"no reward endpoint at {self.url} (HTTP 404): check api_base and endpoint= "
                f"(one of {', '.join(_PATHS)})"
            )
        if resp.status_code >= 400:
            return result(None, resp.text, f"HTTP {resp.status_code}: {resp.text.strip()[:200]}")
        try:
            value = _extract_reward(self.endpoint, resp.json(), self.score_key)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return result(
                None, resp.text, f"no numeric reward in the {self.endpoint} response ({exc!r})"
            )
        return result(value, resp.text, None)

    def score_sync(self, question: str, answer: str, **kw: Any) -> RewardScore:
        """:meth:`score` for scripts (not inside a running event loop)."""
        return asyncio.run(self.score(question, answer, **kw))


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _last_value(x: Any) -> float:
    while isinstance(x, list):
        x = x[-1]
    if not _is_number(x):
        raise ValueError(f"not a number: {x!r}")
    return float(x)


def _extract_reward(endpoint: str, body: Any, score_key: str | None) -> float:
    for k in ("score", "reward"):
        if isinstance(body, dict) and _is_number(body.get(k)):
            return float(body[k])
    if endpoint == "pooling":
        return _last_value(body["data"][0]["data"])
    if endpoint == "classify":
        item = body["data"][0]
        return _last_value(item["probs"] if "probs" in item else item["score"])
    choice = body["choices"][0]
    content = ((choice.get("message") or {}).get("content") or "").strip()
    try:
        return float(content)
    except ValueError:
        pass
    pairs = {
        k.strip().lower(): float(v)
        for k, v in re.findall(
            r"([A-Za-z_][\w \-]*?)\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", content
        )
    }
    if pairs:
        key = score_key or next(
            (k for k in ("reward", "helpfulness") if k in pairs), next(iter(pairs))
        )
        if key not in pairs:
            raise ValueError(f"score_key {key!r} not among {sorted(pairs)}")
        return pairs[key]
    return _last_value(choice["logprobs"]["content"][0]["logprob"])
