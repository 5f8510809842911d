"""Self-refine control flow, driven end to end through the runner with the scripted model.

The scripted model answers by role: the last user message tells a generate, critique and
refine prompt apart (see loops/prompts/self_refine.toml).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loop_testkit import (
    CODE_SPEC,
    FIRST_FAILURE,
    QUESTION,
    RIGHT,
    RIGHT_CODE,
    SELF_REFINE_STEPS,
    WRONG,
    WRONG_CODE,
    LoopRunner,
    Reply,
    RoleScript,
    call_key,
    finals,
    last_user,
    math_task,
    one_task,
    prompts,
    seeded_runs,
    skip_without_bwrap,
    text_task,
    untested_code_task,
    user_error,
    write_jsonl,
)
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.verify import graders as verify
from loopwright.sandboxes import SandboxUnavailable
from loopwright.tools.code_tests import VERSION as CODE_TESTS_VERSION

ISSUES = "Step 1 is wrong: 2 + 3 is not 6."
FIXED_CODE = "Fixed:\n" + RIGHT_CODE


def scripted(generate: Reply, critique: Reply = ISSUES, refine: Reply = WRONG) -> RoleScript:
    return RoleScript(SELF_REFINE_STEPS, generate=generate, critique=critique, refine=refine)


run_loop = LoopRunner("self-refine", {"max_rounds": 2})


# -- stopping rules ------------------------------------------------------------------------------


async def test_correct_first_draft_stops_verified_after_one_call(tmp_path: Path) -> None:
    script = scripted(generate=RIGHT)
    model = ScriptedModel(script)
    result, rows = await run_loop(tmp_path, model, one_task(tmp_path))

    assert len(model.calls) == 1
    assert script.roles == ["generate"]
    [task] = rows["tasks"]
    assert task["status"] == "done"
    assert task["stop_reason"] == "verified"
    assert task["verdict"] is True
    assert task["graded"] is True
    assert task["final_answer"] == "5"
    assert task["rounds"] == 0
    assert task["calls"] == 1
    [node] = rows["nodes"]
    assert node["role"] == "generator"
    assert node["is_final"] is True
    assert node["parent_id"] is None
    assert node["score"] == 1.0
    assert task["final_node_id"] == node["node_id"]
    stages = sorted(v["stage"] for v in rows["verdicts"])
    assert stages == ["graded", "in_loop"]
    assert all(v["node_id"] == node["node_id"] and v["passed"] for v in rows["verdicts"])
    assert result.summary["stop_reasons"] == {"verified": 1}


async def test_critic_no_issues_stops_after_two_calls(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, critique="NO ISSUES")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path))

    assert len(model.calls) == 2
    assert script.roles == ["generate", "critique"]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "critic_satisfied"
    assert task["graded"] is False
    assert task["rounds"] == 0
    assert sorted(n["role"] for n in rows["nodes"]) == ["critic", "generator"]
    [final] = finals(rows)
    assert final["role"] == "generator"
    assert final["node_id"] == task["final_node_id"]


async def test_critic_no_issues_is_ignored_when_disabled(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, critique="No issues found.")
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 1, "stop_on_no_issues": False},
    )
    assert script.roles == ["generate", "critique", "refine"]
    assert rows["tasks"][0]["stop_reason"] == "max_rounds"


async def test_always_wrong_runs_max_rounds_and_builds_the_tree(tmp_path: Path) -> None:
    script = scripted(
        generate=WRONG,
        critique=["critique A: step 1 is wrong", "critique B: still wrong"],
        refine=["refined 1: The answer is 7.", "refined 2: The answer is 8."],
    )
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 2})

    assert len(model.calls) == 5
    assert script.roles == ["generate", "critique", "refine", "critique", "refine"]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "max_rounds"
    assert task["rounds"] == 2
    assert task["calls"] == 5
    assert task["graded"] is False

    nodes = rows["nodes"]
    by_content = {n["content"]: n for n in nodes}
    assert len(nodes) == 5
    d0, d1, d2 = (
        by_content[WRONG],
        by_content["refined 1: The answer is 7."],
        by_content["refined 2: The answer is 8."],
    )
    c0, c1 = by_content["critique A: step 1 is wrong"], by_content["critique B: still wrong"]

    assert (d0["role"], d0["parent_id"], d0["depth"], d0["round"]) == ("generator", None, 0, 0)
    assert (d1["role"], d1["parent_id"], d1["depth"], d1["round"]) == (
        "refiner",
        d0["node_id"],
        1,
        1,
    )
    assert (d2["role"], d2["parent_id"], d2["depth"], d2["round"]) == (
        "refiner",
        d1["node_id"],
        2,
        2,
    )
    # A critique hangs off the draft it critiques, in that draft's round.
    assert (c0["role"], c0["parent_id"], c0["depth"], c0["round"]) == (
        "critic",
        d0["node_id"],
        1,
        0,
    )
    assert (c1["role"], c1["parent_id"], c1["depth"], c1["round"]) == (
        "critic",
        d1["node_id"],
        2,
        1,
    )
    assert [d["answer"] for d in (d0, d1, d2)] == ["6", "7", "8"]
    assert all(d["score"] == 0.0 for d in (d0, d1, d2))
    assert c0["score"] is None and c1["score"] is None

    # All drafts fail equally, so the best draft is the latest one; it alone is final.
    [final] = finals(rows)
    assert final["node_id"] == d2["node_id"] == task["final_node_id"]
    assert task["final_answer"] == "8"

    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(v["node_id"] for v in in_loop) == sorted(
        d["node_id"] for d in (d0, d1, d2)
    )  # every draft verified once, critiques never


async def test_wrong_then_right_stops_verified_at_round_one(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, refine=RIGHT)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 3})

    assert script.roles == ["generate", "critique", "refine"]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "verified"
    assert task["rounds"] == 1
    assert task["graded"] is True
    assert task["verdict"] is True
    assert task["final_answer"] == "5"
    [final] = finals(rows)
    assert final["role"] == "refiner"
    assert final["round"] == 1
    assert final["content"] == RIGHT
    assert final["node_id"] == task["final_node_id"]
    graded = [v for v in rows["verdicts"] if v["stage"] == "graded"]
    assert [(v["node_id"], v["passed"]) for v in graded] == [(final["node_id"], True)]


async def test_max_rounds_zero_never_critiques(tmp_path: Path) -> None:
    script = scripted(generate=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 0})
    assert script.roles == ["generate"]
    assert rows["tasks"][0]["stop_reason"] == "max_rounds"


async def test_text_task_without_verifier_refines_until_max_rounds(tmp_path: Path) -> None:
    tasks = text_task(tmp_path)
    script = scripted(generate="draft", critique="too long", refine=["better", "best"])
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, tasks, options={"max_rounds": 2})
    assert script.roles == ["generate", "critique", "refine", "critique", "refine"]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "max_rounds"
    assert task["graded"] is None
    assert rows["verdicts"] == []
    assert finals(rows)[0]["content"] == "best"
    # Text prompts are used for text tasks.
    assert "The answer is N" not in last_user(model.calls[0].messages)


# -- prompts -----------------------------------------------------------------------------------


async def test_prompts_carry_question_draft_and_critique(tmp_path: Path) -> None:
    script = scripted(
        generate="DRAFT-ZERO says 6",
        critique=["CRIT-ALPHA: off by one", "CRIT-BETA: still off"],
        refine=["DRAFT-ONE says 7", "DRAFT-TWO says 8"],
    )
    model = ScriptedModel(script)
    await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 2})

    gen, crit0, ref1, crit1, ref2 = prompts(model)
    assert QUESTION in gen
    assert "The answer is N" in gen  # math flavour of the generate prompt
    assert model.calls[0].messages[0]["role"] == "system"

    assert QUESTION in crit0 and "DRAFT-ZERO says 6" in crit0

    assert QUESTION in ref1
    assert "DRAFT-ZERO says 6" in ref1
    assert "CRIT-ALPHA: off by one" in ref1

    assert "DRAFT-ONE says 7" in crit1
    assert "DRAFT-ZERO" not in crit1

    # The second refinement sees the latest draft and the latest critique only.
    assert "DRAFT-ONE says 7" in ref2 and "CRIT-BETA: still off" in ref2
    assert "DRAFT-ZERO" not in ref2 and "CRIT-ALPHA" not in ref2


async def test_sampling_parameters_follow_options(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, refine=RIGHT)
    model = ScriptedModel(script)
    await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={
            "max_rounds": 2,
            "temperature": 0.9,
            "critic_temperature": 0.1,
            "max_tokens": 77,
            "critic_max_tokens": 33,
        },
    )
    temps = [c.params.temperature for c in model.calls]
    assert temps == [0.9, 0.1, 0.9]
    assert [c.params.max_tokens for c in model.calls] == [77, 33, 77]


# -- budgets -------------------------------------------------------------------------------------


async def test_call_budget_stops_midway_with_best_so_far(tmp_path: Path) -> None:
    script = scripted(generate=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 3},
        budget=BudgetLimits(calls=2),
    )
    assert script.roles == ["generate", "critique"]
    [task] = rows["tasks"]
    assert task["status"] == "done"
    assert task["error"] is None
    assert task["stop_reason"].startswith("budget")
    assert "call budget of 2" in task["stop_reason"]
    assert task["calls"] == 2
    [final] = finals(rows)
    assert final["role"] == "generator"
    assert final["node_id"] == task["final_node_id"]
    assert task["final_answer"] == "6"


async def test_call_budget_after_a_refinement_keeps_the_refined_draft(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, refine="refined: The answer is 7.")
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 5},
        budget=BudgetLimits(calls=3),
    )
    assert script.roles == ["generate", "critique", "refine"]
    [task] = rows["tasks"]
    assert task["status"] == "done"
    assert task["stop_reason"].startswith("budget")
    assert task["rounds"] == 1
    [final] = finals(rows)
    assert (final["role"], final["round"]) == ("refiner", 1)
    assert task["final_answer"] == "7"


async def test_token_budget_stops_midway(tmp_path: Path) -> None:
    script = scripted(generate="The answer is 6.", critique="wrong")  # 4 and 1 words
    model = ScriptedModel(script, prompt_tokens_per_call=10)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 10},
        budget=BudgetLimits(tokens=15),
    )
    # generate: 14 tokens (< 15, so the critique may run); critique: 11 more -> 25 >= 15.
    assert script.roles == ["generate", "critique"]
    [task] = rows["tasks"]
    assert task["status"] == "done"
    assert task["error"] is None
    assert task["stop_reason"].startswith("budget")
    assert "token budget of 15" in task["stop_reason"]
    assert task["total_tokens"] == 25
    assert finals(rows)[0]["role"] == "generator"


async def test_run_budget_exhausted_before_a_task_starts(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "two.jsonl", [math_task("a"), math_task("b")])
    model = ScriptedModel(scripted(generate=RIGHT), prompt_tokens_per_call=50)
    _, rows = await run_loop(
        tmp_path, model, tasks, concurrency=1, run_budget=BudgetLimits(tokens=10)
    )
    assert len(model.calls) == 1
    a, b = rows["tasks"]
    assert (a["status"], a["stop_reason"], a["graded"]) == ("done", "verified", True)
    assert b["status"] == "done"
    assert b["error"] is None
    assert b["stop_reason"].startswith("budget")
    assert b["calls"] == 0
    assert b["final_node_id"] is None
    assert [n["task_id"] for n in rows["nodes"]] == ["a"]


# -- determinism -------------------------------------------------------------------------------


def _content_reply(call: ModelCall) -> str:
    """A deterministic reply that depends only on what was asked (never on call order)."""
    role = SELF_REFINE_STEPS[str(call.params.role)]
    text = last_user(call.messages)
    h = sum(text.encode()) % 97
    if role == "critique":
        return f"Issue #{h}: recheck the sum."
    return f"Working ({role} {h}). The answer is {h + 100}."


async def test_same_seed_same_calls_different_seed_different(tmp_path: Path) -> None:
    models = [ScriptedModel(_content_reply) for _ in range(3)]
    m1, m2 = models[:2]
    spec = "builtin:arithmetic?seed=3&n=4"
    r1, r2, r3 = await seeded_runs(
        run_loop, tmp_path, spec, [11, 11, 12], models, concurrency=2, options={"max_rounds": 2}
    )

    assert len(r1["calls"]) == 4 * 5
    assert call_key(r1) == call_key(r2)
    assert not any(c["cache_hit"] for c in r1["calls"] + r2["calls"])
    # Per-call seeds are distinct within a run and actually reach the provider.
    seeds1 = [c["seed"] for c in r1["calls"]]
    assert len(set(seeds1)) == len(seeds1)
    assert sorted(c.params.seed for c in m1.calls) == sorted(seeds1)
    # A different run seed changes every per-call seed.
    assert not set(seeds1) & {c["seed"] for c in r3["calls"]}
    assert [t["final_answer"] for t in r1["tasks"]] == [t["final_answer"] for t in r2["tasks"]]
    assert len(m1.calls) == len(m2.calls) == 20


@pytest.mark.parametrize("max_rounds", [1, 4])
async def test_no_recursion_error_at_max_rounds(tmp_path: Path, max_rounds: int) -> None:
    script = scripted(generate=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path, model, one_task(tmp_path), options={"max_rounds": max_rounds}
    )
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert task["rounds"] == max_rounds
    assert len(model.calls) == 1 + 2 * max_rounds


# -- code tasks ----------------------------------------------------------------------------------


async def test_code_task_wrong_then_right_is_verified_with_test_feedback(tmp_path: Path) -> None:
    skip_without_bwrap()
    script = scripted(generate=WRONG_CODE, critique="CRIT: use + not -", refine=FIXED_CODE)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, CODE_SPEC, options={"max_rounds": 2})

    assert script.roles == ["generate", "critique", "refine"]
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["verdict"], task["graded"]) == ("verified", True, True)
    assert task["final_answer"] == "def add_numbers(a: int, b: int) -> int:\n    return a + b\n"

    gen, crit, ref = prompts(model)
    assert "def add_numbers(a: int, b: int) -> int:" in gen and ">>> add_numbers(2, 3)" in gen
    assert "```python" in gen
    # The verifier's failing assertion reaches the critic and the refiner.
    assert FIRST_FAILURE in crit
    assert FIRST_FAILURE in ref
    assert "return a - b" in ref and "CRIT: use + not -" in ref
    assert "Here is" not in ref  # the refiner sees the extracted code, not the raw reply
    assert [c.params.max_tokens for c in model.calls] == [384, 128, 384]

    verdicts = rows["verdicts"]
    assert {(v["stage"], v["verifier"], v["verifier_version"]) for v in verdicts} == {
        ("in_loop", "oracle", f"code-tests/{CODE_TESTS_VERSION}-bwrap"),
        ("graded", "code-tests", f"{CODE_TESTS_VERSION}-bwrap"),
    }
    drafts = {n["role"]: n for n in rows["nodes"] if n["role"] != "critic"}
    in_loop = {v["node_id"]: v for v in verdicts if v["stage"] == "in_loop"}
    first = in_loop[drafts["generator"]["node_id"]]
    assert (first["passed"], first["score"], first["feedback"]) == (False, 0.2, FIRST_FAILURE)
    assert json.loads(first["details"])["tests_passed"] == 1
    assert in_loop[drafts["refiner"]["node_id"]]["passed"] is True
    assert drafts["generator"]["score"] == 0.2
    [graded] = [v for v in verdicts if v["stage"] == "graded"]
    assert graded["node_id"] == task["final_node_id"] == drafts["refiner"]["node_id"]


async def test_code_max_tokens_option(tmp_path: Path) -> None:
    skip_without_bwrap()
    model = ScriptedModel(scripted(generate=FIXED_CODE))
    await run_loop(tmp_path, model, CODE_SPEC, options={"code_max_tokens": 200, "max_tokens": 50})
    assert [c.params.max_tokens for c in model.calls] == [200]


async def test_code_task_without_tests_uses_the_untested_critique(tmp_path: Path) -> None:
    tasks = untested_code_task(tmp_path)
    script = scripted(generate="def f():\n    return 1\n", critique="NO ISSUES")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, tasks, options={"max_rounds": 2})
    assert script.roles == ["generate", "critique"]
    assert rows["tasks"][0]["stop_reason"] == "critic_satisfied"
    assert rows["verdicts"] == []
    assert 'reply with exactly "NO ISSUES"' in last_user(model.calls[1].messages)


async def test_code_task_without_sandbox_stops_the_run_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(name: str) -> None:
        raise SandboxUnavailable("bwrap cannot create a sandbox here (no user namespaces)")

    monkeypatch.setattr(verify, "get_sandbox", unavailable)
    monkeypatch.setattr(verify, "_sandboxes", {})
    model = ScriptedModel(scripted(generate=FIXED_CODE))
    msg = await user_error(run_loop(tmp_path, model, CODE_SPEC))
    assert "\n" not in msg
    assert "no user namespaces" in msg and "--sandbox process" in msg
