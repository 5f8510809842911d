"""``loopwright judge pairs``: pairwise judgements of a run's verified answers, written as
``judge`` verdicts. Trace DBs are written row by row (or by a real loop run); the judge is
the scripted model, answering pairwise prompts by the answers they show."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from loop_testkit import LoopRunner, last_user, local_model, math_task, write_jsonl
from loopwright.loops.analysis.judge_pairs import (
    JudgePairsReport,
    VerifiedAnswer,
    judge_pairs,
    normalise,
    select_pairs,
)
from loopwright.loops.cli.judge import judge_app
from loopwright.loops.errors import UserError
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces import (
    NodeRecord,
    TaskRecord,
    TraceStore,
    TraceWriter,
    VerdictRecord,
    new_id,
    utcnow,
)
from typer.testing import CliRunner

Messages = list[dict[str, Any]]
RIGHT, WRONG, OTHER = "The answer is 5.", "The answer is 6.", "The answer is 7."
T0 = datetime(2025, 1, 1)

# A node: (node_id, role, content, in-loop verdicts as (verifier, passed) pairs).
Node = tuple[str, str, str, list[tuple[str, bool | None]]]
MATH = "math-answer"

T1_NODES: list[Node] = [
    ("g1", "generator", RIGHT, [(MATH, True)]),
    ("g2", "generator", "  the answer   IS 5.\n", [(MATH, True)]),  # g1's text, normalised
    ("g3", "generator", WRONG, [(MATH, False), ("llm-judge", True)]),  # the check decides
    ("r1", "refiner", OTHER, [(MATH, False)]),
    ("c1", "critic", "The answer is 9.", [(MATH, True)]),  # not an answer role
    ("g4", "generator", "The answer is 10.", []),  # never verified in the loop
    ("g5", "generator", "   ", [(MATH, False)]),  # empty
]
T2_NODES: list[Node] = [
    ("h1", "expander", RIGHT, [(MATH, True)]),
    ("h2", "expander", "The answer is 4.", [(MATH, False)]),
]
FAILED_TASK_NODES: list[Node] = [
    ("f1", "generator", RIGHT, [(MATH, True)]),
    ("f2", "generator", WRONG, [(MATH, False)]),
]


def make_db(
    path: Path,
    tasks: dict[str, list[Node]],
    *,
    run: str = "r",
    failed: tuple[str, ...] = (),
) -> tuple[str, str]:
    """A trace DB holding run ``run`` with ``tasks`` (task id -> nodes); (db, run_id)."""
    db = str(path)
    run_id = new_id()
    with TraceStore(db) as store:
        store.execute(
            "INSERT INTO runs (run_id, name, loop, model, status, started_at) "
            "VALUES (?, ?, 'best-of-n', 'scripted/gen', 'done', ?)",
            [run_id, run, utcnow()],
        )
        w = TraceWriter(store)
        step = 0
        for idx, (tid, nodes) in enumerate(tasks.items()):
            w.write(
                TaskRecord(
                    run_id=run_id,
                    task_id=tid,
                    idx=idx,
                    kind="math",
                    prompt=f"question of {tid}",
                    reference="5",
                    status="failed" if tid in failed else "done",
                )
            )
            for node_id, role, content, verdicts in nodes:
                step += 1
                w.write(
                    NodeRecord(
                        node_id=f"{run}-{node_id}",
                        run_id=run_id,
                        task_id=tid,
                        role=role,
                        content=content,
                        created_at=T0 + timedelta(seconds=step),
                    )
                )
                for verifier, passed in verdicts:
                    w.write(
                        VerdictRecord(
                            run_id=run_id,
                            task_id=tid,
                            node_id=f"{run}-{node_id}",
                            stage="in_loop",
                            verifier=verifier,
                            passed=passed,
                        )
                    )
            if any(n[0] == "g4" for n in nodes):  # graded is not in-loop: g4 stays out
                w.write(
                    VerdictRecord(
                        run_id=run_id,
                        task_id=tid,
                        node_id=f"{run}-g4",
                        stage="graded",
                        verifier=MATH,
                        passed=True,
                    )
                )
        w.close()
    return db, run_id


def standard_db(tmp_path: Path, name: str = "t.duckdb") -> tuple[str, str]:
    return make_db(
        tmp_path / name,
        {"t1": T1_NODES, "t2": T2_NODES, "t3": FAILED_TASK_NODES},
        failed=("t3",),
    )


# -- the scripted judge ----------------------------------------------------------------------


def shown(messages: Messages) -> tuple[str, str]:
    """The answers a pairwise prompt shows as A and B."""
    text = last_user(messages)
    assert "Compare two answers" in text, text
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", text, re.S)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", text, re.S)
    assert a and b, text
    return a.group(1), b.group(1)


def fair(call: ModelCall) -> str:
    """Prefers the answer saying 5 wherever it is shown; a tie when neither or both do."""
    first, second = shown(call.messages)
    good = ["is 5" in first.lower(), "is 5" in second.lower()]
    verdict = "[[A]]" if good == [True, False] else "[[B]]" if good == [False, True] else "[[TIE]]"
    return f"Checked the arithmetic.\n{verdict}"


def always_first(call: ModelCall) -> str:
    shown(call.messages)
    return "The first one.\n[[A]]"


def failing_on(needle: str) -> Callable[[ModelCall], str | Fault]:
    def reply(call: ModelCall) -> str | Fault:
        first, second = shown(call.messages)
        return Fault("bad_request") if needle in first + second else fair(call)

    return reply


def judge_model(replies: Callable[[ModelCall], str | Fault]) -> ScriptedModel:
    model = ScriptedModel(replies)
    model.register()
    return model


async def judge(
    db: str, model: ScriptedModel, runs: list[str] | None = None, **kw: Any
) -> JudgePairsReport:
    kw.setdefault("backoff_base_s", 0.0)
    return await judge_pairs(db, runs or ["r"], model.name, **kw)


def judge_rows(db: str) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        rows = store.query("SELECT * FROM verdicts WHERE stage = 'judge' ORDER BY created_at")
    for r in rows:
        r["details"] = json.loads(r["details"])
    return rows


def pair_ids(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["details"]["a_node_id"], r["details"]["b_node_id"]) for r in rows}


# -- which pairs ----------------------------------------------------------------------------


async def test_differing_verdicts_come_first_and_identical_texts_are_never_paired(
    tmp_path: Path,
) -> None:
    db, _ = standard_db(tmp_path)
    model = judge_model(fair)
    report = await judge(db, model, pairs_per_task=2)

    # t1's candidates: g1, g2 (= g1's text), g3, r1; c1 is a critic, g4 was never verified
    # in the loop, g5 is empty. t2: h1, h2. t3 failed, so its answers are not judged.
    assert (report.tasks, report.candidates) == (2, 6)
    # distinct texts: t1 {5, 6, 7} -> 3 pairs; t2 -> 1 pair
    assert report.candidate_pairs == 4
    # t1's cap of two goes to the pairs of differing in-loop verdicts: 5 vs 6 and 5 vs 7
    # (g3's llm-judge pass does not hide its failed check); 6 vs 7 both failed.
    rows = judge_rows(db)
    assert pair_ids(rows) == {("r-g1", "r-g3"), ("r-g1", "r-r1"), ("r-h1", "r-h2")}
    assert (report.selected, report.judged, report.skipped) == (3, 3, 0)
    assert len(model.calls) == 6  # both orders of each pair
    shown_texts = {t for c in model.calls for t in shown(c.messages)}
    assert shown_texts == {RIGHT, WRONG, OTHER, "The answer is 4."}  # g2's text never shown

    # a higher cap adds the remaining pair (both failed), and only that one
    more = await judge(db, model, pairs_per_task=4)
    assert (more.selected, more.judged, more.skipped) == (4, 1, 3)
    assert pair_ids(judge_rows(db)) - pair_ids(rows) == {("r-g3", "r-r1")}


def cands(task: str, texts: list[tuple[str, bool | None]]) -> list[VerifiedAnswer]:
    return [VerifiedAnswer("run", task, f"{task}-{i}", t, p) for i, (t, p) in enumerate(texts)]


def test_selection_order_is_deterministic_under_the_seed_and_interleaves_tasks() -> None:
    many = cands("a", [(f"answer {i}", i % 2 == 0) for i in range(6)])
    few = cands("b", [("x", True), ("y", False)])
    first = select_pairs([*many, *few], pairs_per_task=20, seed=0)
    again = select_pairs([*many, *few], pairs_per_task=20, seed=0)
    other = select_pairs([*many, *few], pairs_per_task=20, seed=1)

    key = [(p.a.node_id, p.b.node_id) for p in first]
    assert key == [(p.a.node_id, p.b.node_id) for p in again]
    assert key != [(p.a.node_id, p.b.node_id) for p in other]
    assert {(p.a.node_id, p.b.node_id) for p in other} == set(key)
    # rank 0 of every task, then rank 1, ...: task b's only pair comes second
    assert [p.a.task_id for p in first[:3]] == ["a", "b", "a"]
    assert [p.rank for p in first[:3]] == [0, 0, 1]
    a_pairs = [p for p in first if p.a.task_id == "a"]
    assert len(a_pairs) == 15
    assert [p.differ for p in a_pairs] == [True] * 9 + [False] * 6
    # a is always the earlier answer
    assert all(int(p.a.node_id[2:]) < int(p.b.node_id[2:]) for p in first)


def test_selection_prefers_an_already_judged_pair_of_the_same_texts() -> None:
    c = cands("t", [("Five", True), ("five ", True), ("six", False)])
    assert normalise(c[0].content) == normalise(c[1].content)
    [fresh] = select_pairs(c, pairs_per_task=4, seed=0)
    assert (fresh.a.node_id, fresh.b.node_id) == ("t-0", "t-2")
    [resumed] = select_pairs(c, pairs_per_task=4, seed=0, judged=[frozenset({"t-1", "t-2"})])
    assert (resumed.a.node_id, resumed.b.node_id) == ("t-1", "t-2")


# -- what is written ------------------------------------------------------------------------


async def test_verdict_rows_carry_the_judgement_and_both_node_ids(tmp_path: Path) -> None:
    db, run_id = standard_db(tmp_path)
    model = judge_model(fair)
    report = await judge(db, model, pairs_per_task=4)
    assert (report.judged, report.consistent, report.flipped, report.undecided) == (4, 4, 0, 0)

    rows = {(r["details"]["a_node_id"], r["details"]["b_node_id"]): r for r in judge_rows(db)}
    win = rows[("r-g1", "r-g3")]
    assert (win["run_id"], win["task_id"], win["node_id"]) == (run_id, "t1", "r-g1")
    assert (win["stage"], win["verifier"]) == ("judge", "llm-judge-pairwise")
    assert win["verifier_version"] == f"judge-1@{model.name}"
    assert (win["passed"], win["score"], win["feedback"]) == (
        True,
        1.0,
        "a preferred in both orders",
    )
    d = win["details"]
    for key in ("a_node_id", "b_node_id", "winner", "position_consistent", "a_first", "b_first"):
        assert key in d
    assert (d["winner"], d["position_consistent"], d["kind"]) == ("a", True, "pairwise")
    assert (d["a_first"]["winner"], d["b_first"]["winner"]) == ("a", "a")
    assert (d["a_first"]["votes"], d["b_first"]["votes"]) == (["a"], ["a"])
    assert (d["a_first"]["order"], d["b_first"]["order"]) == ("ab", "ba")
    assert d["judge_model"] == model.name

    tie = rows[("r-g3", "r-r1")]  # neither says 5
    assert (tie["passed"], tie["score"], tie["details"]["winner"]) == (False, 0.5, "tie")
    assert tie["feedback"] == "tie in both orders"

    # The task's prompt is the question and its reference is shown.
    user = last_user(model.calls[0].messages)
    assert "question of t" in user and "[Reference answer]\n5" in user


async def test_b_winning_scores_zero(tmp_path: Path) -> None:
    db, _ = make_db(
        tmp_path / "b.duckdb", {"t": [("x", "generator", WRONG, [(MATH, False)]),
                                      ("y", "generator", RIGHT, [(MATH, True)])]}
    )  # fmt: skip
    await judge(db, judge_model(fair))
    [row] = judge_rows(db)
    assert (row["node_id"], row["details"]["b_node_id"]) == ("r-x", "r-y")
    assert (row["passed"], row["score"], row["details"]["winner"]) == (False, 0.0, "b")
    assert row["feedback"] == "b preferred in both orders"


async def test_an_order_flip_is_recorded_as_position_inconsistent(tmp_path: Path) -> None:
    db, _ = standard_db(tmp_path)
    report = await judge(db, judge_model(always_first), pairs_per_task=4)
    assert (report.judged, report.flipped, report.consistent, report.undecided) == (4, 4, 0, 0)
    for row in judge_rows(db):
        d = row["details"]
        assert d["position_consistent"] is False
        assert (d["a_first"]["winner"], d["b_first"]["winner"]) == ("a", "b")
        assert d["winner"] == "tie"
        assert (row["passed"], row["score"]) == (False, 0.5)
        assert row["feedback"].startswith("order flip: a-first picked a, b-first picked b")


async def test_a_second_invocation_judges_nothing_new(tmp_path: Path) -> None:
    db, _ = standard_db(tmp_path)
    model = judge_model(fair)
    first = await judge(db, model)
    calls = len(model.calls)
    second = await judge(db, model)
    assert first.judged == first.selected == 4
    assert (second.judged, second.skipped, second.calls) == (0, 4, 0)
    assert len(model.calls) == calls
    assert len(judge_rows(db)) == 4
    # another seed orders the pairs differently, but they are the same pairs: still nothing
    third = await judge(db, model, seed=7)
    assert (third.judged, third.skipped) == (0, 4)


async def test_judge_calls_are_traced_with_role_judge(tmp_path: Path) -> None:
    db, run_id = standard_db(tmp_path)
    model = judge_model(fair)
    report = await judge(db, model)
    with TraceStore(db, read_only=True) as store:
        calls = store.query("SELECT * FROM calls")
    assert len(calls) == 2 * report.judged == report.calls == 8
    assert {c["role"] for c in calls} == {"judge"}
    assert {c["loop"] for c in calls} == {"judge-pairs"}
    assert {c["run_id"] for c in calls} == {run_id}
    assert {c["task_id"] for c in calls} == {"t1", "t2"}
    assert {c["model"] for c in calls} == {model.name}
    assert report.tokens == sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls) > 0


async def test_a_failed_judge_call_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    db, _ = standard_db(tmp_path)
    report = await judge(db, judge_model(failing_on(OTHER)), max_attempts=1)
    # the two pairs showing OTHER (r1) fail; the other two are judged
    assert (report.judged, report.failed, report.undecided, report.consistent) == (4, 2, 2, 2)
    rows = {(r["details"]["a_node_id"], r["details"]["b_node_id"]): r for r in judge_rows(db)}
    bad = rows[("r-g1", "r-r1")]
    assert bad["feedback"].startswith("undecided: judge call failed: ")
    assert "BadRequest: scripted 400" in bad["feedback"]
    assert (bad["passed"], bad["score"], bad["details"]["winner"]) == (False, 0.0, None)
    assert bad["details"]["position_consistent"] is None
    assert rows[("r-g1", "r-g3")]["details"]["winner"] == "a"
    with TraceStore(db, read_only=True) as store:
        errors = store.query("SELECT role, error FROM calls WHERE error IS NOT NULL")
    assert len(errors) == 4 and {e["role"] for e in errors} == {"judge"}

    # a failed judgement does not count as judged: the next invocation tries it again
    again = await judge(db, judge_model(fair))
    assert (again.judged, again.retried, again.skipped, again.consistent) == (2, 2, 2, 2)
    assert len(judge_rows(db)) == 6
    third = await judge(db, judge_model(fair))
    assert (third.judged, third.skipped) == (0, 4)


async def test_a_raising_comparison_is_recorded_as_undecided(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopwright.tools.judge import Judge

    db, _ = make_db(tmp_path / "x.duckdb", {"t": T2_NODES})

    async def boom(self: Judge, *args: Any, **kw: Any) -> Any:
        raise RuntimeError("judge exploded\nsecond line")

    monkeypatch.setattr(Judge, "compare", boom)
    report = await judge(db, judge_model(fair))
    assert (report.judged, report.failed, report.undecided) == (1, 1, 1)
    [row] = judge_rows(db)
    assert row["feedback"] == "undecided: judge call failed: RuntimeError: judge exploded"
    assert row["details"]["a_first"]["error"] == "RuntimeError: judge exploded"


async def test_the_call_budget_leaves_pairs_for_the_next_invocation(tmp_path: Path) -> None:
    db, _ = standard_db(tmp_path)
    model = judge_model(fair)
    capped = await judge(db, model, budget_calls=5)  # room for two comparisons of 2 calls
    assert (capped.judged, capped.not_started, capped.calls) == (2, 2, 4)
    assert capped.stopped == "call budget of 5 spent"
    # interleaved: the first pair of each task
    assert {r["task_id"] for r in judge_rows(db)} == {"t1", "t2"}
    rest = await judge(db, model)
    assert (rest.judged, rest.skipped, rest.not_started, rest.stopped) == (2, 2, 0, None)

    with pytest.raises(UserError, match="less than one comparison"):
        await judge(db, model, budget_calls=3, k=2)


async def test_k_samples_per_order(tmp_path: Path) -> None:
    db, _ = make_db(tmp_path / "k.duckdb", {"t": T2_NODES})
    model = judge_model(fair)
    report = await judge(db, model, k=3)
    [row] = judge_rows(db)
    assert row["details"]["a_first"]["votes"] == ["a", "a", "a"]
    assert row["details"]["n_samples"] == 6
    assert report.calls == 6
    assert {c.n for c in model.calls} == {3}
    assert len({c.params.seed for c in model.calls}) == 1


# -- on a real loop's trace -----------------------------------------------------------------


async def test_judges_the_answers_of_a_best_of_n_run(tmp_path: Path) -> None:
    replies = [RIGHT, WRONG, "  the answer is 5.", OTHER]
    gen = ScriptedModel(lambda call: replies[call.index % 4])
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [math_task("m1")])
    db = str(tmp_path / "bon.duckdb")
    result, rows = await LoopRunner("best-of-n", {"n": 4})(
        tmp_path, gen, tasks, run_name="bon", db=db
    )
    text_of = {n["node_id"]: normalise(n["content"]) for n in rows["nodes"]}

    def text_pairs(got: list[dict[str, Any]]) -> set[frozenset[str]]:
        return {frozenset(text_of[i] for i in ids) for ids in pair_ids(got)}

    five, six, seven = (normalise(t) for t in (RIGHT, WRONG, OTHER))
    model = judge_model(fair)
    report = await judge(db, model, runs=["bon"], pairs_per_task=2)
    assert (report.tasks, report.candidates, report.candidate_pairs) == (1, 4, 3)
    got = judge_rows(db)
    # the two pairs of a passing and a failing answer; the two texts saying 5 are never paired
    assert text_pairs(got) == {frozenset({five, six}), frozenset({five, seven})}
    assert {r["run_id"] for r in got} == {result.run_id}
    for r in got:  # the answer saying 5 wins, whichever side it is on
        winner = r["details"]["winner"]
        assert text_of[r["details"][f"{winner}_node_id"]] == five

    rest = await judge(db, model, runs=["bon"])
    assert (rest.judged, rest.skipped) == (1, 2)
    assert len(text_pairs(judge_rows(db))) == 3
    with TraceStore(db, read_only=True) as store:
        roles = store.query("SELECT role, loop, count(*) AS n FROM calls GROUP BY ALL ORDER BY 1")
    assert [(r["role"], r["loop"], r["n"]) for r in roles] == [
        ("generator", "best-of-n", 4),
        ("judge", "judge-pairs", 6),
    ]


# -- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("COLUMNS", "250")
    app = typer.Typer()
    app.add_typer(judge_app, name="judge")

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, ["judge", "pairs", *args])

    return invoke


def metric(out: str, name: str) -> str:
    """The value of one row of the summary table."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] == name:
            return cells[-1]
    raise AssertionError(f"no row {name!r} in:\n{out}")


def error_line(result: Any) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_judges_and_prints_a_summary(tmp_path: Path, cli: Callable[..., Any]) -> None:
    db, _ = standard_db(tmp_path)
    model = judge_model(fair).name
    r = cli("--db", db, "--run", "r", "--model", model, "--pairs-per-task", "2", "--seed", "3")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert metric(r.stdout, "pairs judged") == "3"
    assert metric(r.stdout, "skipped, already judged") == "0"
    assert metric(r.stdout, "consistent / order-flipped / undecided") == "3 / 0 / 0"
    assert metric(r.stdout, "model samples") == "6"
    assert int(metric(r.stdout, "tokens").replace(",", "")) > 0
    assert "verdicts: " in r.stdout
    again = cli("--db", db, "--run", "r", "--run", "r", "--model", model, "--pairs-per-task", "2")
    assert again.exit_code == 0, again.stderr
    assert metric(again.stdout, "pairs judged") == "0"
    assert metric(again.stdout, "skipped, already judged") == "3"


def test_cli_unknown_run_lists_the_known_ones(tmp_path: Path, cli: Callable[..., Any]) -> None:
    db, _ = standard_db(tmp_path)
    make_db(tmp_path / "t.duckdb", {}, run="other")
    model = judge_model(fair).name
    line = error_line(cli("--db", db, "--run", "r", "--run", "rr", "--model", model))
    assert "unknown run 'rr'" in line
    assert "did you mean 'r'?" in line and "choose from: other, r" in line
    assert judge_rows(db) == []


def test_cli_missing_db_is_one_line_and_creates_nothing(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    missing = tmp_path / "missing.duckdb"
    model = judge_model(fair).name
    line = error_line(cli("--db", str(missing), "--run", "r", "--model", model))
    assert line == f"error: no trace database at {missing}: run `loopwright run` first"
    assert not missing.exists()


def test_cli_unknown_model_is_the_run_commands_error(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    db, _ = standard_db(tmp_path)
    line = error_line(cli("--db", db, "--run", "r", "--model", "notaprovider/some-model"))
    assert line.startswith("error: unknown model 'notaprovider/some-model': use a litellm")
    line = error_line(cli("--db", db, "--run", "r", "--model", "scripted/nope-not-registered"))
    assert "unknown scripted model 'nope-not-registered'" in line


def test_cli_bad_numbers_are_one_line(tmp_path: Path, cli: Callable[..., Any]) -> None:
    db, _ = standard_db(tmp_path)
    model = judge_model(fair).name
    line = error_line(cli("--db", db, "--run", "r", "--model", model, "--pairs-per-task", "0"))
    assert line == "error: --pairs-per-task must be at least 1, got 0"
    line = error_line(cli("--db", db, "--run", "r", "--model", model, "--budget-calls", "1"))
    assert "--budget-calls 1 is less than one comparison" in line


# -- the real embedded model ----------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_local_model_judges_two_pairs(tmp_path: Path) -> None:
    db, _ = make_db(
        tmp_path / "local.duckdb",
        {"t": [("x", "generator", RIGHT, [(MATH, True)]),
               ("y", "generator", WRONG, [(MATH, False)]),
               ("z", "refiner", OTHER, [(MATH, False)])]},
    )  # fmt: skip
    report = await judge_pairs(
        db, ["r"], "local/smollm2-135m", pairs_per_task=2, max_tokens=48, concurrency=1
    )
    assert (report.judged, report.failed, report.calls) == (2, 0, 4)
    assert report.consistent + report.flipped + report.undecided == 2
    rows = judge_rows(db)
    assert pair_ids(rows) == {("r-x", "r-y"), ("r-x", "r-z")}  # the two differing pairs
    for row in rows:
        d = row["details"]
        assert d["a_first"]["error"] is None and d["b_first"]["error"] is None
        assert len(d["a_first"]["raw"]) == len(d["b_first"]["raw"]) == 1
        assert row["verifier_version"] == "judge-1@local/smollm2-135m"
        assert d["parsed"] == (
            d["a_first"]["winner"] is not None and d["b_first"]["winner"] is not None
        )
    with TraceStore(db, read_only=True) as store:
        calls = store.query("SELECT role, error FROM calls")
    assert len(calls) == 4 and {(c["role"], c["error"]) for c in calls} == {("judge", None)}
