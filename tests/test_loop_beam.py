"""Step-level beam search: control flow through the runner with the scripted model.

Scripts and helpers: tests/beam_script.py. The pruning rule and the scorers (rollout, PRM)
are tested in test_loop_beam_scorers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from beam_script import STEPS, Script, by_content, kind_of, run_beam, v
from loop_testkit import (
    QUESTION,
    call_key,
    last_user,
    local_model,
    math_task,
    one_task,
    seeded_runs,
    text_task,
    user_error,
    write_jsonl,
)
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.graphs import get_loop
from loopwright.loops.graphs.beam import BEAM, BeamOptions
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore

# -- control flow ------------------------------------------------------------------------------

TOP_K = Script(
    steps={
        "": ["S1", "S2", "S3", "S4"],  # two empty roots, two steps each
        "S2": ["S2a", "S2b"],
        "S4": ["S4a", "S4b"],
        "S2b": ["The answer is 6.", "The answer is 7."],
        "S4a": ["The answer is 5.", "The answer is 4."],
    },
    values={"S1": 3, "S2": 9, "S3": 5, "S4": 7, "S2a": 2, "S2b": 6, "S4a": 8, "S4b": 4},
)


async def test_beam_keeps_the_top_k_by_score_at_each_depth(tmp_path: Path) -> None:
    script = Script(TOP_K.steps, TOP_K.values)
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 2, "max_depth": 3}
    result, rows = await run_beam(tmp_path, model, one_task(tmp_path), options=opts)

    steps = by_content(rows["nodes"])
    assert set(steps) == {
        "S1", "S2", "S3", "S4",
        "S2\nS2a", "S2\nS2b", "S4\nS4a", "S4\nS4b",
        "S2\nS2b\nThe answer is 6.", "S2\nS2b\nThe answer is 7.",
        "S4\nS4a\nThe answer is 5.", "S4\nS4a\nThe answer is 4.",
    }  # fmt: skip
    ids = {c: n["node_id"] for c, n in steps.items()}

    def parents_at(depth: int) -> set[str]:
        return {n["parent_id"] for n in steps.values() if n["depth"] == depth}

    # Depth 0 values 3, 9, 5, 7 -> S2 and S4 are expanded; depth 1 values 2, 6, 8, 4 -> S2b, S4a.
    assert parents_at(0) == {None}
    assert parents_at(1) == {ids["S2"], ids["S4"]}
    assert parents_at(2) == {ids["S2\nS2b"], ids["S4\nS4a"]}
    for content, n in steps.items():
        assert (n["depth"], n["round"]) == (content.count("\n"), content.count("\n"))
        last = content.split("\n")[-1]
        if last in script.values:
            assert n["value"] == pytest.approx(v(script.values[last]))
    # Terminals are verified, not judged: their value is the verifier's score.
    terminals = {c: n for c, n in steps.items() if "answer" in c}
    assert {c: n["value"] for c, n in terminals.items()} == {
        c: (1.0 if c.endswith("5.") else 0.0) for c in terminals
    }
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(x["node_id"] for x in in_loop) == sorted(n["node_id"] for n in terminals.values())

    # One value reply per open child, hanging under it.
    values = rows["nodes"]
    judged = [n for n in values if n["role"] == "value"]
    assert len(judged) == 8
    assert {n["parent_id"] for n in judged} == {ids[c] for c in ids if "answer" not in c}
    assert all(n["depth"] == 1 + steps_by_id(steps)[n["parent_id"]]["depth"] for n in judged)

    [task] = rows["tasks"]
    assert (task["stop_reason"], task["verdict"], task["graded"]) == ("verified", True, True)
    assert task["final_answer"] == "5"
    assert task["final_node_id"] == ids["S4\nS4a\nThe answer is 5."]
    assert [n["node_id"] for n in values if n["is_final"]] == [task["final_node_id"]]
    assert task["rounds"] == 3
    # 3 depths x 2 step requests of n=2, plus 8 value replies.
    assert task["calls"] == 12 + 8 == len(model.calls)
    assert sorted(script.kinds) == ["step"] * 12 + ["value"] * 8
    assert result.summary["stop_reasons"] == {"verified": 1}


def steps_by_id(steps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in steps.values()}


async def test_prompts_and_sampling_parameters(tmp_path: Path) -> None:
    script = Script(TOP_K.steps, TOP_K.values)
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 2, "max_depth": 3, "temperature": 0.6,
            "max_tokens": 40, "value_max_tokens": 12}  # fmt: skip
    await run_beam(tmp_path, model, one_task(tmp_path), options=opts)

    step_calls = [c for c in model.calls if kind_of(c) == "step"]
    value_calls = [c for c in model.calls if kind_of(c) == "value"]
    first = last_user(step_calls[0].messages)
    assert QUESTION in first and "The answer is N" in first  # self_refine's generate_math
    assert first.endswith("Write only the first step of the solution.")
    assert model.calls[0].messages[0]["role"] == "system"
    later = [last_user(c.messages) for c in step_calls if "so far" in last_user(c.messages)]
    assert any("The solution so far:\nS4\nS4a\n\nWrite only the next step" in p for p in later)
    assert all(
        (c.params.stop, c.n, c.params.temperature, c.params.max_tokens) == (("\n",), 2, 0.6, 40)
        for c in step_calls
    )
    assert all(
        (c.params.stop, c.n, c.params.temperature) == (None, 1, 0.0) and c.params.max_tokens == 12
        for c in value_calls
    )
    assert any("Solution so far:\nS2\nS2b\n\nJudge" in last_user(c.messages) for c in value_calls)


async def test_dvts_keeps_one_partial_per_subtree(tmp_path: Path) -> None:
    # The two best roots come from one request (one subtree): beam keeps both, dvts one each.
    steps = {
        "": ["R1", "R2", "R3", "R4"],
        **{r: [f"The answer is {i}.", f"The answer is {i}0."] for i, r in enumerate(
            ["R1", "R2", "R3", "R4"], start=6)},
    }  # fmt: skip
    values = {"R1": 9, "R2": 8, "R3": 2, "R4": 1}
    kept = {}
    for variant in ("beam", "dvts"):
        model = ScriptedModel(Script(steps, values))
        _, rows = await run_beam(
            tmp_path,
            model,
            one_task(tmp_path),
            db=str(tmp_path / f"{variant}.duckdb"),
            options={"beam_width": 2, "expansions": 2, "max_depth": 2, "variant": variant},
        )
        nodes = by_content(rows["nodes"])
        ids = {n["node_id"]: c for c, n in nodes.items()}
        kept[variant] = {ids[n["parent_id"]] for n in nodes.values() if n["depth"] == 1}
        # Same compute either way: 2 requests of 2 steps per depth, 4 value replies.
        assert len(model.calls) == 4 + 4 + 4
        assert rows["tasks"][0]["stop_reason"] == "max_depth"
    assert kept == {"beam": {"R1", "R2"}, "dvts": {"R1", "R3"}}


async def test_text_task_ends_on_an_empty_step_and_is_judged(tmp_path: Path) -> None:
    tasks = text_task(tmp_path, "Write a short poem.")
    # The provider ignores the stop sequence here: the loop cuts the step at the delimiter.
    script = Script(
        steps={"": ["Roses are red\nthis part is past the delimiter"], "Roses are red": [""]},
        values={"Roses are red": 6},
    )
    model = ScriptedModel(script)
    opts = {"beam_width": 1, "expansions": 1, "max_depth": 5}
    _, rows = await run_beam(tmp_path, model, tasks, options=opts)

    steps = by_content(rows["nodes"])
    assert set(steps) == {"Roses are red", "Roses are red\n"}
    # Without a verifier the finished solution is judged too (its last step is empty).
    assert script.kinds == ["step", "value", "step", "value"]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "completed"
    assert task["graded"] is None and rows["verdicts"] == []
    assert task["final_node_id"] == steps["Roses are red\n"]["node_id"]


async def test_max_depth_ends_every_partial_and_keeps_the_best_failure(tmp_path: Path) -> None:
    script = Script(steps={"": ["P", "Q"], "P": ["P2"], "Q": ["Q2"]}, values={"P": 4, "Q": 7})
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 1, "max_depth": 2}
    _, rows = await run_beam(tmp_path, model, one_task(tmp_path), options=opts)
    [task] = rows["tasks"]
    assert task["stop_reason"] == "max_depth"
    assert task["verdict"] is False and task["rounds"] == 2
    # Both terminals fail; the earlier one wins the tie.
    steps = by_content(rows["nodes"])
    assert task["final_node_id"] in {steps["P\nP2"]["node_id"], steps["Q\nQ2"]["node_id"]}
    assert len([x for x in rows["verdicts"] if x["stage"] == "in_loop"]) == 2


@pytest.mark.parametrize("max_depth", [1, 20])
async def test_no_recursion_error_at_max_depth(tmp_path: Path, max_depth: int) -> None:
    model = ScriptedModel(lambda c: "Score: 5" if kind_of(c) == "value" else f"step {c.index}")
    opts = {"beam_width": 1, "expansions": 1, "max_depth": max_depth}
    _, rows = await run_beam(tmp_path, model, one_task(tmp_path), options=opts)
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["rounds"]) == ("max_depth", max_depth)
    assert len(model.calls) == 2 * max_depth - 1  # the last step is verified, not judged


# -- budgets ---------------------------------------------------------------------------------


async def test_call_budget_mid_scoring_returns_the_best_partial(tmp_path: Path) -> None:
    script = Script(TOP_K.steps, TOP_K.values)
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 2, "max_depth": 3}
    _, rows = await run_beam(
        tmp_path, model, one_task(tmp_path), options=opts, budget=BudgetLimits(calls=6)
    )
    # 4 steps, then only 2 of the 4 value replies fit.
    assert sorted(script.kinds) == ["step"] * 4 + ["value"] * 2
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["error"] is None
    assert task["stop_reason"] == "budget: call budget of 6 spent"
    assert task["calls"] == 6
    steps = by_content(rows["nodes"])
    scored = {c: n["value"] for c, n in steps.items() if n["value"] is not None}
    assert len(scored) == 2
    best = max(scored, key=lambda c: scored[c])
    assert task["final_node_id"] == steps[best]["node_id"]  # the best partial, verified
    [check] = [x for x in rows["verdicts"] if x["stage"] == "in_loop"]
    assert check["node_id"] == task["final_node_id"]


async def test_budget_spent_between_depths_stops_before_expanding(tmp_path: Path) -> None:
    script = Script(TOP_K.steps, TOP_K.values)
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 2, "max_depth": 3}
    _, rows = await run_beam(
        tmp_path, model, one_task(tmp_path), options=opts, budget=BudgetLimits(calls=8)
    )
    assert len(model.calls) == 8
    [task] = rows["tasks"]
    assert task["stop_reason"] == "budget: call budget of 8 spent"
    assert task["rounds"] == 1
    steps = by_content(rows["nodes"])
    assert task["final_node_id"] == steps["S2"]["node_id"]  # value 9: the best open partial


async def test_budget_too_small_for_the_first_depth(tmp_path: Path) -> None:
    model = ScriptedModel(lambda call: "x")
    _, rows = await run_beam(
        tmp_path, model, one_task(tmp_path), budget=BudgetLimits(calls=1), options={}
    )  # the first depth needs beam_width * expansions = 8 calls
    [task] = rows["tasks"]
    assert (task["status"], task["calls"], task["final_node_id"]) == ("done", 0, None)
    assert task["stop_reason"] == "budget: call budget of 1 spent"
    assert model.calls == [] and rows["nodes"] == []


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam_width": 0}, r"beam option beam_width: .*greater than or equal to 1"),
        ({"beam_width": 33}, r"beam option beam_width: .*less than or equal to 32"),
        ({"expansions": 0}, r"beam option expansions"),
        ({"max_depth": 0}, r"beam option max_depth"),
        ({"delimiter": ""}, r"beam option delimiter"),
        ({"scorer": "vibes"}, r"beam option scorer: .*'value', 'prm' or 'rollout'"),
        ({"variant": "mcts"}, r"beam option variant: .*'beam' or 'dvts'"),
        ({"scorer": "prm"}, r"scorer=prm needs prm_api_base and prm_model"),
        ({"beam_size": 2}, r"beam option beam_size: Extra inputs are not permitted"),
    ],
)
async def test_option_errors(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    await user_error(
        run_beam(tmp_path, ScriptedModel(["x"]), one_task(tmp_path), options=options), message
    )


def test_registry_and_defaults() -> None:
    assert get_loop("beam") is BEAM
    o = BeamOptions()
    assert (o.beam_width, o.expansions, o.max_depth, o.delimiter) == (4, 2, 6, "\n")
    assert (o.scorer, o.variant, o.rollouts) == ("value", "beam", 2)
    assert BEAM.recursion_limit(BeamOptions(max_depth=64)) > 3 * 64 + 2


async def test_rollout_scorer_needs_a_verifier(tmp_path: Path) -> None:
    tasks = text_task(tmp_path, "Write a poem.")
    await user_error(
        run_beam(tmp_path, ScriptedModel(["x"]), tasks, options={"scorer": "rollout"}),
        r"scorer=rollout needs an in-loop verifier.*'x'",
    )


# -- determinism and resume ------------------------------------------------------------------


def _content_reply(call: ModelCall) -> str:
    """A reply that depends only on the prompt (never on call order)."""
    user = last_user(call.messages)
    h = sum(user.encode()) % 89
    if kind_of(call) == "value":
        return f"Score: {h % 10 + 1}"
    m = STEPS.search(user)
    done = len(m.group(1).split("\n")) if m else 0
    return f"The answer is {h}." if done >= 2 else f"step {h}"


async def test_same_seed_same_trace_different_seed_different(tmp_path: Path) -> None:
    r1, r2, r3 = await seeded_runs(
        run_beam,
        tmp_path,
        "builtin:arithmetic?seed=3&n=2",
        [5, 5, 6],
        [ScriptedModel(_content_reply) for _ in range(3)],
        options={"beam_width": 2, "expansions": 2, "max_depth": 3},
    )

    assert call_key(r1) == call_key(r2) and len(r1["calls"]) > 8
    tree = lambda rows: sorted((n["task_id"], n["role"], n["depth"], n["content"], n["value"])  # noqa: E731
                               for n in rows["nodes"])  # fmt: skip
    assert tree(r1) == tree(r2)
    assert [t["final_answer"] for t in r1["tasks"]] == [t["final_answer"] for t in r2["tasks"]]
    assert not {c["seed"] for c in r1["calls"]} & {c["seed"] for c in r3["calls"]}


async def test_resume_reruns_only_the_unfinished_task(tmp_path: Path) -> None:
    pens = "Ana has 4 pens and buys 4 more. How many pens?"
    tasks = write_jsonl(tmp_path / "two.jsonl", [math_task("a"), math_task("b", pens, "8")])

    def reply(call: ModelCall) -> str | Fault:
        if "Ana" in last_user(call.messages):
            return Fault("bad_request")  # task b fails
        return "The answer is 5."

    cfg: dict[str, Any] = {"run_name": "r", "concurrency": 1, "max_attempts": 1,
                           "options": {"beam_width": 1, "expansions": 1}}  # fmt: skip
    _, rows = await run_beam(tmp_path, ScriptedModel(reply, name="beam-resume"), tasks, **cfg)
    assert [(t["task_id"], t["status"]) for t in rows["tasks"]] == [("a", "done"), ("b", "failed")]

    again = ScriptedModel(lambda call: "The answer is 8.", name="beam-resume")
    result, rows = await run_beam(tmp_path, again, tasks, resume=True, **cfg)
    assert [(t["task_id"], t["status"], t["graded"]) for t in rows["tasks"]] == [
        ("a", "done", True),
        ("b", "done", True),
    ]
    assert len(again.calls) == 1 and "Ana" in last_user(again.calls[0].messages)
    assert result.summary["done"] == 2

    third = ScriptedModel([], name="beam-resume")
    await run_beam(tmp_path, third, tasks, resume=True, **cfg)
    assert third.calls == []  # nothing left to do


# -- the real embedded model -----------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_beam_on_the_local_model(tmp_path: Path) -> None:
    db = str(tmp_path / "local.duckdb")
    opts = {"beam_width": 2, "expansions": 1, "max_depth": 2, "max_tokens": 24,
            "value_max_tokens": 8}  # fmt: skip
    result = await run(
        RunConfig(loop="beam", tasks="builtin:arithmetic?seed=3&n=2", db=db, options=opts)
    )
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    with TraceStore(db, read_only=True) as store:
        for t in store.query("SELECT * FROM tasks"):
            assert t["stop_reason"] in {"verified", "completed", "max_depth"}
            assert t["final_node_id"] is not None
            calls = store.query(
                "SELECT count(*) AS n FROM calls WHERE task_id = ? AND run_id = ?",
                [t["task_id"], t["run_id"]],
            )[0]
            assert calls["n"] == t["calls"] > 0
        steps = store.query("SELECT * FROM nodes WHERE role = 'expander'")
        assert all(s["depth"] < 2 for s in steps)
        # Steps are single lines (the delimiter is the stop sequence).
        assert all("\n" not in s["content"] for s in steps if s["depth"] == 0)
        orphans = store.query(
            "SELECT count(*) AS n FROM nodes c WHERE parent_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM nodes p WHERE p.node_id = c.parent_id)"
        )
        assert orphans == [{"n": 0}]
