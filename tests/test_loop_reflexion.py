"""Reflexion control flow through the runner with the scripted model (plus one real-model run).

The scripted model tells the actor and the reflector apart by the last user message (see
loops/prompts/reflexion.toml): a reflector prompt asks for "a lesson for your next attempt".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import (
    CHATTY_WRONG_CODE,
    CODE_SPEC,
    FIRST_FAILURE,
    MISMATCH,
    QUESTION,
    RIGHT,
    RIGHT_CODE,
    WRONG,
    LoopRunner,
    Reply,
    RoleScript,
    Rows,
    call_key,
    finals,
    last_user,
    local_model,
    of_role,
    one_task,
    prompts,
    read_rows,
    seeded_runs,
    skip_without_bwrap,
    text_task,
    user_error,
)
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import ScriptedModel

MISMATCH_6 = MISMATCH.format(6)


STEPS = {"generator": "act", "reflector": "reflect"}


def scripted(act: Reply, reflect: Reply = "Lesson: add carefully.") -> RoleScript:
    return RoleScript(STEPS, act=act, reflect=reflect)


run_loop = LoopRunner("reflexion", {"max_trials": 3})


# -- stopping rules and the tree ----------------------------------------------------------------


async def test_correct_first_trial_stops_verified_after_one_call(tmp_path: Path) -> None:
    script = scripted(act=RIGHT)
    model = ScriptedModel(script)
    result, rows = await run_loop(tmp_path, model, one_task(tmp_path))

    assert script.roles == ["act"]
    [task] = rows["tasks"]
    assert (task["status"], task["stop_reason"], task["rounds"]) == ("done", "verified", 0)
    assert (task["verdict"], task["graded"], task["final_answer"]) == (True, True, "5")
    [node] = rows["nodes"]
    assert (node["role"], node["parent_id"], node["is_final"], node["score"]) == (
        "generator",
        None,
        True,
        1.0,
    )
    assert "Lessons" not in prompts(model)[0]
    assert result.summary["stop_reasons"] == {"verified": 1}


async def test_always_wrong_runs_max_trials_and_builds_the_tree(tmp_path: Path) -> None:
    script = scripted(
        act=["2 + 3 = 6. The answer is 6.", "The answer is 7.", "The answer is 8."],
        reflect=["LESSON-A", "LESSON-B"],
    )
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_trials": 3})

    # No lesson after the last trial: nothing would read it.
    assert script.roles == ["act", "reflect", "act", "reflect", "act"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["calls"]) == ("max_trials", 2, 5)
    assert task["graded"] is False

    a0, a1, a2 = of_role(rows, "generator")
    l0, l1 = of_role(rows, "reflector")
    assert len(rows["nodes"]) == 5
    shape = [(n["parent_id"], n["depth"], n["round"]) for n in (a0, a1, a2, l0, l1)]
    assert shape == [
        (None, 0, 0),
        (a0["node_id"], 1, 1),
        (a1["node_id"], 2, 2),
        (a0["node_id"], 1, 0),  # a lesson hangs off the attempt it learns from
        (a1["node_id"], 2, 1),
    ]
    assert (l0["content"], l1["content"]) == ("LESSON-A", "LESSON-B")
    assert [a["answer"] for a in (a0, a1, a2)] == ["6", "7", "8"]
    assert all(a["score"] == 0.0 for a in (a0, a1, a2))
    assert l0["score"] is None

    # Every attempt verified once, lessons never; all fail equally -> the latest is final.
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(v["node_id"] for v in in_loop) == sorted(a["node_id"] for a in (a0, a1, a2))
    assert [n["node_id"] for n in rows["nodes"] if n["is_final"]] == [a2["node_id"]]
    assert task["final_node_id"] == a2["node_id"] and task["final_answer"] == "8"


async def test_second_trial_prompt_contains_the_first_trials_lesson(tmp_path: Path) -> None:
    script = scripted(act=[WRONG, RIGHT], reflect="LESSON-ONE: 2 + 3 is 5, not 6.")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_trials": 4})

    assert script.roles == ["act", "reflect", "act"]
    trial0, reflector, trial1 = prompts(model)
    assert QUESTION in trial0 and "Lessons" not in trial0
    assert 'End with the line "The answer is N."' in trial0  # the math draft prompt

    # The reflector sees the question, the attempt and the verifier's feedback.
    assert QUESTION in reflector and WRONG in reflector
    assert f"Answer checker: {MISMATCH_6}" in reflector
    assert model.calls[1].messages[0]["role"] == "system"

    # The second trial: the lesson, then the task prompt of the first trial.
    assert "Lessons from your earlier attempts" in trial1
    assert "1. LESSON-ONE: 2 + 3 is 5, not 6." in trial1
    assert trial1.endswith(trial0)
    assert WRONG not in trial1  # memory holds lessons, not earlier attempts

    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["graded"]) == ("verified", 1, True)
    [final] = finals(rows)
    assert (final["role"], final["round"], final["content"]) == ("generator", 1, RIGHT)


async def test_memory_keeps_the_newest_lessons(tmp_path: Path) -> None:
    script = scripted(act=WRONG, reflect=lambda k: f"LESSON-{k}")
    model = ScriptedModel(script)
    await run_loop(tmp_path, model, one_task(tmp_path), options={"max_trials": 4, "memory_size": 2})
    acts = [p for p, r in zip(prompts(model), script.roles, strict=True) if r == "act"]
    assert len(acts) == 4
    assert "LESSON" not in acts[0]
    assert "1. LESSON-0" in acts[1] and "LESSON-1" not in acts[1]
    assert "1. LESSON-0" in acts[2] and "2. LESSON-1" in acts[2]
    # Trial 3: LESSON-0 was dropped, oldest first.
    assert "LESSON-0" not in acts[3]
    assert "1. LESSON-1" in acts[3] and "2. LESSON-2" in acts[3]


async def test_text_task_without_verifier_stops_after_one_trial(tmp_path: Path) -> None:
    tasks = text_task(tmp_path)
    script = scripted(act="an old pond")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, tasks)
    assert script.roles == ["act"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["graded"], task["final_answer"]) == (
        "no_verifier",
        None,
        None,
    )
    assert rows["verdicts"] == []
    assert prompts(model) == ["Write a haiku."]


# -- Feedback-Friction options ------------------------------------------------------------------


async def test_temperature_rises_per_trial_up_to_the_cap(tmp_path: Path) -> None:
    script = scripted(act=WRONG)
    model = ScriptedModel(script)
    options = {
        "max_trials": 4,
        "temperature": 0.5,
        "temperature_step": 0.3,
        "max_temperature": 1.0,
        "reflector_temperature": 0.1,
        "max_tokens": 77,
        "reflector_max_tokens": 33,
    }
    await run_loop(tmp_path, model, one_task(tmp_path), options=options)
    params = [
        (r, c.params.temperature, c.params.max_tokens)
        for r, c in zip(script.roles, model.calls, strict=True)
    ]
    assert params == [
        ("act", 0.5, 77),
        ("reflect", 0.1, 33),
        ("act", 0.8, 77),
        ("reflect", 0.1, 33),
        ("act", 1.0, 77),
        ("reflect", 0.1, 33),
        ("act", 1.0, 77),
    ]


async def test_refuse_repeats_resamples_with_the_tried_answers_listed(tmp_path: Path) -> None:
    script = scripted(act=[WRONG, "Again 6. The answer is 6.", "Then 7. The answer is 7."])
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_trials": 2, "refuse_repeats": True, "resample_tries": 2},
    )
    assert script.roles == ["act", "reflect", "act", "act"]
    first, _, repeat, resample = prompts(model)
    assert "already tried" not in first and "already tried" not in repeat
    assert "These answers were already tried and are wrong" in resample
    assert "- 6\n" in resample
    assert resample.endswith(first)
    seeds = [c.params.seed for c in model.calls]
    assert len(set(seeds)) == 4  # the resample is a new draw, not a replay

    a0, a1 = of_role(rows, "generator")
    [refused] = of_role(rows, "refused")
    assert (refused["content"], refused["answer"]) == ("Again 6. The answer is 6.", "6")
    assert (refused["parent_id"], refused["depth"], refused["round"]) == (a0["node_id"], 1, 1)
    assert (a1["parent_id"], a1["answer"]) == (a0["node_id"], "7")
    # A refused draft is not verified (its answer already was).
    in_loop = {v["node_id"] for v in rows["verdicts"] if v["stage"] == "in_loop"}
    assert in_loop == {a0["node_id"], a1["node_id"]}
    assert rows["tasks"][0]["stop_reason"] == "max_trials"


async def test_refuse_repeats_keeps_the_last_resample_even_if_repeated(tmp_path: Path) -> None:
    script = scripted(act=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_trials": 3, "refuse_repeats": True, "resample_tries": 1},
    )
    assert script.roles == ["act", "reflect", "act", "act", "reflect", "act", "act"]
    roles = [n["role"] for n in rows["nodes"]]
    assert roles.count("refused") == 2 and roles.count("generator") == 3
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"]) == ("max_trials", 2)


async def test_repeats_are_accepted_by_default(tmp_path: Path) -> None:
    script = scripted(act=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_trials": 2})
    assert script.roles == ["act", "reflect", "act"]
    assert not any("already tried" in p for p in prompts(model))
    assert [n["role"] for n in rows["nodes"]].count("refused") == 0


# -- budgets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("calls", "roles", "final_round"),
    [
        (1, ["act"], 0),
        (2, ["act", "reflect"], 0),
        (3, ["act", "reflect", "act"], 1),
    ],
)
async def test_call_budget_stops_with_the_best_attempt_so_far(
    tmp_path: Path, calls: int, roles: list[str], final_round: int
) -> None:
    script = scripted(act=["The answer is 6.", "The answer is 7."])
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_trials": 5},
        budget=BudgetLimits(calls=calls),
    )
    assert script.roles == roles
    [task] = rows["tasks"]
    assert (task["status"], task["error"], task["calls"]) == ("done", None, calls)
    assert (
        task["stop_reason"].startswith("budget")
        and f"call budget of {calls}" in task["stop_reason"]
    )
    [final] = finals(rows)
    assert (final["role"], final["round"]) == ("generator", final_round)
    assert task["final_node_id"] == final["node_id"]


async def test_budget_during_a_resample_keeps_the_refused_node(tmp_path: Path) -> None:
    script = scripted(act=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_trials": 3, "refuse_repeats": True},
        budget=BudgetLimits(calls=3),
    )
    assert script.roles == ["act", "reflect", "act"]
    [task] = rows["tasks"]
    assert task["stop_reason"].startswith("budget")
    assert sorted(n["role"] for n in rows["nodes"]) == ["generator", "reflector", "refused"]
    [final] = finals(rows)
    assert (final["role"], final["round"]) == ("generator", 0)


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"max_trials": 0},
            "reflexion option max_trials: Input should be greater than or equal to 1",
        ),
        ({"max_trials": 21}, "max_trials: Input should be less than or equal to 20"),
        ({"memory_size": 0}, "memory_size: Input should be greater than or equal to 1"),
        ({"temperature_step": -0.1}, "temperature_step"),
        ({"resample_tries": 11}, "resample_tries"),
        ({"temperature": 1.5, "max_temperature": 1.0}, "must not exceed max_temperature"),
        ({"memory": 3}, "memory: Extra inputs are not permitted"),
    ],
)
async def test_bad_options_are_one_line_user_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    model = ScriptedModel(scripted(act=RIGHT))
    msg = await user_error(run_loop(tmp_path, model, one_task(tmp_path), options=options))
    assert message in msg and "\n" not in msg
    assert model.calls == []


@pytest.mark.parametrize("max_trials", [1, 20])
async def test_no_recursion_error_at_max_trials(tmp_path: Path, max_trials: int) -> None:
    model = ScriptedModel(scripted(act=WRONG))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_trials": max_trials, "refuse_repeats": True, "resample_tries": 10},
    )
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["rounds"]) == ("max_trials", max_trials - 1)


# -- determinism and resume ---------------------------------------------------------------------


def _content_reply(call: ModelCall) -> str:
    """A deterministic reply that depends only on what was asked (never on call order)."""
    h = sum(last_user(call.messages).encode()) % 97
    if call.params.role == "reflector":
        return f"Lesson #{h}: recheck the sum."
    return f"Working ({h}). The answer is {h % 3 + 100}."


async def test_same_seed_same_trace_different_seed_different(tmp_path: Path) -> None:
    r1, r2, r3 = await seeded_runs(
        run_loop,
        tmp_path,
        "builtin:arithmetic?seed=3&n=3",
        [11, 11, 12],
        [ScriptedModel(_content_reply) for _ in range(3)],
        concurrency=2,
        options={"max_trials": 3, "refuse_repeats": True, "temperature_step": 0.2},
    )

    def tree(rows: Rows) -> list[tuple[Any, ...]]:
        return sorted(
            (n["task_id"], n["role"], n["depth"], n["round"], n["content"]) for n in rows["nodes"]
        )

    assert call_key(r1) == call_key(r2) and tree(r1) == tree(r2)
    assert [t["final_answer"] for t in r1["tasks"]] == [t["final_answer"] for t in r2["tasks"]]
    seeds1 = [c["seed"] for c in r1["calls"]]
    assert len(set(seeds1)) == len(seeds1)
    assert not set(seeds1) & {c["seed"] for c in r3["calls"]}


async def test_resume_does_not_redo_finished_tasks(tmp_path: Path) -> None:
    spec = "builtin:arithmetic?seed=1&n=2"
    model = ScriptedModel(scripted(act="The answer is -12345."))
    cfg = run_loop.config(tmp_path, model, spec, run_name="rx", options={"max_trials": 2})
    first = await run(cfg)
    assert first.summary["done"] == 2
    n_calls = len(model.calls)
    assert n_calls == 2 * 3

    again = await run(cfg.model_copy(update={"resume": True}))
    assert len(model.calls) == n_calls
    assert again.run_id == first.run_id and again.progress.skipped == 2
    rows = read_rows(cfg.db, first.run_id)
    assert len(rows["tasks"]) == 2 and len(rows["calls"]) == n_calls


# -- code tasks ----------------------------------------------------------------------------------


async def test_code_task_lesson_from_the_failing_test(tmp_path: Path) -> None:
    skip_without_bwrap()
    script = scripted(act=[CHATTY_WRONG_CODE, RIGHT_CODE], reflect="LESSON: add, do not subtract.")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, CODE_SPEC)

    assert script.roles == ["act", "reflect", "act"]
    trial0, reflector, trial1 = prompts(model)
    assert f"Test result: {FIRST_FAILURE}" in reflector
    assert "return a - b" in reflector and "```python" in reflector
    assert "Here is" not in reflector  # the reflector sees the extracted program
    assert "LESSON: add, do not subtract." in trial1 and trial1.endswith(trial0)
    assert [c.params.max_tokens for c in model.calls] == [384, 96, 384]
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["graded"]) == ("verified", True)


# -- the real embedded model ---------------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_reflexion_on_the_local_model(tmp_path: Path) -> None:
    db = str(tmp_path / "run.duckdb")
    cfg = RunConfig(
        loop="reflexion",
        tasks="builtin:arithmetic?seed=5&n=2",
        db=db,
        options={"max_trials": 2, "max_tokens": 48, "reflector_max_tokens": 24},
    )
    result = await run(cfg)
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    rows = read_rows(db, result.run_id)
    for t in rows["tasks"]:
        assert t["stop_reason"] in {"verified", "max_trials"}
        assert t["verdict"] is not None  # the model's own check decided each trial
        nodes = [n for n in rows["nodes"] if n["task_id"] == t["task_id"]]
        attempts = [n for n in nodes if n["role"] == "generator"]
        lessons = [n for n in nodes if n["role"] == "reflector"]
        assert len(attempts) == t["rounds"] + 1 and len(lessons) == t["rounds"]
        assert sum(n["is_final"] for n in nodes) == 1
    lesson_calls = [c for c in rows["calls"] if c["role"] == "reflector"]
    for c in lesson_calls:  # the next trial of that task carries the lesson
        nxt = [
            d
            for d in rows["calls"]
            if d["task_id"] == c["task_id"]
            and d["role"] == "generator"
            and d["round"] == c["round"] + 1
        ]
        assert (
            nxt and " ".join(c["output"].split()) in json.loads(nxt[0]["messages"])[-1]["content"]
        )
