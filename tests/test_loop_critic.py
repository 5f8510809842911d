"""CRITIC control flow through the runner with the scripted model (plus one real-model run).

The scripted model tells generate, critique and refine prompts apart by the last user message
(see loops/prompts/critic.toml).
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
    SELF_REFINE_STEPS,
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
    write_jsonl,
)
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.tools.search import LocalIndex


def scripted(generate: Reply, refine: Reply = WRONG, critique: Reply = "CRIT") -> RoleScript:
    return RoleScript(SELF_REFINE_STEPS, generate=generate, refine=refine, critique=critique)


def poem_task(tmp_path: Path) -> str:
    return text_task(tmp_path, "Who wrote the poem about apples?")


@pytest.fixture
def index(tmp_path: Path) -> str:
    docs = [
        {"id": "fruit", "title": "Apples", "text": "An apple a day. Apples grow on trees."},
        {"id": "poem", "title": "Poem", "text": "The apple poem was written by Ann Lee."},
        {"id": "other", "title": "Boats", "text": "Boats float on water."},
    ]
    src = write_jsonl(tmp_path / "corpus.jsonl", docs)
    path = tmp_path / "ix.db"
    LocalIndex.build(src, path).close()
    return str(path)


run_loop = LoopRunner("critic", {"max_rounds": 2})


def drafts(rows: Rows) -> list[dict[str, Any]]:
    return of_role(rows, "generator", "refiner")


# -- stopping rules and the tree ----------------------------------------------------------------


async def test_correct_first_draft_stops_verified_after_one_call(tmp_path: Path) -> None:
    script = scripted(generate=RIGHT)
    model = ScriptedModel(script)
    result, rows = await run_loop(tmp_path, model, one_task(tmp_path))
    assert script.roles == ["generate"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["graded"]) == ("verified", 0, True)
    [node] = rows["nodes"]
    assert (node["role"], node["is_final"], node["score"]) == ("generator", True, 1.0)
    assert sorted(v["stage"] for v in rows["verdicts"]) == ["graded", "in_loop"]
    assert result.summary["stop_reasons"] == {"verified": 1}


async def test_always_wrong_refines_from_the_checker_verdict(tmp_path: Path) -> None:
    script = scripted(
        generate="DRAFT-0. The answer is 6.",
        refine=["DRAFT-1. The answer is 7.", "DRAFT-2. The answer is 8."],
    )
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 2})

    assert script.roles == ["generate", "refine", "refine"]
    gen, ref1, ref2 = prompts(model)
    assert QUESTION in gen and 'End with the line "The answer is N."' in gen
    # The refiner sees the latest draft and the checker's verdict on it, nothing older.
    assert "DRAFT-0. The answer is 6." in ref1
    assert f"Answer checker: {MISMATCH.format(6)}" in ref1
    assert QUESTION in ref1 and ref1.endswith("where N is a number.")
    assert "Search results" not in ref1 and "Critique:" not in ref1
    assert "DRAFT-1. The answer is 7." in ref2 and f"Answer checker: {MISMATCH.format(7)}" in ref2
    assert "DRAFT-0" not in ref2 and MISMATCH.format(6) not in ref2

    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["calls"]) == ("max_rounds", 2, 3)
    d0, d1, d2 = drafts(rows)
    assert len(rows["nodes"]) == 3
    assert [(d["role"], d["parent_id"], d["depth"], d["round"]) for d in (d0, d1, d2)] == [
        ("generator", None, 0, 0),
        ("refiner", d0["node_id"], 1, 1),
        ("refiner", d1["node_id"], 2, 2),
    ]
    # A verdict row for every draft, carrying the feedback the refiner saw.
    in_loop = {v["node_id"]: v for v in rows["verdicts"] if v["stage"] == "in_loop"}
    assert set(in_loop) == {d["node_id"] for d in (d0, d1, d2)}
    assert in_loop[d0["node_id"]]["feedback"] == MISMATCH.format(6)
    assert [n["node_id"] for n in rows["nodes"] if n["is_final"]] == [d2["node_id"]]
    assert task["final_answer"] == "8"


async def test_wrong_then_right_stops_verified(tmp_path: Path) -> None:
    script = scripted(generate=WRONG, refine=RIGHT)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 3})
    assert script.roles == ["generate", "refine"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["graded"]) == ("verified", 1, True)
    [final] = finals(rows)
    assert (final["role"], final["content"]) == ("refiner", RIGHT)


async def test_max_rounds_zero_only_drafts(tmp_path: Path) -> None:
    script = scripted(generate=WRONG)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"max_rounds": 0})
    assert script.roles == ["generate"]
    assert rows["tasks"][0]["stop_reason"] == "max_rounds"


async def test_text_task_without_tools_stops_after_the_draft(tmp_path: Path) -> None:
    script = scripted(generate="Someone.")
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, poem_task(tmp_path))
    assert script.roles == ["generate"]
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["graded"]) == ("no_verifier", None)
    assert rows["verdicts"] == []


# -- search evidence -----------------------------------------------------------------------------


async def test_search_evidence_reaches_every_refine_prompt(tmp_path: Path, index: str) -> None:
    with LocalIndex(index) as ix:
        expected = ix.evidence(QUESTION, 2, 60)
    assert "[fruit#0] Apples" in expected and "Boats" not in expected
    script = scripted(generate=WRONG, refine=["The answer is 7.", RIGHT])
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 3, "search_index": index, "search_k": 2, "evidence_chars": 60},
    )
    assert script.roles == ["generate", "refine", "refine"]
    _, ref1, ref2 = prompts(model)
    for ref in (ref1, ref2):
        assert f"Search results for the question (cite them if they help):\n{expected}" in ref
    assert f"Answer checker: {MISMATCH.format(6)}" in ref1
    assert f"Answer checker: {MISMATCH.format(7)}" in ref2

    # Searched once (the query is the question), recorded as a node off the first failed draft.
    d0, d1, d2 = drafts(rows)
    assert (d1["parent_id"], d2["parent_id"]) == (d0["node_id"], d1["node_id"])
    [ev] = [n for n in rows["nodes"] if n["role"] == "evidence"]
    assert (ev["parent_id"], ev["depth"], ev["round"], ev["content"]) == (
        d0["node_id"],
        1,
        0,
        expected,
    )
    assert rows["tasks"][0]["stop_reason"] == "verified"
    assert rows["tasks"][0]["calls"] == 3


async def test_no_search_when_the_first_draft_passes(tmp_path: Path, index: str) -> None:
    model = ScriptedModel(scripted(generate=RIGHT))
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"search_index": index})
    assert [n["role"] for n in rows["nodes"]] == ["generator"]


async def test_text_task_with_search_refines_from_evidence(tmp_path: Path, index: str) -> None:
    script = scripted(generate="Someone.", refine=["Ann?", "Ann Lee."])
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path, model, poem_task(tmp_path), options={"max_rounds": 2, "search_index": index}
    )
    assert script.roles == ["generate", "refine", "refine"]
    ref1 = prompts(model)[1]
    assert "Checker: none (this task cannot be checked automatically)." in ref1
    assert "Ann Lee" in ref1 and "[poem#0] Poem" in ref1
    assert "The answer is N" not in ref1  # text flavour
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"]) == ("max_rounds", 2)
    assert rows["verdicts"] == []
    [final] = finals(rows)
    assert final["content"] == "Ann Lee."


async def test_missing_search_index_is_a_user_error(tmp_path: Path) -> None:
    model = ScriptedModel(scripted(generate=RIGHT))
    missing = str(tmp_path / "nope.db")
    msg = await user_error(
        run_loop(tmp_path, model, one_task(tmp_path), options={"search_index": missing})
    )
    assert f"no search index at {missing}" in msg and "loopwright search index" in msg
    assert "\n" not in msg and model.calls == []


# -- the optional critique ----------------------------------------------------------------------


async def test_critique_reads_the_tool_output_and_feeds_the_refiner(
    tmp_path: Path, index: str
) -> None:
    script = scripted(
        generate=WRONG,
        critique=["CRIT-A: 2 + 3 is 5.", "CRIT-B: still wrong."],
        refine="The answer is 7.",
    )
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={
            "max_rounds": 2,
            "critique": True,
            "search_index": index,
            "critic_temperature": 0.1,
            "critic_max_tokens": 33,
        },
    )
    assert script.roles == ["generate", "critique", "refine", "critique", "refine"]
    _, crit0, ref1, crit1, ref2 = prompts(model)
    assert WRONG in crit0 and f"Answer checker: {MISMATCH.format(6)}" in crit0
    assert "[fruit#0] Apples" in crit0
    assert "Critique:\nCRIT-A: 2 + 3 is 5." in ref1
    assert "The answer is 7." in crit1 and WRONG not in crit1
    assert "CRIT-B: still wrong." in ref2 and "CRIT-A" not in ref2
    params = [(c.params.temperature, c.params.max_tokens) for c in model.calls]
    assert params == [(0.7, 256), (0.1, 33), (0.7, 256), (0.1, 33), (0.7, 256)]

    d0, d1, _ = drafts(rows)
    c0, c1 = of_role(rows, "critic")
    assert (c0["parent_id"], c0["depth"], c0["round"]) == (d0["node_id"], 1, 0)
    assert (c1["parent_id"], c1["depth"], c1["round"]) == (d1["node_id"], 2, 1)
    in_loop = {v["node_id"] for v in rows["verdicts"] if v["stage"] == "in_loop"}
    assert in_loop == {d["node_id"] for d in drafts(rows)}


# -- budgets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("calls", "final_round"), [(1, 0), (2, 1)])
async def test_call_budget_returns_the_best_draft_so_far(
    tmp_path: Path, calls: int, final_round: int
) -> None:
    script = scripted(generate=WRONG, refine="The answer is 7.")
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": 5},
        budget=BudgetLimits(calls=calls),
    )
    assert len(script.roles) == calls
    [task] = rows["tasks"]
    assert (task["status"], task["error"], task["calls"]) == ("done", None, calls)
    assert f"call budget of {calls}" in task["stop_reason"]
    assert task["stop_reason"].startswith("budget")
    [final] = finals(rows)
    assert final["round"] == final_round == task["rounds"]


async def test_budget_during_a_critique_keeps_the_draft(tmp_path: Path) -> None:
    model = ScriptedModel(scripted(generate=WRONG))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"critique": True},
        budget=BudgetLimits(calls=1),
    )
    [task] = rows["tasks"]
    assert task["stop_reason"].startswith("budget") and task["final_answer"] == "6"


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_rounds": -1}, "critic option max_rounds: Input should be greater than or equal"),
        ({"search_k": 0}, "search_k: Input should be greater than or equal to 1"),
        ({"evidence_chars": 10}, "evidence_chars"),
        ({"temperature": 3}, "temperature: Input should be less than or equal to 2"),
        ({"critic": True}, "critic: Extra inputs are not permitted"),
    ],
)
async def test_bad_options_are_one_line_user_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    model = ScriptedModel(scripted(generate=RIGHT))
    msg = await user_error(run_loop(tmp_path, model, one_task(tmp_path), options=options))
    assert message in msg and "\n" not in msg


@pytest.mark.parametrize("max_rounds", [1, 50])
async def test_no_recursion_error_at_max_rounds(
    tmp_path: Path, index: str, max_rounds: int
) -> None:
    model = ScriptedModel(scripted(generate=WRONG))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"max_rounds": max_rounds, "critique": True, "search_index": index},
    )
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["rounds"]) == ("max_rounds", max_rounds)
    assert len(model.calls) == 1 + 2 * max_rounds


# -- determinism and resume ---------------------------------------------------------------------


def _content_reply(call: ModelCall) -> str:
    """A deterministic reply that depends only on what was asked (never on call order)."""
    h = sum(last_user(call.messages).encode()) % 97
    return f"Working ({SELF_REFINE_STEPS[str(call.params.role)]} {h}). The answer is {h + 1000}."


async def test_same_seed_same_trace_different_seed_different(tmp_path: Path) -> None:
    r1, r2, r3 = await seeded_runs(
        run_loop,
        tmp_path,
        "builtin:arithmetic?seed=3&n=3",
        [11, 11, 12],
        [ScriptedModel(_content_reply) for _ in range(3)],
        concurrency=2,
        options={"max_rounds": 2, "critique": True},
    )

    assert len(r1["calls"]) == 3 * 5
    assert call_key(r1) == call_key(r2)
    seeds1 = [c["seed"] for c in r1["calls"]]
    assert len(set(seeds1)) == len(seeds1)
    assert not set(seeds1) & {c["seed"] for c in r3["calls"]}


async def test_resume_does_not_redo_finished_tasks(tmp_path: Path) -> None:
    model = ScriptedModel(scripted(generate="The answer is -12345."))
    cfg = run_loop.config(
        tmp_path, model, "builtin:arithmetic?seed=1&n=2", run_name="cr", options={"max_rounds": 1}
    )
    first = await run(cfg)
    assert first.summary["done"] == 2 and len(model.calls) == 4
    again = await run(cfg.model_copy(update={"resume": True}))
    assert len(model.calls) == 4
    assert again.run_id == first.run_id and again.progress.skipped == 2
    assert len(read_rows(cfg.db, first.run_id)["calls"]) == 4


# -- code tasks ----------------------------------------------------------------------------------


async def test_code_task_refines_from_the_failing_assertion(tmp_path: Path) -> None:
    skip_without_bwrap()
    script = scripted(generate=CHATTY_WRONG_CODE, refine=RIGHT_CODE)
    model = ScriptedModel(script)
    _, rows = await run_loop(tmp_path, model, CODE_SPEC)
    assert script.roles == ["generate", "refine"]
    ref = prompts(model)[1]
    assert f"Test result: {FIRST_FAILURE}" in ref
    assert "```python\ndef add_numbers(a: int, b: int) -> int:\n    return a - b\n```" in ref
    assert "Here is" not in ref  # the refiner sees the extracted program
    assert [c.params.max_tokens for c in model.calls] == [384, 384]
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["stop_reason"], task["graded"]) == ("verified", True)


# -- the real embedded model ---------------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_critic_on_the_local_model(tmp_path: Path) -> None:
    db = str(tmp_path / "run.duckdb")
    cfg = RunConfig(
        loop="critic",
        tasks="builtin:arithmetic?seed=5&n=2",
        db=db,
        options={"max_rounds": 1, "max_tokens": 48},
    )
    result = await run(cfg)
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    rows = read_rows(db, result.run_id)
    for t in rows["tasks"]:
        assert t["stop_reason"] in {"verified", "max_rounds"}
        assert t["verdict"] is not None  # the self-check judged the returned draft
        nodes = [n for n in rows["nodes"] if n["task_id"] == t["task_id"]]
        assert len(nodes) == t["rounds"] + 1 and sum(n["is_final"] for n in nodes) == 1
        verdicts = [v for v in rows["verdicts"] if v["task_id"] == t["task_id"]]
        assert sum(v["stage"] == "in_loop" for v in verdicts) == len(nodes)
    for c in rows["calls"]:
        if c["role"] == "refiner":
            assert "Answer checker: " in json.loads(c["messages"])[-1]["content"]
