"""Write trained weights back to a GGUF file the embedded engine serves (numpy + ``gguf`` only).

The base GGUF is the template: every metadata field (architecture, tokenizer, chat template)
is copied, and exactly the tensors the base file holds are written, in its order, so a tied
``lm_head`` stays tied. llama.cpp stores ``attn_q``/``attn_k`` rows permuted for its rotary
layout and transformers un-permutes them on load, so they are permuted back here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

ExportType = Literal["F32", "F16", "Q8_0", "Q5_0", "Q4_1", "Q4_0"]
"""Types ``gguf.quants`` writes in numpy (K-quants need llama.cpp's tools)."""


class ExportError(Exception):
    """The weights do not fit the base file (a different architecture or size)."""


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: undo transformers' un-permutation on load."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def export_gguf(
    weights: Mapping[str, np.ndarray],
    base_gguf: str | Path,
    out: str | Path,
    qtype: ExportType = "Q8_0",
) -> Path:
    """Write ``weights`` (Hugging Face llama names, float arrays) to ``out`` as GGUF.

    The file is written beside ``out`` and renamed into place, so ``out`` is either absent or
    complete. Norms and other 1-D tensors stay F32, as llama.cpp expects.
    """
    import gguf

    base = gguf.GGUFReader(str(base_gguf))
    arch = _field(base, "general.architecture")
    if arch != "llama":
        raise ExportError(f"{base_gguf}: export supports llama-architecture GGUF, not {arch}")
    n_layers = int(_field(base, "llama.block_count"))
    n_head = int(_field(base, "llama.attention.head_count"))
    n_kv = int(_field(base, "llama.attention.head_count_kv") or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    by_gguf: dict[str, tuple[str, np.ndarray]] = {}
    for hf_name, arr in weights.items():
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is not None:
            by_gguf[g] = (hf_name, arr)
    qt = gguf.GGMLQuantizationType[qtype]
    file_type = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8}[qtype]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    try:
        for field in base.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = file_type if field.name == "general.file_type" else field.contents()
            writer.add_key_value(field.name, value, vtype, sub_type=sub)
        for t in base.tensors:
            if t.name not in by_gguf:
                raise ExportError(f"the trained weights have no tensor for {t.name}")
            hf_name, arr = by_gguf[t.name]
            data = np.ascontiguousarray(arr, dtype=np.float32)
            if t.name.endswith("attn_q.weight"):
                data = _permute(data, n_head)
            elif t.name.endswith("attn_k.weight"):
                data = _permute(data, n_kv)
            if data.ndim < 2 or qt == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(t.name, data)
            elif qt == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(t.name, data.astype(np.float16))
            else:
                writer.add_tensor(t.name, gguf.quants.quantize(data, qt), raw_dtype=qt)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
