"""Any litellm model string as a model. The only module that imports litellm: it is imported
when a run uses such a model, never for local, scripted, function or direct-http models.
(The package's ``__init__`` has set ``LITELLM_LOCAL_MODEL_COST_MAP`` by then, so litellm
reads its shipped cost map instead of fetching one.)"""

from __future__ import annotations

from typing import Any

import litellm
from loopwright.loops.errors import UserError
from loopwright.loops.models.base import CallParams, Completion
from loopwright.loops.models.parse import parse_response

litellm.suppress_debug_info = True
litellm.telemetry = False


class LiteLLMModel:
    """A model reached through ``litellm.acompletion`` (hosted providers, or any server
    litellm speaks to with ``api_base``). Retries are the client's: litellm's are off."""

    in_process = False

    def __init__(
        self, name: str, *, api_base: str | None = None, timeout_s: float | None = None
    ) -> None:
        self.name = name
        self.api_base = api_base
        self.timeout_s = timeout_s
        self.supports_n = supports_n(name)

    async def generate(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Completion]:
        kwargs: dict[str, Any] = {
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop is not None:
            kwargs["stop"] = list(params.stop)
        if n > 1:
            kwargs["n"] = n
        if self.api_base:
            kwargs["api_base"] = self.api_base
        resp = await litellm.acompletion(
            model=self.name,
            messages=messages,
            timeout=self.timeout_s,
            num_retries=0,
            max_retries=0,
            **kwargs,
        )
        return parse_response(resp, n, _cost(resp))

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"LiteLLMModel({self.name!r})"


def _cost(resp: Any) -> float:
    hidden = getattr(resp, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")  # litellm already priced it
    if cost is None:
        try:
            cost = litellm.completion_cost(completion_response=resp)
        except Exception:  # a model missing from the cost map costs "unknown", i.e. 0
            cost = 0.0
    return float(cost or 0.0)


def supports_n(model: str) -> bool:
    """Whether litellm sends ``n`` to ``model``'s provider."""
    try:
        _, prov, _, _ = litellm.get_llm_provider(model)
        return "n" in (
            litellm.get_supported_openai_params(model=model, custom_llm_provider=prov) or []
        )
    except Exception:
        return False


def check(model: str, api_base: str | None) -> None:
    """Fail fast, in one line, on a model string litellm does not know or a missing key."""
    try:
        litellm.get_llm_provider(model, api_base=api_base)
    except Exception:
        raise UserError(
            f"unknown model {model!r}: use a litellm model string such as "
            "'openai/gpt-4o-mini', 'anthropic/claude-3-5-haiku-latest', 'hosted_vllm/NAME' "
            "with --api-base, or 'local/smollm2-135m'"
        ) from None
    if api_base is None:
        env = litellm.validate_environment(model)
        if not env.get("keys_in_environment", True):
            missing = ", ".join(env.get("missing_keys") or ["an API key"])
            raise UserError(
                f"{model} needs {missing} in the environment: export it, "
                "or use --model local/smollm2-135m to run offline"
            )
