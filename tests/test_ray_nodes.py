"""Two Ray nodes on this machine (``ray.cluster_utils.Cluster``: a head and a second node,
each its own raylet and object store, as two machines would have): a run joins the cluster
by its address, its workers spread over both nodes, and losing a whole node mid-run (its
raylet and workers killed) costs no task and duplicates none."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from loopwright.loops.execution import ray_executor  # noqa: E402
from loopwright.loops.execution.runner import run  # noqa: E402
from loopwright.loops.models.scripted import ScriptedModel  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from test_ray import (  # noqa: E402
    _assert_each_task_once,
    _calls,
    _cfg,
    _tasks,
    _wrong,
    environ,
    importable_tests,
)
from test_runner import write_tasks  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Cluster, Any]]:
    """A head node and a second node, one CPU each; this process joins by address. The
    nodes' workers can import the test modules the scripted replies live in."""
    with environ(**importable_tests()):
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            second = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            try:
                yield cluster, second
            finally:
                ray.shutdown()
        finally:
            cluster.shutdown()


async def test_workers_spread_over_the_nodes_and_the_run_matches_a_local_one(
    tmp_path: Path, nodes: tuple[Cluster, Any]
) -> None:
    model = ScriptedModel(_wrong)
    tasks = write_tasks(tmp_path / "t.jsonl", 8)
    kw: dict[str, Any] = {"concurrency": 2, "options": {"max_rounds": 1}}
    local = await run(_cfg(tmp_path, model, tasks, "local", **kw))
    with ray_executor.ray_pool(workers=2) as pool:
        assert len(set(pool.nodes())) == 2, "one worker on each node"
        remote = await run(_cfg(tmp_path, model, tasks, "ray", executor="ray", **kw))
    db = str(tmp_path / "t.duckdb")
    assert remote.progress.done == 8 and remote.progress.failed == 0
    assert _tasks(db, local.run_id) == _tasks(db, remote.run_id)
    assert _calls(db, local.run_id) == _calls(db, remote.run_id)


async def test_a_node_lost_mid_run_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, nodes: tuple[Cluster, Any]
) -> None:
    cluster, second = nodes
    n = 30
    model = ScriptedModel(_wrong)
    tasks = write_tasks(tmp_path / "t.jsonl", n)
    removed: list[int] = []
    remover: list[threading.Thread] = []

    def on_progress(p: Any) -> None:
        if p.done >= 6 and not removed:
            removed.append(p.done)
            # off the event loop: removing a node waits for its processes to end
            t = threading.Thread(
                target=cluster.remove_node, args=(second,), kwargs={"allow_graceful": False}
            )
            t.start()
            remover.append(t)

    cfg = _cfg(
        tmp_path, model, tasks, "lost-node", concurrency=2, executor="ray",
        options={"max_rounds": 1},
    )  # fmt: skip
    with ray_executor.ray_pool(workers=2) as pool:
        second_id = second.node_id
        assert second_id in pool.nodes()
        result = await run(cfg, on_progress)
        for t in remover:
            t.join(60)
        assert removed and removed[0] < n
        assert pool.retried > 0, "the lost node's tasks should have been run again"
        assert second_id not in pool.nodes()  # its worker came back on the head node
    assert result.progress.done == n and result.progress.failed == 0
    _assert_each_task_once(cfg.db, result.run_id, n)
