"""Post-hoc pairwise judging: preferences between a run's verified answers, for harvesting.

For every finished task of the given runs, the *candidates* are the generator, refiner and
expander nodes the loop verified (at least one ``in_loop`` verdict) with non-empty content.
Candidates of one task whose normalised texts differ are paired; pairs whose in-loop
verdicts differ (one passed, one failed) come first, the rest after, each group shuffled
under the seed; at most ``pairs_per_task`` pairs per task. Each pair is judged by
:meth:`loopwright.tools.judge.Judge.compare` (both orders) through the project's model client,
so calls are budgeted, retried, cached and traced (``calls`` rows with role ``judge`` and
loop ``judge-pairs``).

Every judgement is one ``verdicts`` row: ``stage="judge"``, ``verifier="llm-judge-pairwise"``,
``node_id`` = answer *a*, ``details`` = the judgement's JSON plus ``a_node_id`` and
``b_node_id``. A pair that already has such a row is skipped, so running again resumes;
a pair whose earlier judgement failed (a model-call error in either order) is judged again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.loops.analysis.pairs import (
    VERIFIER,
    Pair,
    VerifiedAnswer,
    count_text_pairs,
    load_candidates,
    normalise,
    select_pairs,
)
from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, ClientConfig, check_model
from loopwright.loops.models.retry import RetryPolicy
from loopwright.tools.judge import Judge, OrderResult, PairwiseJudgement
from loopwright.traces import TraceStore, TraceWriter, UnknownRun, VerdictRecord, resolve_runs
from pydantic import BaseModel, Field

__all__ = [
    "LOOP",
    "VERIFIER",
    "JudgePairsProgress",
    "JudgePairsReport",
    "Pair",
    "VerifiedAnswer",
    "judge_pairs",
    "normalise",
    "select_pairs",
]

LOOP = "judge-pairs"
"""The ``loop`` of the judge's ``calls`` rows: tells them apart from in-loop judge calls."""


@dataclass
class JudgePairsProgress:
    """Counts so far, for a progress bar."""

    total: int
    done: int = 0
    consistent: int = 0
    flipped: int = 0
    undecided: int = 0
    tokens: int = 0


class JudgePairsReport(BaseModel):
    """What one invocation found and did."""

    db: str = Field(description="Trace database.")
    runs: list[str] = Field(description="Run names judged.")
    judge_model: str = Field(description="The judge's model string.")
    tasks: int = Field(description="Finished tasks of the runs.")
    candidates: int = Field(description="Verified, non-empty answers over those tasks.")
    candidate_pairs: int = Field(description="Distinct-text pairs before the per-task cap.")
    selected: int = Field(description="Pairs within the per-task cap.")
    skipped: int = Field(description="Selected pairs already judged earlier (not redone).")
    judged: int = Field(description="Pairs judged now (one verdict row each).")
    retried: int = Field(description="Of those, pairs whose earlier judgement had failed.")
    consistent: int = Field(description="Judged pairs with the same winner in both orders.")
    flipped: int = Field(description="Judged pairs whose winner changed with the order.")
    undecided: int = Field(description="Judged pairs where an order gave no verdict.")
    failed: int = Field(description="Of the undecided, pairs with a failed model call.")
    not_started: int = Field(description="Pairs left for a later invocation (budget).")
    stopped: str | None = Field(None, description="Why pairs were left, if they were.")
    calls: int = Field(description="Judge samples charged (cache hits included).")
    tokens: int = Field(description="Prompt + completion tokens of those samples.")
    cost_usd: float = Field(description="Dollars, from litellm's cost map.")
    wall_s: float = Field(description="Wall time of the invocation.")


def _pair_seed(seed: int, pair: Pair) -> int:
    blob = f"{seed}|{pair.a.run_id}|{pair.a.task_id}|{pair.a.node_id}|{pair.b.node_id}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def _failed_judgement(model: str, k: int, a: str, b: str, error: str) -> PairwiseJudgement:
    """An undecided judgement for a comparison that raised instead of returning."""
    ab, ba = (
        OrderResult(order=o, raw=[], votes=[], winner=None, agreement=None, error=error)
        for o in ("ab", "ba")
    )
    return PairwiseJudgement(
        judge_model=model,
        winner=None,
        parsed=False,
        position_consistent=None,
        a_first=ab,
        b_first=ba,
        first_position_wins=0,
        second_position_wins=0,
        position_ties=0,
        n_samples=2 * k,
        n_unparsed=2 * k,
        agreement=None,
        a_chars=len(a),
        b_chars=len(b),
    )


def _feedback(j: PairwiseJudgement) -> str:
    if j.position_consistent:
        said = "tie" if j.winner == "tie" else f"{j.winner} preferred"
        return f"{said} in both orders"
    if j.position_consistent is False:
        return (
            f"order flip: a-first picked {j.a_first.winner}, b-first picked "
            f"{j.b_first.winner}; recorded as {j.winner or 'undecided'}"
        )
    errors = dict.fromkeys(e for e in (j.a_first.error, j.b_first.error) if e)
    if errors:
        return f"undecided: judge call failed: {'; '.join(errors)}"[:500]
    missing = [o.order for o in (j.a_first, j.b_first) if o.winner is None]
    first = {"ab": "a-first", "ba": "b-first"}
    return "undecided: no parseable verdict in " + " and ".join(first[o] for o in missing)


def _record(pair: Pair, j: PairwiseJudgement) -> VerdictRecord:
    v = j.to_verdict("a")
    details = j.model_dump(mode="json")
    details["a_node_id"] = pair.a.node_id
    details["b_node_id"] = pair.b.node_id
    return VerdictRecord(
        run_id=pair.a.run_id,
        task_id=pair.a.task_id,
        node_id=pair.a.node_id,
        stage="judge",
        verifier=VERIFIER,
        verifier_version=v.version,
        passed=v.passed,
        score=v.score,
        feedback=_feedback(j),
        details=json.dumps(details),
        latency_s=j.latency_s,
    )


async def judge_pairs(
    db: str,
    runs: Sequence[str],
    model: str,
    *,
    api_base: str | None = None,
    pairs_per_task: int = 4,
    k: int = 1,
    concurrency: int = 4,
    seed: int = 0,
    budget_calls: int | None = None,
    max_tokens: int = 512,
    timeout_s: float = 120.0,
    max_attempts: int = 6,
    backoff_base_s: float = 1.0,
    cache: bool = True,
    with_reference: bool = True,
    on_progress: Callable[[JudgePairsProgress], None] | None = None,
) -> JudgePairsReport:
    """Judge pairs of the runs' verified answers and write one ``judge`` verdict per pair.

    ``budget_calls`` caps the judge samples of this invocation (a comparison costs ``2*k``);
    pairs it leaves are judged by the next invocation. ``with_reference=False`` keeps the
    task's reference answer out of the judge prompt (a self-rewarding judge must not see it).
    Raises UserError on bad input.
    """
    t0 = time.perf_counter()
    if not runs:
        raise UserError("name at least one run with --run NAME")
    for flag, value in (
        ("--pairs-per-task", pairs_per_task),
        ("--k", k),
        ("--concurrency", concurrency),
        ("--max-tokens", max_tokens),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if budget_calls is not None and budget_calls < 2 * k:
        raise UserError(
            f"--budget-calls {budget_calls} is less than one comparison ({2 * k} calls: "
            "both orders times --k)"
        )
    check_model(model, api_base)
    if db != ":memory:" and not Path(db).exists():
        raise UserError(f"no trace database at {db}: run `loopwright run` first")
    store = TraceStore(db)
    try:
        try:
            named = resolve_runs(store, db, runs)
        except UnknownRun as exc:  # a name the user typed
            raise UserError(str(exc)) from None
        run_ids = {n: r["run_id"] for n, r in named.items()}
        tasks, cands, judged = load_candidates(store, list(run_ids.values()))
        done = {key for key, failed in judged.items() if not failed}
        pairs = select_pairs(cands, pairs_per_task=pairs_per_task, seed=seed, judged=done)
        todo = [p for p in pairs if p.key not in done]
        skipped = len(pairs) - len(todo)
        stopped: str | None = None
        if budget_calls is not None and len(todo) * 2 * k > budget_calls:
            stopped = f"call budget of {budget_calls} spent"
        allowed = len(todo) if budget_calls is None else budget_calls // (2 * k)
        todo, left = todo[:allowed], todo[allowed:]
        client_cfg = ClientConfig(
            model=model, api_base=api_base, concurrency=concurrency, timeout_s=timeout_s,
            retry=RetryPolicy(max_attempts=max_attempts, backoff_base_s=backoff_base_s),
            cache=cache,
        )  # fmt: skip
        budget = Budget(BudgetLimits(calls=budget_calls))
        writer = TraceWriter(store)
        try:
            tally = await _judge_all(
                todo,
                tasks,
                _Judging(
                    ModelClient(client_cfg, writer=writer),
                    writer,
                    budget,
                    k,
                    max_tokens,
                    seed,
                    with_reference,
                ),
                concurrency,
                on_progress,
            )
            writer.flush()
        finally:
            writer.close()
    finally:
        store.close()
    if tally.unstarted:
        stopped = stopped or tally.stopped
    return JudgePairsReport(
        db=db,
        runs=list(run_ids),
        judge_model=model,
        tasks=len(tasks),
        candidates=len(cands),
        candidate_pairs=count_text_pairs(cands),
        selected=len(pairs),
        skipped=skipped,
        judged=tally.progress.done,
        retried=sum(1 for p in tally.finished if p.key in judged),
        consistent=tally.progress.consistent,
        flipped=tally.progress.flipped,
        undecided=tally.progress.undecided,
        failed=tally.failed,
        not_started=len(left) + tally.unstarted,
        stopped=stopped,
        calls=budget.calls,
        tokens=budget.tokens,
        cost_usd=budget.usd,
        wall_s=time.perf_counter() - t0,
    )


@dataclass
class _Judging:
    """What every comparison of one invocation shares."""

    client: ModelClient
    writer: TraceWriter
    budget: Budget
    k: int
    max_tokens: int
    seed: int
    with_reference: bool = True


@dataclass
class _Tally:
    progress: JudgePairsProgress
    failed: int = 0
    unstarted: int = 0
    stopped: str | None = None
    finished: list[Pair] = field(default_factory=list)


async def _judge_all(
    todo: Sequence[Pair],
    tasks: dict[tuple[str, str], dict[str, Any]],
    how: _Judging,
    concurrency: int,
    on_progress: Callable[[JudgePairsProgress], None] | None,
) -> _Tally:
    """Judge ``todo`` with ``concurrency`` comparisons in flight; one verdict row each."""
    tally = _Tally(JudgePairsProgress(total=len(todo)))
    progress = tally.progress
    if on_progress:
        on_progress(progress)
    sem = asyncio.Semaphore(concurrency)

    async def one(pair: Pair) -> None:
        task = tasks[(pair.a.run_id, pair.a.task_id)]
        seed = _pair_seed(how.seed, pair)
        judge = Judge(how.client, k=how.k, max_tokens=how.max_tokens, seed=seed)
        where = CallContext(run_id=pair.a.run_id, task_id=pair.a.task_id, loop=LOOP, role="judge")
        async with sem:
            try:
                j = await judge.compare(
                    task["prompt"] or "",
                    pair.a.content,
                    pair.b.content,
                    reference=task["reference"] if how.with_reference else None,
                    budget=how.budget,
                    context=where,
                )
            except BudgetExhausted as exc:  # left for the next invocation
                tally.unstarted += 1
                tally.stopped = tally.stopped or exc.reason
                return
            except UserError:
                raise
            except Exception as exc:  # a bug or an outside failure: recorded, the rest goes on
                lines = str(exc).strip().splitlines()
                msg = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
                j = _failed_judgement(how.client.model, how.k, pair.a.content, pair.b.content, msg)
        how.writer.write(_record(pair, j))
        tally.finished.append(pair)
        if j.position_consistent is True:
            progress.consistent += 1
        elif j.position_consistent is False:
            progress.flipped += 1
        else:
            progress.undecided += 1
            tally.failed += j.error is not None
        progress.done += 1
        progress.tokens = how.budget.tokens
        if on_progress:
            on_progress(progress)

    try:
        async with asyncio.TaskGroup() as group:
            for pair in todo:
                group.create_task(one(pair))
    except BaseExceptionGroup as eg:  # the first failure itself, e.g. a rejected API key
        raise eg.exceptions[0] from None
    return tally
