"""``improve --method grpo``: the pieces (training order, checkpoints on disk, flags) and a
tiny real run end to end (TRL's GRPOTrainer on SmolLM2-135M, the real rewards, every rollout
in the store, a checkpoint exported, served and evaluated as a round).

The real runs are slow (a few minutes on 2 cores): marked slow and local_model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from loopwright.loops.improve import ImproveConfig, TrainConfig
from loopwright.loops.improve import grpo as G
from loopwright.loops.improve.config import GrpoConfig
from loopwright.traces import TraceStore

TRAIN = "builtin:arithmetic?seed=1&n=6"
EVAL = "builtin:arithmetic?seed=5&n=2"


def _rows(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql, params)


# -- the pieces ------------------------------------------------------------------------------
def test_training_order_covers_every_task_each_pass_and_depends_only_on_the_seed() -> None:
    order = G.train_order(5, steps=7, per_step=2, seed=3)
    assert len(order) == 14
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    assert order == G.train_order(5, steps=7, per_step=2, seed=3)
    assert order != G.train_order(5, steps=7, per_step=2, seed=4)


def test_only_complete_checkpoints_count_and_incomplete_ones_are_removed(tmp_path: Path) -> None:
    assert G.last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, {"global_step": 2}), (4, {"global_step": 4}), (6, None)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert G.last_checkpoint(tmp_path) == (4, tmp_path / "checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_rounds_train_metrics_average_its_own_steps() -> None:
    steps = {
        1: {"run_id": "a", "metrics": {"reward_mean": 0.0, "correct_rate": 0.0, "completions": 4}},
        2: {"run_id": "b", "metrics": {"reward_mean": 0.5, "correct_rate": 0.25, "loss": None}},
        3: {"run_id": "c", "metrics": {"reward_mean": 1.0, "correct_rate": 0.75, "completions": 4}},
    }
    out = G.window_summary(steps, 2, 3)
    assert out["reward_mean"] == 0.75 and out["yield"] == 0.5 and out["steps"] == [2, 3]
    assert out["completions"] == 4 and "loss" not in out and out["recorded_steps"] == 2
    assert out["data_rows"] == 4  # the rollouts the round trained on (step 2's are missing)


def test_policy_names_follow_the_step_that_sampled(tmp_path: Path) -> None:
    cfg = ImproveConfig(name="s", tasks=TRAIN, eval_tasks=EVAL, method="grpo")
    assert G.policy_name(cfg, 1) == cfg.base
    assert G.policy_name(cfg, 3) == "s@step2"
    assert G.step_run_name("s", 12) == "s-g00012"


def _said(r: Any) -> str:
    """What a refused command said: its one-line UserError (main() prints it)."""
    from loopwright.loops.errors import UserError

    assert r.exit_code != 0 and isinstance(r.exception, UserError), r.output
    return str(r.exception)


def test_the_cli_maps_grpo_flags_and_refuses_them_for_other_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopwright.loops.cli.main import app
    from loopwright.loops.improve import rounds as R
    from typer.testing import CliRunner

    seen: list[ImproveConfig] = []

    def fake(cfg: ImproveConfig, events: Any = None) -> R.ImproveResult:
        seen.append(cfg)
        return R.ImproveResult(name=cfg.name, rounds=[])

    monkeypatch.setattr(R, "run_improve", fake)
    base = ["improve", "--tasks", TRAIN, "--eval-tasks", EVAL, "--name", "s",
            "--db", str(tmp_path / "t.duckdb")]  # fmt: skip
    r = CliRunner().invoke(app, [*base, "--method", "grpo", "--max-steps", "7", "--kl-beta",
                                 "0.04", "--reward", "majority", "--generations", "3",
                                 "--eval-every", "2", "--loss-type", "dr_grpo"])  # fmt: skip
    assert r.exit_code == 0, r.output
    g = seen[-1].grpo
    assert (g.steps, g.beta, g.reward, g.generations, g.loss_type) == (7, 0.04, "majority", 3,
                                                                        "dr_grpo")  # fmt: skip
    assert seen[-1].train.objective == "grpo" and seen[-1].train.beta == 0.1  # DPO's untouched
    assert g.checkpoints() == [2, 4, 6, 7]
    r = CliRunner().invoke(app, [*base, "--method", "rest-em", "--generations", "3"])
    assert "--generations applies to --method grpo only" in _said(r)
    r = CliRunner().invoke(app, [*base, "--method", "grpo", "--kl-beta", "-1"])
    assert "--kl-beta:" in _said(r)
    r = CliRunner().invoke(app, [*base, "--method", "grpo", "--reward", "oracle"])
    assert "--reward: reward 'oracle'" in _said(r)
    assert len(seen) == 1


# -- real runs ----------------------------------------------------------------------------------
def _tensor(path: Path, name: str) -> np.ndarray:
    import gguf

    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == name)
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def tiny(tmp_path: Path, **grpo: Any) -> ImproveConfig:
    """A series small enough for CI: 2 prompts x 2 generations a step, short completions,
    LoRA r=4, evaluated on 2 tasks x 1 sample."""
    settings: dict[str, Any] = {"steps": 2, "generations": 2, "prompts_per_step": 2,
                                "max_completion_tokens": 24, "eval_every": 2,
                                "format_weight": 1.0}  # fmt: skip
    settings.update(grpo)
    return ImproveConfig(
        name="g", tasks=TRAIN, eval_tasks=EVAL, method="grpo", eval_samples=1,
        drop_overlap=True, db=str(tmp_path / "t.duckdb"), concurrency=2,
        train=TrainConfig(lora_rank=4, learning_rate=1e-3, export="F32"),
        grpo=GrpoConfig(**settings),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.local_model
def test_a_tiny_grpo_series_records_every_rollout_and_serves_its_checkpoint(
    tmp_path: Path,
) -> None:
    pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")
    from loopwright.loops.improve.rounds import run_improve
    from loopwright.loops.improve.train import resolve_base

    cfg = tiny(tmp_path)
    steps: list[tuple[int, int, float | None]] = []

    class Ev(G.Events):
        def train_step(self, step: int, total: int, loss: float | None) -> None:
            steps.append((step, total, loss))

    result = run_improve(cfg, Ev())
    assert result.failed is None, result.failed
    assert [(r["round"], r["stage"]) for r in result.rounds] == [(0, "done"), (1, "done")]
    assert [s[:2] for s in steps] == [(1, 2), (2, 2)]
    db = cfg.db
    runs = _rows(db, "SELECT name, model, run_id FROM runs WHERE runs.loop = 'grpo' ORDER BY name")
    assert [(r["name"], r["model"]) for r in runs] == [("g-g00001", cfg.base),
                                                        ("g-g00002", "g@step1")]  # fmt: skip
    roll = _rows(db, "SELECT * FROM rollouts ORDER BY step, group_index, sample_index")
    assert len(roll) == 8 and [r["step"] for r in roll] == [1] * 4 + [2] * 4
    for r in roll:
        assert set(json.loads(r["rewards"])) == {"correct", "format"}
        assert r["advantage"] is not None and r["completion_tokens"] > 0
    # the rollouts are the step runs' generator nodes, each graded by the held-out grader
    nodes = _rows(db, "SELECT count(DISTINCT node_id) AS n FROM nodes JOIN runs USING (run_id) "
                      "WHERE runs.loop = 'grpo'")[0]["n"]  # fmt: skip
    graded = _rows(db, "SELECT count(*) AS n FROM verdicts JOIN runs USING (run_id) "
                       "WHERE runs.loop = 'grpo' AND stage = 'graded'")[0]["n"]  # fmt: skip
    assert nodes == 8 and graded == 8
    ts = _rows(db, "SELECT step, run_id, metrics FROM train_steps ORDER BY step")
    assert [(t["step"], t["run_id"]) for t in ts] == [
        (1, runs[0]["run_id"]),
        (2, runs[1]["run_id"]),
    ]
    for t in ts:
        m = json.loads(t["metrics"])
        for key in ("loss", "reward_mean", "correct_rate", "format_rate", "frac_reward_zero_std",
                    "generate_s", "reward_s", "update_s", "step_s", "sync_s"):  # fmt: skip
            assert key in m, key
    [m] = _rows(db, "SELECT * FROM models")
    path = Path(m["path"])
    assert (m["round"], m["step"], m["parent"], m["base"], m["method"]) == (
        1, 2, cfg.base, cfg.base, "grpo")  # fmt: skip
    assert m["model_id"] == f"local/{path}" and path.name.startswith("step-00002-")
    tc = json.loads(m["train_config"])
    assert tc["steps"] == 2 and tc["grpo"]["reward"] == "grader"
    assert tc["data_seen"] == {"prompts": 4, "completions": 8, "step_runs": 2}
    assert result.rounds[1]["model"] == m["model_id"]
    assert result.rounds[1]["metrics"]["train"]["steps"] == [1, 2]
    assert "pass@1" in result.rounds[1]["metrics"]["eval"]
    # round 1's eval sampled the exported file, and the grader graded it
    served = _rows(db, "SELECT count(*) AS n FROM calls JOIN runs USING (run_id) WHERE name = "
                       "'g-r1-eval' AND calls.model = ? AND coalesce(output, '') <> ''",
                   [m["model_id"]])[0]["n"]  # fmt: skip
    evals = _rows(db, "SELECT count(*) AS n FROM verdicts JOIN runs USING (run_id) "
                      "WHERE name = 'g-r1-eval' AND stage = 'graded'")[0]["n"]  # fmt: skip
    assert served >= 2 and evals >= 2
    # some group had a reward spread (else nothing trains): the weights moved
    assert any(abs(r["advantage"]) > 0 for r in roll)
    base = resolve_base(cfg.base).template
    assert any(
        np.abs(_tensor(path, t) - _tensor(base, t)).max() > 1e-6
        for t in ("blk.0.attn_v.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight")
    )


@pytest.mark.slow
@pytest.mark.local_model
def test_a_label_free_majority_series_on_trls_own_generation_records_pseudo_labels(
    tmp_path: Path,
) -> None:
    pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")
    from loopwright.loops.improve.rounds import run_improve

    cfg = tiny(tmp_path, reward="majority", steps=1, eval_every=0, rollout="trl",
               max_completion_tokens=32, format_weight=0.0)  # fmt: skip
    result = run_improve(cfg)
    assert result.failed is None, result.failed
    db = cfg.db
    roll = _rows(db, "SELECT * FROM rollouts")
    assert len(roll) == 4 and {r["policy"] for r in roll} == {cfg.base}
    assert any(r["pseudo_label"] is not None for r in roll)
    reward_verdicts = _rows(db, "SELECT DISTINCT verifier FROM verdicts JOIN runs USING (run_id) "
                                "WHERE runs.loop = 'grpo' AND stage = 'in_loop'")  # fmt: skip
    assert [r["verifier"] for r in reward_verdicts] == ["reward:majority"]
    [t] = _rows(db, "SELECT metrics FROM train_steps")
    m = json.loads(t["metrics"])
    assert "majority_agreement" in m and "loss" in m and "sync_s" not in m  # no engine here
    [model] = _rows(db, "SELECT round, step FROM models")
    assert (model["round"], model["step"]) == (1, 1)
    assert result.rounds[1]["stage"] == "done"
