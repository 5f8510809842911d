"""MCTS (LATS) end to end through the runner with the scripted model, which answers by prompt
kind (see loops/prompts/mcts.toml). The pure tree functions: test_loop_mcts_tree.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import (
    CODE_SPEC,
    FIRST_FAILURE,
    QUESTION,
    RIGHT,
    RIGHT_CODE,
    WRONG_CODE,
    LoopRunner,
    Messages,
    Reply,
    RoleScript,
    Rows,
    call_key,
    last_user,
    local_model,
    math_task,
    of_role,
    one_task,
    seeded_runs,
    skip_without_bwrap,
    text_task,
    user_error,
    write_jsonl,
)
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.graphs import get_loop
from loopwright.loops.graphs.mcts import MCTS, MctsOptions
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore

LESSON = "Lesson: add the numbers carefully."


STEPS = {"generator": "generate", "expander": "expand", "value": "value", "reflector": "reflect"}


def kind_of(call: ModelCall) -> str:
    """The MCTS step a call is for, by its role."""
    return STEPS[str(call.params.role)]


class Script(RoleScript):
    """Replies per prompt kind. Value replies default to a rating looked up in ``ratings`` by
    the first attempt tag (``[A1]``...) the prompt shows."""

    def __init__(
        self,
        generate: Reply,
        expand: Reply = "still wrong. The answer is 6.",
        ratings: dict[str, int] | None = None,
        reflect: Reply = LESSON,
        value: Reply | None = None,
    ) -> None:
        super().__init__(STEPS, generate=generate, expand=expand, reflect=reflect)
        if value is not None:
            self.replies["value"] = value
        self.ratings = ratings or {}

    def reply(self, role: str, k: int, messages: Messages) -> str:
        if role != "value" or "value" in self.replies:
            return super().reply(role, k, messages)
        tag = re.search(r"\[(\w+)\]", last_user(messages).split("Proposed answer:")[-1])
        return f"Looks plausible.\nRating: [[{self.ratings.get(tag[1] if tag else '', 0)}]]"


run_loop = LoopRunner("mcts")


def by_content(nodes: list[dict[str, Any]], role: str | None = None) -> dict[str, dict[str, Any]]:
    return {n["content"]: n for n in nodes if role is None or n["role"] == role}


# -- the loop: statistics ------------------------------------------------------------------------

RATINGS = {"A1": 8, "A2": 4, "B1": 2, "B2": 6, "C1": 10, "C2": 0}


def wrong(tag: str) -> str:
    return f"[{tag}] 2 + 3 = 6. The answer is 6."


def three_simulations() -> Script:
    """Two first drafts, two children each for the next two simulations, rated by RATINGS."""
    return Script(
        generate=[wrong("A1"), wrong("A2")],
        expand=[wrong("B1"), wrong("B2"), wrong("C1"), wrong("C2")],
        ratings=RATINGS,
        reflect=["LESSON-1", "LESSON-2", "LESSON-3"],
    )


async def test_root_visits_equal_simulations_and_values_are_mean_backed_up_rewards(
    tmp_path: Path,
) -> None:
    script = three_simulations()
    model = ScriptedModel(script)
    opts = {"simulations": 3, "children": 2, "c_uct": 1.0, "value_weight": 0.5}
    result, rows = await run_loop(tmp_path, model, one_task(tmp_path), options=opts)

    # Per simulation: one expansion request (n=2), two value ratings, one reflection.
    assert (
        script.roles
        == ["generate"] * 2
        + ["value"] * 2
        + ["reflect"]
        + (["expand"] * 2 + ["value"] * 2 + ["reflect"]) * 2
    )
    [task] = rows["tasks"]
    assert (task["status"], task["stop_reason"], task["rounds"]) == ("done", "max_simulations", 3)
    assert task["calls"] == 15

    nodes = rows["nodes"]
    attempts = by_content(nodes)
    [root] = of_role(rows, "root")
    a1, a2, b1, b2, c1, c2 = (attempts[wrong(t)] for t in RATINGS)
    # reward = 0.5 * rating / 10 (every attempt fails the verifier: score 0).
    # sim 1 expands the root: A1 0.4, A2 0.2, backs up 0.4.
    # sim 2: root visits 1 (ln 1 = 0) -> A1; B1 0.1, B2 0.3, backs up 0.3.
    # sim 3: A1 0.35 + sqrt(ln 2 / 2) = 0.939 < A2 0.2 + sqrt(ln 2) = 1.033 -> A2;
    #        C1 0.5, C2 0.0, backs up 0.5.
    backed_up = [0.4, 0.3, 0.5]
    assert root["visits"] == 3 == task["rounds"]
    assert root["value"] == pytest.approx(sum(backed_up) / 3)
    assert (a1["visits"], a1["value"]) == (2, pytest.approx((0.4 + 0.3) / 2))
    assert (a2["visits"], a2["value"]) == (2, pytest.approx((0.2 + 0.5) / 2))
    for leaf, reward in ((b1, 0.1), (b2, 0.3), (c1, 0.5), (c2, 0.0)):
        assert (leaf["visits"], leaf["value"]) == (1, pytest.approx(reward))

    # The tree: first drafts under the root, refinements under the attempt they refine.
    assert (root["parent_id"], root["depth"], root["content"]) == (None, 0, QUESTION)
    assert [(n["role"], n["parent_id"], n["depth"], n["round"]) for n in (a1, a2)] == [
        ("generator", root["node_id"], 1, 1)
    ] * 2
    assert {(n["role"], n["parent_id"], n["depth"], n["round"]) for n in (b1, b2)} == {
        ("expander", a1["node_id"], 2, 2)
    }
    assert {(n["parent_id"], n["round"]) for n in (c1, c2)} == {(a2["node_id"], 3)}
    assert all(n["score"] == 0.0 for n in (a1, a2, b1, b2, c1, c2))

    # Value judgements hang off the attempt they rate, with the normalised rating as score.
    values = {n["parent_id"]: n for n in nodes if n["role"] == "value"}
    assert len(values) == 6
    assert values[a1["node_id"]]["score"] == pytest.approx(0.8)
    assert values[c2["node_id"]]["score"] == 0.0
    # One reflection per simulation, on its best-rewarded failed attempt.
    reflections = by_content(nodes, "reflector")
    assert [reflections[f"LESSON-{i}"]["parent_id"] for i in (1, 2, 3)] == [
        a1["node_id"],
        b2["node_id"],
        c1["node_id"],
    ]
    assert len(nodes) == 1 + 6 + 6 + 3

    # The answer: the highest-value attempt (C1, 0.5).
    [final] = [n for n in nodes if n["is_final"]]
    assert final["node_id"] == c1["node_id"] == task["final_node_id"]
    assert (task["final_answer"], task["verdict"], task["graded"]) == ("6", False, False)
    in_loop = sorted(v["node_id"] for v in rows["verdicts"] if v["stage"] == "in_loop")
    assert in_loop == sorted(n["node_id"] for n in (a1, a2, b1, b2, c1, c2))
    assert result.summary["stop_reasons"] == {"max_simulations": 1}


async def test_expansion_prompts_carry_the_parent_attempt_and_latest_reflections(
    tmp_path: Path,
) -> None:
    script = three_simulations()
    model = ScriptedModel(script)
    opts = {"simulations": 3, "children": 2, "max_reflections": 1}
    await run_loop(tmp_path, model, one_task(tmp_path), options=opts)

    [gen] = {p for k, p in script.prompts if k == "generate"}
    assert QUESTION in gen and "The answer is N" in gen and "Previous attempt" not in gen
    exp2, exp3 = sorted({p for k, p in script.prompts if k == "expand"}, key=lambda p: "A2" in p)
    assert QUESTION in exp2 and wrong("A1") in exp2 and "not correct" in exp2
    assert "- LESSON-1" in exp2 and "LESSON-2" not in exp2
    assert wrong("A2") in exp3 and "- LESSON-2" in exp3
    assert "LESSON-1" not in exp3  # only the latest max_reflections are kept
    assert "\n\n\n" not in exp2
    # The expansion is one request for all children; value calls have their own seeds.
    expand_calls = [c for c in model.calls if kind_of(c) == "expand"]
    assert [c.n for c in expand_calls] == [2] * 4
    value_seeds = [c.params.seed for c in model.calls if kind_of(c) == "value"]
    assert len(set(value_seeds)) == 6
    params = {kind_of(c): c.params for c in model.calls}
    assert (params["expand"].temperature, params["expand"].max_tokens) == (0.8, 256)
    assert (params["value"].temperature, params["value"].max_tokens) == (0.0, 96)
    assert params["reflect"].max_tokens == 96


# -- the loop: stopping rules --------------------------------------------------------------------


async def test_a_verified_child_ends_the_search_without_value_calls(tmp_path: Path) -> None:
    script = Script(generate=[wrong("A1"), RIGHT])
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"children": 2})
    assert script.roles == ["generate", "generate"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["verdict"], task["graded"]) == ("verified", True, True)
    assert (task["rounds"], task["calls"], task["final_answer"]) == (1, 2, "5")
    right = by_content(rows["nodes"])[RIGHT]
    assert right["is_final"] and right["node_id"] == task["final_node_id"]
    [root] = of_role(rows, "root")
    assert (root["visits"], root["value"]) == (1, 1.0)  # the verifier score is the reward
    assert (right["visits"], right["value"]) == (1, 1.0)


async def test_verified_in_a_later_simulation(tmp_path: Path) -> None:
    script = Script(generate=[wrong("A1"), wrong("A2")], expand=[wrong("B1"), RIGHT])
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"children": 2})
    assert script.roles == ["generate"] * 2 + ["value"] * 2 + ["reflect"] + ["expand"] * 2
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["graded"]) == ("verified", 2, True)
    right = by_content(rows["nodes"])[RIGHT]
    assert (right["role"], right["depth"], right["is_final"]) == ("expander", 2, True)
    [root] = of_role(rows, "root")
    assert root["visits"] == 2


async def test_text_task_without_verifier_uses_the_value_and_exhausts_a_shallow_tree(
    tmp_path: Path,
) -> None:
    tasks = text_task(tmp_path)
    script = Script(generate=["[A1] draft", "[A2] draft"], ratings={"A1": 3, "A2": 9})
    model = ScriptedModel(script)
    opts = {"simulations": 5, "children": 2, "max_depth": 1}
    _, rows = await run_loop(tmp_path, model, tasks, options=opts)
    # Depth-1 attempts are terminal: one simulation, a reflection on the best (unchecked)
    # attempt, then nothing is left to expand.
    assert script.roles == ["generate"] * 2 + ["value"] * 2 + ["reflect"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["graded"]) == ("exhausted", 1, None)
    assert rows["verdicts"] == []
    a2 = by_content(rows["nodes"])["[A2] draft"]
    assert a2["is_final"] and a2["value"] == pytest.approx(0.9) and a2["score"] is None
    assert by_content(rows["nodes"], "reflector")[LESSON]["parent_id"] == a2["node_id"]
    [gen] = {p for k, p in script.prompts if k == "generate"}
    assert "The answer is N" not in gen


async def test_no_value_calls_at_value_weight_zero_and_no_reflections_when_off(
    tmp_path: Path,
) -> None:
    script = Script(generate=wrong("A"), expand=wrong("B"))
    model = ScriptedModel(script)
    opts = {"simulations": 2, "children": 2, "value_weight": 0.0, "reflect": False}
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options=opts)
    assert script.roles == ["generate"] * 2 + ["expand"] * 2
    assert "Lessons" not in script.prompts[-1][1]
    [root] = of_role(rows, "root")
    assert (root["visits"], root["value"]) == (2, 0.0)


async def test_an_unparseable_value_falls_back_to_the_verifier_score(tmp_path: Path) -> None:
    script = Script(generate=wrong("A"), value="I cannot tell.")
    model = ScriptedModel(script)
    opts = {"simulations": 1, "children": 1}
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options=opts)
    [value] = [n for n in rows["nodes"] if n["role"] == "value"]
    assert value["score"] is None
    attempt = by_content(rows["nodes"])[wrong("A")]
    assert (attempt["visits"], attempt["value"]) == (1, 0.0)


# -- budgets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "kinds", "visits"),
    [
        (1, [], None),  # the first expansion (n=2) does not fit
        (3, ["generate"] * 2, 1),  # both value ratings do not fit: scores alone
        (4, ["generate"] * 2 + ["value"] * 2, 1),  # the reflection does not fit
        (6, ["generate"] * 2 + ["value"] * 2 + ["reflect"], 1),  # the 2nd expansion
    ],
)
async def test_call_budget_stops_cleanly_with_the_best_so_far(
    tmp_path: Path, calls: int, kinds: list[str], visits: int | None
) -> None:
    script = Script(generate=[wrong("A1"), wrong("A2")], ratings={"A1": 2, "A2": 7})
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"children": 2},
        budget=BudgetLimits(calls=calls),
    )
    assert script.roles == kinds
    [task] = rows["tasks"]
    assert (task["status"], task["error"]) == ("done", None)
    assert task["stop_reason"] == f"budget: call budget of {calls} spent"
    [root] = of_role(rows, "root")
    assert root["visits"] == visits
    finals = [n for n in rows["nodes"] if n["is_final"]]
    if visits is None:
        assert finals == [] and task["final_node_id"] is None
        return
    # Rated: A2 (0.35) wins; unrated: both score 0, the earlier one wins.
    want = wrong("A2") if "value" in kinds else wrong("A1")
    assert [f["content"] for f in finals] == [want]
    assert task["final_answer"] == "6"


# -- options, determinism, resume ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"simulations": 0}, "mcts option simulations: Input should be greater than or equal to 1"),
        ({"simulations": 201}, "mcts option simulations: Input should be less than or equal"),
        ({"children": 0}, "mcts option children"),
        ({"value_weight": 1.5}, "mcts option value_weight"),
        ({"c_uct": -1}, "mcts option c_uct"),
        ({"max_depth": 0}, "mcts option max_depth"),
        ({"simulatons": 3}, "mcts option simulatons: Extra inputs are not permitted"),
    ],
)
async def test_bad_options_are_one_line_user_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    model = ScriptedModel(Script(generate=RIGHT))
    msg = await user_error(run_loop(tmp_path, model, one_task(tmp_path), options=options))
    assert msg.startswith(message)
    assert len(model.calls) == 0


def test_spec_is_registered_and_recursion_limit_covers_every_simulation() -> None:
    assert get_loop("mcts") is MCTS
    assert MCTS.options is MctsOptions
    # plant + five nodes per simulation + a final select, with room to spare
    assert all(MCTS.recursion_limit(MctsOptions(simulations=s)) > 5 * s + 2 for s in (1, 200))


def _content_reply(call: ModelCall) -> str:
    """Depends only on what was asked (never on call order)."""
    kind = kind_of(call)
    h = sum(last_user(call.messages).encode()) % 97
    if kind == "value":
        return f"Rating: [[{h % 11}]]"
    if kind == "reflect":
        return f"Lesson {h}."
    return f"Working ({kind} {h}). The answer is {h + 100}."


async def test_same_seed_same_trace_different_seed_different_seeds(tmp_path: Path) -> None:
    r1, r2, r3 = await seeded_runs(
        run_loop,
        tmp_path,
        "builtin:arithmetic?seed=3&n=2",
        [11, 11, 12],
        [ScriptedModel(_content_reply) for _ in range(3)],
        options={"simulations": 3, "children": 2},
    )

    def tree(rows: Rows) -> list[tuple[Any, ...]]:
        return sorted(
            (n["task_id"], n["role"], n["depth"], n["round"], n["content"], n["visits"])
            for n in rows["nodes"]
        )

    assert len(r1["calls"]) == 2 * 3 * 5
    assert call_key(r1) == call_key(r2) and tree(r1) == tree(r2)
    assert [t["final_answer"] for t in r1["tasks"]] == [t["final_answer"] for t in r2["tasks"]]
    assert not {c["seed"] for c in r1["calls"]} & {c["seed"] for c in r3["calls"]}


async def test_resume_reruns_only_unfinished_tasks(tmp_path: Path) -> None:
    tasks = write_jsonl(
        tmp_path / "two.jsonl", [math_task("a"), math_task("b", "What is 4 + 4?", "8")]
    )
    broken = {"b": True}
    seen: list[str] = []

    def reply(call: ModelCall) -> str | Fault:
        user = last_user(call.messages)
        seen.append(user)
        if "4 + 4" in user:
            return Fault("bad_request") if broken["b"] else "4 + 4 = 8. The answer is 8."
        return RIGHT

    model = ScriptedModel(reply, name="mcts-resume")
    cfg: dict[str, Any] = {"run_name": "r", "options": {"children": 1}}
    first, rows = await run_loop(tmp_path, model, tasks, **cfg)
    assert [t["status"] for t in rows["tasks"]] == ["done", "failed"]
    broken["b"] = False
    seen.clear()
    again, rows = await run_loop(tmp_path, model, tasks, resume=True, **cfg)
    assert again.run_id == first.run_id and again.progress.skipped == 1
    assert seen and all("4 + 4" in p for p in seen)  # task a was not run again
    assert [(t["status"], t["graded"]) for t in rows["tasks"]] == [("done", True), ("done", True)]
    assert sorted(n["task_id"] for n in rows["nodes"] if n["role"] == "root") == ["a", "b"]


# -- code ----------------------------------------------------------------------------------------


async def test_code_expansion_sees_the_test_result(tmp_path: Path) -> None:
    skip_without_bwrap()
    script = Script(generate=WRONG_CODE, expand=RIGHT_CODE, value="Rating: [[5]]")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, CODE_SPEC, options={"children": 1, "simulations": 3})
    assert script.roles == ["generate", "value", "reflect", "expand"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["graded"]) == ("verified", True)
    prompts = dict(script.prompts)
    assert FIRST_FAILURE in prompts["expand"] and "return a - b" in prompts["expand"]
    assert FIRST_FAILURE in prompts["reflect"] and f"- {LESSON}" in prompts["expand"]
    assert "```python" in prompts["value"] and "return a - b" in prompts["value"]
    assert [c.params.max_tokens for c in model.calls] == [384, 96, 96, 384]


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_mcts_on_the_local_model(tmp_path: Path) -> None:
    db = str(tmp_path / "local.duckdb")
    opts = {
        "simulations": 2,
        "children": 2,
        "max_tokens": 48,
        "value_max_tokens": 24,
        "reflect_max_tokens": 24,
    }
    cfg = RunConfig(loop="mcts", tasks="builtin:arithmetic?n=2", db=db, options=opts)
    result = await run(cfg)
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    with TraceStore(db, read_only=True) as store:
        for t in store.query("SELECT * FROM tasks"):
            assert t["stop_reason"] in {"verified", "max_simulations"}
            [root] = store.query(
                "SELECT * FROM nodes WHERE task_id = ? AND role = 'root'", [t["task_id"]]
            )
            assert root["visits"] == t["rounds"] >= 1 and 0.0 <= root["value"] <= 1.0
            assert t["verdict"] is not None  # the self-check judged the returned attempt
        orphans = store.query(
            "SELECT count(*) AS n FROM nodes c WHERE parent_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM nodes p WHERE p.node_id = c.parent_id)"
        )
        assert orphans == [{"n": 0}]
