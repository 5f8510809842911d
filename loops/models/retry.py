"""What a model's failure is (a provider error or a bug), which failures are worth another
try, and how long to wait before it.

A :class:`ModelError` is the model refusing or failing a request: it is retried when it is
transient (:class:`TransientModelError`), and recorded as a failed call once the tries are
spent. Any other exception raised by a model is a bug and propagates with its traceback.
Provider libraries' own errors (litellm's, openai's, httpx's) count as model errors too; they
are recognised here without importing those libraries (a library nobody imported raised
nothing).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelError(Exception):
    """A model refused or failed a request (not a bug): recorded as a failed call."""

    status_code: int | None = None


class TransientModelError(ModelError):
    """A failure that another try may not meet: retried with backoff."""


class RateLimited(TransientModelError):
    """HTTP 429; ``retry_after`` is the wait the provider asked for, in seconds."""

    status_code = 429

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ModelTimeout(TransientModelError):
    """The model did not answer in time."""

    status_code = 408


class ServerError(TransientModelError):
    """HTTP 5xx: the provider failed."""

    status_code = 500


class ConnectionFailed(TransientModelError):
    """The provider could not be reached, or dropped the connection."""


class MalformedResponse(TransientModelError):
    """The provider answered, but not with usable choices. Retried like a 5xx."""


class TooFewChoices(MalformedResponse):
    """A request for n>1 samples came back with fewer: the server ignores ``n``."""


class BadRequest(ModelError):
    """HTTP 400: the request itself is wrong; the same request fails the same way."""

    status_code = 400


def _foreign(*names: tuple[str, str]) -> tuple[type[BaseException], ...]:
    """Exception classes ``(module, attribute)`` of the modules that are already imported."""
    out: list[type[BaseException]] = []
    for module, attr in names:
        mod = sys.modules.get(module)
        cls = getattr(mod, attr, None) if mod is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            out.append(cls)
    return tuple(out)


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, timeouts, connection errors, 5xx and garbage — never a 4xx user error."""
    if isinstance(exc, TooFewChoices):  # the same request would come back the same way
        return False
    if isinstance(exc, TransientModelError | TimeoutError):
        return True
    if isinstance(exc, _foreign(("openai", "APIConnectionError"), ("httpx", "TransportError"))):
        return True  # litellm's Timeout and APIConnectionError are openai's
    if not is_model_error(exc):
        return False
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in (408, 429) or status >= 500)


def is_model_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a provider's answer (recorded as a failed call) rather than a bug."""
    if isinstance(exc, ModelError | TimeoutError):
        return True
    # every litellm error a request can raise is an openai error
    return isinstance(exc, _foreign(("openai", "OpenAIError"), ("httpx", "HTTPError")))


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """The provider's Retry-After, in seconds, when it sent one."""
    if exc is None:
        return None
    hinted = getattr(exc, "retry_after", None)
    if isinstance(hinted, int | float):
        return max(0.0, float(hinted))
    headers: Any = getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    resp = getattr(exc, "response", None)
    if not headers and resp is not None:
        headers = getattr(resp, "headers", None)
    if not hasattr(headers, "get"):  # none sent (or not a mapping)
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
        """Retry-After when the provider sent one, else exponential backoff with jitter: the
        wait after try ``k`` is ``base * 2**(k-1)``, jittered down to at most half of it."""
        hinted = retry_after_seconds(exc)
        if hinted is not None:
            return min(hinted, self.backoff_max_s)
        expo = self.backoff_base_s * (2 ** (failed_attempt - 1))
        return min(self.backoff_max_s, expo) * (0.5 + random.random() / 2)
