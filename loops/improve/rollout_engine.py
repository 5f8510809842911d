"""GRPO rollouts from the embedded llama.cpp engine serving the policy being trained.

On a CPU, ``transformers.generate`` inside TRL's ``GRPOTrainer`` is the cost of a step (~35
tok/s for SmolLM2-135M on 2 cores); llama.cpp serves the same model at 150-200 tok/s with
the step's sequences decoded together. :class:`PolicyEngine` writes the current policy's
weights to a GGUF file (LoRA merged without touching the training model) and (re)starts an
in-process xllamacpp server on it whenever the policy changed; :func:`make_rollout_func`
plugs it into TRL's ``rollout_func`` hook, so the trainer computes its loss on exactly the
tokens the engine sampled.

torch, transformers, TRL and PEFT are imported lazily (inside functions), like
``loops/improve/train.py``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from loopwright.loops.improve.config import GrpoConfig
from loopwright.loops.improve.export import ExportType, export_gguf
from pydantic import BaseModel, Field

DEFAULT_EXPORT: ExportType = "F16"
"""The policy's GGUF type. F16 (measured, docs/improve-grpo.md "Fast rollouts"): exported and
loaded in about a second, serves as fast as Q8_0 at 8 sequences and nearly as fast as F32 is
exact; F32 doubles the file and the export; Q8_0 takes longer to write (numpy quantisation)
and moves further from the trained weights."""

log = logging.getLogger(__name__)

PROMPT_ROOM = 384
"""Context tokens per slot kept for the prompt (the completion cap comes on top)."""

TURN_ROOM = 160
"""Context tokens per slot kept for a two-turn episode's second user turn (on top of the
prompt and both turns' caps)."""

_MARK = "<<loopwright-draft>>"
"""Stands for the draft when the chat template writes the turns after it."""


class EngineSample(BaseModel):
    """One completion sampled by the engine."""

    text: str = Field(description="The completion text (special tokens not shown).")
    token_ids: list[int] = Field(
        description="The sampled token ids, EOS included when the completion stopped on it."
    )
    logprobs: list[float] | None = Field(
        None, description="Each sampled token's log-probability under the served policy."
    )
    finish_reason: str | None = Field(None, description="stop, or length: cut at the cap.")
    prompt_tokens: int = Field(0, description="Tokens of the prompt it continued.")


class PolicyEngine:
    """An xllamacpp server on the current policy's weights, one GGUF file per sync.

    ``slots`` sequences decode together (prompts per step x generations); ``ctx`` is the
    context of one slot (prompt + completion). Files alternate between two fixed names
    under ``work`` (``policy-a.gguf``, ``policy-b.gguf``), each written beside and renamed
    into place, so the server never reads a half-written file, and the file the running
    server maps is never the one being written.
    """

    def __init__(
        self,
        template_gguf: Path,
        work: Path,
        *,
        slots: int,
        ctx: int,
        export: ExportType = DEFAULT_EXPORT,
        threads: int | None = None,
    ) -> None:
        from loopwright.loops.models.local_model import default_threads

        self.template = Path(template_gguf)
        self.work = Path(work)
        self.slots = max(1, int(slots))
        self.ctx = int(ctx)
        self.export: ExportType = export
        self.threads = threads or default_threads()
        self.timings: dict[str, float] = {}
        """The last step's seconds: ``sync_s`` (0.0 when the policy had not changed),
        ``generate_s``; plus ``export_s`` and ``load_s`` of the last sync."""
        self.path: Path | None = None
        """The GGUF file the running server serves."""
        self.syncs = 0
        self.synced_step: int | None = None
        """The trainer step whose policy the server serves (set by the rollout function)."""
        self._server: Any = None
        self._layout: _Layout | None = None
        self._eos = _eos_id(self.template)

    @property
    def eos_id(self) -> int | None:
        """The served model's end-of-sequence token id (None: its GGUF names none)."""
        return self._eos

    # -- weights -> server ----------------------------------------------------------------

    def sync(self, model: Any, step: int | None = None) -> float:
        """Serve ``model``'s current weights (a PEFT model: base + LoRA deltas, merged into
        a copy of the arrays, the model itself untouched); returns the seconds it took.
        ``step``: the trainer step of these weights (the rollout function then skips its
        own sync at that step: a caller may sync the initial policy before training).

        The first sync writes the whole file with :func:`export_gguf` (seconds: it parses
        the template's metadata); later ones copy its header and rewrite the tensor data
        (byte-identical to what ``export_gguf`` writes)."""
        t0 = time.perf_counter()
        arrays = policy_arrays(model)
        out = self.work / ("policy-b.gguf" if self.path and self.path.name == "policy-a.gguf"
                           else "policy-a.gguf")  # fmt: skip
        if self._layout is None or not self._layout.write(arrays, self.template, out):
            export_gguf(arrays, self.template, out, self.export)
            self._layout = _Layout(out, self.export)
        del arrays
        t1 = time.perf_counter()
        self.load(out)
        t2 = time.perf_counter()
        self.timings.update(export_s=t1 - t0, load_s=t2 - t1)
        self.syncs += 1
        self.synced_step = step
        return t2 - t0

    def load(self, path: Path) -> None:
        """(Re)start the server on ``path``; the old server is freed first (its memory goes
        before the new one takes its own)."""
        import xllamacpp as xlc  # imported here: it loads a native library

        self._server = None
        gc.collect()
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.slots
        params.n_ctx = self.ctx * self.slots
        params.kv_unified = False  # one cache per slot: a full slot fails only itself
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.warmup = False
        params.verbosity = -1
        self._server = xlc.Server(params)
        self.path = Path(path)

    def close(self) -> None:
        """Stop the server (the files stay under ``work``)."""
        self._server = None
        gc.collect()

    # -- sampling ---------------------------------------------------------------------------

    def generate(
        self,
        messages: list[list[dict[str, Any]]],
        n: int,
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        sampling: dict[str, Any] | None = None,
    ) -> list[list[EngineSample]]:
        """``n`` completions of each chat, the GGUF's chat template applied by the engine;
        all requests sent at once. See :meth:`generate_ids` for the sampling settings."""
        reqs = [{"messages": m} for m in messages]
        return self._run(reqs, n, max_tokens, temperature, seed, sampling, chat=True)

    def generate_ids(
        self,
        prompt_ids: list[list[int]],
        n: int,
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        sampling: dict[str, Any] | None = None,
    ) -> list[list[EngineSample]]:
        """``n`` completions of each prompt given as token ids (what the trainer computes
        its loss on: the engine conditions on exactly these tokens).

        Sampling is plain temperature sampling over the whole vocabulary (llama.cpp's
        top-k 40 / top-p 0.95 / min-p 0.05 defaults are switched off) unless ``sampling``
        sets ``top_k``, ``top_p``, ``min_p`` or ``repeat_penalty``. Request ``i`` is seeded
        ``seed + i * n`` (llama.cpp seeds its choice ``j`` with that + ``j``)."""
        reqs = [{"prompt": list(ids)} for ids in prompt_ids]
        return self._run(reqs, n, max_tokens, temperature, seed, sampling, chat=False)

    def _run(
        self,
        reqs: list[dict[str, Any]],
        n: int,
        max_tokens: int,
        temperature: float,
        seed: int,
        sampling: dict[str, Any] | None,
        *,
        chat: bool,
    ) -> list[list[EngineSample]]:
        if self._server is None:
            raise RuntimeError("PolicyEngine.generate before sync(): no policy is served")
        server = self._server
        base = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, **(sampling or {})}
        common = {**base, "n": n, "max_tokens": max_tokens, "temperature": temperature}
        # chat returns 20 alternatives per token by default; one is what is read here
        common.update({"logprobs": True, "top_logprobs": 1} if chat else {"logprobs": 1})
        call = server.handle_chat_completions if chat else server.handle_completions

        def one(i: int) -> list[EngineSample]:
            try:
                out = call({**reqs[i], **common, "seed": seed + i * n})
            except ValueError as exc:  # llama.cpp's error (e.g. the prompt outgrew the slot)
                out = {"error": str(exc)}
            if not isinstance(out, dict) or "choices" not in out:
                # one failed request never fails the step: its samples are empty and ended
                log.warning("policy engine: no choices for prompt %d: %s", i, str(out)[:300])
                return [self._failed(len(reqs[i].get("prompt") or [])) for _ in range(n)]
            prompt_tokens = int((out.get("usage") or {}).get("prompt_tokens") or 0)
            if not chat:
                prompt_tokens = len(reqs[i]["prompt"])
            chs = sorted(out["choices"], key=lambda c: c.get("index", 0))
            return [self._sample(ch, prompt_tokens, chat=chat) for ch in chs]

        t0 = time.perf_counter()
        workers = max(1, min(len(reqs), self.slots))
        with ThreadPoolExecutor(workers, thread_name_prefix="loopwright-policy") as pool:
            res = list(pool.map(one, range(len(reqs))))
        self.timings["generate_s"] = time.perf_counter() - t0
        return res

    def _failed(self, prompt_tokens: int) -> EngineSample:
        ids = [self._eos] if self._eos is not None else []
        return EngineSample(text="", token_ids=ids, logprobs=[float("nan")] * len(ids),
                            finish_reason="error", prompt_tokens=prompt_tokens)  # fmt: skip

    def _sample(self, ch: dict[str, Any], prompt_tokens: int, *, chat: bool) -> EngineSample:
        text = (ch.get("message") or {}).get("content") if chat else ch.get("text")
        entries = (ch.get("logprobs") or {}).get("content") or []
        finish = ch.get("finish_reason")
        # llama.cpp's logprob entries carry each sampled token's id, EOS included
        ids = [int(e["id"]) for e in entries]
        lps = [float(e["logprob"]) for e in entries]
        if finish == "stop" and self._eos is not None and (not ids or ids[-1] != self._eos):
            # a stop string, not the EOS token: the trainer still sees the sequence end
            ids.append(self._eos)
            lps.append(0.0)
        clean = [x if math.isfinite(x) else float("nan") for x in lps]
        return EngineSample(
            text=text or "",
            token_ids=ids,
            logprobs=clean if len(clean) == len(ids) else None,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
        )


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""GGUF value type -> bytes (8: string and 9: array are read apart)."""


def _skip_value(f: BinaryIO, kind: int) -> Any:
    """Read past one GGUF value; returns it when it is a scalar (for general.alignment)."""
    if kind == 8:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(size, os.SEEK_CUR)
        return None
    if kind == 9:
        sub, count = struct.unpack("<IQ", f.read(12))
        if sub in _SCALAR:
            f.seek(_SCALAR[sub] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, sub)
        return None
    raw = f.read(_SCALAR[kind])
    return int.from_bytes(raw, "little") if kind in (4, 10) else None


class _Layout:
    """Where each tensor's data lies in a GGUF file written by :func:`export_gguf`, so a
    later sync of the same model and type rewrites the data after a copy of the header:
    parsing the template's metadata (a 49k-token vocabulary) with ``gguf.GGUFReader`` is
    most of ``export_gguf``'s time and gives the same bytes every sync."""

    def __init__(self, path: Path, qtype: ExportType) -> None:
        self.qtype = qtype
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file")
            _version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
            align = 32
            for _ in range(n_kv):
                (size,) = struct.unpack("<Q", f.read(8))
                key = f.read(size).decode("utf-8", errors="replace")
                (kind,) = struct.unpack("<I", f.read(4))
                value = _skip_value(f, kind)
                if key == "general.alignment" and value:
                    align = int(value)
            self.tensors: list[tuple[str, int]] = []
            for _ in range(n_tensors):
                (size,) = struct.unpack("<Q", f.read(8))
                name = f.read(size).decode("utf-8")
                (n_dims,) = struct.unpack("<I", f.read(4))
                f.seek(8 * n_dims + 4, os.SEEK_CUR)  # dims, type: the arrays give them
                (offset,) = struct.unpack("<Q", f.read(8))
                self.tensors.append((name, offset))
            pos = f.tell()
            self.data_start = pos + (-pos) % align
            f.seek(0)
            self.header = f.read(self.data_start)
        self.size = path.stat().st_size

    def write(self, weights: dict[str, Any], template: Path, out: Path) -> bool:
        """Write ``weights`` to ``out`` in this layout; False when they do not fit it (then
        the caller writes the whole file with :func:`export_gguf`)."""
        import gguf
        import numpy as np
        from loopwright.loops.improve.export import _permute
        from loopwright.loops.models.local_model import gguf_metadata

        meta = gguf_metadata(template)
        n_layers = int(meta["llama.block_count"])
        n_head = int(meta["llama.attention.head_count"])
        n_kv = int(meta.get("llama.attention.head_count_kv") or n_head)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
        by_gguf: dict[str, Any] = {}
        for hf_name, arr in weights.items():
            g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if g is not None:
                by_gguf[g] = arr
        qt = gguf.GGMLQuantizationType[self.qtype]
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self.header)
                for name, offset in self.tensors:
                    if name not in by_gguf:
                        return False
                    data = np.ascontiguousarray(by_gguf[name], dtype=np.float32)
                    if name.endswith("attn_q.weight"):
                        data = _permute(data, n_head)
                    elif name.endswith("attn_k.weight"):
                        data = _permute(data, n_kv)
                    if data.ndim >= 2 and qt == gguf.GGMLQuantizationType.F16:
                        data = data.astype(np.float16)
                    elif data.ndim >= 2 and qt != gguf.GGMLQuantizationType.F32:
                        data = gguf.quants.quantize(data, qt)
                    f.seek(self.data_start + offset)
                    np.ascontiguousarray(data).tofile(f)
                f.truncate(self.size)
            if tmp.stat().st_size != self.size:
                return False
            os.replace(tmp, out)
            return True
        finally:
            tmp.unlink(missing_ok=True)


def _eos_id(gguf_path: Path) -> int | None:
    from loopwright.loops.models.local_model import gguf_metadata

    try:
        value = gguf_metadata(gguf_path).get("tokenizer.ggml.eos_token_id")
    except (OSError, ValueError):
        return None
    return int(value) if value is not None else None


def policy_arrays(model: Any) -> dict[str, Any]:
    """The served weights as float32 numpy arrays with plain Hugging Face names.

    A PEFT model gives its base weights plus each active LoRA layer's delta
    (``get_delta_weight``: scale * B @ A), computed into new arrays: merging into the model
    and un-merging would leave rounding residue in the weights being trained. A plain model
    gives its state dict."""
    import torch

    with torch.no_grad():
        get_base = getattr(model, "get_base_model", None)
        if get_base is None or not hasattr(model, "peft_config"):
            return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        base = get_base()
        out: dict[str, Any] = {}
        for name, t in base.state_dict().items():
            if "lora_" in name or ".original_module." in name:
                continue
            plain = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
            out[plain] = t.detach().float().cpu().numpy()
        for name, mod in base.named_modules():
            delta = getattr(mod, "get_delta_weight", None)
            if delta is None or not hasattr(mod, "base_layer") or getattr(mod, "merged", False):
                continue
            key = f"{name}.weight"
            if key not in out:
                continue
            for adapter in getattr(mod, "active_adapters", []):
                if adapter in getattr(mod, "lora_A", {}):
                    out[key] = out[key] + delta(adapter).detach().float().cpu().numpy()
        return out


# -- TRL's rollout_func -------------------------------------------------------------------


def _chat_ids(tokenizer: Any, messages: Any) -> list[int]:
    """The prompt's token ids as TRL's own path makes them (generation prompt added)."""
    if isinstance(messages, str):
        return list(tokenizer(messages, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(x) for x in ids]


def _groups(prompts: Sequence[Any], g: int) -> tuple[list[Any], int]:
    """(one prompt per group, generations per prompt). TRL's sampler repeats each prompt
    ``num_generations`` times in a row; anything else is sampled one completion each."""
    if g > 1 and len(prompts) % g == 0:
        heads = list(prompts[::g])
        if all(prompts[i] == heads[i // g] for i in range(len(prompts))):
            return heads, g
    return list(prompts), 1


def make_rollout_func(
    engine: PolicyEngine,
    tokenizer: Any,
    cfg: GrpoConfig,
    on_samples: Callable[[list[EngineSample]], None] | None = None,
    *,
    seed: int = 0,
    revision_turn: Callable[[Any], str] | None = None,
) -> Callable[[list[Any], Any], dict[str, Any]]:
    """TRL's ``rollout_func(prompts, trainer)`` on ``engine`` (``GRPOTrainer(...,
    rollout_func=...)``).

    ``prompts`` is the process's slice of the generation batch, each prompt repeated
    ``num_generations`` times in a row (TRL's ``RepeatSampler``); one request with ``n`` =
    generations is sent per distinct prompt, all at once, and the completions come back in
    the same order, so TRL's groups stay together. Prompt ids are the HF tokenizer's chat
    template (generation prompt added), sent to the engine as tokens. Before sampling, the
    engine is synced to ``trainer.model`` when ``trainer.state.global_step`` changed since its
    last sync. Temperature, completion cap and top-k/top-p/min-p/repetition penalty are the
    trainer's (falling back to ``cfg``). ``on_samples`` gets the step's samples in TRL's
    order (the recorder); ``engine.timings`` holds ``sync_s`` and ``generate_s``.

    ``revision_turn`` (a prompt's messages -> the user turn that asks to revise; given when
    ``cfg.episode()``) makes each rollout a two-turn episode (:func:`episode_rollout`).
    """
    calls: dict[int, int] = {}  # rollouts asked at each step (more than 1: eval, reuse)

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        step = int(trainer.state.global_step)
        sync_s = 0.0
        if engine.synced_step != step or engine.path is None:
            sync_s = engine.sync(trainer.accelerator.unwrap_model(trainer.model), step)
        training = bool(getattr(trainer.model, "training", True))
        g = int(
            getattr(trainer, "num_generations" if training else "num_generations_eval", 0)
            or cfg.generations
        )
        heads, n = _groups(prompts, g)
        ids = [_chat_ids(tokenizer, p) for p in heads]
        args = getattr(trainer, "args", None)
        sampling: dict[str, Any] = {}
        for ours, theirs in (("top_k", "top_k"), ("top_p", "top_p"), ("min_p", "min_p"),
                             ("repeat_penalty", "repetition_penalty")):  # fmt: skip
            value = getattr(args, theirs, None)
            if value is not None:
                sampling[ours] = value
        cap = getattr(trainer, "max_completion_length", None) or cfg.max_completion_tokens
        temperature = float(getattr(trainer, "temperature", None) or cfg.temperature)
        step_seed = seed + 100_003 * step + 7_919 * calls.get(step, 0)
        if revision_turn is not None:
            calls[step] = calls.get(step, 0) + 1
            engine.timings["sync_s"] = sync_s
            return episode_rollout(
                engine, tokenizer, heads, ids, n, revision_turn, max_tokens=int(cap),
                temperature=temperature, seed=step_seed, sampling=sampling,
                on_samples=on_samples,
            )  # fmt: skip
        out = engine.generate_ids(
            ids,
            n,
            max_tokens=int(cap),
            temperature=temperature,
            seed=step_seed,
            sampling=sampling,
        )
        calls[step] = calls.get(step, 0) + 1  # seeds hang on the step: a resumed run samples alike
        engine.timings["sync_s"] = sync_s
        samples = [s for group in out for s in group]
        prompt_ids = [p for p in ids for _ in range(n)]
        if on_samples is not None:
            on_samples(samples)
        # llama.cpp's log-probs are the model's own (before temperature): TRL's sampling
        # log-probs only where they are the sampling distribution's (temperature 1)
        logprobs: list[list[float]] | None = [s.logprobs or [] for s in samples]
        if any(s.logprobs is None for s in samples) or abs(temperature - 1.0) > 1e-6:
            logprobs = None
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [s.token_ids for s in samples],
            "logprobs": logprobs,
        }

    return rollout


def turn_ids(tokenizer: Any, prompt: Any, turn: str, *, draft_ended: bool) -> list[int]:
    """The tokens between a draft and the revision in a two-turn episode, as the chat
    template writes them: the end of the assistant's turn (its EOS left out when the draft
    ended on it: the draft's tokens hold it), the user's ``turn`` and the next assistant
    header. A plain-text prompt gets ``turn`` on lines of its own."""
    if isinstance(prompt, str):
        return list(tokenizer(f"\n\n{turn}\n\n", add_special_tokens=False)["input_ids"])
    msgs = [*prompt, {"role": "assistant", "content": _MARK}, {"role": "user", "content": turn}]
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    after = text[text.index(_MARK) + len(_MARK) :]
    eos = getattr(tokenizer, "eos_token", None)
    if draft_ended and eos and after.startswith(eos):
        after = after[len(eos) :]
    return [int(x) for x in tokenizer(after, add_special_tokens=False)["input_ids"]]


def episode_rollout(
    engine: PolicyEngine,
    tokenizer: Any,
    heads: list[Any],
    ids: list[list[int]],
    n: int,
    revision_turn: Callable[[Any], str],
    *,
    max_tokens: int,
    temperature: float,
    seed: int,
    sampling: dict[str, Any] | None = None,
    on_samples: Callable[[list[EngineSample]], None] | None = None,
) -> dict[str, Any]:
    """Two-turn episodes for TRL's ``rollout_func``: ``n`` drafts of each prompt (``heads``,
    token ids ``ids``), then one revision of each draft, conditioned on the prompt, the draft
    and the revision turn, all sequences of a turn decoded together.

    Each completion is draft + turn + revision; ``env_mask`` is 0 on the turn's tokens (the
    policy did not write them: no loss on them). ``draft``, ``revision`` (texts),
    ``draft_tokens``, ``revision_tokens``, ``draft_finish`` and ``revision_finish`` ride along
    as extra fields: TRL hands them to the reward functions and the recorder reads them."""
    first = engine.generate_ids(ids, n, max_tokens=max_tokens, temperature=temperature,
                                seed=seed, sampling=sampling)  # fmt: skip
    gen_s = float(engine.timings.get("generate_s") or 0.0)
    drafts = [s for group in first for s in group]
    eos = engine.eos_id
    env: list[list[int]] = []
    second_ids: list[list[int]] = []
    for i, d in enumerate(drafts):
        head = heads[i // n]
        ended = bool(d.token_ids) and eos is not None and d.token_ids[-1] == eos
        turn = turn_ids(tokenizer, head, revision_turn(head), draft_ended=ended)
        env.append(turn)
        second_ids.append([*ids[i // n], *d.token_ids, *turn])
    second = engine.generate_ids(second_ids, 1, max_tokens=max_tokens, temperature=temperature,
                                 seed=seed + 50_021, sampling=sampling)  # fmt: skip
    engine.timings["generate_s"] = gen_s + float(engine.timings.get("generate_s") or 0.0)
    revisions = [group[0] for group in second]
    if on_samples is not None:
        on_samples(revisions)
    completions = [[*d.token_ids, *t, *r.token_ids]
                   for d, t, r in zip(drafts, env, revisions, strict=True)]  # fmt: skip
    mask = [[1] * len(d.token_ids) + [0] * len(t) + [1] * len(r.token_ids)
            for d, t, r in zip(drafts, env, revisions, strict=True)]  # fmt: skip
    logprobs: list[list[float]] | None = None
    exact = abs(temperature - 1.0) <= 1e-6
    if exact and all(s.logprobs is not None for s in [*drafts, *revisions]):
        logprobs = [[*(d.logprobs or []), *([0.0] * len(t)), *(r.logprobs or [])]
                    for d, t, r in zip(drafts, env, revisions, strict=True)]  # fmt: skip
    return {
        "prompt_ids": [p for p in ids for _ in range(n)],
        "completion_ids": completions,
        "logprobs": logprobs,
        "env_mask": mask,
        "draft": [d.text for d in drafts],
        "revision": [r.text for r in revisions],
        "draft_tokens": [len(d.token_ids) for d in drafts],
        "revision_tokens": [len(r.token_ids) for r in revisions],
        "draft_finish": [d.finish_reason for d in drafts],
        "revision_finish": [r.finish_reason for r in revisions],
    }


# -- choosing the rollout path --------------------------------------------------------------


def use_engine(cfg: GrpoConfig, device: str) -> bool:
    """Whether rollouts come from the embedded engine: ``rollout=engine`` (and two-turn
    ``self-refine`` episodes) always, ``trl`` never, ``auto`` on a CPU (on a GPU, TRL's own
    generation is faster)."""
    if cfg.rollout in ("engine", "self-refine"):
        return True
    if cfg.rollout == "trl":
        return False
    return device == "cpu"


def trl_generation_kwargs(cfg: GrpoConfig, device: str) -> dict[str, Any]:
    """``GRPOConfig`` keywords for TRL's own generation path: vLLM colocated on a GPU when
    vllm is importable (and rollouts are not the engine's), else none (transformers)."""
    if use_engine(cfg, device) or device == "cpu":
        return {}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate"}


def start_engine(
    cfg: GrpoConfig,
    template_gguf: Path,
    work: Path,
    *,
    export: ExportType = DEFAULT_EXPORT,
    threads: int | None = None,
) -> PolicyEngine:
    """A :class:`PolicyEngine` sized for ``cfg``: one slot per sample of a step
    (prompts per step x generations), each with room for a prompt and the completion cap
    (two caps and a user turn for two-turn episodes)."""
    cap = cfg.max_completion_tokens
    return PolicyEngine(
        template_gguf,
        work,
        slots=cfg.prompts_per_step * cfg.generations,
        ctx=PROMPT_ROOM + (2 * cap + TURN_ROOM if cfg.episode() else cap),
        export=export,
        threads=threads,
    )


def engine_trainer_kwargs(
    cfg: GrpoConfig,
    device: str,
    tokenizer: Any,
    template_gguf: Path,
    work: Path,
    *,
    on_samples: Callable[[list[EngineSample]], None] | None = None,
    export: ExportType = DEFAULT_EXPORT,
    seed: int = 0,
    revision_turn: Callable[[Any], str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], PolicyEngine | None]:
    """Everything the trainer needs for the chosen rollout path, in one call:
    (``GRPOConfig`` keywords, ``GRPOTrainer`` keywords, the engine or None). The caller
    closes the engine when training ends."""
    if not use_engine(cfg, device):
        return trl_generation_kwargs(cfg, device), {}, None
    if cfg.episode() and revision_turn is None:
        raise ValueError("rollout self-refine needs revision_turn (a prompt -> its revision turn)")
    engine = start_engine(cfg, template_gguf, work, export=export)
    func = make_rollout_func(engine, tokenizer, cfg, on_samples, seed=seed,
                             revision_turn=revision_turn if cfg.episode() else None)  # fmt: skip
    return {}, {"rollout_func": func}, engine
