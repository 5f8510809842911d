"""What a model client is configured with, and the records it hands back."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from loopwright.loops.errors import UserError
from loopwright.loops.models import http_transport, scripted
from loopwright.loops.models.local_model import is_installed, spec_for
from loopwright.loops.models.retry import RetryPolicy
from loopwright.traces.records import Role
from pydantic import BaseModel, ConfigDict, Field, model_validator

Transport = Literal["auto", "litellm", "http"]


def uses_http(model: str, api_base: str | None, transport: Transport) -> bool:
    """Whether calls go straight to the endpoint (see ``http_transport``) or through litellm."""
    if transport == "litellm":
        return False
    return http_transport.supports(model, api_base)


class Connection(BaseModel):
    """How to reach a model and how hard to try: shared by every model of a run or sweep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_base: str | None = Field(None, description="Endpoint for self-hosted servers.")
    transport: Transport = Field(
        "auto",
        description="'litellm', 'http' (direct OpenAI-compatible JSON, for openai/ and "
        "hosted_vllm/ models with an api_base), or 'auto': http where it applies.",
    )
    concurrency: int = Field(
        4,
        ge=1,
        description="Model requests in flight at once. In a run, from 4 up a quarter more "
        "tasks are in progress, so a task's next request is ready when a slot frees.",
    )
    timeout_s: float = Field(
        120.0, gt=0, description="Per-request timeout of remote models (not in-process ones)."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Tries and backoff.")
    cache: bool = Field(True, description="Reuse identical seeded requests from the DB cache.")


CONNECTION_FIELDS = frozenset(Connection.model_fields)
RETRY_FIELDS = frozenset(RetryPolicy.model_fields)


def _nest_retry(data: dict[str, Any]) -> dict[str, Any]:
    """Move flat retry settings (``max_attempts=3``) into ``retry``."""
    given = {k: data[k] for k in RETRY_FIELDS & data.keys()}
    if not given:
        return data
    rest = {k: v for k, v in data.items() if k not in given}
    base = rest.get("retry")
    rest["retry"] = {
        **(base.model_dump() if isinstance(base, RetryPolicy) else dict(base or {})),
        **given,
    }
    return rest


def nest_connection(data: Any) -> Any:
    """Accept a run's or sweep's connection settings flat (``concurrency=8``,
    ``max_attempts=3``) as well as nested (``connection=Connection(...)``); one place for
    the shorthand, used by the configs' before-validators."""
    if not isinstance(data, dict):
        return data
    flat = {k: data[k] for k in data if k in CONNECTION_FIELDS or k in RETRY_FIELDS}
    if not flat:
        return data
    rest = {k: v for k, v in data.items() if k not in flat}
    given = rest.get("connection")
    conn: dict[str, Any] = (
        given.model_dump() if isinstance(given, Connection) else dict(given or {})
    )
    conn = _nest_retry({**conn, **flat})
    return {**rest, "connection": conn}


class ClientConfig(Connection):
    """One model, how to reach it, and its default sampling settings."""

    model: str = Field(
        "local/smollm2-135m",
        description="A litellm model string, local/NAME (the in-process engine) or "
        "scripted/NAME (a registered scripted model).",
    )
    temperature: float = Field(0.7, ge=0, description="Default sampling temperature.")
    max_tokens: int = Field(512, gt=0, description="Default completion length cap.")
    in_flight: int | None = Field(
        None,
        ge=1,
        description="Samples the run may have in flight at once (concurrency x n); the "
        "in-process engine sizes its parallel slots to it. None: the engine's default.",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_retry(cls, data: Any) -> Any:
        return _nest_retry(data) if isinstance(data, dict) else data

    @classmethod
    def of(
        cls, model: str, connection: Connection, *, in_flight: int | None = None
    ) -> ClientConfig:
        """The client config for ``model`` reached through ``connection``."""
        return cls(model=model, in_flight=in_flight, **dict(connection))


@dataclass
class CallContext:
    """Where a call belongs in the trace."""

    run_id: str | None = None
    task_id: str | None = None
    loop: str | None = None
    round: int | None = None
    role: Role | None = None


@dataclass
class Sample:
    """One completion of one request."""

    text: str
    node_id: str
    call_id: str
    sample_index: int
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    logprob_mean: float | None
    cache_hit: bool

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def output_fields(self) -> dict[str, Any]:
        """What the trace keeps of this completion, in both ``calls`` and ``call_cache``."""
        return {
            "sample_index": self.sample_index,
            "output": self.text,
            "finish_reason": self.finish_reason,
            "logprob_mean": self.logprob_mean,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_model(model: str, api_base: str | None = None, transport: Transport = "auto") -> None:
    """Fail fast, in one line, on an unknown model, a missing local model or a missing key."""
    provider, _, name = model.partition("/")
    if transport == "http" and not http_transport.supports(model, api_base):
        raise UserError(
            f"--transport http needs an OpenAI-compatible model string "
            f"({', '.join(p + '/NAME' for p in http_transport.PROVIDERS)}) and --api-base; "
            f"got {model!r}{'' if api_base else ' without --api-base'}"
        )
    if provider == "local":
        spec = spec_for(name)
        if spec.path is not None and not is_installed(spec):
            raise UserError(f"local model {model}: no such GGUF file")
        if not is_installed(spec):
            raise UserError(f"local model {model} is not installed: run `{spec.install}`")
        return
    if provider == "scripted":
        scripted.lookup(name)
        return
    if uses_http(model, api_base, transport):
        return  # the endpoint is the user's: nothing here can check more before the first call
    from loopwright.loops.models import litellm_model

    litellm_model.check(model, api_base)
