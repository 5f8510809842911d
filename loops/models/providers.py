"""Which model serves a model string: ``resolve_model``.

``local/NAME`` is the in-process engine, ``scripted/NAME`` a registered scripted model, an
``openai/`` or ``hosted_vllm/`` model with an ``api_base`` the direct http transport (unless
``transport="litellm"``), and anything else litellm. Each implementation is imported only
when it is picked, so a run that never uses litellm never imports it.
"""

from __future__ import annotations

from loopwright.loops.models.base import Model
from loopwright.loops.models.config import ClientConfig, uses_http


def resolve_model(config: ClientConfig) -> Model:
    """The model ``config.model`` names, reached as ``config`` says."""
    provider, _, name = config.model.partition("/")
    if provider == "local":
        from loopwright.loops.models.engine_model import EngineModel

        return EngineModel(config.model, in_flight=config.in_flight)
    if provider == "scripted":
        from loopwright.loops.models.scripted import lookup

        return lookup(name)
    if uses_http(config.model, config.api_base, config.transport):
        from loopwright.loops.models.http_transport import HttpModel

        return HttpModel(config.model, str(config.api_base), timeout_s=config.timeout_s)
    from loopwright.loops.models.litellm_model import LiteLLMModel

    return LiteLLMModel(config.model, api_base=config.api_base, timeout_s=config.timeout_s)
