"""Read a sweep back from the trace store: per-task results of every point, shared samples.

All reading goes through ``loopwright.traces.report_queries`` over the DuckDB file
(read-only); what comes back is small (one row per task per point, one row per best-of-n
sample) and feeds ``loopwright.traces.metrics``.

Costs per task are those of ``report_queries.task_costs`` (tokens, calls, usd, and wall: the
task's model time, a cached request counted at the latency of the request that filled the
cache). Derived best-of-n points (N < the run's N) take the first N samples: their
completion tokens and cost, the prompt tokens of the requests they came from, and the
request time scaled by tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loopwright.loops.analysis.pairs import VERIFIER as PAIRWISE
from loopwright.loops.analysis.samples import BestOfNSample, load_samples, select, vote_key
from loopwright.loops.errors import UserError
from loopwright.traces.queries import table_names, verifier_label
from loopwright.traces.records import CandidateRole
from loopwright.traces.report_queries import (
    judged_and_graded,
    pairwise_judgements,
    revision_chain,
    run_configs,
    sweep_point_rows,
    task_costs,
)
from loopwright.traces.store import TraceStore
from loopwright.traces.sweeps import sweep_by_name, sweep_names


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
    samples: dict[tuple[str, str, int, str], list[BestOfNSample]]
    # (model, strategy, seed, task_id) -> chain of (correct, vote key) by round
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
        if "sweeps" not in table_names(store):
            raise UserError(f"{db} has no sweeps: run `loopwright sweep` first")
        sw = sweep_by_name(store, name)
        if sw is None:
            known = sweep_names(store)
            raise UserError(
                f"no sweep named {name!r} in {db}; sweeps: {', '.join(known) or 'none'}"
            )
        pts = sweep_point_rows(store, sw["sweep_id"])
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
        labels = {r["name"]: verifier_label(r["config"]) for r in run_configs(store, run_ids)}
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
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in task_costs(store, run_ids):
        out.setdefault(r["run_id"], {})[r["task_id"]] = r
    return out


def _derived(
    point: Point,
    p: dict[str, Any],
    runs: dict[str, list[BestOfNSample]],
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
    first: list[BestOfNSample],
    samples: list[BestOfNSample],
    total: float,
    cost: Callable[[BestOfNSample], float],
) -> float:
    """The first samples' own cost plus their k/N share of what no sample is charged with."""
    rest = max(total - sum(cost(s) for s in samples), 0.0)
    return sum(cost(s) for s in first) + rest * len(first) / len(samples)


_REVISION_LOOPS = ("self-refine", "critic", "reflexion", "two-turn")
_REVISION_ROLES: tuple[CandidateRole, ...] = ("generator", "refiner")
"""The roles of a revision loop's drafts and their revisions."""


def _chains(store: TraceStore, pts: list[dict[str, Any]], data: SweepData) -> None:
    """Per revision-loop run at its largest value: each task's answers by round, graded."""
    top: dict[tuple[str, str, int], dict[str, Any]] = {}
    for p in pts:
        if p["loop"] not in _REVISION_LOOPS or not p["run_id"]:
            continue
        k = (p["model"], p["strategy"], int(p["seed"]))
        if k not in top or (p["value"] or 0) > (top[k]["value"] or 0):
            top[k] = p
    for (model, strategy, seed), p in top.items():
        for r in revision_chain(store, p["run_id"], _REVISION_ROLES):
            data.chains.setdefault((model, strategy, seed, r["task_id"]), []).append(
                (r["passed"], vote_key(r["kind"], r["answer"]))
            )


def _judges(store: TraceStore, run_ids: list[str], data: SweepData) -> None:
    for r in pairwise_judgements(store, run_ids, PAIRWISE):
        data.judge_pairs.append((r["ab"], r["ba"], int(r["la"] or 0), int(r["lb"] or 0)))
    for r in judged_and_graded(store, run_ids, "llm-judge"):
        data.judge_points.append((r["judged"], bool(r["truth"]), int(r["len"] or 0), r["score"]))
