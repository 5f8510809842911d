"""Honest verification: in-loop verifiers never see what the grader grades with.

Everything runs through the product (runner, CLI, harvest, sweep, report) on the scripted
model; code runs in the real bwrap sandbox.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
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
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.verify import (
    VERIFIERS,
    LoopVerifier,
    MathAnswer,
    Verdict,
    as_verifier,
    grader,
    grader_for,
    grader_names,
    make_verifier,
    run_grader,
    run_verifier,
    verifier,
    verifier_names,
)
from loopwright.traces.store import TraceStore
from pydantic import BaseModel, ConfigDict

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
    model = ScriptedModel(lambda call: GAMED)
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


def _math_script(call: ModelCall) -> str:
    """Drafts say 6; the self-check always says CORRECT; critiques ask for another look."""
    if call.params.role == "verifier":  # the self-check
        return "Looks fine.\nVerdict: CORRECT"
    if call.params.role == "critic":
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

    def script(call: ModelCall) -> str:
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
    gen = ScriptedModel(lambda call: "The answer is 6.")
    checker = ScriptedModel(lambda call: "Verdict: INCORRECT")
    cfg = _cfg(tmp_path, gen, tasks, loop="self-refine", options={"max_rounds": 0},
               role_models={"verifier": checker.register()})  # fmt: skip
    result = await run(cfg)
    rows = read_rows(cfg.db, result.run_id)
    by_role = {c["role"]: c["model"] for c in rows["calls"]}
    assert by_role == {"generator": gen.name, "verifier": checker.name}
    [task] = rows["tasks"]
    assert task["verdict"] is False and task["graded"] is True
    with TraceStore(cfg.db, read_only=True) as store:
        config = json.loads(store.query("SELECT config FROM runs")[0]["config"])
    assert config["role_models"] == {"verifier": checker.name}
    assert config["verifiers"] == {"math": "self"} and config["oracle"] is False
    with pytest.raises(UserError, match="unknown role 'verfier'"):
        await run(_cfg(tmp_path, gen, tasks, loop="self-refine", run_name="x",
                       role_models={"verfier": checker.name}))  # fmt: skip


# -- reports replay what the loop chose ----------------------------------------------------------

_SAMPLES = ["The answer is 5.", "The answer is 6.", "The answer is 5.", "The answer is 7."]
_RATING = {"5": 2, "6": 9, "7": 5}  # the judge prefers the wrong 6


def _judged_script(call: ModelCall) -> str:
    user = last_user(call.messages)
    if call.params.role == "judge":
        answer = user.split("[Answer]", 1)[1].split("[End of answer]", 1)[0]
        digit = next(d for d in _RATING if f"is {d}" in answer)
        return f"Fine.\nRating: [[{_RATING[digit]}]]"
    if call.params.role == "verifier":
        return "Verdict: CORRECT"
    return _SAMPLES[_judged_script.k % 4]  # type: ignore[attr-defined]


def test_best_of_n_judge_selection_is_replayed_not_replaced(tmp_path: Path) -> None:
    from loopwright.loops.analysis.report_data import load_sweep
    from loopwright.loops.execution.sweep import SweepConfig, run_sweep

    counter = {"n": 0}

    def script(call: ModelCall) -> str:
        if call.params.role in ("judge", "verifier"):
            return _judged_script(call)
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

    def script(call: ModelCall) -> str:
        if "sq2" in last_user(call.messages):
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


# -- verifiers and graders written as functions ----------------------------------------------


@pytest.fixture
def registries() -> Iterator[None]:
    """Whatever a test registers is gone after it."""
    from loopwright.loops.verify import GRADERS, VERIFIERS

    saved = dict(VERIFIERS), dict(GRADERS)
    yield
    for registry, before in zip((VERIFIERS, GRADERS), saved, strict=True):
        registry.clear()
        registry.update(before)  # type: ignore[arg-type]


class _Ctx:
    """The least a function verifier's ``ctx`` needs outside a run."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.memo: dict[str, Any] = {}


async def _judge(verifier_cls: Any, task: Task, response: str, **options: Any) -> Verdict:
    v = as_verifier(verifier_cls, options=options or None).bind(task)
    blind = task.blind()
    return await run_verifier(v, blind, response, _Ctx(blind))  # type: ignore[arg-type]


async def test_function_verifiers_return_bool_float_or_verdict(registries: None) -> None:
    math = Task(id="m", prompt="2+4?", kind="math", reference="6")

    @verifier
    def answer_is_even(answer: str | None) -> bool:
        return answer is not None and int(answer) % 2 == 0

    @verifier(name="closeness", threshold=0.75)
    def close(answer: str | None) -> float:
        return max(0.0, 1 - abs(float(answer or 0) - 6) / 4)

    class Scale(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        limit: int = 100

    @verifier(options=Scale, kinds=["math"], version="7")
    async def short(response: str, options: Scale, task: Task, ctx: Any) -> Verdict:
        await asyncio.sleep(0)
        assert ctx.task is task
        return Verdict(passed=len(response) <= options.limit, score=1.0, feedback="counted")

    assert VERIFIERS["answer-is-even"] is answer_is_even and VERIFIERS["short"] is short
    assert answer_is_even.version.startswith("fn-") and short.version == "7"
    assert short.kinds == ("math",) and short.Options is Scale

    even = await _judge(answer_is_even, math, "2 + 4 = 6. The answer is 6.")
    odd = await _judge(answer_is_even, math, "The answer is 7.")
    assert (even.passed, even.score, even.answer) == (True, 1.0, "6")
    assert (odd.passed, odd.score, odd.answer) == (False, 0.0, "7")
    assert even.verifier == "answer-is-even" and even.version == answer_is_even.version

    near, far = await _judge(close, math, "The answer is 5."), await _judge(close, math, "9")
    assert (near.passed, near.score) == (True, 0.75)  # score >= threshold passes
    assert (far.passed, far.score) == (False, 0.25) and near.verifier == "closeness"

    within = await _judge(short, math, "The answer is 6.")
    over = await _judge(short, math, "The answer is 6.", limit=3)
    assert within.passed and not over.passed and within.feedback == "counted"
    assert (within.verifier, within.version, within.answer) == ("short", "7", "6")


async def test_function_verifier_answer_is_the_kinds_answer(registries: None) -> None:
    got: list[str | None] = []

    @verifier
    def keep(answer: str | None) -> bool:
        got.append(answer)
        return True

    code = Task(id="c", prompt="def f(x):\n", kind="code", entry_point="f", tests=["assert f(1)"])
    text = Task(id="x", prompt="Say hi", kind="text")
    await _judge(keep, code, "Here:\n```python\ndef f(x):\n    return x\n```\nDone.")
    await _judge(keep, text, "  Hello there!  ")
    await _judge(keep, Task(id="m", prompt="?", kind="math"), "I am not sure.")
    assert got == ["def f(x):\n    return x\n", "Hello there!", None]


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (None, TypeError, "returned NoneType .*return a Verdict, a bool or a float"),
        ("yes", TypeError, "returned str"),
        (1.5, ValueError, r"score 1.5: a float score must be in \[0, 1\]"),
        (float("nan"), ValueError, "score nan"),
    ],
)
async def test_a_function_verifier_never_passes_what_it_did_not_say(
    registries: None, returned: Any, error: type[Exception], match: str
) -> None:
    @verifier(name="odd-return")
    def odd_return() -> Any:
        return returned

    with pytest.raises(error, match=match):
        await _judge(odd_return, Task(id="t", prompt="?", kind="math"), "The answer is 1.")


def test_function_verifier_parameters_are_checked_when_decorated(registries: None) -> None:
    with pytest.raises(TypeError, match=r"unknown parameter .reference..*task, response, answer"):

        @verifier
        def peeks(reference: str) -> bool:
            return True

    with pytest.raises(TypeError, match="'rest' must be an ordinary named parameter"):

        @verifier
        def greedy(*rest: Any) -> bool:
            return True

    with pytest.raises(TypeError, match="unknown parameter 'ctx'"):  # graders run after the loop

        @grader
        def needs_ctx(ctx: Any) -> bool:
            return True

    with pytest.raises(TypeError, match="give it a name="):
        verifier(lambda answer: True)
    with pytest.raises(ValueError, match="threshold must be in"):
        verifier(name="x", threshold=2)(lambda answer: True)
    with pytest.raises(ValueError, match="kinds must be some of"):
        verifier(name="x", kinds=("maths",))(lambda answer: True)
    assert not {"peeks", "greedy", "x"} & set(verifier_names())
    assert "needs-ctx" not in grader_names()


def test_the_version_follows_the_source(registries: None, tmp_path: Path) -> None:
    versions = []
    for body in ("return True", "return False"):
        path = tmp_path / f"v{len(versions)}.py"
        path.write_text(
            "from loopwright.loops.verify import verifier\n\n"
            f"@verifier\ndef same_name(answer):\n    {body}\n"
        )
        namespace: dict[str, Any] = {}
        exec(compile(path.read_text(), str(path), "exec"), namespace)
        versions.append(namespace["same_name"].version)
    assert versions[0] != versions[1] and all(v.startswith("fn-") for v in versions)


async def test_as_verifier_takes_an_instance_a_class_or_a_function(registries: None) -> None:
    task = Task(id="m", prompt="2+4?", kind="math", reference="6")
    before = set(VERIFIERS)

    def plain(answer: str | None) -> bool:
        return answer == "6"

    made = as_verifier(plain)
    assert isinstance(made, LoopVerifier) and made.name == "plain"
    assert set(VERIFIERS) == before  # a plain function is wrapped, not registered
    assert (await run_verifier(made, task.blind(), "The answer is 6.", _Ctx(task))).passed  # type: ignore[arg-type]

    self_check = VERIFIERS["self"]
    instance = self_check(self_check.Options(k=3))
    assert as_verifier(instance) is instance
    assert as_verifier(self_check, options={"k": 2}).options.k == 2  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="verifier self option k: Input should be less than"):
        as_verifier(self_check, options={"k": 99})
    with pytest.raises(UserError, match="not an instance"):
        as_verifier(instance, options={"k": 2})


def test_a_shared_oracle_binds_each_task_apart() -> None:
    from loopwright.loops.verify.verifiers import Oracle

    shared = as_verifier(Oracle)
    a = shared.bind(Task(id="a", prompt="?", kind="math", reference="1"))
    b = shared.bind(Task(id="b", prompt="?", kind="math", reference="2"))
    assert a is not b and a._keyed.reference == "1" and b._keyed.reference == "2"  # type: ignore[attr-defined]
    assert shared._keyed is None  # type: ignore[attr-defined]


async def test_a_function_grader_receives_the_keyed_task(registries: None) -> None:
    seen: list[Task] = []

    @grader(kinds="math")
    def exact(task: Task, answer: str | None) -> bool:
        seen.append(task)
        return answer == task.reference

    task = Task(id="m", prompt="2+4?", kind="math", reference="6", metadata={"gold": "6"})
    assert grader_for(task, name="exact") is exact and "exact" in grader_names()
    v = await run_grader(exact, task, "The answer is 6.")
    assert v.passed and (v.verifier, v.version) == ("exact", exact.version)
    assert exact(task, "The answer is 5.").passed is False  # callable by hand, blocking
    assert seen[0].reference == "6" and seen[0].metadata == {"gold": "6"}
    assert grader_for(Task(id="x", prompt="hi", kind="text"), name="exact") is None  # kinds
    assert isinstance(grader_for(task), MathAnswer)  # no name: by task kind
    with pytest.raises(UserError, match=r"unknown grader 'exakt' — did you mean 'exact'\?"):
        grader_for(task, name="exakt")


async def test_function_verifier_and_grader_in_a_run(
    tmp_path: Path, registries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Best-of-3 picks by a function verifier that sees only the blind task; the grader gets
    the keyed one. An unknown metadata key reaches neither the model nor the verifier."""
    from loopwright.loops.execution import scope as scope_mod

    seen_by_verifier: list[tuple[Task, Task]] = []
    seen_by_grader: list[Task] = []

    @verifier(kinds=("math",))
    def answer_is_even(task: Task, answer: str | None, ctx: Any) -> bool:
        seen_by_verifier.append((task, ctx.task))
        return answer is not None and int(answer) % 2 == 0

    @grader(name="keyed-spy")
    def keyed_spy(task: Task, answer: str | None) -> float:
        seen_by_grader.append(task)
        return 1.0 if answer == task.reference else 0.0

    real = scope_mod.grader_for  # the run grades with "keyed-spy", as if it named it
    monkeypatch.setattr(
        scope_mod, "grader_for",
        lambda task, sandbox="bwrap", **_: real(task, name="keyed-spy", sandbox=sandbox),
    )  # fmt: skip
    tasks = write_jsonl(tmp_path / "m.jsonl", [{
        "id": "t", "prompt": "Ann has 2 pens and buys 4. How many?", "kind": "math",
        "reference": "6", "metadata": {"gold": "six", "expected": "6", "subject": "counting"},
        "public_metadata": ["subject"]}])  # fmt: skip
    model = ScriptedModel(["The answer is 5.", "The answer is 6.", "The answer is 7."])
    cfg = _cfg(tmp_path, model, tasks, loop="best-of-n", options={"n": 3},
               verifier="answer-is-even")  # fmt: skip
    result = await run(cfg)
    rows = read_rows(cfg.db, result.run_id)
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["final_answer"] == "6"
    assert task["verdict"] is True and task["graded"] is True
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(v["passed"] for v in in_loop) == [False, False, True]
    assert {(v["verifier"], v["verifier_version"]) for v in in_loop} == {
        ("answer-is-even", answer_is_even.version)
    }
    [graded] = [v for v in rows["verdicts"] if v["stage"] == "graded"]
    assert graded["verifier"] == "keyed-spy" and graded["passed"] is True
    # What each received: the verifier the blind task (also as ctx.task), the grader the key.
    assert len(seen_by_verifier) == 3
    for blind, ctx_task in seen_by_verifier:
        assert ctx_task == blind
        assert blind.reference is None and blind.metadata == {"subject": "counting"}
    [keyed] = seen_by_grader
    assert keyed.reference == "6" and keyed.metadata["gold"] == "six"
    assert not any("six" in c["messages"] for c in rows["calls"])


async def test_a_function_verifier_that_raises_fails_its_task_with_the_traceback(
    tmp_path: Path, registries: None
) -> None:
    @verifier
    def broken(answer: str | None) -> bool:
        return 1 / 0 > 0

    @verifier
    def silent(answer: str | None) -> None:
        return None

    tasks = write_jsonl(tmp_path / "m.jsonl", [{"id": "t", "prompt": "2+4?", "kind": "math",
                                                "reference": "6"}])  # fmt: skip
    for name, error in (("broken", "ZeroDivisionError"), ("silent", "TypeError")):
        model = ScriptedModel(["The answer is 6."])
        cfg = _cfg(tmp_path, model, tasks, loop="self-refine", options={"max_rounds": 0},
                   verifier=name, run_name=name)  # fmt: skip
        result = await run(cfg)
        rows = read_rows(cfg.db, result.run_id)
        [task] = rows["tasks"]
        assert task["status"] == "failed" and task["verdict"] is None
        assert task["error"].startswith(error) and "Traceback" in task["error"]
        assert not [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
