"""GRPO reliability: a real ``loopwright improve --method grpo`` killed with SIGKILL after
its first trainer checkpoint resumes to the series an uninterrupted run makes (no step
recorded twice, lineage intact); a second process on the series is refused in one line; a
NaN loss or running out of memory ends the series in one line, keeping what came before.

Real TRL training on SmolLM2-135M: slow (minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.improve import ImproveConfig, TrainConfig
from loopwright.loops.improve import grpo as G
from loopwright.loops.improve.config import GrpoConfig
from loopwright.traces import TraceStore
from loopwright.traces import lineage as L

pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")

pytestmark = [pytest.mark.slow, pytest.mark.local_model]

TRAIN = "builtin:arithmetic?seed=1&n=6"
EVAL = "builtin:arithmetic?seed=5&n=2"


def _rows(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql, params)


def _wait(cond: Any, proc: subprocess.Popen[bytes], what: str, limit: float = 900) -> None:
    end = time.monotonic() + limit
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the series ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > end:
            raise AssertionError(f"no {what} after {limit:.0f} s")
        time.sleep(0.5)


@pytest.mark.timeout(1800)  # two CLI processes, three real steps, two evals on 2 busy cores
def test_kill_9_after_a_checkpoint_then_resume_records_every_step_once(tmp_path: Path) -> None:
    db = str(tmp_path / "t.duckdb")
    work = tmp_path / "k.improve"
    cmd = [sys.executable, "-m", "loopwright.loops.cli.main", "improve", "--method", "grpo",
           "--tasks", TRAIN, "--eval-tasks", EVAL, "--drop-overlap", "--name", "k", "--db", db,
           "--eval-samples", "1", "--max-steps", "3", "--generations", "2",
           "--prompts-per-step", "2", "--max-completion-tokens", "16", "--save-every", "1",
           "--keep-checkpoints", "2", "--lora-rank", "4", "--learning-rate", "1e-3",
           "--export", "F32", "--concurrency", "2"]  # fmt: skip
    log = (tmp_path / "first.out").open("wb")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        lock = work / ".lock"
        _wait(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first,
              "lock held by the first process")  # fmt: skip
        # a second process on the same series is refused while the first runs
        other = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
        said = other.stderr.strip().splitlines()
        assert other.returncode == 2 and len(said) == 1, other.stderr
        assert f"is being run by another process (pid {first.pid}" in said[0]
        state = work / "grpo" / "checkpoint-1" / "trainer_state.json"
        _wait(state.is_file, first, "checkpoint-1")
        _wait(lambda: G.last_checkpoint(work / "grpo") is not None, first, "a complete checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
    assert first.returncode == -signal.SIGKILL
    before = {r["step"] for r in _rows(db, "SELECT step FROM train_steps")}
    assert 1 in before and 3 not in before, before

    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "| 1 | done |" in second.stdout  # the rounds table

    runs = _rows(db, "SELECT name, model, status FROM runs WHERE runs.loop = 'grpo' ORDER BY name")
    assert [(r["name"], r["model"], r["status"]) for r in runs] == [
        ("k-g00001", "local/smollm2-135m", "done"),
        ("k-g00002", "k@step1", "done"),
        ("k-g00003", "k@step2", "done"),
    ]
    names = [r["name"] for r in _rows(db, "SELECT name FROM runs")]
    assert len(names) == len(set(names))
    roll = _rows(db, "SELECT step, group_index, sample_index, node_id FROM rollouts")
    assert len(roll) == 12 and len({r["node_id"] for r in roll}) == 12
    assert len({(r["step"], r["group_index"], r["sample_index"]) for r in roll}) == 12
    nodes = _rows(db, "SELECT count(*) AS n FROM nodes JOIN runs USING (run_id) "
                      "WHERE runs.loop = 'grpo'")[0]["n"]  # fmt: skip
    assert nodes == 12
    assert [r["step"] for r in _rows(db, "SELECT step FROM train_steps ORDER BY step")] == [1, 2, 3]
    with TraceStore(db, read_only=True) as store:
        rounds = L.rounds_of(store, "k")
        models = store.query("SELECT round, step, parent, base, data_rows FROM models")
    assert [(r["round"], r["stage"]) for r in rounds] == [(0, "done"), (1, "done")]
    assert models == [{"round": 1, "step": 3, "parent": "local/smollm2-135m",
                       "base": "local/smollm2-135m", "data_rows": 12}]  # fmt: skip
    assert sorted(p.name for p in (work / "grpo").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-3"]  # fmt: skip


def _cfg(tmp_path: Path, **grpo: Any) -> ImproveConfig:
    settings: dict[str, Any] = {"steps": 2, "generations": 2, "prompts_per_step": 2,
                                "max_completion_tokens": 16, "eval_every": 1}  # fmt: skip
    settings.update(grpo)
    return ImproveConfig(
        name="n", tasks=TRAIN, eval_tasks=EVAL, method="grpo", eval_samples=1,
        drop_overlap=True, db=str(tmp_path / "t.duckdb"), concurrency=2,
        train=TrainConfig(lora_rank=4, export="F32"), grpo=GrpoConfig(**settings),
    )  # fmt: skip


def test_a_nan_loss_ends_the_series_in_one_line_and_keeps_the_rounds_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopwright.loops.improve.rounds import run_improve
    from trl import GRPOTrainer

    real = GRPOTrainer._compute_loss

    def loss(self: Any, model: Any, inputs: Any) -> Any:
        out = real(self, model, inputs)
        return out * float("nan") if self.state.global_step >= 1 else out  # step 2 blows up

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", loss)
    cfg = _cfg(tmp_path)
    result = run_improve(cfg)
    why = "loss became nan at step 2: lower --learning-rate"
    assert result.failed == f"round 2: {why}"
    assert [(r["round"], r["stage"], r["error"]) for r in result.rounds] == [
        (0, "done", None), (1, "done", None), (2, "failed", why)]  # fmt: skip
    with TraceStore(cfg.db, read_only=True) as store:
        assert [m["round"] for m in L.models_of(store, "n")] == [1]  # no model of broken weights
    work = tmp_path / "n.improve" / "grpo"
    assert not (work / "checkpoint-2").exists() and (work / "checkpoint-1").is_dir()
    # the broken step is in the record, with its loss
    [m2] = _rows(cfg.db, "SELECT metrics FROM train_steps WHERE step = 2")
    assert json.loads(m2["metrics"])["loss"] is None  # NaN is stored as null


def test_out_of_memory_ends_the_series_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from loopwright.loops.improve.rounds import run_improve
    from trl import GRPOTrainer

    def evaluate(cfg: ImproveConfig, rnd: int, model: str, metrics: dict[str, Any],
                 ev: Any, selector: str = "verifier") -> None:  # fmt: skip
        with TraceStore(cfg.db) as store:  # the eval is not what this test is about
            L.set_round(store, cfg.name, rnd, stage="done", model=model, metrics=metrics)

    def oom(self: Any, model: Any, inputs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(G, "evaluate_round", evaluate)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", oom)
    result = run_improve(_cfg(tmp_path, steps=1))
    assert result.failed is not None and "\n" not in result.failed
    assert result.failed.startswith("round 1: out of memory on cpu at step 1 (2 prompts x 2 "
                                    "generations, 16 completion tokens): lower --generations")  # fmt: skip
    assert [(r["round"], r["stage"]) for r in result.rounds] == [(0, "done"), (1, "failed")]
