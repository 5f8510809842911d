"""Best-of-n: rejection mode, budgets, the reward model, determinism, resume, the real model."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from best_of_n_helpers import MIXED, Script, final, gens, rate_by_number, run_loop, vote_record
from loop_testkit import (
    QUESTION,
    last_user,
    local_model,
    math_task,
    one_task,
    seeded_runs,
    write_jsonl,
)
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore

WRONG, RIGHT = "The answer is 6.", "The answer is 5."

# -- rejection sampling ------------------------------------------------------------------------


async def test_rejection_stops_at_the_first_verified_sample(tmp_path: Path) -> None:
    model = ScriptedModel(Script([WRONG, WRONG, WRONG, RIGHT, RIGHT]))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"n": 8, "rejection": True, "batch_size": 2, "selector": "majority"},
    )
    # Two requests of two samples; each request has its own seed.
    assert [c.n for c in model.calls] == [2, 2, 2, 2]
    assert len({c.params.seed for c in model.calls}) == 2
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["calls"], task["graded"]) == (
        "verified",
        2,
        4,
        True,
    )
    g = gens(rows)
    assert [(n["round"], n["depth"], n["parent_id"]) for n in g] == [
        (0, 0, None),
        (0, 0, None),
        (1, 0, None),
        (1, 0, None),
    ]
    assert final(rows)["node_id"] == g[3]["node_id"]
    rec = vote_record(rows)
    assert (rec["used"], rec["rejection"], rec["samples"], rec["requests"]) == (
        "rejection",
        True,
        4,
        2,
    )
    assert rec["votes"] == {"6": 3.0, "5": 1.0}
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(v["node_id"] for v in in_loop) == sorted(n["node_id"] for n in g)


async def test_rejection_without_a_pass_draws_n_then_selects(tmp_path: Path) -> None:
    model = ScriptedModel(Script([WRONG, "The answer is 7.", "The answer is 7."]))
    _, rows = await run_loop(
        tmp_path, model, one_task(tmp_path), options={"n": 5, "rejection": True, "batch_size": 2}
    )
    assert [c.n for c in model.calls] == [2, 2, 2, 2, 1]  # 2 + 2 + 1
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["final_answer"]) == (
        "selected: verifier",
        3,
        "7",
    )
    assert [n["round"] for n in gens(rows)] == [0, 0, 1, 1, 2]
    assert vote_record(rows)["note"] == "no sample passed: top score, then majority"


async def test_rejection_without_a_verifier_is_one_request(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED))
    _, rows = await run_loop(
        tmp_path, model, one_task(tmp_path, reference=None), options={"rejection": True}
    )
    assert {c.n for c in model.calls} == {8}
    assert vote_record(rows)["rejection"] is False
    assert rows["tasks"][0]["rounds"] == 1


async def test_many_rejection_rounds_never_hit_the_step_limit(tmp_path: Path) -> None:
    model = ScriptedModel(Script([WRONG]))
    _, rows = await run_loop(
        tmp_path, model, one_task(tmp_path), options={"n": 40, "rejection": True}
    )
    [task] = rows["tasks"]
    assert task["status"] == "done", task["error"]
    assert (task["rounds"], len(model.calls)) == (40, 40)


# -- budgets -------------------------------------------------------------------------------------


async def test_a_call_budget_below_n_draws_what_fits(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"selector": "majority"},
        budget=BudgetLimits(calls=5),
    )
    assert {c.n for c in model.calls} == {5}
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["error"] is None
    assert task["stop_reason"] == "budget: call budget of 5 spent"
    assert (task["calls"], task["rounds"], len(gens(rows))) == (5, 1, 5)
    # Best of what was drawn: 7 three times among the first five samples.
    assert final(rows)["content"] == "The answer is 7."
    assert vote_record(rows)["votes"] == {"5": 1.0, "7": 3.0}


async def test_rejection_budget_returns_the_best_so_far(tmp_path: Path) -> None:
    model = ScriptedModel(Script([WRONG, "The answer is 7.", "The answer is 7."]))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"n": 8, "rejection": True, "batch_size": 2},
        budget=BudgetLimits(calls=3),
    )
    assert [c.n for c in model.calls] == [2, 2, 1]
    [task] = rows["tasks"]
    assert task["stop_reason"] == "budget: call budget of 3 spent"
    assert (task["rounds"], task["calls"], task["final_answer"]) == (2, 3, "7")


async def test_token_budget_stops_rejection_between_requests(tmp_path: Path) -> None:
    model = ScriptedModel(Script([WRONG]), prompt_tokens_per_call=10)
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"n": 8, "rejection": True, "batch_size": 2},
        budget=BudgetLimits(tokens=20),
    )
    # Request 1: 10 prompt + 2 x 4 completion tokens = 18 < 20; request 2 brings 36 >= 20.
    [task] = rows["tasks"]
    assert task["stop_reason"] == "budget: token budget of 20 spent"
    assert (task["rounds"], task["total_tokens"], len(gens(rows))) == (2, 36, 4)
    assert task["final_answer"] == "6"


async def test_run_budget_spent_before_the_task_leaves_no_nodes(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "two.jsonl", [math_task("a"), math_task("b")])
    model = ScriptedModel(Script([RIGHT]))
    _, rows = await run_loop(
        tmp_path, model, tasks, concurrency=1, options={"n": 4}, run_budget=BudgetLimits(calls=4)
    )
    a, b = rows["tasks"]
    assert (a["stop_reason"], a["graded"]) == ("selected: verifier", True)
    assert b["stop_reason"] == "budget: call budget of 4 spent"
    assert (b["status"], b["calls"], b["final_node_id"], b["rounds"]) == ("done", 0, None, 0)
    assert {n["task_id"] for n in rows["nodes"]} == {"a"}


async def test_judge_budget_keeps_the_judged_samples(tmp_path: Path) -> None:
    replies = ["The answer is 3.", "The answer is 4.", "The answer is 9.", "The answer is 9."]
    model = ScriptedModel(Script(replies, rate=rate_by_number))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path, reference=None),
        options={"n": 4, "selector": "judge"},
        budget=BudgetLimits(calls=6),
    )
    [task] = rows["tasks"]
    assert task["stop_reason"] == "budget: call budget of 6 spent"
    assert task["calls"] == 6
    g = gens(rows)
    assert [n["value"] for n in g] == [2 / 9, 3 / 9, None, None]
    assert final(rows)["node_id"] == g[1]["node_id"]  # the best of the two judged


# -- reward model ----------------------------------------------------------------------------------


class _RewardServer(ThreadingHTTPServer):
    bodies: list[dict[str, Any]]


class _Reward(BaseHTTPRequestHandler):
    """vLLM-style /pooling: the reward is the last number in the scored answer (0 if none)."""

    server: _RewardServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append({"path": self.path, **body})
        nums = re.findall(r"\d+", body["messages"][-1]["content"])
        data = json.dumps({"data": [{"index": 0, "data": [float(nums[-1]) if nums else 0]}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def reward_server() -> Iterator[_RewardServer]:
    server = _RewardServer(("127.0.0.1", 0), _Reward)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("selector", ["reward", "weighted"])
async def test_reward_model_scores_every_sample(
    tmp_path: Path, reward_server: _RewardServer, selector: str
) -> None:
    replies = ["The answer is 3.", "The answer is 11.", "The answer is 3.", "The answer is 3."]
    model = ScriptedModel(Script(replies))
    base = f"http://127.0.0.1:{reward_server.server_port}/v1"
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={
            "n": 4,
            "selector": selector,
            "weight_by": "reward",
            "reward_api_base": base,
            "reward_model": "rm-1",
        },
    )
    assert len(reward_server.bodies) == 4
    assert {b["path"] for b in reward_server.bodies} == {"/pooling"}
    assert all(b["model"] == "rm-1" for b in reward_server.bodies)
    assert all(b["messages"][0]["content"] == QUESTION for b in reward_server.bodies)
    g = gens(rows)
    assert [n["value"] for n in g] == [3.0, 11.0, 3.0, 3.0]
    rewarded = [v for v in rows["verdicts"] if v["verifier"] == "reward-model"]
    assert sorted(v["node_id"] for v in rewarded) == sorted(n["node_id"] for n in g)
    [task] = rows["tasks"]
    assert task["calls"] == 8  # four samples, four reward requests
    if selector == "reward":
        assert task["final_answer"] == "11" and task["stop_reason"] == "selected: reward"
    else:  # sigmoid(11) ~ 1 loses to 3 x sigmoid(3) ~ 2.86
        rec = vote_record(rows)
        assert task["final_answer"] == "3" and rec["winner"] == "3"
        assert rec["weighted"]["3"] == pytest.approx(3 / (1 + 2.718281828459045**-3))


# -- determinism and resume --------------------------------------------------------------------------


async def test_same_seed_same_trace_other_seed_other_seeds(tmp_path: Path) -> None:
    r1, r2, r3 = await seeded_runs(
        run_loop,
        tmp_path,
        "builtin:arithmetic?seed=3&n=2",
        [7, 7, 8],
        [ScriptedModel(Script(MIXED)) for _ in range(3)],
        concurrency=1,
        options={"n": 4, "rejection": True, "batch_size": 2},
    )

    def key(rows: Any) -> list[tuple[Any, ...]]:
        return sorted(
            (c["task_id"], c["round"], c["seed"], c["sample_index"], c["messages"], c["output"])
            for c in rows["calls"]
        )

    assert key(r1) == key(r2)
    assert [n["content"] for n in r1["nodes"]] == [n["content"] for n in r2["nodes"]]
    assert [t["final_answer"] for t in r1["tasks"]] == [t["final_answer"] for t in r2["tasks"]]
    assert not {c["seed"] for c in r1["calls"]} & {c["seed"] for c in r3["calls"]}


async def test_resume_reruns_only_the_unfinished_task(tmp_path: Path) -> None:
    tasks = write_jsonl(
        tmp_path / "two.jsonl", [math_task("a"), math_task("b", "What is 2 + 2?", "4")]
    )

    def broken_on_b(call: ModelCall) -> str | Fault:
        return Fault("bad_request") if "2 + 2" in last_user(call.messages) else RIGHT

    cfg: dict[str, Any] = {"run_name": "r", "concurrency": 1, "options": {"n": 3}}
    first, rows1 = await run_loop(
        tmp_path, ScriptedModel(broken_on_b, name="bon-resume"), tasks, **cfg
    )
    assert [t["status"] for t in rows1["tasks"]] == ["done", "failed"]

    healed = ScriptedModel(Script(["The answer is 4."]), name="bon-resume")  # same model
    again, rows2 = await run_loop(tmp_path, healed, tasks, resume=True, **cfg)
    assert again.run_id == first.run_id
    assert len(healed.calls) == 3 and all("2 + 2" in last_user(c.messages) for c in healed.calls)
    assert [(t["status"], t["graded"]) for t in rows2["tasks"]] == [("done", True), ("done", True)]
    assert sorted(n["task_id"] for n in rows2["nodes"]) == ["a"] * 4 + ["b"] * 4  # 3 + vote each

    idle = ScriptedModel(Script([RIGHT]), name="bon-resume")
    await run_loop(tmp_path, idle, tasks, resume=True, **cfg)
    assert idle.calls == []


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.local_model
@local_model
async def test_local_model_weighted_by_logprob(tmp_path: Path) -> None:
    db = str(tmp_path / "local.duckdb")
    cfg = RunConfig(
        loop="best-of-n",
        tasks="builtin:arithmetic?seed=5&n=2",
        db=db,
        options={"n": 4, "max_tokens": 48, "selector": "weighted", "weight_by": "logprob"},
        verifier="none",  # the vote alone: no self-check calls beside the samples
    )
    result = await run(cfg)
    assert result.summary["done"] == 2 and result.summary["failed"] == 0
    with TraceStore(db, read_only=True) as store:
        calls = store.query("SELECT * FROM calls")
        assert len(calls) == 8 and len({c["request_id"] for c in calls}) == 2
        assert all(c["n"] == 4 and c["logprob_mean"] is not None for c in calls)
        votes = store.query("SELECT content FROM nodes WHERE role = 'vote' ORDER BY task_id")
        for v in map(lambda r: json.loads(r["content"]), votes):
            assert v["samples"] == 4 and v["requests"] == 1
            if v["used"] == "weighted":  # a weight is exp(mean logprob), in (0, 1]
                assert all(0 < w <= v["votes"][k] for k, w in v["weighted"].items())
        tasks = store.query("SELECT * FROM tasks")
        assert all(t["rounds"] == 1 and t["stop_reason"].startswith("selected") for t in tasks)
        assert store.query("SELECT count(*) AS n FROM nodes WHERE is_final") == [{"n": 2}]
