"""loopwright improve: rounds, lineage, resume and refusals, with the scripted model and a
fake trainer (the real trainer is tests/test_improve_train.py)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.improve import ImproveConfig, TrainConfig
from loopwright.loops.improve import rounds as R
from loopwright.loops.improve import train as T
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces import SCHEMA_VERSION, TraceStore

TRAIN = "builtin:arithmetic?seed=1&n=6"
EVAL = "builtin:arithmetic?seed=5&n=3"


def _answer(call: ModelCall) -> str:
    """Right on even calls, wrong on odd ones: every task gets verified and failed siblings."""
    text = str(call.messages[-1]["content"])
    nums = [int(x) for x in re.findall(r"\d+", text)][:2]
    right = nums[0] * nums[1] if "bags" in text else sum(nums)
    return f"The answer is {right if call.index % 2 == 0 else right + 1}."


class FakeTrainer:
    """Writes a file where the real trainer writes the GGUF; serves as another scripted model."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Path, str]] = []
        self.served: list[str] = []
        self.model = ScriptedModel(_answer)
        self.model.register()

    def __call__(self, base: str, data: Path, out: Path, cfg: TrainConfig, on_step: Any) -> Any:
        self.calls.append((base, data, cfg.objective))
        self.served.append(self.model.name)
        self.model = ScriptedModel(_answer)  # the next round's model is another one
        self.model.register()
        if self.fail:
            raise T.TrainingFailed("loss became nan at step 1: lower --learning-rate")
        on_step(1, 1, 0.5)
        out.write_bytes(b"weights")
        return T.TrainResult(steps=1, final_loss=0.5, tokens=10, seconds=0.1, device="cpu")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTrainer:
    trainer = FakeTrainer()
    monkeypatch.setattr(T, "train_and_export", trainer)
    monkeypatch.setattr(T, "_need_train", lambda: None)
    monkeypatch.setattr(R, "served_as", lambda path: trainer.served[-1])
    return trainer


def _cfg(tmp_path: Path, **kw: Any) -> ImproveConfig:
    base = ScriptedModel(_answer).register()
    args: dict[str, Any] = {
        "name": "s", "tasks": TRAIN, "eval_tasks": EVAL, "rounds": 1, "base": base,
        "options": {"n": 2}, "eval_samples": 2, "db": str(tmp_path / "t.duckdb"),
        "drop_overlap": True, "concurrency": 1,
    }  # fmt: skip
    args.update(kw)
    return ImproveConfig(**args)


def _rows(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql, params)


def test_a_round_trains_on_graded_train_samples_and_records_lineage(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    cfg = _cfg(tmp_path)
    result = R.run_improve(cfg)
    assert result.failed is None
    assert [(r["round"], r["stage"]) for r in result.rounds] == [(0, "done"), (1, "done")]
    r0, r1 = result.rounds
    assert r0["model"] == cfg.base and r1["model"] == fake.served[0]
    assert r1["train_run"] == "s-r1-train" and r1["eval_run"] == "s-r1-eval"
    # every eval task has 2 graded samples, half of them right
    assert r1["metrics"]["eval"]["pass@1"]["mean"] == pytest.approx(0.5)
    assert r1["metrics"]["train"]["yield"] == pytest.approx(0.5)
    [m] = _rows(cfg.db, "SELECT * FROM models")
    base, data, objective = fake.calls[0]
    assert (base, objective) == (cfg.base, "sft")  # ReST-EM restarts from the base
    assert m["parent"] == cfg.base and m["base"] == cfg.base and m["round"] == 1
    assert m["data_hash"] == hashlib.sha256(data.read_bytes()).hexdigest()
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    assert m["data_rows"] == len(rows) > 0
    eval_prompts = {r["prompt"] for r in _rows(cfg.db, "SELECT prompt FROM tasks t JOIN runs "
                                             "USING (run_id) WHERE name = 's-r1-eval'")}  # fmt: skip
    for row in rows:
        assert row["messages"][0]["content"] not in eval_prompts
        assert row["provenance"]["run_name"] == "s-r1-train"
        assert row["provenance"]["model"] == cfg.base
    assert _rows(cfg.db, "SELECT max(version) AS v FROM schema_version")[0]["v"] == SCHEMA_VERSION

    from loopwright.loops.cli.main import app
    from typer.testing import CliRunner

    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", "--improve", "s", "--db", cfg.db, "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = (out / "report.md").read_text()
    assert "| 1 | done | 50.0% [" in text and "## Lineage" in text
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "yield_diversity.png").is_file()
    r = CliRunner().invoke(app, ["report", "--db", cfg.db, "--out", str(out)])
    assert r.exit_code != 0


def test_dpo_iterates_from_the_previous_model_on_sibling_pairs(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    cfg = _cfg(tmp_path, method="dpo", rounds=2)
    result = R.run_improve(cfg)
    assert result.failed is None, result.failed
    assert [c[0] for c in fake.calls] == [cfg.base, fake.served[0]]
    assert all(c[2] == "dpo" for c in fake.calls)
    row = json.loads(fake.calls[0][1].read_text().splitlines()[0])
    assert set(row) >= {"prompt", "chosen", "rejected"}


def test_a_failed_training_stops_the_round_and_resume_finishes_it(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    fake.fail = True
    cfg = _cfg(tmp_path)
    result = R.run_improve(cfg)
    assert (
        result.failed
        == "round 1: training failed: loss became nan at step 1: lower --learning-rate"
    )
    assert [(r["round"], r["stage"]) for r in result.rounds] == [(0, "done"), (1, "failed")]
    assert _rows(cfg.db, "SELECT * FROM models") == []
    fake.fail = False
    result = R.run_improve(cfg.model_copy(update={"resume": True}))
    assert [(r["round"], r["stage"]) for r in result.rounds] == [(0, "done"), (1, "done")]
    # finished runs were not redone: one task row per task, one eval run of the base
    counts = _rows(cfg.db, "SELECT name, count(*) AS n FROM tasks JOIN runs USING (run_id) "
                           "GROUP BY name ORDER BY name")  # fmt: skip
    assert [(c["name"], c["n"]) for c in counts] == [
        ("s-r0-eval", 3),
        ("s-r1-eval", 3),
        ("s-r1-train", counts[2]["n"]),
    ]
    assert len(_rows(cfg.db, "SELECT * FROM models")) == 1


def test_a_series_name_is_not_reused_and_resume_must_match(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    cfg = _cfg(tmp_path, rounds=0)
    R.run_improve(cfg)
    with pytest.raises(UserError, match="already exists"):
        R.run_improve(cfg)
    with pytest.raises(UserError, match="other settings"):
        R.run_improve(cfg.model_copy(update={"resume": True, "eval_samples": 3}))
    with pytest.raises(UserError, match="no improve series named 'x'"):
        R.run_improve(cfg.model_copy(update={"resume": True, "name": "x"}))


def test_a_series_another_process_runs_is_refused_until_that_process_is_gone(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    cfg = _cfg(tmp_path, rounds=0)
    R.run_improve(cfg)
    lock = tmp_path / "s.improve" / ".lock"
    hold = (
        "import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()\n"
        "print('held', flush=True); time.sleep(120)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True
    )
    resume = cfg.model_copy(update={"resume": True})
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"being run by another process \(pid {other.pid},"):
            R.run_improve(resume)
    finally:
        other.kill()  # as kill -9 would: the OS drops its lock
        other.wait()
    assert R.run_improve(resume).rounds[0]["stage"] == "done"


def test_overlapping_train_and_eval_prompts_are_refused(tmp_path: Path, fake: FakeTrainer) -> None:
    cfg = _cfg(tmp_path, eval_tasks=TRAIN, drop_overlap=False)
    with pytest.raises(UserError, match=r"6 of 6 train prompts overlap the eval tasks") as exc:
        R.run_improve(cfg)
    assert "\n" not in str(exc.value)
    assert not Path(cfg.db).exists()


def test_dropping_overlap_trains_only_on_disjoint_prompts(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        eval_tasks="builtin:arithmetic?seed=2&n=60",
        tasks="builtin:arithmetic?seed=1&n=40",
    )
    spec, limit, _ = R.check_split(cfg, tmp_path / "w")
    kept = [json.loads(x)["prompt"] for x in Path(spec).read_text().splitlines()]
    assert 0 < len(kept) < 40 and limit is None
    from loopwright.loops.tasks import load_tasks
    from loopwright.traces.harvest import overlapping

    evals = [t.prompt for t in load_tasks(cfg.eval_tasks)]
    assert overlapping(kept, evals) == []


def test_local_gguf_path_is_a_model_string(tmp_path: Path) -> None:
    from loopwright.loops.models.config import check_model
    from loopwright.loops.models.local_model import spec_for, weights_path

    f = tmp_path / "m.gguf"
    with pytest.raises(UserError, match="no such GGUF file"):
        check_model(f"local/{f}")
    f.write_bytes(b"x")
    check_model(f"local/{f}")
    assert weights_path(spec_for(str(f))) == f and spec_for(str(f)).chat


def _only_with_hint(call: ModelCall) -> str:
    """Solves a task only when the prompt carries the answer as a hint."""
    text = str(call.messages[-1]["content"])
    hint = re.search(r"correct answer is (\d+)", text)
    return f"The answer is {hint.group(1) if hint else 1000}."


def test_star_rationalises_unsolved_tasks_and_trains_without_the_hint(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    base = ScriptedModel(_only_with_hint).register()
    cfg = _cfg(tmp_path, method="star", base=base)
    result = R.run_improve(cfg)
    assert result.failed is None, result.failed
    assert result.rounds[1]["metrics"]["train"]["yield"] == 0.0  # nothing solved unaided
    rows = [json.loads(x) for x in fake.calls[0][1].read_text().splitlines()]
    assert rows and all(r["provenance"]["run_name"] == "s-r1-rationalise" for r in rows)
    train_prompts = {r["prompt"] for r in _rows(cfg.db, "SELECT prompt FROM tasks JOIN runs "
                                              "USING (run_id) WHERE name = 's-r1-train'")}  # fmt: skip
    for r in rows:
        assert "Hint" not in r["messages"][0]["content"]
        assert r["messages"][0]["content"] in train_prompts


def test_self_reward_labels_pairs_with_its_own_judge_and_never_shows_it_the_reference(
    tmp_path: Path, fake: FakeTrainer
) -> None:
    def answer_or_judge(call: ModelCall) -> str:
        text = str(call.messages[-1]["content"])
        if call.params.role == "judge":  # prefers the larger number, in either order
            a = int(re.findall(r"\d+", text.split("[Answer A]")[1].split("[End")[0])[0])
            b = int(re.findall(r"\d+", text.split("[Answer B]")[1].split("[End")[0])[0])
            return "[[A]]" if a > b else "[[B]]"
        return _answer(call)

    model = ScriptedModel(answer_or_judge)
    cfg = _cfg(tmp_path, method="self-reward", base=model.register())
    result = R.run_improve(cfg)
    assert result.failed is None, result.failed
    judge_prompts = [c.messages[-1]["content"] for c in model.calls
                     if "[Answer A]" in str(c.messages[-1]["content"])]  # fmt: skip
    assert judge_prompts and not any("[Reference answer]" in p for p in judge_prompts)
    rows = [json.loads(x) for x in fake.calls[0][1].read_text().splitlines()]
    assert rows and fake.calls[0][2] == "dpo"
    agreement = result.rounds[1]["metrics"]["train"]["judge_grader_agreement"]
    # the wrong answers are the right ones plus 1: the larger-number judge is always wrong
    assert agreement["decided"] > 0 and agreement["agreement"] == 0.0
