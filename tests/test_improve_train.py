"""The real trainer: TRL on torch (CPU here), GGUF export, serving the exported file.

Slow: each test loads SmolLM2-135M into transformers and takes a few training steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")

from loopwright.loops.improve import ImproveConfig, TrainConfig
from loopwright.loops.improve import train as T
from loopwright.loops.improve.export import export_gguf
from loopwright.loops.improve.rounds import run_improve
from loopwright.loops.models.local_model import LocalEngine
from loopwright.traces import TraceStore

pytestmark = [pytest.mark.slow, pytest.mark.local_model]

PROMPTS = ["What is 3 plus 4?", "Name a colour."]


def _tensor(path: Path, name: str) -> np.ndarray:
    import gguf

    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == name)
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def test_served_export_matches_the_trained_model_greedily(tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                      {"role": "assistant", "content": f"The answer is {2 * a}."}]}
        for a in range(2, 10)
    ]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = T.resolve_base("local/smollm2-135m")
    cfg = TrainConfig(max_steps=2, batch_size=4, lora_rank=8, learning_rate=1e-3)
    steps: list[tuple[int, int, float | None]] = []
    model, tok, res = T.train_model(base, data, cfg, lambda *a: steps.append(a))
    assert res.steps == 2 and [s[0] for s in steps] == [1, 2] and res.final_loss is not None
    out = export_gguf(T.state_arrays(model), base.template, tmp_path / "m.gguf", "F32")
    assert not list(tmp_path.glob(".*.tmp"))  # written beside and renamed into place
    # the LoRA update was merged: the exported weights differ from the base file's
    # (unchanged weights would come back exactly: Q4_1 values are exact in F32)
    diff = np.abs(
        _tensor(out, "blk.0.attn_v.weight") - _tensor(base.template, "blk.0.attn_v.weight")
    )
    assert diff.max() > 1e-5
    engine = LocalEngine.get(str(out))
    for prompt in PROMPTS:
        want = T.greedy_tokens(model, tok, prompt, max_new_tokens=16)
        got = engine.generate([{"role": "user", "content": prompt}],
                              {"temperature": 0.0, "max_tokens": 16})  # fmt: skip
        assert got["choices"][0]["text"] == want, prompt


def test_one_tiny_round_end_to_end(tmp_path: Path) -> None:
    db = str(tmp_path / "t.duckdb")
    cfg = ImproveConfig(
        name="tiny", tasks="builtin:arithmetic?seed=1&n=6", eval_tasks="builtin:arithmetic?seed=5&n=2",
        rounds=1, options={"n": 4}, eval_samples=1, drop_overlap=True, db=db,
        train=TrainConfig(max_steps=2, batch_size=2, lora_rank=8, learning_rate=1e-3, export="F32"),
    )  # fmt: skip
    result = run_improve(cfg)
    assert result.failed is None, result.failed
    with TraceStore(db, read_only=True) as store:
        [m] = store.query("SELECT * FROM models")
        served = store.query(
            "SELECT count(*) AS n FROM calls WHERE model = ? AND coalesce(output, '') <> ''",
            [m["model_id"]],
        )[0]["n"]
    path = Path(m["path"])
    assert m["model_id"] == f"local/{path}" and path.is_file()
    assert (m["parent"], m["base"], m["round"], m["method"]) == (
        "local/smollm2-135m",
        "local/smollm2-135m",
        1,
        "rest-em",
    )
    assert m["data_rows"] > 0 and m["final_loss"] is not None
    assert json.loads(m["train_config"])["steps"] == 2
    assert result.rounds[1]["model"] == m["model_id"] and result.rounds[1]["stage"] == "done"
    assert served >= 2  # the eval run's samples came from the exported file
    base = T.resolve_base("local/smollm2-135m").template
    diff = np.abs(_tensor(path, "blk.0.attn_v.weight") - _tensor(base, "blk.0.attn_v.weight"))
    assert diff.max() > 1e-5


def test_benchmark_baseline_trains_with_our_settings(tmp_path: Path) -> None:
    """benchmarks/improve_train.py's bare-TRL baseline must train as ours does: SFTConfig
    defaults bf16 to True, which on CPU is bf16 autocast where ours is float32."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import improve_train

    rows = improve_train._rows(8)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(max_steps=1, batch_size=4, lora_rank=8, device="cpu")
    base = T.resolve_base("local/smollm2-135m")
    model, tok = T.load_model(base, "cpu")
    ours = T._trainer(model, tok, T.read_rows(data, "sft"), cfg, "cpu", [])
    model, tok = T.load_model(base, "cpu")
    bare = improve_train._bare_trainer(model, tok, rows, cfg)
    fields = ("bf16", "fp16", "gradient_checkpointing", "max_length", "packing", "padding_free",
              "completion_only_loss", "optim", "per_device_train_batch_size", "max_steps",
              "learning_rate", "logging_steps", "dataloader_num_workers", "seed")  # fmt: skip
    assert {f: getattr(ours.args, f) for f in fields} == {f: getattr(bare.args, f) for f in fields}
    assert ours.accelerator.mixed_precision == bare.accelerator.mixed_precision == "no"
    assert ours.train_dataset["input_ids"] == bare.train_dataset["input_ids"]
    assert ours.train_dataset["labels"] == bare.train_dataset["labels"]
