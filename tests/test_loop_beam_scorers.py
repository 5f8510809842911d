"""Beam search parts: the pure pruning rule, step parsing, and the rollout and PRM scorers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from beam_script import Script, by_content, kind_of, run_beam
from loop_testkit import one_task
from loopwright.loops.graphs.beam import best_terminal, select_beams
from loopwright.loops.graphs.beam_score import Partial, has_final_answer, judge_value, split_step
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import Task

# -- the pure pruning rule ---------------------------------------------------------------------


def part(name: str, value: float | None, *, tree: int = 0, terminal: bool = False) -> Partial:
    return Partial(
        node_id=name, parent_id=None, text=name, answer=None, passed=None, score=None,
        feedback=None, logprob=None, round=0, depth=0, value=value, terminal=terminal,
        tree=tree, step=name,
    )  # fmt: skip


def test_select_beams_keeps_the_top_k_open_children_in_order() -> None:
    kids = [
        part("a", 0.2),
        part("b", 0.9),
        part("c", None),
        part("d", 0.95, terminal=True),  # finished: never kept open
        part("e", 0.5),
        part("f", 0.9),  # ties with b: the earlier child ranks first
    ]
    names = lambda ps: [p["node_id"] for p in ps]  # noqa: E731
    assert names(select_beams(kids, 1, "beam")) == ["b"]
    assert names(select_beams(kids, 2, "beam")) == ["b", "f"]
    assert names(select_beams(kids, 3, "beam")) == ["b", "e", "f"]
    assert names(select_beams(kids, 4, "beam")) == ["a", "b", "e", "f"]
    assert names(select_beams(kids, 9, "beam")) == ["a", "b", "c", "e", "f"]  # unscored last
    assert select_beams([part("x", 1.0, terminal=True)], 4, "beam") == []


def test_select_beams_dvts_keeps_the_best_child_of_each_subtree() -> None:
    kids = [
        part("a", 0.2, tree=0),
        part("b", 0.9, tree=0),
        part("c", 0.8, tree=1),
        part("d", 0.1, tree=1),
        part("e", 1.0, tree=2, terminal=True),
        part("f", 0.3, tree=2),
        part("g", 0.9, tree=3, terminal=True),
    ]
    assert [p["node_id"] for p in select_beams(kids, 4, "dvts")] == ["b", "c", "f"]
    # The shared top-2 would take both from the strongest subtrees instead.
    assert [p["node_id"] for p in select_beams(kids, 2, "beam")] == ["b", "c"]


def test_best_terminal_prefers_verified_then_score_then_value() -> None:
    a = {**part("a", 0.9), "passed": False, "score": 0.0}
    b = {**part("b", 0.1), "passed": True, "score": 1.0}
    c = {**part("c", 0.2), "passed": True, "score": 1.0}
    d = {**part("d", 0.3), "passed": False, "score": 0.4}
    assert best_terminal([a, b, c, d])["node_id"] == "c"
    assert best_terminal([a, d])["node_id"] == "d"
    assert best_terminal([part("x", 0.5), part("y", 0.5)])["node_id"] == "x"
    assert best_terminal([]) is None


def test_step_splitting_and_value_parsing() -> None:
    assert split_step("2 + 3 = 5", "\n") == "2 + 3 = 5"
    assert split_step("\n\n2 + 3 = 5\nThe answer is 5.", "\n") == "2 + 3 = 5"  # stop ignored
    assert split_step("a\nb\n\nc", "\n\n") == "a\nb"
    assert split_step("  x = 1   ", "\n") == "  x = 1"  # indentation kept for code
    assert split_step("", "\n") == ""
    assert judge_value("Score: 10") == 1.0 and judge_value("Score: 1") == 0.0
    assert judge_value("Score: 4/10") == pytest.approx(1 / 3)
    assert judge_value("looks fine") is None and judge_value("Score: 11") is None


def test_a_step_is_final_only_with_an_explicit_answer() -> None:
    math = Task(id="m", prompt="2 + 3?", kind="math")
    final = lambda step, content="": has_final_answer(math, step, content or step)  # noqa: E731
    assert final("The answer is 5.") and final("So the final answer is 5")
    assert final("\\boxed{5}") and final("#### 5")
    assert not final("2 + 3 = 5")  # a number alone is a step, not an answer
    code = Task(id="c", prompt="def f():\n", kind="code", entry_point="f")
    opened = "```python\ndef f():"
    assert not has_final_answer(code, "def f():", opened)
    assert has_final_answer(code, "```", opened + "\n    return 1\n```")


# -- scorers ------------------------------------------------------------------------------------


async def test_rollout_scorer_scores_by_verified_completions(tmp_path: Path) -> None:
    script = Script(
        steps={"": ["A", "B"], "A": ["The answer is 5.", "The answer is 9."]},
        rollouts={
            "A": ["so 2 + 3 = 5. The answer is 5.", "The answer is 6."],
            "B": ["The answer is 6.", "The answer is 7."],
        },
    )
    model = ScriptedModel(script)
    opts = {"beam_width": 1, "expansions": 2, "max_depth": 2, "scorer": "rollout",
            "rollouts": 2, "rollout_max_tokens": 50}  # fmt: skip
    _, rows = await run_beam(tmp_path, model, one_task(tmp_path), options=opts)

    steps = by_content(rows["nodes"])
    assert steps["A"]["value"] == 0.5 and steps["B"]["value"] == 0.0
    rolls = by_content(rows["nodes"], "rollout")
    assert set(rolls) == {
        "A\nso 2 + 3 = 5. The answer is 5.", "A\nThe answer is 6.",
        "B\nThe answer is 6.", "B\nThe answer is 7.",
    }  # fmt: skip
    for content, n in rolls.items():
        assert n["parent_id"] == steps[content[0]]["node_id"] and n["depth"] == 1
        assert n["score"] == (1.0 if content.endswith("5.") else 0.0)
    checked = {x["node_id"] for x in rows["verdicts"] if x["stage"] == "in_loop"}
    assert {n["node_id"] for n in rolls.values()} <= checked
    # Only A is expanded; its first child verifies.
    assert {n["parent_id"] for n in steps.values() if n["depth"] == 1} == {steps["A"]["node_id"]}
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["final_answer"]) == ("verified", "5")
    roll_calls = [c for c in model.calls if kind_of(c) == "rollout"]
    # Two requests of n=2 (the scripted model logs each sample as a call).
    assert [(c.n, c.params.max_tokens) for c in roll_calls] == [(2, 50)] * 4
    assert all(c.params.stop is None for c in roll_calls)


# -- PRM over HTTP -----------------------------------------------------------------------------


@pytest.fixture
def prm_server() -> Iterator[tuple[str, list[str]]]:
    """A vLLM-style /pooling endpoint: the reward is looked up from the scored answer."""
    rewards = {"S1": -1.0, "S2": 2.5, "S3": 0.5, "S4": 1.5}
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = body["messages"][-1]["content"]
            seen.append(answer)
            out = json.dumps({"data": [{"data": [[0.0], [rewards[answer]]]}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


async def test_prm_scorer_ranks_by_reward(tmp_path: Path, prm_server: Any) -> None:
    url, seen = prm_server
    script = Script(
        steps={
            "": ["S1", "S2", "S3", "S4"],
            "S2": ["The answer is 5.", "The answer is 6."],
            "S4": ["The answer is 4.", "The answer is 7."],
        }
    )
    model = ScriptedModel(script)
    opts = {"beam_width": 2, "expansions": 2, "max_depth": 3, "scorer": "prm",
            "prm_api_base": url, "prm_model": "prm-test"}  # fmt: skip
    _, rows = await run_beam(tmp_path, model, one_task(tmp_path), options=opts)

    assert sorted(seen) == ["S1", "S2", "S3", "S4"]  # terminals are verified, not scored
    assert all(k == "step" for k in script.kinds)
    steps = by_content(rows["nodes"])
    assert {c: steps[c]["value"] for c in ("S1", "S2", "S3", "S4")} == {
        "S1": -1.0,
        "S2": 2.5,
        "S3": 0.5,
        "S4": 1.5,
    }
    ids = {n["node_id"]: c for c, n in steps.items()}
    assert {ids[n["parent_id"]] for n in steps.values() if n["depth"] == 1} == {"S2", "S4"}
    [task] = rows["tasks"]
    # The budget counts PRM requests as calls: 8 model samples + 4 rewards.
    assert (task["stop_reason"], task["final_answer"], task["calls"]) == ("verified", "5", 12)
