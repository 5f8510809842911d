"""``loopwright grade``: the held-out grader on every answer of a finished run.

Runs are made through the runner with the scripted model (best-of-n, every sample verified
in the loop, only the final graded); ``grade_run`` then grades the other answers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from loop_testkit import (
    CODE_SPEC,
    FIRST_FAILURE,
    RIGHT_CODE,
    WRONG_CODE,
    LoopRunner,
    Rows,
    last_user,
    math_task,
    read_rows,
    skip_without_bwrap,
    write_jsonl,
)
from loopwright.loops.cli.grade import grade
from loopwright.loops.errors import UserError
from loopwright.loops.execution import grade as grade_mod
from loopwright.loops.execution.grade import Agreement, GradeReport, grade_run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import Task, builtin_arithmetic, load_tasks
from loopwright.loops.verify import MathAnswer, Verdict
from loopwright.tools import math_check
from loopwright.tools.code_tests import VERSION as CODE_TESTS_VERSION
from loopwright.traces import TraceStore
from typer.testing import CliRunner

ARITH = "builtin:arithmetic?n=2"
TASKS = builtin_arithmetic(seed=0, n=2)
run_loop = LoopRunner("best-of-n", {"n": 4, "selector": "verifier"})


def replies(ref: str) -> list[str]:
    """A task's four samples: right, wrong, no answer, right as a bare boxed number."""
    r = int(ref)
    return [
        f"So the total is {r}. The answer is {r}.",
        f"I think it is {r + 1}. The answer is {r + 1}.",
        "I am not sure.",
        f"\\boxed{{{r}}}",
    ]


# What the held-out math check says of each reply (index into replies()).
GRADED = [True, False, False, True]
# What the gamed in-loop check says: it passes any reply saying "The answer is".
GAMED = [True, True, False, False]


class PerTask:
    """The k-th sample for a task gets that task's k-th reply."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, call: ModelCall) -> str:
        user = last_user(call.messages)
        if call.params.role == "verifier":  # the self-check of a gamed run: fooled by the phrase
            answer = user.split("Proposed answer:", 1)[1]
            return "Verdict: CORRECT" if "The answer is" in answer else "Verdict: INCORRECT"
        [task] = [t for t in TASKS if t.prompt in user]
        k = self.seen.get(task.id, 0)
        self.seen[task.id] = k + 1
        return replies(task.reference or "")[k]


async def make_run(tmp_path: Path, name: str, *, gamed: bool = False) -> Rows:
    """A best-of-4 run; ``gamed`` checks in the loop with the model's own self-check, which
    the script fools with the phrase "The answer is" (the product's ``self`` verifier)."""
    _, rows = await run_loop(
        tmp_path, ScriptedModel(PerTask()), ARITH, run_name=name, concurrency=1,
        verifier="self" if gamed else "oracle",
    )  # fmt: skip
    return rows


def answers(rows: Rows) -> list[dict[str, Any]]:
    return [n for n in rows["nodes"] if n["role"] == "generator"]


def reply_index(node: dict[str, Any]) -> int:
    [task] = [t for t in TASKS if t.id == node["task_id"]]
    return replies(task.reference or "").index(node["content"])


def graded_of(rows: Rows, node_id: str) -> list[dict[str, Any]]:
    return [v for v in rows["verdicts"] if v["stage"] == "graded" and v["node_id"] == node_id]


def db_of(tmp_path: Path) -> str:
    return str(tmp_path / "t.duckdb")


# -- math: every answer graded, finals untouched, resumable, agreement -------------------------


async def test_grades_every_answer_once_and_counts_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = await make_run(tmp_path, "honest")
    gamed = await make_run(tmp_path, "gamed", gamed=True)
    finals_before = {
        run: {v["node_id"]: v["verdict_id"] for v in rows["verdicts"] if v["stage"] == "graded"}
        for run, rows in (("honest", honest), ("gamed", gamed))
    }
    # The runner graded exactly each task's final node.
    for rows in (honest, gamed):
        assert set(finals_before_of(rows)) == {t["final_node_id"] for t in rows["tasks"]}
        assert len(answers(rows)) == 8

    seen: list[tuple[int, int]] = []
    report = grade_run(
        db_of(tmp_path),
        ["honest", "gamed"],
        concurrency=3,
        on_progress=lambda p: seen.append((p.done, p.total)),
    )

    after = {
        "honest": read_rows(db_of(tmp_path), honest["tasks"][0]["run_id"]),
        "gamed": read_rows(db_of(tmp_path), gamed["tasks"][0]["run_id"]),
    }
    checker = MathAnswer()
    passed_now = 0
    for run, rows in after.items():
        finals = {t["final_node_id"] for t in rows["tasks"]}
        for node in answers(rows):
            [v] = graded_of(rows, node["node_id"])  # exactly one graded verdict per answer
            i = reply_index(node)
            task = next(t for t in TASKS if t.id == node["task_id"])
            assert checker(task, node["content"]).passed is GRADED[i]
            assert v["passed"] is GRADED[i], (run, node["content"])
            assert (v["run_id"], v["task_id"]) == (node["run_id"], node["task_id"])
            assert v["verifier"] == "math-answer"
            assert v["verifier_version"] == f"{math_check.VERSION}-lenient"
            assert v["score"] == (1.0 if GRADED[i] else 0.0)
            if node["node_id"] in finals:  # the runner's verdict, kept as it was
                assert v["verdict_id"] == finals_before[run][node["node_id"]]
            else:
                passed_now += GRADED[i]
                details = json.loads(v["details"])
                ref = int(task.reference or "")
                assert details["answer"] == [str(ref), str(ref + 1), None, str(ref)][i]
                if i == 2:
                    assert v["feedback"] == "no final answer found"
        # tasks.graded is the final's, untouched.
        assert [t["graded"] for t in rows["tasks"]] == [
            t["graded"] for t in (honest if run == "honest" else gamed)["tasks"]
        ]

    # The specific nodes: the wrong reply of each task failed, the boxed one passed.
    for rows in after.values():
        for node in answers(rows):
            [v] = graded_of(rows, node["node_id"])
            if node["content"].startswith("I think it is"):
                assert v["passed"] is False
                assert "does not match the expected answer" in v["feedback"]
            if node["content"].startswith("\\boxed"):
                assert v["passed"] is True

    assert report.runs == ["honest", "gamed"]
    assert (report.tasks, report.answers, report.graded, report.skipped) == (4, 16, 12, 4)
    assert (report.passed, report.failed, report.errors) == (passed_now, 12 - passed_now, 0)
    assert (report.retried, report.no_grader) == (0, 0)
    # honest: in-loop == graded on all 8; gamed, per task: right (P,P), wrong (P,F),
    # no answer (F,F), boxed (F,P).
    assert report.agreement == Agreement(
        in_loop_passed_graded_passed=4 + 2,
        in_loop_passed_graded_failed=2,
        in_loop_failed_graded_passed=2,
        in_loop_failed_graded_failed=4 + 2,
        undecided=0,
    )
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)
    assert [d for d, _ in seen] == list(range(13))

    again = grade_run(db_of(tmp_path), ["gamed", "honest", "gamed"])
    assert (again.graded, again.skipped, again.passed, again.errors) == (0, 16, 0, 0)
    assert again.runs == ["gamed", "honest"]
    assert again.agreement == report.agreement  # the table describes the runs
    for run, rows in after.items():
        now = read_rows(db_of(tmp_path), rows["tasks"][0]["run_id"])
        assert len([v for v in now["verdicts"] if v["stage"] == "graded"]) == 8, run


def finals_before_of(rows: Rows) -> list[str]:
    return [v["node_id"] for v in rows["verdicts"] if v["stage"] == "graded"]


async def test_a_grader_error_is_recorded_and_regraded_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await make_run(tmp_path, "r")
    real = grade_mod.grader_for

    class Flaky:
        name = "math-answer"

        def __call__(self, task: Task, response: str) -> Verdict:
            if response == "I am not sure.":
                raise RuntimeError("checker worker died")
            return MathAnswer()(task, response)

    monkeypatch.setattr(grade_mod, "grader_for", lambda task, **_: Flaky())
    report = grade_run(db_of(tmp_path), ["r"], concurrency=2)
    assert (report.graded, report.errors, report.skipped) == (6, 2, 2)
    assert report.agreement.undecided == 2
    run_id = rows["tasks"][0]["run_id"]
    errs = [
        v
        for v in read_rows(db_of(tmp_path), run_id)["verdicts"]
        if v["stage"] == "graded" and v["passed"] is None
    ]
    assert len(errs) == 2
    for v in errs:
        assert v["feedback"] == "grader error: RuntimeError: checker worker died"
        assert json.loads(v["details"])["grader_error"] == "RuntimeError: checker worker died"
        assert v["verifier"] == "math-answer" and v["score"] is None

    monkeypatch.setattr(grade_mod, "grader_for", real)
    again = grade_run(db_of(tmp_path), ["r"])
    assert (again.graded, again.retried, again.errors, again.passed) == (2, 2, 0, 0)
    assert again.skipped == 6 and again.agreement.undecided == 0
    now = read_rows(db_of(tmp_path), run_id)
    for node in answers(now):
        [v] = graded_of(now, node["node_id"])
        assert v["passed"] is GRADED[reply_index(node)]


# -- code, in the real bwrap sandbox -------------------------------------------------------------


async def test_code_answers_are_graded_in_the_sandbox(tmp_path: Path) -> None:
    skip_without_bwrap()
    right_again = "Here you go:\n" + RIGHT_CODE
    model = ScriptedModel(PerCode([WRONG_CODE, RIGHT_CODE, right_again]))
    _, rows = await LoopRunner("best-of-n", {"n": 3})(
        tmp_path, model, CODE_SPEC, run_name="code", sandbox="bwrap"
    )
    [task] = rows["tasks"]
    assert task["graded"] is True
    final = task["final_node_id"]
    others = [n for n in answers(rows) if n["node_id"] != final]
    assert len(others) == 2 and WRONG_CODE in [n["content"] for n in others]

    report = grade_run(db_of(tmp_path), ["code"], sandbox="bwrap", timeout_s=10, concurrency=2)
    assert (report.graded, report.passed, report.failed, report.skipped) == (2, 1, 1, 1)
    assert report.agreement == Agreement(
        in_loop_passed_graded_passed=2, in_loop_failed_graded_failed=1
    )
    now = read_rows(db_of(tmp_path), task["run_id"])
    for node in others:
        [v] = graded_of(now, node["node_id"])
        details = json.loads(v["details"])
        assert (v["verifier"], v["verifier_version"]) == (
            "code-tests",
            f"{CODE_TESTS_VERSION}-bwrap",
        )
        assert details["sandbox"] == "bwrap"
        if node["content"] == WRONG_CODE:
            assert v["passed"] is False and v["score"] < 1.0
            assert v["feedback"] == FIRST_FAILURE
            assert "return a - b" in details["answer"]
        else:
            assert v["passed"] is True and v["score"] == 1.0
            assert details["tests_passed"] == details["tests_total"] > 0
    assert len(graded_of(now, final)) == 1


class PerCode:
    def __init__(self, replies: list[str]) -> None:
        self.replies = replies

    def __call__(self, call: ModelCall) -> str:
        return self.replies[call.index]


# -- errors ----------------------------------------------------------------------------------


async def test_unknown_run_names_the_known_ones(tmp_path: Path) -> None:
    await make_run(tmp_path, "honest")
    with pytest.raises(UserError) as exc:
        grade_run(db_of(tmp_path), ["honest", "honset"])
    msg = str(exc.value)
    assert "unknown run 'honset'" in msg and "choose from: honest" in msg
    assert "\n" not in msg


def test_missing_db_is_one_line_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nope.duckdb"
    with pytest.raises(UserError, match=r"no trace database at .*nope\.duckdb"):
        grade_run(db, ["r"])
    assert not db.exists()


def graded_verdicts(db: str) -> list[tuple[Any, ...]]:
    """Every graded verdict in ``db`` as it would be compared across two gradings."""
    with TraceStore(db, read_only=True) as store:
        rows = store.query(
            "SELECT node_id, verifier, verifier_version, passed, score, feedback, details "
            "FROM verdicts WHERE stage = 'graded' ORDER BY node_id"
        )
    return [tuple(r.values()) for r in rows]


async def test_a_deleted_task_file_grades_from_the_stored_answer_keys(tmp_path: Path) -> None:
    spec = write_jsonl(tmp_path / "mine.jsonl", [t.model_dump(mode="json") for t in TASKS])
    _, rows = await run_loop(
        tmp_path, ScriptedModel(PerTask()), spec, run_name="filed", concurrency=1,
        verifier="oracle",
    )  # fmt: skip
    keys = {t["task_id"]: t["answer_key"] for t in rows["tasks"]}
    assert keys == {t.id: t.model_dump_json() for t in TASKS}  # the keyed task, whole
    kept = str(tmp_path / "kept.duckdb")
    shutil.copyfile(db_of(tmp_path), kept)

    with_file = grade_run(kept, ["filed"])
    Path(spec).unlink()
    without = grade_run(db_of(tmp_path), ["filed"])

    assert (without.tasks, without.answers, without.graded) == (2, 8, 6)
    assert without.model_dump(exclude={"db", "wall_s"}) == with_file.model_dump(
        exclude={"db", "wall_s"}
    )
    assert graded_verdicts(db_of(tmp_path)) == graded_verdicts(kept)


async def test_hidden_tests_come_from_the_stored_answer_key(tmp_path: Path) -> None:
    skip_without_bwrap()
    [task] = load_tasks(CODE_SPEC)
    assert task.tests  # the grader's hidden tests, which only the task file and key hold
    spec = write_jsonl(tmp_path / "code.jsonl", [task.model_dump(mode="json")])
    model = ScriptedModel(PerCode([WRONG_CODE, RIGHT_CODE]))
    await LoopRunner("best-of-n", {"n": 2})(tmp_path, model, spec, run_name="code", sandbox="bwrap")
    Path(spec).unlink()
    report = grade_run(db_of(tmp_path), ["code"], sandbox="bwrap", timeout_s=10)
    assert (report.graded, report.passed, report.failed, report.skipped) == (1, 0, 1, 1)
    [(_, verifier, _, passed, _, _, _)] = [
        v for v in graded_verdicts(db_of(tmp_path)) if v[5] == FIRST_FAILURE
    ]
    assert (verifier, passed) == ("code-tests", False)


def forget_answer_keys(db: str) -> None:
    """Make the run look as if stored before tasks kept their answer keys."""
    with TraceStore(db) as store:
        store.execute("UPDATE tasks SET answer_key = NULL")


async def test_a_run_stored_without_answer_keys_reads_its_task_file(tmp_path: Path) -> None:
    spec = write_jsonl(tmp_path / "mine.jsonl", [math_task("t1", reference="5")])
    model = ScriptedModel(["The answer is 5.", "The answer is 6."] * 2)
    await run_loop(tmp_path, model, spec, run_name="filed")
    forget_answer_keys(db_of(tmp_path))
    Path(spec).rename(tmp_path / "moved.jsonl")
    with pytest.raises(UserError) as exc:
        grade_run(db_of(tmp_path), ["filed"])
    msg = str(exc.value)
    assert "run 'filed' was stored before runs kept their answer keys" in msg
    assert f"task spec {spec!r}" in msg and "cannot be loaded" in msg and "\n" not in msg

    (tmp_path / "moved.jsonl").rename(spec)  # put back, it grades as before
    report = grade_run(db_of(tmp_path), ["filed"])
    assert (report.answers, report.graded, report.passed) == (4, 3, 1)
    Path(spec).unlink()  # with every answer graded, the file is not needed
    again = grade_run(db_of(tmp_path), ["filed"])
    assert (again.tasks, again.graded, again.skipped) == (1, 0, 4)


async def test_an_unreadable_answer_key_is_one_line(tmp_path: Path) -> None:
    spec = write_jsonl(tmp_path / "mine.jsonl", [math_task("t1", reference="5")])
    await run_loop(tmp_path, ScriptedModel(["The answer is 5."] * 4), spec, run_name="filed")
    with TraceStore(db_of(tmp_path)) as store:
        store.execute('UPDATE tasks SET answer_key = \'{"id": "t1", "kind": "chess"}\'')
    with pytest.raises(UserError) as exc:
        grade_run(db_of(tmp_path), ["filed"])
    msg = str(exc.value)
    assert "task 't1' of run 'filed' has an answer key this loopwright cannot read" in msg
    assert "\n" not in msg


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("COLUMNS", "250")
    app = typer.Typer()
    app.command("grade")(grade)
    app.command("other")(lambda: None)  # two commands, so "grade" is a subcommand

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, ["grade", *args])

    return invoke


def error_line(result: Any) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


async def test_cli_grades_prints_json_then_a_summary(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    await make_run(tmp_path, "honest")
    db = db_of(tmp_path)
    r = cli("--db", db, "--run", "honest", "--json", "--concurrency", "2", "--timeout", "5")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    report = GradeReport.model_validate_json(r.stdout)
    assert (report.graded, report.skipped, report.errors) == (6, 2, 0)
    assert report.agreement == Agreement(
        in_loop_passed_graded_passed=4, in_loop_failed_graded_failed=4
    )
    again = cli("--db", db, "--run", "honest")
    assert again.exit_code == 0, (again.stdout, again.stderr)
    out = again.stdout
    assert "graded now" in out and "skipped, already graded" in out
    assert row(out, "graded now") == ["0"]
    assert row(out, "skipped, already graded") == ["8"]
    assert row(out, "passed") == ["4", "0"]  # the agreement table: in-loop passed row
    assert row(out, "failed") == ["0", "4"]
    assert "agree 8 of 8" in out


def row(out: str, name: str) -> list[str]:
    """The value cells of the first table row named ``name``."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in:\n{out}")


async def test_cli_errors_are_one_line(tmp_path: Path, cli: Callable[..., Any]) -> None:
    missing = tmp_path / "missing.duckdb"
    line = error_line(cli("--db", str(missing), "--run", "x"))
    assert "no trace database at" in line
    assert not missing.exists()

    await make_run(tmp_path, "honest")
    line = error_line(cli("--db", db_of(tmp_path), "--run", "nope"))
    assert "unknown run 'nope'" in line and "choose from: honest" in line
    line = error_line(cli("--db", db_of(tmp_path), "--run", "honest", "--sandbox", "jail"))
    assert "unknown sandbox backend 'jail'" in line
    line = error_line(cli("--db", db_of(tmp_path), "--run", "honest", "--grader", "exact"))
    assert "unknown grader 'exact'" in line
    # A plugin's grader is known once its file is loaded.
    example = str(Path(__file__).resolve().parents[1] / "examples" / "exact_grader.py")
    out = cli("--db", db_of(tmp_path), "--run", "honest", "--grader", "exact-text",
              "--plugin", example, "--json")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["no_grader"] == 6  # math answers: the text grader skips them


# -- a named grader ----------------------------------------------------------------------------
ENDS = "test-ends-with-reference"


@pytest.fixture
def ends_with_reference() -> Any:
    """A registered grader stricter than the math checker: the reply's last word is the
    reference (so a bare ``\\boxed{r}`` fails it); removed from the registry afterwards."""
    from loopwright.loops import grader
    from loopwright.loops.verify import GRADERS

    @grader(name=ENDS, kinds="math")
    def ends(task: Task, response: str) -> bool:
        return response.rstrip(".").split()[-1] == task.reference

    yield ends
    GRADERS.pop(ENDS, None)


async def test_a_named_grader_grades_the_run_and_grade_reuses_it(
    tmp_path: Path, ends_with_reference: Any
) -> None:
    _, rows = await run_loop(
        tmp_path, ScriptedModel(PerTask()), ARITH, run_name="named", concurrency=1,
        verifier="oracle", grader=ENDS,
    )  # fmt: skip
    finals = [v for v in rows["verdicts"] if v["stage"] == "graded"]
    assert len(finals) == 2 and {v["verifier"] for v in finals} == {ENDS}
    kept = str(tmp_path / "kept.duckdb")
    shutil.copyfile(db_of(tmp_path), kept)

    report = grade_run(db_of(tmp_path), ["named"])  # no --grader: the run's own
    assert (report.answers, report.graded) == (8, 6)
    graded = {
        v["node_id"]: (v["verifier"], v["passed"])
        for v in read_rows(db_of(tmp_path), rows["tasks"][0]["run_id"])["verdicts"]
        if v["stage"] == "graded"
    }
    # The named grader's judgement on every answer: only the first reply ends with the
    # reference; the math checker would also pass the bare boxed one.
    assert {n["node_id"]: graded[n["node_id"]] for n in answers(rows)} == {
        n["node_id"]: (ENDS, reply_index(n) == 0) for n in answers(rows)
    }

    # --grader on grade picks another grader for what is not graded yet.
    other = grade_run(kept, ["named"], grader="math-answer")
    assert other.passed == sum(GRADED) * 2 - 2  # the two finals were graded by the run
    # A run graded by a plugin's grader, graded without the plugin: one line naming it.
    from loopwright.loops.verify import GRADERS

    GRADERS.pop(ENDS)
    fresh = str(tmp_path / "fresh.duckdb")
    shutil.copyfile(kept, fresh)
    with TraceStore(fresh) as store:
        store.execute("DELETE FROM verdicts WHERE stage = 'graded' AND verifier = 'math-answer'")
    with pytest.raises(UserError, match=f"unknown grader '{ENDS}'"):
        grade_run(fresh, ["named"])


async def test_an_unknown_grader_is_one_line_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown grader 'nope'.*math-answer"):
        await run_loop(tmp_path, ScriptedModel(PerTask()), ARITH, grader="nope")
    assert not Path(db_of(tmp_path)).exists()
    with pytest.raises(UserError, match="unknown grader 'nope'"):
        grade_run(db_of(tmp_path), ["r"], grader="nope")


async def test_unchecked_samples_of_a_majority_vote_are_graded(tmp_path: Path) -> None:
    """Under ``--verifier auto`` a majority vote checks no sample in the loop; grading still
    reaches every sample (what pass@k and maj@k count), not only the final."""
    _, rows = await run_loop(
        tmp_path, ScriptedModel(PerTask()), ARITH, run_name="vote", concurrency=1,
        verifier="auto", options={"n": 4, "selector": "majority"},
    )  # fmt: skip
    assert [v for v in rows["verdicts"] if v["stage"] == "in_loop"] == []
    report = grade_run(db_of(tmp_path), ["vote"])
    assert (report.answers, report.graded, report.skipped) == (8, 6, 2)
    after = read_rows(db_of(tmp_path), rows["tasks"][0]["run_id"])
    graded = {v["node_id"]: v["passed"] for v in after["verdicts"] if v["stage"] == "graded"}
    assert {n["node_id"]: graded[n["node_id"]] for n in answers(rows)} == {
        n["node_id"]: GRADED[reply_index(n)] for n in answers(rows)
    }
