"""Read a sweep back from the trace store: per-task results of every point, shared samples.

All reading is SQL over the DuckDB file (read-only); what comes back is small (one row per
task per point, one row per best-of-n sample) and feeds ``loopwright.traces.metrics``.

Costs per task: ``tokens`` (prompt + completion, as charged), ``calls`` (model samples),
``usd``, and ``wall`` — the task's model time: the sum of its requests' latencies, where a
request served from the call cache counts at the latency of the request that filled the
cache, so a point that reused another point's calls is not shown as free. Derived best-of-n
points (N < the run's N) take the first N samples: their completion tokens and cost, the
prompt tokens of the requests they came from, and the request time scaled by tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loopwright.loops.analysis.samples import Sample, answer_key, load_samples, select
from loopwright.loops.errors import UserError
from loopwright.traces.queries import verifier_label
from loopwright.traces.store import TraceStore


@dataclass
class TaskResult:
    task_id: str
    seed: int
    correct: bool
    tokens: float
    calls: float
    usd: float
    wall: float


@dataclass
class Point:
    strategy: str
    loop: str
    model: str
    param: str | None
    value: float | str | bool | None  # a number, else the option's value as given
    derived: bool
    run_names: list[str]
    results: list[TaskResult] = field(default_factory=list)


@dataclass
class SweepData:
    name: str
    tasks_spec: str
    grid: str
    config: dict[str, Any]
    points: list[Point]
    # (model, strategy, seed, task_id) -> samples of the shared best-of-n run
    samples: dict[tuple[str, str, int, str], list[Sample]]
    # (model, strategy, seed, task_id) -> chain of (correct, answer key) by round
    chains: dict[tuple[str, str, int, str], list[tuple[bool | None, str | None]]]
    judge_pairs: list[tuple[str | None, str | None, int, int]]
    judge_points: list[tuple[bool | None, bool, int, float | None]]
    unfinished: list[str] = field(default_factory=list)  # runs of points not done yet
    # strategy -> (in-loop verdict, graded) of every final answer of its runs
    agreement: dict[str, list[tuple[bool | None, bool]]] = field(default_factory=dict)
    # run name -> its in-loop verifier as shown (``traces.queries.verifier_label``)
    verifiers: dict[str, str] = field(default_factory=dict)
    oracle: bool = False
    """Some point's loop saw the answer key (an oracle verifier)."""


ORACLE_MARK = " [oracle]"
"""Appended to a strategy whose loop saw the answer key, wherever it is shown."""


def load_sweep(db: str, name: str) -> SweepData:
    with TraceStore(db, read_only=True) as store:
        have = {r["table_name"] for r in store.query("SELECT table_name FROM duckdb_tables()")}
        if "sweeps" not in have:
            raise UserError(f"{db} has no sweeps: run `loopwright sweep` first")
        rows = store.query("SELECT * FROM sweeps WHERE name = ?", [name])
        if not rows:
            known = [r["name"] for r in store.query("SELECT name FROM sweeps ORDER BY 1")]
            raise UserError(
                f"no sweep named {name!r} in {db}; sweeps: {', '.join(known) or 'none'}"
            )
        sw = rows[0]
        pts = store.query(
            "SELECT p.*, r.run_id FROM sweep_points p LEFT JOIN runs r ON r.name = p.run_name"
            " WHERE p.sweep_id = ? ORDER BY p.model, p.strategy, p.value, p.seed",
            [sw["sweep_id"]],
        )
        # Only finished points: a run still going (or stopped) would show a partial task set.
        unfinished = sorted({p["run_name"] for p in pts if p["status"] != "done"})
        pts = [p for p in pts if p["status"] == "done"]
        run_ids = sorted({p["run_id"] for p in pts if p["run_id"]})
        if not run_ids:
            raise UserError(f"sweep {name!r} has no finished runs yet: run `loopwright sweep`")
        data = SweepData(
            name=name, tasks_spec=sw["tasks_spec"], grid=sw["grid"],
            config=json.loads(sw["config"]) if sw["config"] else {},
            points=[], samples={}, chains={}, judge_pairs=[], judge_points=[],
            unfinished=unfinished,
        )  # fmt: skip
        labels = {
            r["name"]: verifier_label(r["config"])
            for r in store.query(
                f"SELECT name, config FROM runs WHERE run_id IN ({', '.join('?' for _ in run_ids)})",
                run_ids,
            )
        }
        oracle_runs = {run for run, (_, oracle) in labels.items() if oracle}
        pts = [
            {**p, "strategy": p["strategy"] + ORACLE_MARK}
            if p["run_name"] in oracle_runs and "oracle" not in p["strategy"]
            else p
            for p in pts
        ]
        data.verifiers = {run: label for run, (label, _) in labels.items()}
        data.oracle = bool(oracle_runs)
        per_task = _task_costs(store, run_ids)
        samples = load_samples(store, run_ids)
        by_point: dict[tuple[Any, ...], Point] = {}
        for p in pts:
            opts = json.loads(p["options"]) if p["options"] else {}
            value = p["value"]
            if value is None and p["param"] is not None:  # not a number: the run's option
                value = opts.get(p["param"])
            k = (p["model"], p["strategy"], json.dumps(value))
            point = by_point.get(k)
            if point is None:
                point = by_point[k] = Point(
                    strategy=p["strategy"], loop=p["loop"], model=p["model"], param=p["param"],
                    value=value, derived=bool(p["derived"]), run_names=[],
                )  # fmt: skip
                data.points.append(point)
            point.run_names.append(p["run_name"])
            if not p["run_id"]:
                continue
            if not p["derived"]:
                data.agreement.setdefault(p["strategy"], []).extend(
                    (c["verdict"], bool(c["correct"]))
                    for c in per_task.get(p["run_id"], {}).values()
                )
            # rejection sampling stops early: its samples are no first-k-of-N, read the run
            shared = p["param"] == "n" and not opts.get("rejection")
            if p["derived"] or (p["loop"] == "best-of-n" and shared):
                _derived(point, p, samples.get(p["run_id"], {}), data,
                         per_task.get(p["run_id"], {}))  # fmt: skip
            else:
                point.results += [
                    TaskResult(t, int(p["seed"]), bool(c["correct"]), c["tokens"], c["calls"],
                               c["usd"], c["wall"])
                    for t, c in per_task.get(p["run_id"], {}).items()
                ]  # fmt: skip
        # shared samples only once per (model, strategy, seed)
        _chains(store, pts, data)
        _judges(store, run_ids, data)
    return data


def _task_costs(store: TraceStore, run_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    marks = ", ".join("?" for _ in run_ids)
    rows = store.query(
        f"""
        WITH req AS (
            SELECT run_id, task_id, request_id, any_value(cache_key) AS key,
                   bool_or(cache_hit) AS hit, max(latency_s) AS lat
            FROM calls WHERE run_id IN ({marks}) GROUP BY ALL),
        fresh AS (
            SELECT cache_key AS key, max(latency_s) AS lat FROM calls
            WHERE NOT cache_hit AND cache_key IS NOT NULL GROUP BY 1),
        model_s AS (
            SELECT run_id, task_id,
                   sum(CASE WHEN hit THEN coalesce(fresh.lat, 0) ELSE req.lat END) AS s
            FROM req LEFT JOIN fresh USING (key) GROUP BY ALL)
        SELECT t.run_id, t.task_id, coalesce(t.graded, FALSE) AS correct, t.verdict,
               t.total_tokens AS tokens, t.calls, t.cost_usd AS usd,
               coalesce(m.s, t.wall_s) AS wall
        FROM tasks t LEFT JOIN model_s m USING (run_id, task_id)
        WHERE t.run_id IN ({marks}) AND t.status = 'done'""",
        run_ids + run_ids,
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {})[r["task_id"]] = r
    return out


def _derived(
    point: Point,
    p: dict[str, Any],
    runs: dict[str, list[Sample]],
    data: SweepData,
    costs: dict[str, dict[str, Any]],
) -> None:
    """A best-of-n point read from the first ``value`` samples of its run.

    Its cost is what those samples cost, plus their own in-loop verification (charged per
    sample from each verdict's ``details.cost_*``), plus a k/N share of the run's other
    calls for the task (judge or reward scoring, anything not attributed to one sample), so
    at k = N the point costs exactly what the run spent.
    """
    k = int(p["value"])
    seed = int(p["seed"])
    for task_id, samples in runs.items():
        data.samples.setdefault((p["model"], p["strategy"], seed, task_id), samples)
        first = samples[:k]
        if len(first) < k:
            continue  # the run stopped early (budget): no honest k-sample point
        n = len(samples)
        own = costs.get(task_id, {})

        tokens = _spent(
            first,
            samples,
            float(own.get("tokens") or 0.0),
            lambda s: s.completion_tokens + s.prompt_tokens + s.check_tokens,
        )
        calls = _spent(
            first, samples, float(own.get("calls") or 0.0), lambda s: 1.0 + s.check_calls
        )
        usd = _spent(first, samples, float(own.get("usd") or 0.0), lambda s: s.usd + s.check_usd)
        total_tok = sum(s.completion_tokens + s.prompt_tokens for s in samples) or 1
        tok = sum(s.completion_tokens + s.prompt_tokens for s in first)
        lat = max((s.latency for s in samples), default=0.0)
        opts = json.loads(p["options"]) if p["options"] else {}
        selector, weight_by = opts.get("selector", "verifier"), opts.get("weight_by", "logprob")
        right = select(first, selector, weight_by)
        if k == n and any(s.final for s in samples):
            pick = next(s for s in samples if s.final)
            if bool(pick.correct) != right:
                raise UserError(
                    f"sweep point {p['run_name']}: replaying best-of-n selector={selector} on "
                    f"the stored samples of task {task_id} does not give the loop's own pick; "
                    "refusing to report a substituted selection"
                )
        point.results.append(
            TaskResult(task_id, seed, right, tokens, calls, usd, lat * tok / total_tok)
        )


def _spent(
    first: list[Sample], samples: list[Sample], total: float, cost: Callable[[Sample], float]
) -> float:
    """The first samples' own cost plus their k/N share of what no sample is charged with."""
    rest = max(total - sum(cost(s) for s in samples), 0.0)
    return sum(cost(s) for s in first) + rest * len(first) / len(samples)


def _chains(store: TraceStore, pts: list[dict[str, Any]], data: SweepData) -> None:
    """Per revision-loop run at its largest value: each task's answers by round, graded."""
    revision = ("self-refine", "critic", "reflexion")
    top: dict[tuple[str, str, int], dict[str, Any]] = {}
    for p in pts:
        if p["loop"] not in revision or not p["run_id"]:
            continue
        k = (p["model"], p["strategy"], int(p["seed"]))
        if k not in top or (p["value"] or 0) > (top[k]["value"] or 0):
            top[k] = p
    for (model, strategy, seed), p in top.items():
        rows = store.query(
            """
            WITH g AS (SELECT node_id, arg_max(passed, created_at) AS passed FROM verdicts
                       WHERE run_id = ? AND stage = 'graded' GROUP BY 1)
            SELECT n.task_id, n.round, n.answer, t.kind, g.passed
            FROM nodes n JOIN tasks t USING (run_id, task_id) LEFT JOIN g USING (node_id)
            WHERE n.run_id = ? AND n.role IN ('generator', 'refiner')
              AND EXISTS (SELECT 1 FROM verdicts v WHERE v.node_id = n.node_id
                          AND v.stage = 'in_loop')
            ORDER BY n.task_id, n.round, n.created_at""",
            [p["run_id"], p["run_id"]],
        )
        for r in rows:
            data.chains.setdefault((model, strategy, seed, r["task_id"]), []).append(
                (r["passed"], answer_key(r["kind"], r["answer"]))
            )


def _judges(store: TraceStore, run_ids: list[str], data: SweepData) -> None:
    marks = ", ".join("?" for _ in run_ids)
    for r in store.query(
        f"""
        SELECT v.details->>'$.a_first.winner' AS ab, v.details->>'$.b_first.winner' AS ba,
               length(a.content) AS la, length(b.content) AS lb
        FROM verdicts v
        JOIN nodes a ON a.node_id = v.details->>'$.a_node_id'
        JOIN nodes b ON b.node_id = v.details->>'$.b_node_id'
        WHERE v.run_id IN ({marks}) AND v.verifier = 'llm-judge-pairwise'""",
        run_ids,
    ):
        data.judge_pairs.append((r["ab"], r["ba"], int(r["la"] or 0), int(r["lb"] or 0)))
    for r in store.query(
        f"""
        WITH g AS (SELECT node_id, arg_max(passed, created_at) AS passed FROM verdicts
                   WHERE run_id IN ({marks}) AND stage = 'graded' GROUP BY 1)
        SELECT v.passed AS judged, g.passed AS truth, length(n.content) AS len, v.score
        FROM verdicts v JOIN g USING (node_id) JOIN nodes n USING (node_id)
        WHERE v.run_id IN ({marks}) AND v.verifier = 'llm-judge' AND g.passed IS NOT NULL""",
        run_ids + run_ids,
    ):
        data.judge_points.append((r["judged"], bool(r["truth"]), int(r["len"] or 0), r["score"]))
