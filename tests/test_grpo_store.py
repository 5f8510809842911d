"""GRPO rollouts in the trace store: one run per step, rollouts and train_steps rows, replace
on re-record, discard on resume, read back as samples, harvested, reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.improve.record import (
    RolloutRow,
    discard_steps_after,
    record_step,
    rollouts_of,
    step_metrics,
    update_step_metrics,
)
from loopwright.loops.improve.rewards import RewardOutcome
from loopwright.loops.tasks import Task, builtin_arithmetic
from loopwright.tools.verdict import Verdict
from loopwright.traces import SCHEMA_VERSION, TraceStore
from loopwright.traces import lineage as L
from loopwright.traces.harvest import HarvestOptions, harvest

SERIES = "gs"


def _rows(db: Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(sql, params)


def _tasks() -> list[Task]:
    return builtin_arithmetic(seed=3, n=2)


def _row(task: Task, answer: str | None, adv: float, *, clipped: bool = False,
         majority: str | None = None) -> RolloutRow:  # fmt: skip
    right = answer == task.reference
    text = f"Working it out. The answer is {answer}." if answer is not None else "Hmm" * 20
    graded = Verdict(passed=right, score=float(right), answer=answer, verifier="math")
    if majority is None:
        correct = float(right)
        verdict: Verdict | None = graded
    else:
        correct = float(answer is not None and answer == majority)
        verdict = None
    fmt = float(answer is not None)
    outcome = RewardOutcome(
        total=correct + 0.5 * fmt,
        terms={"correct": correct, "format": fmt},
        answer=answer,
        verdict=verdict,
        pseudo_label=majority,
    )
    return RolloutRow(
        task=task,
        messages=[{"role": "user", "content": task.prompt}],
        completion=text,
        completion_tokens=32 if clipped else 9,
        prompt_tokens=20,
        finish_reason="length" if clipped else "stop",
        outcome=outcome,
        graded=graded,
        advantage=adv,
    )


def _step_rows(tasks: list[Task], wrong: str = "0") -> list[RolloutRow]:
    """Task 0: right, wrong, right; task 1: all three wrong (no signal), one clipped."""
    a, b = tasks
    ra = str(a.reference)
    return [
        _row(a, ra, 0.7),
        _row(a, wrong, -1.4),
        _row(a, ra, 0.7),
        _row(b, wrong, 0.0),
        _row(b, None, 0.0, clipped=True),
        _row(b, wrong, 0.0),
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "g.duckdb"
    tasks = _tasks()
    record_step(str(path), SERIES, 1, "local/base", _step_rows(tasks), {"loss": 0.25}, 7,
                reward="grader")  # fmt: skip
    record_step(str(path), SERIES, 2, f"{SERIES}@step1", _step_rows(tasks, wrong="1"),
                {"loss": 0.5}, 7, reward="grader")  # fmt: skip
    return path


def test_each_step_is_one_grpo_run_with_the_rows_a_run_writes(db: Path) -> None:
    tasks = _tasks()
    runs = _rows(db, "SELECT name, loop, model, status, config FROM runs ORDER BY name")
    assert [(r["name"], r["loop"], r["model"], r["status"]) for r in runs] == [
        ("gs-g00001", "grpo", "local/base", "done"),
        ("gs-g00002", "grpo", "gs@step1", "done"),
    ]
    cfg = json.loads(runs[0]["config"])
    assert cfg["improve"] == SERIES and cfg["step"] == 1 and cfg["verifier"] == "reward:grader"
    assert cfg["oracle"] is True  # the grader's reward read the train set's keys
    task_rows = _rows(db, "SELECT t.task_id, t.answer_key, t.status, t.calls, t.final_answer, "
                          "t.graded, t.final_node_id FROM tasks t "
                          "JOIN runs r USING (run_id) WHERE r.name = 'gs-g00001' ORDER BY idx")  # fmt: skip
    assert [r["task_id"] for r in task_rows] == [t.id for t in tasks]
    assert [json.loads(r["answer_key"])["reference"] for r in task_rows] == [
        t.reference for t in tasks
    ]
    assert {r["status"] for r in task_rows} == {"done"}
    assert [r["calls"] for r in task_rows] == [3, 3]
    # a prompt's answer is its group's vote (best-of-n's majority): task 0 right, task 1 "0"
    assert [r["final_answer"] for r in task_rows] == [str(tasks[0].reference), "0"]
    assert [r["graded"] for r in task_rows] == [True, False]
    finals = _rows(db, "SELECT node_id FROM nodes WHERE is_final ORDER BY node_id")
    assert len(finals) == 4 and {r["final_node_id"] for r in task_rows} <= {
        f["node_id"] for f in finals
    }
    nodes = _rows(db, "SELECT n.role, n.round, n.model, n.content, n.answer FROM nodes n "
                      "JOIN runs r USING (run_id) WHERE r.name = 'gs-g00002'")  # fmt: skip
    assert len(nodes) == 6 and {(n["role"], n["round"], n["model"]) for n in nodes} == {
        ("generator", 0, "gs@step1")
    }
    calls = _rows(db, "SELECT c.request_id, c.sample_index, c.n, c.prompt_tokens, c.seed, "
                      "c.finish_reason, c.task_id FROM calls c JOIN runs r USING (run_id) "
                      "WHERE r.name = 'gs-g00001' ORDER BY c.task_id, c.sample_index")  # fmt: skip
    by_task: dict[str, set[str]] = {}
    for c in calls:
        by_task.setdefault(c["task_id"], set()).add(c["request_id"])
    assert all(len(ids) == 1 for ids in by_task.values())  # a group shares its request
    assert len({i for ids in by_task.values() for i in ids}) == 2
    assert sorted(c["sample_index"] for c in calls) == [0, 0, 1, 1, 2, 2]
    assert {c["n"] for c in calls} == {3} and {c["seed"] for c in calls} == {7}
    assert sorted(c["prompt_tokens"] for c in calls) == [0, 0, 0, 0, 20, 20]  # once a request
    assert sum(c["finish_reason"] == "length" for c in calls) == 1


def test_rollouts_carry_step_rewards_per_term_advantages_and_correctness(db: Path) -> None:
    rows = _rows(db, "SELECT * FROM rollouts ORDER BY step, group_index, sample_index")
    assert [r["step"] for r in rows] == [1] * 6 + [2] * 6
    assert {r["improve"] for r in rows} == {SERIES}
    first = rows[:6]
    assert [r["group_index"] for r in first] == [0, 0, 0, 1, 1, 1]
    assert [r["sample_index"] for r in first] == [0, 1, 2, 0, 1, 2]
    assert [r["reward"] for r in first] == [1.5, 0.5, 1.5, 0.5, 0.0, 0.5]
    assert [json.loads(r["rewards"]) for r in first[:2]] == [
        {"correct": 1.0, "format": 1.0},
        {"correct": 0.0, "format": 1.0},
    ]
    assert [r["advantage"] for r in first] == [0.7, -1.4, 0.7, 0.0, 0.0, 0.0]
    assert [r["correct"] for r in first] == [True, False, True, False, False, False]
    assert [r["clipped"] for r in first] == [False, False, False, False, True, False]
    assert [r["policy"] for r in rows] == ["local/base"] * 6 + [f"{SERIES}@step1"] * 6
    # every rollout is its run's generator node, with the reward verdict and the grader's
    joined = _rows(db, """
        SELECT o.reward, il.verifier, il.score, il.passed, il.details, g.passed AS graded
        FROM rollouts o
        JOIN nodes n USING (node_id)
        JOIN verdicts il ON il.node_id = o.node_id AND il.stage = 'in_loop'
        JOIN verdicts g ON g.node_id = o.node_id AND g.stage = 'graded'
        WHERE o.step = 1 ORDER BY o.group_index, o.sample_index""")  # fmt: skip
    assert len(joined) == 6
    assert {j["verifier"] for j in joined} == {"reward:grader"}
    assert [j["score"] for j in joined] == [r["reward"] for r in first]
    assert [j["graded"] for j in joined] == [True, False, True, False, False, False]
    details = json.loads(joined[1]["details"])
    assert details["terms"] == {"correct": 0.0, "format": 1.0} and details["advantage"] == -1.4
    assert rollouts_of(str(db), SERIES, 1)[0]["content"].startswith("Working")


def test_train_steps_hold_the_given_and_derived_metrics_in_order(db: Path) -> None:
    steps = step_metrics(str(db), SERIES)
    assert [s["step"] for s in steps] == [1, 2]
    assert [s["run_name"] for s in steps] == ["gs-g00001", "gs-g00002"]
    m = steps[0]["metrics"]
    assert m["loss"] == 0.25
    assert m["completions"] == 6 and m["groups"] == 2
    assert m["reward_mean"] == pytest.approx(4.5 / 6)
    assert m["reward_correct_mean"] == pytest.approx(2 / 6)
    assert m["correct_rate"] == pytest.approx(2 / 6)
    assert m["format_rate"] == pytest.approx(5 / 6)
    assert m["clip_rate"] == pytest.approx(1 / 6)
    assert m["completion_tokens_mean"] == pytest.approx((5 * 9 + 32) / 6)
    assert m["frac_reward_zero_std"] == 0.0  # task 1's group: 0.5, 0.0, 0.5
    assert "majority_agreement" not in m
    update_step_metrics(str(db), SERIES, 2, {"kl": 0.01, "loss": 0.75})
    m2 = step_metrics(str(db), SERIES)[1]["metrics"]
    assert m2["kl"] == 0.01 and m2["loss"] == 0.75 and m2["completions"] == 6
    # plain SQL reads them too
    got = _rows(db, "SELECT step, CAST(metrics->>'$.loss' AS DOUBLE) AS loss FROM train_steps "
                    "WHERE improve = ? ORDER BY step", [SERIES])  # fmt: skip
    assert got == [{"step": 1, "loss": 0.25}, {"step": 2, "loss": 0.75}]


def _counts(db: Path) -> dict[str, int]:
    out = {}
    for table in ("runs", "tasks", "nodes", "calls", "verdicts", "rollouts", "train_steps"):
        out[table] = _rows(db, f"SELECT count(*) AS n FROM {table}")[0]["n"]
    return out


def test_recording_a_step_again_replaces_it(db: Path) -> None:
    before = _counts(db)
    assert before == {"runs": 2, "tasks": 4, "nodes": 12, "calls": 12, "verdicts": 24,
                      "rollouts": 12, "train_steps": 2}  # fmt: skip
    tasks = _tasks()
    again = [_row(tasks[0], str(tasks[0].reference), 0.0) for _ in range(3)]
    record_step(str(db), SERIES, 1, "local/base", again, {"loss": 0.1}, 7, reward="grader")
    after = _counts(db)
    assert after == {**before, "tasks": 3, "nodes": 9, "calls": 9, "verdicts": 18, "rollouts": 9}
    rewards = _rows(db, "SELECT reward FROM rollouts WHERE step = 1")
    assert [r["reward"] for r in rewards] == [1.5, 1.5, 1.5]
    m = step_metrics(str(db), SERIES)[0]["metrics"]
    assert m["loss"] == 0.1 and m["frac_reward_zero_std"] == 1.0
    assert _rows(db, "SELECT count(*) AS n FROM runs WHERE name = 'gs-g00001'")[0]["n"] == 1


def test_discard_steps_after_drops_every_row_of_later_steps(db: Path) -> None:
    assert discard_steps_after(str(db), SERIES, 1) == 1
    assert _counts(db) == {"runs": 1, "tasks": 2, "nodes": 6, "calls": 6, "verdicts": 12,
                           "rollouts": 6, "train_steps": 1}  # fmt: skip
    assert [s["step"] for s in step_metrics(str(db), SERIES)] == [1]
    assert discard_steps_after(str(db), SERIES, 1) == 0
    assert discard_steps_after(str(db), "other-series", 0) == 0
    assert _counts(db)["rollouts"] == 6


def test_a_step_run_reads_as_samples_and_harvests_like_best_of_n(db: Path, tmp_path: Path) -> None:
    from loopwright.loops.improve.metrics import train_metrics

    with TraceStore(db, read_only=True) as s:
        m = train_metrics(s, "gs-g00001")
    assert m["tasks"] == 2 and m["yield"] == pytest.approx(2 / 6) and m["solved"] == 0.5
    out = tmp_path / "pairs.jsonl"
    opts = HarvestOptions(runs=("gs-g00001",), label="graded", style="plain", pairs=("siblings",))
    res = harvest("dpo", db, out, opts)
    assert res.rows >= 1
    tasks = _tasks()
    for line in out.read_text().splitlines():
        pair = json.loads(line)
        assert pair["prompt"] == tasks[0].prompt  # only task 0 has a right answer
        assert f"The answer is {tasks[0].reference}." in pair["chosen"]
        assert "The answer is 0." in pair["rejected"]
    sft = harvest("sft", db, tmp_path / "sft.jsonl", HarvestOptions(runs=("gs-g00002",),
                                                                    style="plain"))  # fmt: skip
    assert sft.rows == 1  # the two right answers of task 0 are duplicates
    row = json.loads((tmp_path / "sft.jsonl").read_text().splitlines()[0])
    assert row["completion"].endswith(f"{tasks[0].reference}.")


def test_majority_reward_records_the_pseudo_label_and_its_agreement(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    a, b = _tasks()
    ra = str(a.reference)
    rows = [  # task a: the majority is right; task b: the majority ("7") is wrong
        _row(a, ra, 0.5, majority=ra), _row(a, ra, 0.5, majority=ra),
        _row(a, "0", -1.0, majority=ra),
        _row(b, "7", 0.5, majority="7"), _row(b, "7", 0.5, majority="7"),
        _row(b, "8", -1.0, majority="7"),
    ]  # fmt: skip
    with TraceStore(db) as s:  # the series says its reward; record_step reads it
        L.set_round(s, "maj", 0, stage="generate", config={"grpo": {"reward": "majority"}})
    record_step(str(db), "maj", 1, "local/base", rows, {}, 0)
    m = step_metrics(str(db), "maj")[0]["metrics"]
    assert m["majority_agreement"] == 0.5
    got = _rows(db, "SELECT DISTINCT verifier FROM verdicts WHERE stage = 'in_loop'")
    assert got == [{"verifier": "reward:majority"}]
    labels = _rows(db, "SELECT group_index, pseudo_label FROM rollouts ORDER BY group_index")
    assert [r["pseudo_label"] for r in labels] == [ra] * 3 + ["7"] * 3
    cfg = json.loads(_rows(db, "SELECT config FROM runs")[0]["config"])
    assert cfg["oracle"] is False and cfg["verifier"] == "reward:majority"


def test_a_completion_utf8_cannot_encode_is_repaired_not_lost(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    a, _ = _tasks()
    bad = _row(a, "1", 0.0).model_copy(update={"completion": "half an emoji \ud83d then 1"})
    record_step(str(db), SERIES, 1, "local/base", [bad, _row(a, "2", 0.0)], {}, 0)
    assert _rows(db, "SELECT count(*) AS n FROM rollouts")[0]["n"] == 2
    texts = [r["content"] for r in _rows(db, "SELECT content FROM nodes ORDER BY content")]
    assert "half an emoji \ufffd then 1" in texts
    assert _rows(db, "SELECT count(*) AS n FROM text_repairs WHERE table_name = 'nodes'")[0]["n"]


def test_an_old_file_gets_the_v8_tables_and_the_models_step_column(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with TraceStore(path) as s:  # a file written by schema v7
        s.execute("DROP TABLE rollouts")
        s.execute("DROP TABLE train_steps")
        s.execute("ALTER TABLE models DROP COLUMN step")
        s.execute("DELETE FROM schema_version")
        s.execute("INSERT INTO schema_version (version) VALUES (7)")
    with TraceStore(path, read_only=True) as s:  # a reader does not migrate, and reads
        assert step_metrics(s, SERIES) == [] and rollouts_of(s, SERIES) == []
    with TraceStore(path) as s:
        versions = [r["version"] for r in s.query("SELECT version FROM schema_version")]
        assert versions == [7, SCHEMA_VERSION] and SCHEMA_VERSION == 8
        L.add_model(s, L.ModelRecord(model_id="local/x.gguf", parent=None, base="b",
                                     improve=SERIES, round=1, method="grpo", path="x.gguf",
                                     data_hash="h", data_rows=8, train_config={},
                                     final_loss=None, train_s=1.0, step=5))  # fmt: skip
        assert s.query("SELECT round, step FROM models") == [{"round": 1, "step": 5}]
    record_step(str(path), SERIES, 1, "local/base", _step_rows(_tasks()), {}, 0)
    assert len(rollouts_of(str(path), SERIES)) == 6


def test_report_plots_reward_and_held_out_accuracy_against_steps(db: Path, tmp_path: Path) -> None:
    from loopwright.loops.analysis.report_improve import write_improve_report

    def ci(x: float) -> dict[str, float]:
        return {"mean": x, "lo": x - 0.05, "hi": x + 0.05}

    with TraceStore(db) as s:
        base = {"method": "grpo", "grpo": {"reward": "grader"}, "tasks": "builtin:arithmetic"}
        L.set_round(
            s,
            SERIES,
            0,
            stage="done",
            config=base,
            metrics={"eval": {"pass@1": ci(0.2), "pass@k": ci(0.4), "maj@k": ci(0.3)}},
        )
        L.set_round(
            s,
            SERIES,
            1,
            stage="done",
            model="local/m2.gguf",
            metrics={"eval": {"pass@1": ci(0.3), "pass@k": ci(0.5), "maj@k": ci(0.35)}},
        )
        L.add_model(s, L.ModelRecord(model_id="local/m2.gguf", parent="local/base", base="b",
                                     improve=SERIES, round=1, method="grpo", path="m2.gguf",
                                     data_hash="h", data_rows=12, train_config={},
                                     final_loss=0.5, train_s=3.0, step=2))  # fmt: skip
    out = tmp_path / "report"
    path = write_improve_report(str(db), SERIES, out)
    text = path.read_text()
    assert (out / "reward_vs_step.png").stat().st_size > 1000
    assert (out / "heldout_vs_step.png").stat().st_size > 1000
    assert "reward_vs_step.png" in text and "heldout_vs_step.png" in text
    assert "## GRPO steps" in text
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines()
            if ln.startswith("| ") and ln.count("|") == 14}  # fmt: skip
    assert rows["1"].startswith("| 1 | 6 | 0.750 [") and "| 0.2500 |" in rows["1"]
    assert "| 33.3% | 83.3% | 16.7% |" in rows["1"] and "| 0.5000 |" in rows["2"]
    # round 1's model was taken at step 2: its held-out accuracy is plotted at step 2
    assert "| 2 | 1 | 30.0% [25.0%, 35.0%] | 50.0% [45.0%, 55.0%] |" in text
    assert "| 0 | 0 | 20.0% [15.0%, 25.0%] |" in text


def test_the_report_of_another_method_has_no_grpo_section(tmp_path: Path) -> None:
    from loopwright.loops.analysis.report_improve import write_improve_report

    db = tmp_path / "r.duckdb"
    with TraceStore(db) as s:
        L.set_round(s, "rest", 0, stage="done", config={"method": "rest-em"},
                    metrics={"eval": {"pass@1": {"mean": 0.2, "lo": 0.1, "hi": 0.3}}})  # fmt: skip
    text = write_improve_report(str(db), "rest", tmp_path / "out").read_text()
    assert "GRPO" not in text and not (tmp_path / "out" / "reward_vs_step.png").exists()
    assert (tmp_path / "out" / "accuracy.png").exists()
