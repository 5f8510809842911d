"""Provider answers (litellm responses, OpenAI JSON) as ``Sample`` records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loopwright.loops.models.config import Sample
from loopwright.loops.models.retry import MalformedResponse, TooFewChoices
from loopwright.traces.records import new_id


def parse_response(resp: Any, n: int, cost: float) -> list[Sample]:
    """A litellm ``ModelResponse`` as samples; ``cost`` is the request's price."""
    choices = getattr(resp, "choices", None) or []
    _check_count(len(choices), n)
    usage = getattr(resp, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_total = int(getattr(usage, "completion_tokens", 0) or 0)
    out: list[Sample] = []
    for i, ch in enumerate(choices[:n]):
        text = getattr(getattr(ch, "message", None), "content", None)
        if not isinstance(text, str):
            raise MalformedResponse(f"choice {i} has no text content")
        extra = getattr(ch, "_loopwright", None) or {}
        tokens = extra.get("completion_tokens")
        if tokens is None:  # providers report usage per request; split it evenly
            tokens = _share(completion_total, n, i)
        finish = getattr(ch, "finish_reason", None)
        lp = extra.get("logprob_mean")
        out.append(_fresh_sample(i, text, finish, prompt_tokens, int(tokens), cost, lp))
    return out


def parse_json(
    data: dict[str, Any], n: int, token_cost: Callable[[int, int], float]
) -> list[Sample]:
    """An OpenAI chat-completion JSON answer (the http transport) as samples."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        choices = []
    _check_count(len(choices), n)
    choices = sorted(choices[:n], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_total = int(usage.get("completion_tokens") or 0)
    cost = token_cost(prompt_tokens, completion_total)
    out: list[Sample] = []
    for i, ch in enumerate(choices):
        msg = ch.get("message") if isinstance(ch, dict) else None
        text = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(text, str):
            raise MalformedResponse(f"choice {i} has no text content")
        lp = None
        content_lp = (ch.get("logprobs") or {}).get("content") if isinstance(ch, dict) else None
        if isinstance(content_lp, list) and content_lp:
            vals = [t.get("logprob") for t in content_lp if isinstance(t, dict)]
            nums = [float(v) for v in vals if isinstance(v, int | float)]
            lp = sum(nums) / len(nums) if nums else None
        tokens = _share(completion_total, n, i)
        finish = ch.get("finish_reason")
        out.append(_fresh_sample(i, text, finish, prompt_tokens, tokens, cost, lp))
    return out


def _check_count(got: int, n: int) -> None:
    """Raise unless an answer holds the ``n`` choices asked for."""
    if got >= n:
        return
    if n > 1 and got == 1:
        raise TooFewChoices(f"asked for n={n} samples, got 1")
    raise MalformedResponse(f"expected {n} choices, got {got}")


def _share(total: int, n: int, i: int) -> int:
    """Choice ``i``'s part of a request's ``total`` completion tokens, split evenly."""
    return total // n + (1 if i < total % n else 0)


def _fresh_sample(
    i: int,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost: float,
    logprob_mean: float | None,
) -> Sample:
    """Choice ``i`` of a fresh answer; the request's prompt tokens and cost go on choice 0."""
    return Sample(
        text=text,
        node_id=new_id(),
        call_id=new_id(),
        sample_index=i,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens if i == 0 else 0,
        completion_tokens=completion_tokens,
        cost_usd=cost if i == 0 else 0.0,
        logprob_mean=logprob_mean,
        cache_hit=False,
    )
