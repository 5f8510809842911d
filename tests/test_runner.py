"""The runner: trace consistency, retries, per-task failures, resume (also after kill -9), cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import Progress, RunConfig, RunResult, run
from loopwright.loops.graphs.self_refine import SelfRefineOptions
from loopwright.loops.models.base import Model, ModelCall
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore

_TASK_NO = re.compile(r"Task (\d+):")


def _user(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _task_no(messages: list[dict[str, Any]]) -> int:
    m = _TASK_NO.search(_user(messages))
    assert m, _user(messages)
    return int(m[1])


def mixed_reply(call: ModelCall) -> str:
    """Task i asks for i + 1. Even tasks are right first time; odd ones are fixed by the first
    refinement, except multiples of 3, which never get it right."""
    i = _task_no(call.messages)
    role = call.params.role
    if role == "critic":
        return f"Task {i}: the sum is off."
    right = (role == "generator" and i % 2 == 0) or (role == "refiner" and i % 3 != 0)
    return f"Task {i}: so the answer is {i + 1 if right else i + 2}."


def write_tasks(path: Path, n: int, marker: dict[int, str] | None = None) -> str:
    marker = marker or {}
    rows = [
        {
            "id": f"t{i:02d}",
            "prompt": f"Task {i}: what is {i} + 1?{marker.get(i, '')}",
            "kind": "math",
            "reference": str(i + 1),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def config(tmp_path: Path, model: str | Model, tasks: str, **kw: Any) -> RunConfig:
    kw.setdefault("options", {"max_rounds": 2})
    kw.setdefault("db", str(tmp_path / "t.duckdb"))
    kw.setdefault("verifier", "oracle")  # these scripts decide what passes by the reference
    kw.setdefault("loop", "self-refine")
    return RunConfig(tasks=tasks, model=model, backoff_base_s=0.0, **kw)


def query(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as s:
        return s.query(sql, params)


def assert_consistent(db: str, run_id: str) -> None:
    """Per-task token/call totals match the calls table; no dangling ids anywhere."""
    per_task = query(
        db,
        """
        SELECT t.task_id, t.status, t.total_tokens, t.calls,
               coalesce(sum(c.prompt_tokens + c.completion_tokens), 0) AS call_tokens,
               count(c.call_id) AS call_rows
        FROM tasks t LEFT JOIN calls c
          ON c.run_id = t.run_id AND c.task_id = t.task_id AND c.error IS NULL
        WHERE t.run_id = ? GROUP BY ALL ORDER BY t.task_id
        """,
        [run_id],
    )
    assert per_task
    for r in per_task:
        assert r["call_tokens"] == r["total_tokens"], r
        assert r["call_rows"] == r["calls"], r
    orphans = {
        "node parent": """SELECT n.node_id FROM nodes n WHERE n.run_id = ? AND n.parent_id IS NOT NULL
               AND n.parent_id NOT IN (SELECT node_id FROM nodes)""",
        "call node": """SELECT c.call_id FROM calls c WHERE c.run_id = ? AND c.error IS NULL
               AND c.node_id NOT IN (SELECT node_id FROM nodes)""",
        "verdict node": """SELECT v.verdict_id FROM verdicts v WHERE v.run_id = ?
               AND v.node_id NOT IN (SELECT node_id FROM nodes)""",
        "final node": """SELECT t.task_id FROM tasks t WHERE t.run_id = ? AND t.final_node_id IS NOT NULL
               AND t.final_node_id NOT IN (SELECT node_id FROM nodes WHERE is_final)""",
        "node without call": """SELECT n.node_id FROM nodes n WHERE n.run_id = ?
               AND n.node_id NOT IN (SELECT node_id FROM calls WHERE node_id IS NOT NULL)""",
        "node task": """SELECT n.node_id FROM nodes n WHERE n.run_id = ? AND n.task_id NOT IN
               (SELECT task_id FROM tasks WHERE run_id = n.run_id)""",
    }
    for what, sql in orphans.items():
        assert query(db, sql, [run_id]) == [], what
    multi_final = query(
        db,
        "SELECT task_id FROM nodes WHERE run_id = ? AND is_final GROUP BY 1 HAVING count(*) > 1",
        [run_id],
    )
    assert multi_final == []


# -- a clean run ---------------------------------------------------------------------------------


async def test_db_is_consistent_after_a_run(tmp_path: Path) -> None:
    model = ScriptedModel(mixed_reply)
    tasks = write_tasks(tmp_path / "tasks.jsonl", 12)
    seen: list[Progress] = []
    cfg = config(tmp_path, model, tasks, concurrency=3, run_name="clean")
    result = await run(cfg, on_progress=lambda p: seen.append(Progress(**vars(p))))

    db = cfg.db
    assert_consistent(db, result.run_id)
    [runrow] = query(db, "SELECT * FROM runs")
    assert runrow["status"] == "done"
    assert runrow["finished_at"] is not None
    assert (runrow["name"], runrow["loop"], runrow["model"]) == (
        "clean",
        "self-refine",
        model.name,
    )
    # The hash covers the validated options (defaults filled in).
    assert runrow["config_hash"] == cfg.config_hash(SelfRefineOptions(**cfg.options))

    rows = {r["task_id"]: r for r in query(db, "SELECT * FROM tasks")}
    assert len(rows) == 12
    assert all(r["status"] == "done" for r in rows.values())
    for i in range(12):
        r = rows[f"t{i:02d}"]
        if i % 2 == 0:
            assert (r["stop_reason"], r["calls"], r["graded"]) == ("verified", 1, True)
        elif i % 3 != 0:
            assert (r["stop_reason"], r["calls"], r["graded"]) == ("verified", 3, True)
        else:
            assert (r["stop_reason"], r["calls"], r["graded"]) == ("max_rounds", 5, False)
    assert sum(r["calls"] for r in rows.values()) == len(model.calls)
    assert query(db, "SELECT count(*) AS n FROM calls WHERE error IS NOT NULL")[0]["n"] == 0

    s = result.summary
    assert (s["tasks"], s["done"], s["failed"]) == (12, 12, 0)
    assert s["graded_pass_rate"] == pytest.approx(10 / 12)
    assert s["calls"] == len(model.calls)
    assert result.progress.done == 12 and result.progress.passed == 10
    assert [p.done for p in seen] == list(range(13))  # initial report + one per task


# -- provider faults -----------------------------------------------------------------------------


async def test_intermittent_faults_are_retried_and_every_task_finishes(tmp_path: Path) -> None:
    def flaky(call: ModelCall) -> str | Fault:
        if call.index % 3 == 2:
            return Fault("rate_limit", retry_after=0) if call.index % 2 else Fault("server_error")
        return mixed_reply(call)

    model = ScriptedModel(flaky)
    tasks = write_tasks(tmp_path / "tasks.jsonl", 8)
    cfg = config(tmp_path, model, tasks, concurrency=2)
    result = await run(cfg)

    statuses = [r["status"] for r in query(cfg.db, "SELECT status FROM tasks")]
    assert statuses == ["done"] * 8
    assert result.summary["failed"] == 0
    assert_consistent(cfg.db, result.run_id)
    calls = query(cfg.db, "SELECT attempts, error FROM calls")
    assert all(c["error"] is None for c in calls)
    # Every provider invocation is one attempt of some traced call.
    assert sum(c["attempts"] for c in calls) == len(model.calls)
    faults = sum(1 for i in range(len(model.calls)) if i % 3 == 2)
    assert faults > 0
    assert sum(c["attempts"] - 1 for c in calls) == faults
    # Retries do not change the outcome: the same tasks pass as without faults.
    graded = {r["task_id"]: r["graded"] for r in query(cfg.db, "SELECT * FROM tasks")}
    assert graded == {f"t{i:02d}": (i % 2 == 0 or i % 3 != 0) for i in range(8)}


async def test_permanently_failing_tasks_are_marked_failed_and_the_run_completes(
    tmp_path: Path,
) -> None:
    def reply(call: ModelCall) -> str | Fault:
        user = _user(call.messages)
        if "POISON" in user:
            return Fault("server_error")
        if "CRITFAIL" in user and call.params.role == "critic":
            return Fault("server_error")
        return mixed_reply(call)

    model = ScriptedModel(reply)
    tasks = write_tasks(
        tmp_path / "tasks.jsonl", 8, marker={1: " POISON", 4: " POISON", 5: " CRITFAIL"}
    )
    cfg = config(tmp_path, model, tasks, concurrency=3, max_attempts=2)
    result = await run(cfg)

    rows = {r["task_id"]: r for r in query(cfg.db, "SELECT * FROM tasks")}
    failed = {tid for tid, r in rows.items() if r["status"] == "failed"}
    assert failed == {"t01", "t04", "t05"}
    assert {tid for tid, r in rows.items() if r["status"] == "done"} == set(rows) - failed
    for tid in failed:
        err = rows[tid]["error"]
        assert err.startswith("model call failed")
        assert "500" in err or "InternalServerError" in err
        assert "2 attempt" in err
        assert rows[tid]["graded"] is None
    # A task that fails mid-loop keeps the draft it had.
    assert rows["t05"]["calls"] == 1
    assert query(cfg.db, "SELECT role FROM nodes WHERE task_id = 't05'") == [{"role": "generator"}]
    # The failed requests are traced with their error.
    errs = query(cfg.db, "SELECT task_id, attempts, error FROM calls WHERE error IS NOT NULL")
    assert sorted(e["task_id"] for e in errs) == ["t01", "t04", "t05"]
    assert all(e["attempts"] == 2 for e in errs)

    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "done"
    assert (result.summary["done"], result.summary["failed"]) == (5, 3)
    assert result.progress.failed == 3
    assert_consistent(cfg.db, result.run_id)


async def test_non_retryable_fault_fails_the_task_after_one_attempt(tmp_path: Path) -> None:
    model = ScriptedModel(lambda call: Fault("bad_request"))
    cfg = config(tmp_path, model, write_tasks(tmp_path / "t.jsonl", 2))
    result = await run(cfg)
    assert len(model.calls) == 2  # one per task: a 400 is not retried
    assert result.summary["failed"] == 2
    assert all(
        r["status"] == "failed" and "1 attempt" in r["error"]
        for r in query(cfg.db, "SELECT * FROM tasks")
    )


# -- resume: user errors -----------------------------------------------------------------------


async def test_resume_errors(tmp_path: Path) -> None:
    model = ScriptedModel(mixed_reply)
    other = ScriptedModel(mixed_reply)
    tasks = write_tasks(tmp_path / "t.jsonl", 3)
    cfg = config(tmp_path, model, tasks, run_name="exp1")
    await run(cfg)
    calls_after_first = len(model.calls)

    with pytest.raises(UserError, match=r"already exists.*--resume"):
        await run(cfg)
    with pytest.raises(UserError, match="different"):
        await run(cfg.model_copy(update={"resume": True, "model": other}))
    with pytest.raises(UserError, match="different"):
        await run(cfg.model_copy(update={"resume": True, "options": {"max_rounds": 3}}))
    with pytest.raises(UserError, match="different"):
        await run(cfg.model_copy(update={"resume": True, "seed": 1}))
    with pytest.raises(UserError, match="--run-name"):
        await run(cfg.model_copy(update={"resume": True, "run_name": None}))

    # None of the refused attempts ran anything or changed the stored run.
    assert len(model.calls) == calls_after_first
    assert len(other.calls) == 0
    assert [r["name"] for r in query(cfg.db, "SELECT name FROM runs")] == ["exp1"]
    assert query(cfg.db, "SELECT count(*) AS n FROM tasks")[0]["n"] == 3

    # Resuming a finished run with the same arguments skips everything.
    result = await run(cfg.model_copy(update={"resume": True}))
    assert len(model.calls) == calls_after_first
    assert result.progress.skipped == 3
    assert result.summary["done"] == 3
    # The resumed run's progress counts the earlier passes and tokens too.
    prior = query(
        cfg.db, "SELECT count(*) FILTER (WHERE graded) AS p, sum(total_tokens) AS t FROM tasks"
    )[0]
    assert (result.progress.passed, result.progress.tokens) == (prior["p"], prior["t"])
    assert result.progress.passed == 3  # mixed_reply: task 0 right at once, 1 and 2 after one fix

    # Resuming a run the store does not hold (stopped before its run row was committed)
    # starts it under that name.
    fresh = await run(cfg.model_copy(update={"resume": True, "run_name": "nope"}))
    assert (fresh.name, fresh.progress.skipped, fresh.summary["done"]) == ("nope", 0, 3)
    assert fresh.started and not result.started
    assert [r["name"] for r in query(cfg.db, "SELECT name FROM runs ORDER BY 1")] == [
        "exp1",
        "nope",
    ]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from loopwright.loops.execution.runner import RunConfig, run
    from loopwright.loops.models.scripted import ScriptedModel

    done = 0

    def reply(call):
        time.sleep(0.05)
        if call.params.role == "critic":
            if done >= 10:
                # Mid-task: this task's first draft is already traced. Let the trace writer
                # commit what is queued, then die without any cleanup.
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGKILL)
            return "The sum is off."
        return "The answer is 0."  # always wrong: 3 calls per task at max_rounds=1

    ScriptedModel(reply, name="killme").register()

    def on_progress(p):
        global done
        done = p.done

    cfg = RunConfig.model_validate_json(sys.argv[1])
    asyncio.run(run(cfg, on_progress))
    print("NOT KILLED")
    """
)


@pytest.mark.slow
async def test_kill_9_then_resume_finishes_every_task_once(tmp_path: Path) -> None:
    n = 30
    tasks = write_tasks(tmp_path / "tasks.jsonl", n)
    cfg = config(
        tmp_path,
        "scripted/killme",
        tasks,
        run_name="crashy",
        concurrency=2,
        options={"max_rounds": 1},
    )
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, cfg.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "NOT KILLED" not in proc.stdout

    before = query(cfg.db, "SELECT task_id, status FROM tasks")
    done_before = {r["task_id"] for r in before if r["status"] == "done"}
    unfinished = {r["task_id"] for r in before if r["status"] != "done"}
    assert 10 <= len(done_before) < n
    assert unfinished, "the kill should leave a task in flight"
    partial_calls = query(
        cfg.db,
        "SELECT count(*) AS n FROM calls WHERE task_id IN (SELECT task_id FROM tasks "
        "WHERE status <> 'done')",
    )[0]["n"]
    assert partial_calls > 0, "the in-flight task should have traced calls to discard"
    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "running"

    resumed_prompts: list[str] = []

    def reply(call: ModelCall) -> str:
        resumed_prompts.append(_user(call.messages))
        return "The sum is off." if call.params.role == "critic" else "The answer is 0."

    ScriptedModel(reply, name="killme").register()
    result: RunResult = await run(cfg.model_copy(update={"resume": True}))

    assert result.progress.skipped == len(done_before)
    rows = query(
        cfg.db, "SELECT task_id, status, calls FROM tasks WHERE run_id = ?", [result.run_id]
    )
    assert sorted(r["task_id"] for r in rows) == [f"t{i:02d}" for i in range(n)]
    assert all(r["status"] == "done" for r in rows)
    # Finished tasks were not run again.
    rerun = {f"t{int(_TASK_NO.search(p)[1]):02d}" for p in resumed_prompts}  # type: ignore[index]
    assert not rerun & done_before
    # No task has duplicated trace rows: one root draft, two refinement-round nodes.
    gens = query(
        cfg.db,
        "SELECT task_id, count(*) FILTER (WHERE role = 'generator') AS g, count(*) AS total "
        "FROM nodes WHERE run_id = ? GROUP BY 1",
        [result.run_id],
    )
    assert len(gens) == n
    assert all(g["g"] == 1 and g["total"] == 3 for g in gens), gens
    assert all(r["calls"] == 3 for r in rows)
    in_loop = query(
        cfg.db,
        "SELECT task_id, count(*) AS v FROM verdicts WHERE stage = 'in_loop' GROUP BY 1",
    )
    assert Counter(v["v"] for v in in_loop) == Counter({2: n})
    assert_consistent(cfg.db, result.run_id)
    [runrow] = query(cfg.db, "SELECT status FROM runs")
    assert runrow["status"] == "done"


# -- cache ---------------------------------------------------------------------------------------


async def test_rerun_under_new_name_hits_the_call_cache(tmp_path: Path) -> None:
    model = ScriptedModel(mixed_reply)
    tasks = write_tasks(tmp_path / "t.jsonl", 6)
    first_cfg = config(tmp_path, model, tasks, run_name="first")
    first = await run(first_cfg)
    n_calls = len(model.calls)
    assert n_calls > 6

    second = await run(first_cfg.model_copy(update={"run_name": "second"}))
    assert len(model.calls) == n_calls  # nothing reached the model

    db = first_cfg.db
    c2 = query(db, "SELECT * FROM calls WHERE run_id = ?", [second.run_id])
    assert len(c2) == n_calls
    assert all(c["cache_hit"] for c in c2)
    c1 = query(db, "SELECT * FROM calls WHERE run_id = ?", [first.run_id])
    assert not any(c["cache_hit"] for c in c1)

    def outs(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((r["task_id"], r["role"], r["round"], r["seed"], r["output"]) for r in rows)

    assert outs(c1) == outs(c2)
    t1 = query(
        db,
        "SELECT task_id, final_answer, graded, stop_reason FROM tasks WHERE run_id = ? ORDER BY 1",
        [first.run_id],
    )
    t2 = query(
        db,
        "SELECT task_id, final_answer, graded, stop_reason FROM tasks WHERE run_id = ? ORDER BY 1",
        [second.run_id],
    )
    assert t1 == t2
    assert_consistent(db, second.run_id)

    # With the cache off the model is asked again.
    await run(
        first_cfg.model_copy(
            update={
                "run_name": "third",
                "connection": first_cfg.connection.model_copy(update={"cache": False}),
            }
        )
    )
    assert len(model.calls) == 2 * n_calls


# -- validation ----------------------------------------------------------------------------------


async def test_unknown_loop_lists_the_valid_loops(tmp_path: Path) -> None:
    model = ScriptedModel(["x"])
    cfg = config(tmp_path, model, "builtin:arithmetic").model_copy(update={"loop": "self-refin"})
    with pytest.raises(UserError) as exc:
        await run(cfg)
    assert "'self-refine'" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not Path(cfg.db).exists()  # validation happens before anything is written


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_rounds": -1}, "max_rounds"),
        ({"max_rounds": "many"}, "max_rounds"),
        ({"colour": 1}, "colour"),
    ],
)
async def test_bad_loop_option_is_a_one_line_user_error(
    tmp_path: Path, options: dict[str, Any], field: str
) -> None:
    model = ScriptedModel(["x"])
    cfg = config(tmp_path, model, "builtin:arithmetic", options=options)
    with pytest.raises(UserError) as exc:
        await run(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    assert field in msg
    assert "self-refine" in msg
    assert len(model.calls) == 0
    assert not Path(cfg.db).exists()


async def test_unknown_model_is_a_user_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, "scripted/never-registered", "builtin:arithmetic")
    with pytest.raises(UserError, match="never-registered"):
        await run(cfg)


async def test_builtin_arithmetic_end_to_end(tmp_path: Path) -> None:
    """A builtin task set runs through the same path; answering the reference passes."""

    def solve(call: ModelCall) -> str:
        text = _user(call.messages)
        if m := re.search(r"has (\d+) bags with (\d+)", text):
            return f"The answer is {int(m[1]) * int(m[2])}."
        m = re.search(r"has (\d+) \w+ and gets (\d+) more", text)
        assert m, text
        return f"The answer is {int(m[1]) + int(m[2])}."

    model = ScriptedModel(solve)
    cfg = config(tmp_path, model, "builtin:arithmetic?seed=5", limit=6)
    result = await run(cfg)
    assert result.summary["tasks"] == 6
    assert result.summary["graded_pass_rate"] == 1.0
    assert len(model.calls) == 6


async def test_resume_matches_options_after_defaults_are_filled_in(tmp_path: Path) -> None:
    model = ScriptedModel(mixed_reply)
    tasks = write_tasks(tmp_path / "t.jsonl", 2)
    cfg = config(tmp_path, model, tasks, run_name="defaults", options={})
    await run(cfg)
    default_rounds = SelfRefineOptions().max_rounds
    explicit = cfg.model_copy(update={"resume": True, "options": {"max_rounds": default_rounds}})
    result = await run(explicit)  # same computation, spelled out: resumes, reruns nothing
    assert result.progress.skipped == 2
    with pytest.raises(UserError, match="different"):
        await run(explicit.model_copy(update={"options": {"max_rounds": default_rounds + 1}}))


async def test_concurrent_requests_cannot_overshoot_a_call_budget() -> None:
    """Requests in flight hold their calls: with 5 left, three concurrent n=2 asks get 2 through."""
    import asyncio as aio

    from loopwright.loops.errors import BudgetExhausted
    from loopwright.loops.models.budget import Budget, BudgetLimits
    from loopwright.loops.models.client import ModelClient
    from loopwright.loops.models.config import ClientConfig
    from loopwright.loops.models.scripted import ScriptedModel

    model = ScriptedModel(lambda call: "ok")
    run_budget = Budget(BudgetLimits(calls=5))
    task_budget = Budget(BudgetLimits(calls=100), parent=run_budget)
    client = ModelClient(ClientConfig(cache=False), model=model)
    msgs = [{"role": "user", "content": "hi"}]
    got = await aio.gather(
        *(client.sample(msgs, n=2, budget=task_budget) for _ in range(3)),
        return_exceptions=True,
    )
    ok = [g for g in got if not isinstance(g, BaseException)]
    refused = [g for g in got if isinstance(g, BudgetExhausted)]
    assert len(ok) == 2 and len(refused) == 1
    assert run_budget.calls == task_budget.calls == 4
    assert run_budget.pending == task_budget.pending == 0


async def test_a_grader_that_breaks_fails_its_task_not_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopwright.loops.execution import scope as scope_mod
    from loopwright.loops.verify import MathAnswer

    class Broken(MathAnswer):
        def quick(self, task: Any, response: str) -> None:
            return None

        def __call__(self, task: Any, response: str) -> Any:
            if task.id == "t01":
                raise ValueError("sandbox could not set up the run")
            return super().__call__(task, response)

    monkeypatch.setattr(scope_mod, "grader_for", lambda task, **_: Broken())
    model = ScriptedModel(lambda call: "The answer is 2.")
    tasks = write_tasks(tmp_path / "tasks.jsonl", 3)
    result = await run(config(tmp_path, model, tasks, verifier="none"))
    rows = {r["task_id"]: r for r in query(str(tmp_path / "t.duckdb"), "SELECT * FROM tasks")}
    assert rows["t01"]["status"] == "failed" and "grading failed" in rows["t01"]["error"]
    assert rows["t00"]["status"] == rows["t02"]["status"] == "done"
    assert result.progress.failed == 1


# -- the run's settings, scope, tasks and model ------------------------------------------------


def test_one_identity_rule_for_runs_sweeps_and_improve_series() -> None:
    """Where and how the work is done (database, sandbox, endpoint, transport, concurrency,
    retries, cache, executor) is never part of what a resume must match; what is computed
    (model, seed, verifier, budgets, ...) always is, for a run, a sweep and a series alike --
    except what picks a sweep's points (grid, models, seeds: a sweep grows by new points)."""
    from loopwright.loops.execution.sweep import SweepConfig
    from loopwright.loops.improve import ImproveConfig

    configs = [
        RunConfig(loop="best-of-n", tasks="builtin:arithmetic"),
        SweepConfig(name="s", tasks="builtin:arithmetic", grid="best-of-n:n=1,2"),
        ImproveConfig(name="s", tasks="builtin:arithmetic", eval_tasks="builtin:arithmetic"),
    ]
    how = [
        {"db": "elsewhere.duckdb"},
        {"sandbox": "process"},
        {"executor": "ray", "ray_address": "10.0.0.1:6379", "workers": 3},
        {"api_base": "http://127.0.0.1:9/v1"},
        {"transport": "http", "concurrency": 32, "max_attempts": 9, "cache": False},
    ]
    what = [
        {"seed": 1},
        {"verifier": "oracle"},
        {"verifier_options": {"samples": 3}},
        {"role_models": {"critic": "openai/critic"}},
        {"budget": {"calls": 3}},
        {"run_budget": {"tokens": 100}},
    ]
    for cfg in configs:
        same = {**cfg.model_dump(exclude={"connection"}), "connection": cfg.connection}
        for change in how:
            moved = type(cfg)(**{**same, **change})
            assert moved.config_hash() == cfg.config_hash(), (type(cfg).__name__, change)
        for change in what:
            other = type(cfg)(**{**same, **change})
            if isinstance(cfg, SweepConfig) and set(change) <= SweepConfig.POINTS:
                assert other.config_hash() == cfg.config_hash()  # new points, same sweep
                continue
            assert other.config_hash() != cfg.config_hash(), (type(cfg).__name__, change)


async def test_a_list_of_tasks_runs_is_stored_by_content_and_resumes(tmp_path: Path) -> None:
    from loopwright.loops.tasks import Task

    tasks = [Task(id=f"t{i}", prompt=f"Task {i}: what is {i} + 1?", kind="math",
                  reference=str(i + 1), metadata={"source": "inline"}) for i in range(3)]  # fmt: skip
    model = ScriptedModel(mixed_reply)
    cfg = RunConfig(
        loop="self-refine", tasks=tasks, model=model, db=str(tmp_path / "t.duckdb"),
        run_name="inline", verifier="oracle", options={"max_rounds": 1},
    )  # fmt: skip
    result = await run(cfg)
    assert result.summary["done"] == 3
    [row] = query(cfg.db, "SELECT tasks_spec, model, config FROM runs")
    assert row["tasks_spec"] == cfg.tasks_spec
    assert row["tasks_spec"].startswith("inline:3 tasks sha256=")
    assert row["model"] == model.name
    assert json.loads(row["config"])["tasks"] == row["tasks_spec"]
    # each task row keeps the keyed task, so grading never needs the list again
    keys = {r["task_id"]: r["answer_key"] for r in query(cfg.db, "SELECT * FROM tasks")}
    assert {tid: Task.model_validate_json(k) for tid, k in keys.items()} == {t.id: t for t in tasks}
    # the same tasks resume; other tasks under the same name do not
    again = await run(cfg.model_copy(update={"resume": True, "tasks": list(tasks)}))
    assert again.progress.skipped == 3
    changed = [tasks[0].model_copy(update={"reference": "9"}), *tasks[1:]]
    with pytest.raises(UserError, match="different"):
        await run(cfg.model_copy(update={"resume": True, "tasks": changed}))


@pytest.mark.parametrize(
    ("tasks", "message"),
    [([], "empty"), (["t0", "t0"], "given twice")],
)
async def test_a_task_list_that_cannot_run_is_one_line(
    tmp_path: Path, tasks: list[str], message: str
) -> None:
    from loopwright.loops.tasks import Task

    listed = [Task(id=t, prompt="2+3?", kind="math", reference="5") for t in tasks]
    cfg = config(tmp_path, ScriptedModel(["x"]), "unused").model_copy(update={"tasks": listed})
    with pytest.raises(UserError, match=message):
        await run(cfg)
    assert not Path(cfg.db).exists()


async def test_two_model_objects_may_not_share_a_name(tmp_path: Path) -> None:
    a, b = ScriptedModel(["x"], name="same"), ScriptedModel(["y"], name="same")
    cfg = config(tmp_path, a, "builtin:arithmetic", role_models={"critic": b})
    with pytest.raises(UserError, match="two different models are named 'scripted/same'"):
        await run(cfg)
    assert not Path(cfg.db).exists()


async def test_a_role_model_object_answers_its_role(tmp_path: Path) -> None:
    drafter = ScriptedModel(lambda call: "The answer is 1.", name="drafter")
    critic = ScriptedModel(lambda call: "The sum is off.", name="critic")
    cfg = config(
        tmp_path, drafter, write_tasks(tmp_path / "t.jsonl", 2), role_models={"critic": critic}
    )
    await run(cfg.model_copy(update={"options": {"max_rounds": 1}}))
    assert {c.params.role for c in drafter.calls} == {"generator", "refiner"}
    assert {c.params.role for c in critic.calls} == {"critic"}
    rows = query(cfg.db, "SELECT DISTINCT role, model FROM calls ORDER BY 1")
    assert rows == [
        {"role": "critic", "model": critic.name},
        {"role": "generator", "model": drafter.name},
        {"role": "refiner", "model": drafter.name},
    ]
    [run_row] = query(cfg.db, "SELECT config FROM runs")
    assert json.loads(run_row["config"])["role_models"] == {"critic": critic.name}


def test_the_scope_sizes_every_client_for_the_samples_in_flight(
    tmp_path: Path, writer: Any
) -> None:
    """Clients (the run's, a role's and a loop option's own model) are made once and told
    how many samples the run may have in flight: concurrency x the loop's n."""
    from loopwright.loops.execution.scope import RunScope

    critic = ScriptedModel(["c"], name="critic")
    cfg = RunConfig(
        loop="best-of-n", tasks="builtin:arithmetic", model=ScriptedModel(["x"], name="gen"),
        concurrency=3, options={"n": 8}, role_models={"critic": critic},
    )  # fmt: skip
    scope = RunScope.build(cfg, "run", writer)
    judge = scope.client_of("hosted_vllm/judge", "http://127.0.0.1:9/v1")
    assert scope.client_of("hosted_vllm/judge", "http://127.0.0.1:9/v1") is judge
    assert scope.client_for("critic").backend is critic
    assert scope.client_for("refiner") is scope.client
    assert {c.config.in_flight for c in scope.clients.values()} == {24}
    self_refine = cfg.model_copy(update={"loop": "self-refine", "options": {}})
    assert RunScope.build(self_refine, "run", writer).client.config.in_flight == 3


async def test_majority_vote_under_auto_pays_for_no_verification(tmp_path: Path) -> None:
    """A best-of-n whose choice ignores verdicts gets no in-loop verifier under --verifier
    auto (it would pay a self-check per sample); asked for one, it gets it."""
    model = ScriptedModel(lambda call: "The answer is 2.")
    tasks = write_tasks(tmp_path / "t.jsonl", 2)
    majority = config(
        tmp_path, model, tasks, loop="best-of-n", verifier="auto", run_name="majority",
        options={"n": 4, "selector": "majority"},
    )  # fmt: skip
    await run(majority)
    assert {c.params.role for c in model.calls} == {"generator"}
    [row] = query(majority.db, "SELECT config FROM runs WHERE name = 'majority'")
    assert json.loads(row["config"])["verifiers"] == {"math": "none"}
    asked = majority.model_copy(update={"verifier": "self", "run_name": "asked"})
    await run(asked)
    assert "verifier" in {c.params.role for c in model.calls}
