"""--tracker: a run, a sweep's points and an improve series mirrored to Trackio, W&B and MLflow
in their offline modes, read back from what each tracker stored; a missing package is one
line, a failing tracker never fails the run, and no tracker package is imported unless chosen.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import LoopRunner, cli_main, math_task, write_jsonl
from loopwright.loops.errors import UserError
from loopwright.loops.execution import trackers as TR
from loopwright.loops.execution.runner import RunResult, prepare
from loopwright.loops.execution.sweep import SweepConfig, run_sweep
from loopwright.loops.models.scripted import ScriptedModel

HINT = "pip install 'loopwright[trackers]'"
ANSWER = "2 + 3 = 5. The answer is 5."
RUN = LoopRunner("best-of-n", {"n": 1})


def answer(call: Any) -> str:
    return ANSWER


def need(module: str) -> Any:
    return pytest.importorskip(module, reason=f"{module} is not installed: {HINT}")


def tasks_file(tmp_path: Path) -> str:
    """Three math tasks; the scripted model answers 5 to each, so only t1 is right."""
    rows = [math_task("t1", reference="5"), math_task("t2", reference="7"),
            math_task("t3", reference="9")]  # fmt: skip
    return write_jsonl(tmp_path / "tasks.jsonl", rows)


async def small_run(tmp_path: Path, **cfg: Any) -> RunResult:
    """The three tasks through the runner on the scripted model, no in-loop verifier (so the
    pass rate, 0, differs from the graded accuracy, 1/3)."""
    result, _ = await RUN(tmp_path, ScriptedModel(answer), tasks_file(tmp_path),
                          verifier="none", **cfg)  # fmt: skip
    return result


def check_run_metrics(metrics: dict[str, Any], result: RunResult) -> None:
    s = result.summary
    assert metrics["graded_accuracy"] == pytest.approx(1 / 3)
    assert metrics["pass_rate"] == 0
    assert (metrics["tasks"], metrics["done"], metrics["failed"]) == (3, 3, 0)
    assert metrics["tokens"] == s["tokens"] > 0
    assert metrics["calls"] == s["calls"] == 3
    assert metrics["usd"] == s["cost_usd"]
    assert metrics["wall_s"] > 0


def check_samples(rows: list[dict[str, Any]]) -> None:
    assert [r["task"] for r in rows] == ["t1", "t2", "t3"]
    assert [r["graded_verdict"] for r in rows] == [True, False, False]
    assert {r["final_answer"] for r in rows} == {"5"}  # the answer read from the reply
    assert all("Tom has 2 apples" in r["prompt"] for r in rows)


# -- Trackio ------------------------------------------------------------------------------------


@pytest.fixture
def trackio_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Trackio's local store in ``tmp_path`` (Trackio reads TRACKIO_DIR when imported, so an
    already imported trackio is pointed there too)."""
    need("trackio")
    d = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(d))
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    monkeypatch.delenv("TRACKIO_SERVER_URL", raising=False)
    import trackio.sqlite_storage
    import trackio.utils

    for mod in (trackio, trackio.utils, trackio.sqlite_storage):
        if hasattr(mod, "TRACKIO_DIR"):
            monkeypatch.setattr(mod, "TRACKIO_DIR", d)
    return d


def trackio_runs(d: Path, project: str) -> dict[str, dict[str, Any]]:
    """Per run name in Trackio's SQLite file of ``project``: its config and logged rows."""
    con = sqlite3.connect(d / f"{project}.db")
    try:
        runs: dict[str, dict[str, Any]] = {}
        for name, config in con.execute("SELECT run_name, config FROM configs"):
            runs[name] = {"config": json.loads(config), "logs": []}
        for name, step, metrics in con.execute(
            "SELECT run_name, step, metrics FROM metrics ORDER BY id"
        ):
            runs[name]["logs"].append((step, json.loads(metrics)))
        return runs
    finally:
        con.close()


async def test_trackio_receives_a_runs_summary_and_its_sample_table(
    tmp_path: Path, trackio_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await small_run(tmp_path, tracker="trackio", tracker_project="lw-test")
    [(name, run)] = trackio_runs(trackio_dir, "lw-test").items()
    assert name == result.name
    assert run["config"]["loop"] == "best-of-n"
    assert run["config"]["tracker"] == "trackio"
    [(_, metrics), (_, table)] = run["logs"]
    check_run_metrics(metrics, result)
    assert table["samples"]["_type"] == "trackio.table"
    check_samples(table["samples"]["_value"])
    assert "Trackio" not in capsys.readouterr().out  # its banners go to stderr


# -- W&B ----------------------------------------------------------------------------------------


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline W&B run (``run-ID.wandb``: a LevelDB-style log of protobuf
    records, 32 KiB blocks of chunks behind a 7-byte ``:W&B`` header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


async def test_wandb_offline_receives_a_runs_summary_and_its_sample_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = await small_run(tmp_path, tracker="wandb", tracker_project="lw-test")
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.project) == (result.name, "lw-test")
    config = {_key(u): json.loads(u.value_json) for u in run.config.update}
    assert config["loop"] == "best-of-n"
    history = [
        {_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    check_run_metrics(next(h for h in history if "graded_accuracy" in h), result)
    assert any("samples/artifact_path" in h for h in history)
    [table] = run_dir.glob("files/media/table/samples_*.table.json")
    stored = json.loads(table.read_text())
    check_samples([dict(zip(stored["columns"], row, strict=True)) for row in stored["data"]])
    [exit_record] = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def test_wandb_goes_offline_without_an_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert TR.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password k\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert TR.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert TR.wandb_mode() == "disabled"


# -- MLflow -------------------------------------------------------------------------------------


async def test_mlflow_receives_a_runs_summary_params_and_its_sample_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    result = await small_run(tmp_path, tracker="mlflow", tracker_project="lw-test")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lw-test")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_name == result.name
    assert run.info.status == "FINISHED"
    check_run_metrics(run.data.metrics, result)
    assert run.data.params["loop"] == "best-of-n"
    assert run.data.params["options.n"] == "1"
    local = Path(client.download_artifacts(run.info.run_id, "samples.json", str(tmp_path)))
    stored = json.loads(local.read_text())
    check_samples([dict(zip(stored["columns"], row, strict=True)) for row in stored["data"]])


def test_mlflow_without_a_uri_or_its_database_backend_writes_a_local_file_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == "sqlalchemy" else real(m, *a)
    )
    assert TR.mlflow_tracking_uri() == f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert TR.mlflow_tracking_uri() is None  # MLflow reads the variable itself


# -- sweeps and improve series --------------------------------------------------------------------


def test_a_sweep_mirrors_each_run_in_the_sweeps_group_with_its_point_settings(
    tmp_path: Path, trackio_dir: Path
) -> None:
    model = ScriptedModel(answer).register()
    cfg = SweepConfig(
        verifier="oracle", name="sw", tasks=tasks_file(tmp_path), models=(model,),
        grid="best-of-n:n=2", seeds=2, db=str(tmp_path / "t.duckdb"), sandbox="process",
        tracker="trackio", tracker_project="lw-sweep",
    )  # fmt: skip
    run_sweep(cfg)
    runs = trackio_runs(trackio_dir, "lw-sweep")
    assert sorted(runs) == [f"sw.{model.split('/')[-1]}.best-of-n.n=2.s{s}" for s in (0, 1)]
    for name, run in runs.items():
        config = run["config"]
        assert config["_Group"] == "sw"
        assert (config["strategy"], config["param"], config["value"]) == ("best-of-n", "n", 2)
        assert config["seed"] == int(name[-1])
        assert run["logs"][0][1]["graded_accuracy"] == pytest.approx(1 / 3)
    # re-running the finished sweep mirrors nothing again
    run_sweep(cfg)
    assert sorted(trackio_runs(trackio_dir, "lw-sweep")) == sorted(runs)


@pytest.fixture
def fake_trainer(monkeypatch: pytest.MonkeyPatch) -> Any:
    from loopwright.loops.improve import rounds as R
    from loopwright.loops.improve import train as T
    from test_improve import FakeTrainer

    trainer = FakeTrainer()
    monkeypatch.setattr(T, "train_and_export", trainer)
    monkeypatch.setattr(T, "_need_train", lambda: None)
    monkeypatch.setattr(R, "served_as", lambda path: trainer.served[-1])
    return trainer


def test_an_improve_series_logs_each_round_at_step_round(
    tmp_path: Path, trackio_dir: Path, fake_trainer: Any
) -> None:
    from loopwright.loops.improve import rounds as R
    from test_improve import _cfg

    cfg = _cfg(tmp_path, rounds=1, tracker="trackio", tracker_project="lw-improve")
    result = R.run_improve(cfg)
    assert result.failed is None
    runs = trackio_runs(trackio_dir, "lw-improve")
    assert list(runs) == ["s"]  # the series, not its train and eval runs
    logs = runs["s"]["logs"]
    assert [step for step, _ in logs] == [0, 1]
    assert [m["round"] for _, m in logs] == [0, 1]
    for (_, m), row in zip(logs, result.rounds, strict=True):
        assert m["eval/tasks"] == row["metrics"]["eval"]["tasks"] == 3
    assert "train/data_rows" in logs[1][1]


def test_run_sweep_and_improve_take_the_tracker_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from loopwright.loops.cli import sweep as sweep_cli
    from loopwright.loops.execution import runner, sweep
    from loopwright.loops.improve import rounds

    seen: dict[str, Any] = {}

    async def fake_run(cfg: Any, *args: Any, **kw: Any) -> Any:
        seen["run"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(sweep, "validate", lambda cfg: ([], []))
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, *a: seen.setdefault("sweep", cfg))
    monkeypatch.setattr(sweep_cli, "_summary", lambda db, name: None)
    monkeypatch.setattr(rounds, "run_improve", lambda cfg, events=None: (
        seen.setdefault("improve", cfg), SimpleNamespace(rounds=[], failed=None))[1])  # fmt: skip
    tasks = tasks_file(tmp_path)
    commands = [
        ["run", "best-of-n", "--tasks", tasks],
        ["sweep", "--tasks", tasks, "--grid", "best-of-n:n=1,2"],
        ["improve", "--tasks", tasks, "--eval-tasks", "builtin:arithmetic?seed=2", "--name", "s"],
    ]
    flags = ["--db", str(tmp_path / "t.duckdb"), "--tracker", "mlflow", "--tracker-project", "p"]
    for args in commands:
        code, _, err = cli_main([*args, *flags])
        assert code == 0, err
    assert {c: (cfg.tracker, cfg.tracker_project) for c, cfg in seen.items()} == dict.fromkeys(
        ("run", "sweep", "improve"), ("mlflow", "p")
    )
    # not part of what a run computes: a resume with another tracker (or none) matches
    plain = seen["run"].model_copy(update={"tracker": None, "tracker_project": None})
    assert plain.config_hash() == seen["run"].config_hash()


# -- failures -----------------------------------------------------------------------------------


async def test_a_missing_tracker_package_is_one_line_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TR.TRACKERS, "wandb", "wandb_is_not_installed_here")
    cfg = RUN.config(tmp_path, ScriptedModel(answer), tasks_file(tmp_path), tracker="wandb")
    with pytest.raises(UserError) as exc:
        prepare(cfg)
    assert str(exc.value) == (
        "--tracker wandb needs `pip install 'loopwright[wandb]'` (or loopwright[trackers] for "
        "all three)"
    )


def test_the_cli_refuses_a_missing_tracker_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TR.TRACKERS, "mlflow", "mlflow_is_not_installed_here")
    plugin = tmp_path / "model.py"
    plugin.write_text(
        "from loopwright.loops.models.scripted import ScriptedModel\n"
        f"ScriptedModel(lambda call: {ANSWER!r}, name='trk').register()\n"
    )
    db = tmp_path / "t.duckdb"
    code, _, err = cli_main(
        ["run", "best-of-n", "--tasks", tasks_file(tmp_path), "--model", "scripted/trk",
         "--plugin", str(plugin), "--db", str(db), "--tracker", "mlflow"]
    )  # fmt: skip
    assert code != 0
    assert "--tracker mlflow needs `pip install 'loopwright[mlflow]'`" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not db.exists()
    code, _, err = cli_main(["run", "best-of-n", "--tasks", tasks_file(tmp_path),
                             "--db", str(db), "--tracker", "neptune"])  # fmt: skip
    assert code != 0 and "--tracker" in err and "trackio" in err


class Exploding:
    """A tracker whose ``log`` raises, as a package with a bug or without a network would."""

    name = "trackio"
    calls: list[str] = []

    def __init__(self, project: str) -> None:
        self.project = project

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
        self.calls.append("start")

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append("log")
        raise ConnectionError("tracker host unreachable")

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self.calls.append("table")

    def finish(self, status: str = "done") -> None:
        self.calls.append(f"finish:{status}")


async def test_a_tracker_that_fails_warns_once_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(TR.TRACKERS, "trackio", "json")  # "installed"
    monkeypatch.setattr(TR, "TrackioTracker", Exploding)
    monkeypatch.setattr(Exploding, "calls", [])
    result = await small_run(tmp_path, tracker="trackio")
    assert result.summary["done"] == 3
    assert result.summary["graded_pass_rate"] == pytest.approx(1 / 3)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert (
        "--tracker trackio failed in log (ConnectionError: tracker host unreachable)"
        in (warnings[0])
    )
    # no table after the failure; the tracker is still closed
    assert Exploding.calls == ["start", "log", "finish:failed"]


def test_a_tracker_that_fails_to_start_is_never_called_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class NoStart(Exploding):
        def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
            raise RuntimeError("no such project")

    guarded = TR.Guarded(NoStart("p"))
    NoStart.calls = []
    guarded.start("r", {})
    guarded.log({"x": 1.0})
    guarded.table("samples", [{"a": 1}])
    guarded.finish("done")
    assert NoStart.calls == []
    assert capsys.readouterr().err.count("warning:") == 1


def test_metrics_keep_numbers_only_and_flatten_nested_keys() -> None:
    got = TR.numeric_metrics(
        {"eval": {"pass@1": {"mean": 0.5, "lo": None}, "k": 4}, "ok": True, "note": "x"}
    )
    assert got == {"eval/pass@1/mean": 0.5, "eval/k": 4.0, "ok": 1.0}
    assert TR._flat_params({"options": {"n": 4, "selector": "vote"}, "tags": [1, 2]}) == {
        "options.n": "4",
        "options.selector": "vote",
        "tags": "[1, 2]",
    }


# -- imports ------------------------------------------------------------------------------------

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    from loopwright.loops.execution.runner import RunConfig, run
    from loopwright.loops.models.scripted import ScriptedModel

    cfg = RunConfig(loop="best-of-n", tasks=sys.argv[1], model=ScriptedModel(lambda c: "5"),
                    db=sys.argv[2], verifier="none", options={"n": 1})
    asyncio.run(run(cfg))
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules}
                            & {"trackio", "wandb", "mlflow", "gradio_client"})))
    """
)


def test_no_tracker_package_is_imported_when_none_is_chosen(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, tasks_file(tmp_path), str(tmp_path / "t.duckdb")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
