"""Which model-call failures are worth another try, and how long to wait before it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import litellm
from loopwright.loops.models import http_transport
from pydantic import BaseModel, ConfigDict, Field


class MalformedResponse(Exception):
    """The provider answered, but not with usable choices. Retried like a 5xx."""


class TooFewChoices(MalformedResponse):
    """A request for n>1 samples came back with fewer: the server ignores ``n``."""


_RETRYABLE = (
    litellm.RateLimitError,
    litellm.Timeout,
    litellm.APIConnectionError,
    litellm.InternalServerError,
    litellm.ServiceUnavailableError,
    litellm.BadGatewayError,
    MalformedResponse,
    asyncio.TimeoutError,
    http_transport.EndpointConnectionError,
    http_transport.EndpointGarbage,
)


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, connection errors, 5xx and garbage — never a 4xx user error."""
    if isinstance(exc, TooFewChoices):  # the same request would come back the same way
        return False
    if isinstance(exc, _RETRYABLE):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(exc, http_transport.EndpointError) and status in (408, 429):
        return True
    return isinstance(status, int) and status >= 500


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """The provider's Retry-After, in seconds, when it sent one."""
    if exc is None:
        return None
    headers: Any = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    resp = getattr(exc, "response", None)
    if not headers and resp is not None:
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class RetryPolicy(BaseModel):
    """How hard to try one request: attempts, and the backoff between them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(6, ge=1, description="Tries per request, first included.")
    backoff_base_s: float = Field(1.0, ge=0, description="First exponential backoff wait.")
    backoff_max_s: float = Field(60.0, ge=0, description="Longest wait between tries.")

    def delay(self, exc: BaseException | None, failed_attempt: int) -> float:
        """Retry-After when the provider sent one, else exponential backoff with jitter."""
        hinted = retry_after_seconds(exc)
        if hinted is not None:
            return min(hinted, self.backoff_max_s)
        expo = self.backoff_base_s * (2 ** (failed_attempt - 1))
        return min(self.backoff_max_s, expo) * (0.5 + random.random() / 2)
