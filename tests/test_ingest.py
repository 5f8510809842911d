"""``loopwright ingest``: TRL's GRPO completion logs (``completions/completions_*.parquet``,
in the schema ``GRPOTrainer`` writes with ``log_completions=True``) into the trace store,
then listed, viewed, harvested and reported like a run of ours. No TRL training here: the
files are built with pyarrow in TRL's column layout."""

from __future__ import annotations

import json
import sys
import traceback
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopwright.loops.cli.main import main
from loopwright.loops.improve.record import ingest_completions, step_metrics
from loopwright.traces import TraceStore
from view_testkit import viewer

PROMPTS = ["What is 2 + 2?", "What is 3 * 3?"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["loopwright", *args])
        code, tb = 0, ""
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        except Exception:
            code, tb = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return Result(code, out, err + tb)

    return invoke


def _chat(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def write_step(folder: Path, step: int, shift: int = 0) -> None:
    """One step's completions as GRPOTrainer logs them: step, prompt (chat), completion
    (chat), one column per reward function (NaN: the function did not apply), advantage.
    2 prompts x 3 generations, a prompt's completions consecutive."""
    answers = [["4", "5", "4"], ["9", "6", "8"]]
    rows: dict[str, list[Any]] = {k: [] for k in
                                  ("step", "prompt", "completion", "correctness_reward",
                                   "format_reward", "advantage")}  # fmt: skip
    for p, prompt in enumerate(PROMPTS):
        right = "4" if p == 0 else "9"
        for g in range(3):
            ans = answers[p][(g + shift) % 3]
            rows["step"].append(step)
            rows["prompt"].append(_chat("system", "Answer briefly.") + _chat("user", prompt))
            rows["completion"].append(_chat("assistant", f"The answer is {ans}."))
            rows["correctness_reward"].append(1.0 if ans == right else 0.0)
            rows["format_reward"].append(float("nan") if g == 2 else 0.5)
            rows["advantage"].append(0.8 if ans == right else -0.4)
    out = folder / "completions"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows), out / f"completions_{step:05d}.parquet")


@pytest.fixture
def trl_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "grpo-out"
    write_step(folder, 1)
    write_step(folder, 2, shift=1)
    state = {"log_history": [{"step": 1, "loss": 0.12, "kl": 0.0, "reward": 0.9},
                             {"step": 2, "loss": 0.08, "kl": 0.01, "reward": 1.0}]}  # fmt: skip
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def _rows(db: Path, sql: str) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(sql)


def _counts(db: Path) -> dict[str, int]:
    return {t: _rows(db, f"SELECT count(*) AS n FROM {t}")[0]["n"]
            for t in ("runs", "tasks", "nodes", "calls", "verdicts", "rollouts", "train_steps")}  # fmt: skip


def test_ingest_stores_each_step_as_a_run_and_again_replaces_it(
    trl_dir: Path, tmp_path: Path, cli: Any
) -> None:
    db = tmp_path / "t.duckdb"
    r = cli("ingest", str(trl_dir), "--name", "ext", "--db", str(db))
    assert r.code == 0, r.err
    assert "ingested 2 steps (1..2), 12 completions" in r.out
    counts = _counts(db)
    assert counts == {"runs": 2, "tasks": 4, "nodes": 12, "calls": 12, "verdicts": 12,
                      "rollouts": 12, "train_steps": 2}  # fmt: skip
    runs = _rows(db, "SELECT name, loop, model FROM runs ORDER BY name")
    assert runs == [{"name": "ext-g00001", "loop": "grpo", "model": "trl@step0"},
                    {"name": "ext-g00002", "loop": "grpo", "model": "trl@step1"}]  # fmt: skip
    tasks = _rows(db, "SELECT DISTINCT task_id, prompt, answer_key, reference FROM tasks")
    assert sorted(t["prompt"] for t in tasks) == sorted(PROMPTS)
    assert all(t["task_id"].startswith("p-") for t in tasks)
    assert all(t["answer_key"] is None and t["reference"] is None for t in tasks)  # no key
    roll = _rows(db, "SELECT step, group_index, sample_index, reward, rewards, advantage "
                     "FROM rollouts WHERE step = 1 ORDER BY group_index, sample_index")  # fmt: skip
    assert [r["reward"] for r in roll] == [1.5, 0.5, 1.0, 1.5, 0.5, 0.0]
    assert json.loads(roll[2]["rewards"]) == {"correctness_reward": 1.0, "format_reward": None}
    assert [r["advantage"] for r in roll] == [0.8, -0.4, 0.8, 0.8, -0.4, -0.4]
    assert [(r["group_index"], r["sample_index"]) for r in roll][:4] == [
        (0, 0), (0, 1), (0, 2), (1, 0)
    ]  # fmt: skip
    calls = _rows(db, "SELECT messages, output FROM calls ORDER BY output LIMIT 1")
    assert json.loads(calls[0]["messages"])[0] == {"role": "system", "content": "Answer briefly."}
    assert calls[0]["output"].startswith("The answer is")
    verdicts = _rows(db, "SELECT DISTINCT verifier, stage FROM verdicts")
    assert verdicts == [{"verifier": "reward:trl", "stage": "in_loop"}]
    m = step_metrics(str(db), "ext")
    assert [s["step"] for s in m] == [1, 2]
    assert m[0]["metrics"]["loss"] == 0.12 and m[1]["metrics"]["kl"] == 0.01  # TRL's logs
    assert m[0]["metrics"]["reward_mean"] == pytest.approx(5.0 / 6)
    # again: the same rows, not twice as many
    r = cli("ingest", str(trl_dir), "--name", "ext", "--db", str(db))
    assert r.code == 0, r.err
    assert _counts(db) == counts
    listed = cli("runs", "--db", str(db))
    assert listed.code == 0 and "ext-g00001" in listed.out and "ext-g00002" in listed.out
    assert "reward:trl" in listed.out


def test_a_malformed_file_is_named_in_one_line_and_the_rest_ingested(
    trl_dir: Path, tmp_path: Path, cli: Any
) -> None:
    (trl_dir / "completions" / "completions_00003.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"step": [4], "text": ["no prompt column"]}),
                   trl_dir / "completions" / "completions_00004.parquet")  # fmt: skip
    db = tmp_path / "m.duckdb"
    r = cli("ingest", str(trl_dir), "--name", "ext", "--db", str(db))
    assert r.code == 0, r.err
    skipped = [ln for ln in r.err.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 2, r.err
    assert "completions_00003.parquet" in skipped[0] and "parquet" in skipped[0]
    assert "completions_00004.parquet" in skipped[1] and "'prompt'" in skipped[1]
    assert "Traceback" not in r.err
    assert [s["step"] for s in step_metrics(str(db), "ext")] == [1, 2]


def test_a_folder_without_completions_is_one_error_line(tmp_path: Path, cli: Any) -> None:
    r = cli("ingest", str(tmp_path), "--name", "ext", "--db", str(tmp_path / "x.duckdb"))
    assert r.code == 2 and "log_completions=True" in r.err and "Traceback" not in r.err


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())


def test_an_ingested_run_opens_in_the_viewer_harvests_and_reports(
    trl_dir: Path, tmp_path: Path
) -> None:
    from loopwright.loops.analysis.report_improve import write_improve_report
    from loopwright.traces.harvest import HarvestOptions, harvest

    db = tmp_path / "v.duckdb"
    ingest_completions(trl_dir, "ext", str(db))
    with viewer(db) as v:
        page = _get(v.url + "api/runs?q=ext-g")
        assert sorted(r["name"] for r in page["rows"]) == ["ext-g00001", "ext-g00002"]
        run = _get(v.url + "api/run?name=ext-g00001")
        assert run["loop"] == "grpo" and run["verifier"] == "reward:trl" and run["tasks"] == 2
        tasks = _get(v.url + "api/tasks?run=ext-g00001")
        assert len(tasks["rows"]) == 2
        task_id = tasks["rows"][0]["task_id"]
        tree = _get(v.url + f"api/task?run=ext-g00001&task={task_id}")
        assert [n["role"] for n in tree["nodes"]] == ["generator"] * 3
        assert [n["score"] for n in tree["nodes"]] == [1.5, 0.5, 1.0]
        node = _get(v.url + f"api/node?id={tree['nodes'][0]['node_id']}")
        assert node["content"] == "The answer is 4."
        [verdict] = node["verdicts"]
        assert verdict["verifier"] == "reward:trl" and verdict["passed"] is True
        details = json.loads(verdict["details"])
        assert details["terms"] == {"correctness_reward": 1.0, "format_reward": 0.5}
        assert details["advantage"] == 0.8
    out = tmp_path / "pairs.jsonl"
    res = harvest("dpo", db, out, HarvestOptions(runs=("ext-g00001",), style="plain",
                                                 pairs=("siblings",)))  # fmt: skip
    assert res.rows >= 1
    pair = json.loads(out.read_text().splitlines()[0])
    assert pair["chosen"] != pair["rejected"]
    report = write_improve_report(str(db), "ext", tmp_path / "report")
    text = report.read_text()
    assert "2 GRPO steps" in text and "## GRPO steps" in text
    assert (tmp_path / "report" / "reward_vs_step.png").stat().st_size > 1000
    assert not (tmp_path / "report" / "heldout_vs_step.png").exists()  # no evaluated rounds
