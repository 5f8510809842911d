"""Honest verification: in-loop verifiers never see what the grader grades with.

Everything runs through the product (runner, CLI, harvest, sweep, report) on the scripted
model; code runs in the real bwrap sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import (
    cli_main,
    last_user,
    read_rows,
    skip_without_bwrap,
    write_jsonl,
)
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.verify import make_verifier, verifier_names
from loopwright.traces.store import TraceStore

# A code task whose statement shows one example the hard-coded answer passes; the hidden
# tests (the grader's) it fails.
CODE_TASK = {
    "id": "sq",
    "kind": "code",
    "prompt": 'def square(x: int) -> int:\n    """Return x squared.\n\n    >>> square(3)\n    9\n    """\n',
    "entry_point": "square",
    "tests": ["assert square(3) == 9", "assert square(4) == 16", "assert square(-2) == 4"],
}
GAMED = "```python\ndef square(x: int) -> int:\n    return 9\n```"


def _cfg(tmp_path: Path, model: ScriptedModel, tasks: str, **kw: Any) -> RunConfig:
    kw.setdefault("db", str(tmp_path / "t.duckdb"))
    return RunConfig(tasks=tasks, model=model.register(), backoff_base_s=0.0, **kw)


def test_blind_task_hides_the_answer_key() -> None:
    task = load_tasks("builtin:code?n=1")[0]
    blind = task.blind()
    assert blind.reference is None and blind.tests == []
    assert task.reference and task.tests  # the grader still has them
    assert blind.visible_tests == ["assert (add_numbers(2, 3)) == (5)"]
    humaneval = load_tasks("humaneval", limit=1)[0].blind()
    assert humaneval.reference is None and humaneval.tests == []
    assert humaneval.visible_tests and all(t.startswith("assert") for t in humaneval.visible_tests)
    mbpp = Task(id="m", prompt="Write f.", kind="code", tests=["assert f(1) == 2", "assert f(2) == 3"],
                metadata={"test_style": "asserts"})  # fmt: skip
    assert mbpp.blind().visible_tests == ["assert f(1) == 2"]


def test_unknown_verifier_lists_the_valid_ones() -> None:
    task = Task(id="t", prompt="1+1?", kind="math", reference="2")
    with pytest.raises(UserError, match=r"unknown verifier .orcale..*oracle"):
        make_verifier("orcale", task)
    assert {"oracle", "self", "consistency", "judge", "reward", "none", "visible-tests"} <= set(
        verifier_names()
    )


def test_visible_tests_on_math_is_one_line(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "m.jsonl", [{"id": "t", "prompt": "1+1?", "kind": "math"}])
    model = ScriptedModel(["2"])
    with pytest.raises(UserError, match="verifier visible-tests judges code tasks"):
        import asyncio

        asyncio.run(run(_cfg(tmp_path, model, tasks, loop="self-refine", verifier="visible-tests")))


async def test_code_passing_visible_but_failing_hidden_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-loop verdict true, graded false: through run, harvest and the CLI."""
    skip_without_bwrap()
    tasks = write_jsonl(tmp_path / "code.jsonl", [CODE_TASK])
    model = ScriptedModel(lambda messages, i: GAMED)
    result = await run(_cfg(tmp_path, model, tasks, loop="self-refine", run_name="gamed"))
    rows = read_rows(str(tmp_path / "t.duckdb"), result.run_id)
    [task] = rows["tasks"]
    assert task["verdict"] is True and task["graded"] is False
    assert task["stop_reason"] == "verified"
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert in_loop and {v["verifier"] for v in in_loop} == {"visible-tests"}
    assert json.loads(in_loop[0]["details"])["tests_total"] == 1  # only the shown example
    graded = [v for v in rows["verdicts"] if v["stage"] == "graded"]
    assert json.loads(graded[0]["details"])["tests_total"] == 3
    # No prompt the model saw contains a hidden test.
    assert all("square(4)" not in c["messages"] for c in rows["calls"])

    db = str(tmp_path / "t.duckdb")
    code, out, err = cli_main(["harvest", "sft", "--db", db, "--out", str(tmp_path / "g.jsonl"),
                               "--label", "graded"], capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "g.jsonl").read_text().strip() == ""
    code, out, err = cli_main(["harvest", "sft", "--db", db, "--out", str(tmp_path / "l.jsonl"),
                               "--label", "in_loop"], capsys)  # fmt: skip
    assert code == 0, err
    kept = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert len(kept) == 1 and "return 9" in kept[0]["messages"][-1]["content"]
    assert kept[0]["provenance"]["verifier"] == "visible-tests"

    code, out, _ = cli_main(["runs", "--db", db], capsys)
    assert "visible-tests" in out and "oracle" not in out


def _math_script(messages: list[dict[str, Any]], i: int) -> str:
    """Drafts say 6; the self-check always says CORRECT; critiques ask for another look."""
    user = last_user(messages)
    if "CORRECT or INCORRECT" in user:  # the self-check prompt
        return "Looks fine.\nVerdict: CORRECT"
    if "NO ISSUES" in user:  # the critique prompt
        return "Step 2 may be wrong."
    return "2 + 4 = 6. The answer is 6."


async def _trajectory(tmp_path: Path, reference: str, verifier: str, name: str) -> tuple[Any, ...]:
    tasks = write_jsonl(tmp_path / f"{name}.jsonl",
                        [{"id": "t", "prompt": "Ann has 2 pens and buys 4. How many?",
                          "kind": "math", "reference": reference}])  # fmt: skip
    model = ScriptedModel(_math_script)
    cfg = _cfg(tmp_path, model, tasks, loop="self-refine", run_name=name, verifier=verifier,
               options={"max_rounds": 2}, cache=False)  # fmt: skip
    result = await run(cfg)
    rows = read_rows(cfg.db, result.run_id)
    calls = [(c["role"], c["messages"], c["output"]) for c in rows["calls"]]
    nodes = [(n["role"], n["round"], n["content"]) for n in rows["nodes"]]
    [task] = rows["tasks"]
    return calls, nodes, task["verdict"], task["graded"], task["stop_reason"]


async def test_wrong_references_do_not_change_the_default_trajectory(tmp_path: Path) -> None:
    right = await _trajectory(tmp_path, "6", "auto", "right")
    wrong = await _trajectory(tmp_path, "7", "auto", "wrong")
    assert right[:3] == wrong[:3]  # same calls, same nodes, same in-loop verdict
    assert right[3] is True and wrong[3] is False  # only the grader differs
    assert {role for role, _, _ in right[0]} >= {"generator", "verifier"}
    # Under the oracle the wrong reference makes the loop keep refining.
    o_right = await _trajectory(tmp_path, "6", "oracle", "o-right")
    o_wrong = await _trajectory(tmp_path, "7", "oracle", "o-wrong")
    assert o_right[0] != o_wrong[0]
    assert o_right[4] == "verified" and o_wrong[4] != "verified"
    assert len(o_wrong[0]) > len(o_right[0])


async def test_oracle_runs_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await _trajectory(tmp_path, "6", "oracle", "up")
    db = str(tmp_path / "t.duckdb")
    code, out, _ = cli_main(["runs", "--db", db], capsys)
    assert code == 0 and "oracle" in out
    code, _, err = cli_main(["harvest", "sft", "--db", db, "--out", str(tmp_path / "o.jsonl")],
                            capsys)  # fmt: skip
    assert code == 0, err
    [row] = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert row["provenance"]["verifier"] == "oracle" and row["provenance"]["oracle"] is True


async def test_consistency_verifier_votes_fresh_samples(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "c.jsonl", [{"id": "t", "prompt": "2+4?", "kind": "math",
                                                "reference": "6"}])  # fmt: skip
    replies = iter(["The answer is 5."] + ["The answer is 6."] * 3 + ["The answer is 5."])

    def script(messages: list[dict[str, Any]], i: int) -> str:
        return next(replies)

    model = ScriptedModel(script)
    cfg = _cfg(tmp_path, model, tasks, loop="self-refine", verifier="consistency",
               verifier_options={"k": 4}, options={"max_rounds": 0})  # fmt: skip
    result = await run(cfg)
    rows = read_rows(cfg.db, result.run_id)
    [v] = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert v["verifier"] == "consistency" and v["passed"] is False
    assert json.loads(v["details"])["majority"] == "6" and v["score"] == pytest.approx(0.25)
    verifier_calls = [c for c in rows["calls"] if c["role"] == "verifier"]
    assert len(verifier_calls) == 4 and len({c["request_id"] for c in verifier_calls}) == 1


async def test_role_model_routes_the_verifier(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "r.jsonl", [{"id": "t", "prompt": "2+4?", "kind": "math",
                                                "reference": "6"}])  # fmt: skip
    gen = ScriptedModel(lambda m, i: "The answer is 6.")
    checker = ScriptedModel(lambda m, i: "Verdict: INCORRECT")
    cfg = _cfg(tmp_path, gen, tasks, loop="self-refine", options={"max_rounds": 0},
               role_models={"verifier": checker.register()})  # fmt: skip
    result = await run(cfg)
    rows = read_rows(cfg.db, result.run_id)
    by_role = {c["role"]: c["model"] for c in rows["calls"]}
    assert by_role == {"generator": gen.model_string, "verifier": checker.model_string}
    [task] = rows["tasks"]
    assert task["verdict"] is False and task["graded"] is True
    with TraceStore(cfg.db, read_only=True) as store:
        config = json.loads(store.query("SELECT config FROM runs")[0]["config"])
    assert config["role_models"] == {"verifier": checker.model_string}
    assert config["verifiers"] == {"math": "self"} and config["oracle"] is False
    with pytest.raises(UserError, match="unknown role 'verfier'"):
        await run(_cfg(tmp_path, gen, tasks, loop="self-refine", run_name="x",
                       role_models={"verfier": checker.model_string}))  # fmt: skip


# -- reports replay what the loop chose ----------------------------------------------------------

_SAMPLES = ["The answer is 5.", "The answer is 6.", "The answer is 5.", "The answer is 7."]
_RATING = {"5": 2, "6": 9, "7": 5}  # the judge prefers the wrong 6


def _judged_script(messages: list[dict[str, Any]], i: int) -> str:
    user = last_user(messages)
    if "Rating: [[N]]" in user:
        answer = user.split("[Answer]", 1)[1].split("[End of answer]", 1)[0]
        digit = next(d for d in _RATING if f"is {d}" in answer)
        return f"Fine.\nRating: [[{_RATING[digit]}]]"
    if "CORRECT or INCORRECT" in user:
        return "Verdict: CORRECT"
    return _SAMPLES[_judged_script.k % 4]  # type: ignore[attr-defined]


def test_best_of_n_judge_selection_is_replayed_not_replaced(tmp_path: Path) -> None:
    from loopwright.loops.analysis.report_data import load_sweep
    from loopwright.loops.execution.sweep import SweepConfig, run_sweep

    counter = {"n": 0}

    def script(messages: list[dict[str, Any]], i: int) -> str:
        user = last_user(messages)
        if "Rating: [[N]]" in user or "CORRECT or INCORRECT" in user:
            return _judged_script(messages, i)
        k = counter["n"]
        counter["n"] += 1
        return _SAMPLES[k % 4]

    tasks = write_jsonl(tmp_path / "j.jsonl", [
        {"id": f"t{j}", "prompt": f"Ann has 2 pens and buys 3 more ({j}). How many?",
         "kind": "math", "reference": "5"} for j in range(2)])  # fmt: skip
    model = ScriptedModel(script)
    db = str(tmp_path / "s.duckdb")
    grid = "best-of-n(selector=judge):n=1,2,4; best-of-n(verifier=oracle):n=1,2,4"
    cfg = SweepConfig(name="jr", tasks=tasks, models=(model.register(),), grid=grid, db=db,
                      concurrency=1)  # fmt: skip
    run_sweep(cfg)
    data = load_sweep(db, "jr")
    acc = {
        (p.strategy, p.value): sum(r.correct for r in p.results) / len(p.results)
        for p in data.points
    }
    # The judge's picks: sample 0 (right) alone, then the wrong 6 it rates highest.
    assert acc[("best-of-n(selector=judge)", 1)] == 1.0
    assert acc[("best-of-n(selector=judge)", 2)] == 0.0
    assert acc[("best-of-n(selector=judge)", 4)] == 0.0
    # The oracle's pick finds the right sample wherever one was drawn, and is labelled.
    assert all(acc[("best-of-n(verifier=oracle)", k)] == 1.0 for k in (1, 2, 4))
    assert data.oracle and not any(
        "oracle" in p.strategy for p in data.points if "judge" in p.strategy
    )
    # The oracle is shown beside the judge but wins no budget of the compute-matched table.
    from loopwright.loops.analysis.report import curve_points, matched_table

    table = matched_table(curve_points(data, n_boot=50))
    assert table and all("oracle" not in (m.winner or "") for m in table), [
        (m.budget, m.winner) for m in table
    ]
    assert any(m.best.get("best-of-n(verifier=oracle)") for m in table)
    # Costs: at k = N a point costs what its run spent (samples, self-checks, judge calls);
    # below, each sample brings its own self-check and a k/N share of the judging.
    with TraceStore(db, read_only=True) as store:
        spent = {
            r["task_id"]: (r["total_tokens"], r["calls"])
            for r in store.query(
                "SELECT t.task_id, t.total_tokens, t.calls FROM tasks t JOIN runs r USING (run_id)"
                " WHERE r.name LIKE '%selector=judge%'"
            )
        }
    judged = {p.value: p for p in data.points if p.strategy == "best-of-n(selector=judge)"}
    for r in judged[4].results:
        assert (r.tokens, r.calls) == pytest.approx(spent[r.task_id])
    for r in judged[1].results:
        total_tokens, total_calls = spent[r.task_id]
        assert r.calls == pytest.approx(
            1 + 1 + (total_calls - 8) / 4
        )  # sample, its check, 1/4 of judging
        assert r.tokens < total_tokens / 2


def test_report_counts_answers_that_fooled_the_in_loop_verifier(tmp_path: Path) -> None:
    from loopwright.loops.analysis.report import write_report
    from loopwright.loops.analysis.report_data import load_sweep
    from loopwright.loops.execution.sweep import SweepConfig, run_sweep

    skip_without_bwrap()
    right = dict(CODE_TASK, id="ok", prompt=CODE_TASK["prompt"].replace("square", "sq2"),
                 entry_point="sq2", tests=["assert sq2(3) == 9", "assert sq2(5) == 25"])  # fmt: skip
    tasks = write_jsonl(tmp_path / "code.jsonl", [CODE_TASK, right])

    def script(messages: list[dict[str, Any]], i: int) -> str:
        if "sq2" in last_user(messages):
            return "```python\ndef sq2(x: int) -> int:\n    return x * x\n```"
        return GAMED

    model = ScriptedModel(script)
    db = str(tmp_path / "r.duckdb")
    cfg = SweepConfig(name="fool", tasks=tasks, models=(model.register(),), db=db,
                      grid="self-refine:rounds=1")  # fmt: skip
    run_sweep(cfg)
    data = load_sweep(db, "fool")
    assert sorted(data.agreement["self-refine"]) == [(True, False), (True, True)]
    text = write_report(db, "fool", tmp_path / "rep", n_boot=200).read_text()
    assert "| self-refine | 2 | 1 | 1 | 0 | 0 | 0 | 50.0 % |" in text
    assert "`visible-tests`" in text and "[oracle]" not in text
