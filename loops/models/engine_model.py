"""The in-process llama.cpp engine as a model: ``local/NAME`` (see ``local_model``)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loopwright.loops.models.base import CallParams, Completion
from loopwright.loops.models.local_model import LocalEngine, LocalModelError
from loopwright.loops.models.retry import BadRequest

# Requests block a thread each while the engine serves them; threads start as they are needed.
_pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="loopwright-local")

PREFIX = "local/"


class EngineModel:
    """``local/NAME`` (a shipped model or ``local/PATH.gguf``), served in this process.

    ``in_flight`` is how many samples the run may have in flight at once; the engine, started
    on the first request, sizes its parallel slots to it (None: the engine's default).
    """

    in_process = True
    supports_n = True

    def __init__(self, name: str, *, in_flight: int | None = None) -> None:
        if not name.startswith(PREFIX):
            raise ValueError(f"an engine model string starts with {PREFIX!r}: {name!r}")
        self.name = name
        self.in_flight = in_flight

    def _generate(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        engine = LocalEngine.get(self.name.removeprefix(PREFIX), slots=self.in_flight)
        return engine.generate(messages, params)

    async def generate(
        self, messages: list[dict[str, Any]], params: CallParams, n: int
    ) -> list[Completion]:
        request: dict[str, Any] = {
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "n": n,
        }
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop is not None:
            request["stop"] = list(params.stop)
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(_pool, self._generate, messages, request)
        except LocalModelError as exc:
            raise BadRequest(f"{self.name}: {exc}") from exc
        return [
            Completion(
                text=c["text"],
                finish_reason=c["finish_reason"],
                prompt_tokens=out["prompt_tokens"],
                completion_tokens=c["completion_tokens"],
                cost_usd=0.0,
                logprob_mean=c["logprob_mean"],
            )
            for c in out["choices"]
        ]

    async def aclose(self) -> None:
        """The engine serves the whole process: it stays up for the next run."""

    def __repr__(self) -> str:
        return f"EngineModel({self.name!r})"
