"""Provider answers (OpenAI chat-completion JSON, litellm response objects) as completions."""

from __future__ import annotations

from typing import Any

from loopwright.loops.models.base import Completion
from loopwright.loops.models.retry import MalformedResponse, TooFewChoices


def parse_json(data: dict[str, Any], n: int, *, priced: bool) -> list[Completion]:
    """An OpenAI chat-completion JSON answer as ``n`` completions; ``priced=False`` marks them
    free (a self-hosted server), else the client prices their tokens."""
    choices = data.get("choices")
    if not isinstance(choices, list):
        choices = []
    check_count(len(choices), n)
    choices = sorted(choices[:n], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_total = int(usage.get("completion_tokens") or 0)
    out: list[Completion] = []
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
        out.append(
            Completion(
                text=text,
                finish_reason=ch.get("finish_reason"),
                prompt_tokens=prompt_tokens,
                completion_tokens=share(completion_total, n, i),
                cost_usd=None if priced else 0.0,
                logprob_mean=lp,
            )
        )
    return out


def parse_response(resp: Any, n: int, cost: float) -> list[Completion]:
    """A litellm ``ModelResponse`` as ``n`` completions; ``cost`` is the request's price (it
    goes on the first completion)."""
    choices = getattr(resp, "choices", None) or []
    check_count(len(choices), n)
    usage = getattr(resp, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_total = int(getattr(usage, "completion_tokens", 0) or 0)
    out: list[Completion] = []
    for i, ch in enumerate(choices[:n]):
        text = getattr(getattr(ch, "message", None), "content", None)
        if not isinstance(text, str):
            raise MalformedResponse(f"choice {i} has no text content")
        out.append(
            Completion(
                text=text,
                finish_reason=getattr(ch, "finish_reason", None),
                prompt_tokens=prompt_tokens,
                completion_tokens=share(completion_total, n, i),
                cost_usd=cost if i == 0 else 0.0,
            )
        )
    return out


def check_count(got: int, n: int) -> None:
    """Raise unless an answer holds the ``n`` choices asked for."""
    if got >= n:
        return
    if n > 1 and got == 1:
        raise TooFewChoices(f"asked for n={n} samples, got 1")
    raise MalformedResponse(f"expected {n} choices, got {got}")


def share(total: int, n: int, i: int) -> int:
    """Choice ``i``'s part of a request's ``total`` completion tokens, split evenly
    (providers report usage per request)."""
    return total // n + (1 if i < total % n else 0)
