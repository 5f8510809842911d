"""Processes the library starts never re-run the user's program; a grader that cannot run is an
error that says so, never a row of failed verdicts.

The user's program here is the README's Python example written as people write it: no
``if __name__ == "__main__":`` guard. It runs as a script, through ``python -c``, from stdin
and through ``exec`` (what a notebook cell does), on the scripted model, with answers that only
math-verify can grade (a fraction against a decimal, a root against its square), so each run
goes through the math checker's worker process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.execution.grade import grade_run
from loopwright.loops.verify import MathAnswer
from loopwright.tools import math_check
from loopwright.traces.store import TraceStore

from tests.loop_testkit import cli_main, local_model, write_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"

TASKS = [
    {"id": "half", "prompt": "Q-half: one half, please.", "kind": "math", "reference": "0.5"},
    {"id": "root", "prompt": "Q-root: the root of 8?", "kind": "math", "reference": r"2\sqrt{2}"},
    {"id": "third", "prompt": "Q-third: one half again.", "kind": "math", "reference": "0.5"},
]
ANSWERS = {
    "Q-half": r"One half is $\boxed{\frac{1}{2}}$.",
    "Q-root": r"It is $\boxed{\sqrt{8}}$.",
    "Q-third": r"That is $\boxed{\frac{1}{3}}$.",  # wrong
}
EXPECTED = {"half": True, "root": True, "third": False}

PROGRAM = f"""\
import asyncio
import json
import os

from loopwright.loops import RunConfig, ScriptedModel, run

with open("program-runs.log", "a") as log:  # one line every time this program runs
    log.write(f"{{os.getpid()}}\\n")

ANSWERS = {ANSWERS!r}


def reply(call):
    text = " ".join(str(m["content"]) for m in call.messages)
    return next((a for key, a in ANSWERS.items() if key in text), "I do not know.")


model = ScriptedModel(reply, name="readme").register()
config = RunConfig(loop="self-refine", tasks="tasks.jsonl", model=model, db="t.duckdb")
result = asyncio.run(run(config))
print("SUMMARY " + json.dumps(result.summary))
"""

PLUGIN = f"""\
from loopwright.loops import ScriptedModel

ANSWERS = {ANSWERS!r}


def reply(call):
    text = " ".join(str(m["content"]) for m in call.messages)
    return next((a for key, a in ANSWERS.items() if key in text), "I do not know.")


ScriptedModel(reply, name="readme").register()
"""

BROKEN_MATH_VERIFY = 'raise ImportError("math_verify is broken in this environment")\n'
"""A ``math_verify`` that shadows the real one: a checker that cannot run here."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


def _project(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "tasks.jsonl", TASKS)
    (tmp_path / "prog.py").write_text(PROGRAM)
    return tmp_path


def _python(mode: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the program as a script, with ``-c`` or from stdin."""
    args = {
        "script": [sys.executable, "prog.py"],
        "-c": [sys.executable, "-c", PROGRAM],
        "stdin": [sys.executable, "-"],
    }[mode]
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        input=PROGRAM if mode == "stdin" else None,
        stdin=None if mode == "stdin" else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _graded(db: Path) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(
            "SELECT task_id, node_id, passed, feedback FROM verdicts WHERE stage = 'graded' "
            "ORDER BY task_id, node_id"
        )


def _tasks(db: Path) -> dict[str, dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        rows = s.query("SELECT task_id, status, graded, error FROM tasks")
    return {r["task_id"]: r for r in rows}


def _assert_graded_right(db: Path) -> None:
    tasks = _tasks(db)
    assert {t: r["status"] for t, r in tasks.items()} == dict.fromkeys(EXPECTED, "done")
    assert {t: r["graded"] for t, r in tasks.items()} == EXPECTED
    finals = {r["task_id"]: r for r in _graded(db) if r["node_id"] is not None}
    assert {t: r["passed"] for t, r in finals.items()} == EXPECTED
    assert not [r for r in finals.values() if "could not" in (r["feedback"] or "")]


# -- the README's example, unguarded, every way a user runs Python -------------------------------


@pytest.mark.parametrize("mode", ["script", "-c", "stdin"])
def test_the_unguarded_example_runs_once_and_grades_right(tmp_path: Path, mode: str) -> None:
    cwd = _project(tmp_path)
    done = _python(mode, cwd, _env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # no helper process ran the user's program again
    assert len((cwd / "program-runs.log").read_text().splitlines()) == 1
    summary = json.loads(done.stdout.split("SUMMARY ", 1)[1])
    assert summary["done"] == 3 and summary["failed"] == 0
    assert summary["graded_pass_rate"] == pytest.approx(2 / 3)
    _assert_graded_right(cwd / "t.duckdb")


@pytest.fixture
def fresh_checker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The graders' shared math checker starts afresh (and is stopped after the test)."""
    monkeypatch.setattr(MathAnswer, "_checker", None)
    yield
    if MathAnswer._checker is not None:
        MathAnswer._checker.close()


def test_the_example_in_a_notebook_like_exec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_checker: None
) -> None:
    cwd = _project(tmp_path)
    monkeypatch.chdir(cwd)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(PROGRAM, "<cell>", "exec"), namespace)  # what a notebook does with a cell
    assert namespace["result"].summary["graded_pass_rate"] == pytest.approx(2 / 3)
    assert len((cwd / "program-runs.log").read_text().splitlines()) == 1
    _assert_graded_right(cwd / "t.duckdb")


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = next(b for b in blocks if "asyncio.run(run(RunConfig(" in b)
    assert "if __name__" not in example  # the README shows it unguarded, as users copy it
    return example


@local_model
@pytest.mark.local_model
@pytest.mark.slow
def test_the_readme_example_itself_on_the_embedded_model(tmp_path: Path) -> None:
    example = _readme_example()
    small = re.sub(r"limit=\d+", "limit=2", example)  # the same program on fewer tasks
    assert small != example
    (tmp_path / "ex.py").write_text(small)
    done = subprocess.run(
        [sys.executable, "ex.py"],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    tasks = _tasks(tmp_path / "loopwright.duckdb")
    assert len(tasks) == 2 and all(r["status"] == "done" for r in tasks.values()), tasks
    finals = [r for r in _graded(tmp_path / "loopwright.duckdb") if r["node_id"] is not None]
    assert len(finals) == 2
    assert all(r["passed"] is not None for r in finals)
    assert not [r for r in finals if "could not" in (r["feedback"] or "")], finals


# -- a checker that cannot run ---------------------------------------------------------------------


def _broken_math_verify(tmp_path: Path) -> dict[str, str]:
    """An environment whose math-verify cannot be imported (the library itself still can)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "math_verify.py").write_text(BROKEN_MATH_VERIFY)
    return _env(PYTHONPATH=str(shadow))


def _no_failed_verdicts(db: Path) -> None:
    assert [r for r in _graded(db) if r["passed"] is False] == []
    assert [t for t, r in _tasks(db).items() if r["graded"] is False] == []


def test_a_checker_that_cannot_start_stops_the_program_loudly(tmp_path: Path) -> None:
    cwd = _project(tmp_path)
    done = _python("script", cwd, _broken_math_verify(tmp_path))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "math answers cannot be checked here" in last, done.stderr[-3000:]
    assert "math_verify is broken in this environment" in last
    assert len((cwd / "program-runs.log").read_text().splitlines()) == 1
    _no_failed_verdicts(cwd / "t.duckdb")


def test_the_cli_run_says_one_line_and_exits_2_when_the_checker_cannot_start(
    tmp_path: Path,
) -> None:
    cwd = _project(tmp_path)
    (cwd / "plugin.py").write_text(PLUGIN)
    argv = [
        sys.executable, "-m", "loopwright.loops.cli.main", "run", "self-refine",
        "--tasks", "tasks.jsonl", "--model", "scripted/readme", "--plugin", "plugin.py",
        "--db", "t.duckdb",
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=_broken_math_verify(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "math answers cannot be checked here" in done.stderr
    assert "math_verify is broken in this environment" in done.stderr
    _no_failed_verdicts(cwd / "t.duckdb")


def _run_in_process(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cwd)
    exec(compile(PROGRAM, "<cell>", "exec"), {"__name__": "__main__"})


def _answers_left_to_grade(db: Path) -> int:
    with TraceStore(db, read_only=True) as s:
        rows = s.query(
            "SELECT count(DISTINCT n.node_id) AS n FROM nodes n JOIN verdicts v "
            "ON v.node_id = n.node_id AND v.stage = 'in_loop' WHERE n.node_id NOT IN "
            "(SELECT node_id FROM verdicts WHERE stage = 'graded' AND node_id IS NOT NULL)"
        )
    return int(rows[0]["n"])


def test_loopwright_grade_exits_2_with_one_line_when_the_checker_cannot_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fresh_checker: None,
) -> None:
    cwd = _project(tmp_path)
    _run_in_process(cwd, monkeypatch)
    db = cwd / "t.duckdb"
    assert _answers_left_to_grade(db) > 0  # drafts the run did not grade
    before = _graded(db)
    if MathAnswer._checker is not None:
        MathAnswer._checker.close()
    monkeypatch.setattr(MathAnswer, "_checker", None)
    monkeypatch.setattr(
        math_check, "_worker_command", lambda: [sys.executable, "-c", "raise SystemExit(3)"]
    )
    capsys.readouterr()
    code, _, err = cli_main(["grade", "--run", _run_name(db), "--db", str(db)], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "math answers cannot be checked here" in lines[0], err
    assert "exit code 3" in lines[0]
    assert _graded(db) == before  # nothing written: no failed verdicts, no error rows


def _run_name(db: Path) -> str:
    with TraceStore(db, read_only=True) as s:
        return str(s.query("SELECT name FROM runs")[0]["name"])


DIES_ON_EVERY_JOB = """\
import json, os, sys
sys.path[:] = json.loads(sys.argv[1])
from loopwright.tools import _math_worker as w
w._send(1, {"ready": True})
w._recv(0)
os._exit(9)
"""
"""A worker that starts, then dies on the first response it is given (as a crash would)."""


def test_answers_the_checker_dies_on_are_errors_not_failed_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_checker: None
) -> None:
    cwd = _project(tmp_path)
    monkeypatch.setattr(
        math_check,
        "_worker_command",
        lambda: [sys.executable, "-c", DIES_ON_EVERY_JOB, json.dumps(sys.path)],
    )
    _run_in_process(cwd, monkeypatch)
    db = cwd / "t.duckdb"
    tasks = _tasks(db)
    # the run went on; each task says grading failed and why, and has no graded verdict
    assert {t: (r["status"], r["graded"]) for t, r in tasks.items()} == dict.fromkeys(
        EXPECTED, ("failed", None)
    )
    assert all("grading failed: MathCheckError" in r["error"] for r in tasks.values())
    assert all("died twice" in r["error"] for r in tasks.values())
    assert _graded(db) == []

    report = grade_run(db, [_run_name(db)], concurrency=2)
    assert report.graded > 0 and report.errors == report.graded
    assert report.passed == 0 and report.failed == 0
    rows = _graded(db)
    assert len(rows) == report.graded
    assert all(r["passed"] is None for r in rows)
    assert all(r["feedback"].startswith("grader error: MathCheckError") for r in rows)
