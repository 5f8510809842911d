"""Custom graphs from node factories: traced, budgeted, resumable and runnable by name."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from loop_testkit import LoopRunner, Rows, math_task, write_jsonl
from loopwright.loops import Context, LoopSpec, ModelCall, ScriptedModel, loop
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunResult
from loopwright.loops.graphs import get_loop, loop_names
from loopwright.loops.graphs.custom import (
    CandidatesState,
    make_generate,
    make_refine,
    make_verify,
    until_verified,
)
from loopwright.loops.models.budget import BudgetLimits

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Ana has 3 bags with 2 coins in each bag. How many coins are there in total?"


def build() -> Any:
    g = StateGraph(CandidatesState, context_schema=Context)
    g.add_node("generate", make_generate(n=2))
    g.add_node("verify", make_verify())
    g.add_node("refine", make_refine())
    g.add_edge(START, "generate")
    g.add_edge("generate", "verify")
    g.add_conditional_edges("verify", until_verified(max_rounds=2), ["refine", END])
    g.add_edge("refine", "verify")
    return g


SPEC: LoopSpec[Any] = loop(graph=True, name="test-gen-refine", description="test loop")(build)


def scripted(drafts: Sequence[str], refinements: Sequence[str]) -> ScriptedModel:
    """Drafts come from ``drafts`` in order, refinements from ``refinements`` (the role is
    the call's own)."""
    replies = {"generator": drafts, "refiner": refinements}
    seen: Counter[str] = Counter()

    def reply(call: ModelCall) -> str:
        role = str(call.params.role)
        seen[role] += 1
        return replies[role][seen[role] - 1]

    return ScriptedModel(reply)


def prompts_of(model: ScriptedModel, role: str) -> list[str]:
    """The last user message of each call ``model`` got in ``role``."""
    return [str(c.messages[-1]["content"]) for c in model.calls if c.params.role == role]


run_loop = LoopRunner("test-gen-refine")


async def run_it(tmp_path: Path, model: ScriptedModel, **cfg: Any) -> tuple[RunResult, Rows]:
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [math_task(prompt=QUESTION, reference="6")])
    return await run_loop(tmp_path, model, tasks, **cfg)


async def test_custom_loop_refines_with_verifier_feedback_until_verified(tmp_path: Path) -> None:
    model = scripted(
        ["So 5. The answer is 5.", "So 8. The answer is 8."], ["3 * 2 = 6. The answer is 6."]
    )
    _, rows = await run_it(tmp_path, model)

    [task] = rows["tasks"]
    assert task["status"] == "done" and task["stop_reason"] == "verified"
    assert task["graded"] is True and task["final_answer"] == "6"
    nodes = {n["node_id"]: n for n in rows["nodes"]}
    drafts = [n for n in rows["nodes"] if n["role"] == "generator"]
    [refined] = [n for n in rows["nodes"] if n["role"] == "refiner"]
    assert len(drafts) == 2 and all(d["parent_id"] is None for d in drafts)
    assert nodes[refined["parent_id"]]["role"] == "generator"  # revises a failed draft
    assert refined["is_final"] and refined["depth"] == 1 and refined["round"] == 1
    # the refine prompt carries the verifier's feedback about the draft it revises
    [refine_prompt] = prompts_of(model, "refiner")
    assert "Previous answer:" in refine_prompt and "does not match" in refine_prompt
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert len(in_loop) == 3 and sum(v["passed"] for v in in_loop) == 1
    assert {v["verifier"] for v in in_loop} == {"oracle"}
    # both drafts came from one request with n=2
    assert len({c["request_id"] for c in rows["calls"] if c["role"] == "generator"}) == 1


async def test_custom_loop_stops_at_max_rounds_with_best_so_far(tmp_path: Path) -> None:
    wrong = ["The answer is 5.", "The answer is 7."]
    model = scripted(wrong, ["The answer is 9.", "The answer is 10."])
    _, rows = await run_it(tmp_path, model)
    [task] = rows["tasks"]
    assert task["stop_reason"] == "done" and task["rounds"] == 2
    assert sum(n["role"] == "refiner" for n in rows["nodes"]) == 2
    assert sum(n["is_final"] for n in rows["nodes"]) == 1


async def test_custom_loop_budget_ends_cleanly(tmp_path: Path) -> None:
    model = scripted(["The answer is 5.", "The answer is 7."], ["The answer is 6."])
    _, rows = await run_it(tmp_path, model, budget=BudgetLimits(calls=2))
    [task] = rows["tasks"]
    assert task["status"] == "done"
    assert task["stop_reason"].startswith("budget:")
    assert task["calls"] == 2 and not any(n["role"] == "refiner" for n in rows["nodes"])
    assert sum(n["is_final"] for n in rows["nodes"]) == 1  # best so far is still the answer


async def test_custom_loop_resumes_without_redoing_finished_tasks(tmp_path: Path) -> None:
    model = scripted(["The answer is 6.", "The answer is 6."], [])
    first, _ = await run_it(tmp_path, model, run_name="r1")
    calls_after_first = len(model.calls)
    second, rows = await run_it(tmp_path, model, run_name="r1", resume=True)
    assert second.run_id == first.run_id
    assert len(model.calls) == calls_after_first
    assert len(rows["tasks"]) == 1


def test_registered_loop_is_listed_and_builtins_are_protected() -> None:
    assert "test-gen-refine" in loop_names()
    assert get_loop("test-gen-refine") is SPEC
    with pytest.raises(UserError, match="built-in"):
        loop(graph=True, name="self-refine")(build)
    with pytest.raises(UserError, match="did you mean 'test-gen-refine'"):
        get_loop("test-gen-refin")


def test_example_plugin_loads_from_the_cli() -> None:
    cli = str(Path(sys.executable).with_name("loopwright"))
    example = ROOT / "examples" / "custom_loop.py"
    r = subprocess.run(
        [cli, "loops", "--plugin", str(example)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "generate-refine" in r.stdout and "self-refine" in r.stdout
    r = subprocess.run(
        [cli, "loops", "--plugin", "missing_file.py"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "missing_file.py" in r.stderr and "Traceback" not in r.stderr
