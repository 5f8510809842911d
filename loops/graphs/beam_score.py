"""Parts of step-level beam search: steps, budget-aware fan-out, and the three scorers.

A *partial* is a solution prefix (its steps joined by the delimiter) as beam state carries
it. Scorers rate partials: an LLM value prompt (``value``), a process reward model over HTTP
(``prm``) or the fraction of verifier-passing completions (``rollout``). Every scorer returns
one value per partial (None when it could not score it) and the budget reason when the
budget cut it short; nodes are recorded after the fan-out, in input order, so the trace does
not depend on which request finished first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from loopwright.loops.errors import BudgetExhausted
from loopwright.loops.graphs.common import (
    Candidate,
    add_candidate,
    draft_prompt,
    messages,
    verify_all,
)
from loopwright.loops.graphs.context import LoopContext
from loopwright.loops.models.config import Sample
from loopwright.loops.prompts import render
from loopwright.loops.tasks import Task
from loopwright.tools.judge_parse import parse_score

if TYPE_CHECKING:
    from loopwright.loops.graphs.beam import BeamOptions

PROMPTS = "beam"
T = TypeVar("T")


class Partial(Candidate):
    """A solution prefix in the search: a Candidate plus its search fields."""

    value: float | None
    terminal: bool
    tree: int
    step: str


# -- steps -------------------------------------------------------------------------------------

# Explicit final-answer markers only: math_check.extract_answer falls back to "the last
# number", which almost every arithmetic step has.
_FINAL = re.compile(r"\\boxed\s*\{|^\s*####|\bthe\s+(?:final\s+)?answer\s+is\b", re.I | re.M)
_FENCE = re.compile(r"^\s*```", re.M)


def split_step(text: str, delimiter: str) -> str:
    """The step in a completion: text up to the first delimiter, trailing whitespace dropped.

    Providers honour ``stop`` and drop the delimiter; one that ignores it returns more text,
    which is cut here. Leading delimiters and blank lines are skipped.
    """
    body = text
    while True:
        stripped = body.lstrip("\n")
        if stripped.startswith(delimiter):
            stripped = stripped[len(delimiter) :]
        if stripped == body:
            break
        body = stripped
    return body.split(delimiter, 1)[0].rstrip()


def has_final_answer(task: Task, step: str, content: str) -> bool:
    """Whether the solution is finished: a closed code block (code), else an answer marker."""
    if task.kind == "code":
        return len(_FENCE.findall(content)) >= 2
    return _FINAL.search(step) is not None


def step_prompt(task: Task, steps: str) -> str:
    """The prompt for the next step after ``steps`` (empty: the first step)."""
    tail = render(PROMPTS, "next_step", steps=steps) if steps else render(PROMPTS, "first_step")
    return f"{draft_prompt(task)}\n\n{tail}"


# -- budget-aware fan-out ------------------------------------------------------------------------


async def budgeted(
    ctx: LoopContext, jobs: Sequence[tuple[int, Callable[[], Awaitable[T]]]]
) -> tuple[list[T | None], str | None]:
    """Run ``(samples, start)`` jobs concurrently, as many leading ones as the budget fits.

    Concurrent requests would all pass the budget check before any is charged, so the call
    budget is applied here up front. Returns one result per job (None: not run, or stopped by
    the budget) and the budget reason, if any.
    """
    fit, reason, total = len(jobs), None, 0
    for i, (n, _) in enumerate(jobs):
        reason = ctx.budget.exhausted_reason(calls=total + n)
        if reason:
            fit = i
            break
        total += n
    done = await asyncio.gather(*(start() for _, start in jobs[:fit]), return_exceptions=True)
    out: list[T | None] = []
    for r in done:
        if isinstance(r, BudgetExhausted):  # the run budget, spent by another task meanwhile
            reason = reason or r.reason
            out.append(None)
        elif isinstance(r, BaseException):
            raise r
        else:
            out.append(r)
    return out + [None] * (len(jobs) - fit), reason


# -- scorers -------------------------------------------------------------------------------------

Scores = tuple[list[float | None], str | None]


def judge_value(text: str) -> float | None:
    """A value reply's "Score: N" (1..10) mapped to 0..1; None when there is no valid score."""
    score, _ = parse_score(text, (1, 10))
    return None if score is None else (score - 1) / 9


async def value_scores(ctx: LoopContext[BeamOptions], parts: Sequence[Partial]) -> Scores:
    """An LLM rates each partial; the reply is a ``value`` node under the partial."""
    opts = ctx.options

    def job(i: int, p: Partial) -> Callable[[], Awaitable[list[Sample]]]:
        prompt = render(PROMPTS, "value", question=ctx.task.prompt.rstrip(), partial=p["text"])
        return lambda: ctx.sample(
            messages(prompt),
            role="value",
            round_=p["depth"],
            temperature=opts.value_temperature,
            max_tokens=opts.value_max_tokens,
            seed=ctx.call_seed("value", p["depth"], i),
        )

    got, reason = await budgeted(ctx, [(1, job(i, p)) for i, p in enumerate(parts)])
    values: list[float | None] = []
    for p, samples in zip(parts, got, strict=True):
        if samples is None:
            values.append(None)
            continue
        [s] = samples
        v = judge_value(s.text)
        ctx.add_node(
            s,
            role="value",
            parent_id=p["node_id"],
            depth=p["depth"] + 1,
            round_=p["depth"],
            score=v,
        )
        values.append(v)
    return values, reason


async def prm_scores(ctx: LoopContext[BeamOptions], parts: Sequence[Partial]) -> Scores:
    """A process reward model scores each partial (on its own scale; None on failure)."""
    from loopwright.tools.reward_model import RewardModel

    opts = ctx.options
    assert opts.prm_api_base is not None and opts.prm_model is not None  # options validated
    prm = RewardModel(
        opts.prm_api_base,
        opts.prm_model,
        opts.prm_api_key_env,
        endpoint=opts.prm_endpoint,
    )
    question = ctx.task.prompt.rstrip()

    def job(p: Partial) -> Callable[[], Awaitable[Any]]:
        return lambda: prm.score(question, p["text"], budget=ctx.budget)

    got, reason = await budgeted(ctx, [(1, job(p)) for p in parts])
    return [None if r is None else r.score for r in got], reason


async def rollout_scores(ctx: LoopContext[BeamOptions], parts: Sequence[Partial]) -> Scores:
    """Complete each partial ``rollouts`` times; value = fraction the in-loop verifier passes.

    Rollouts are ``rollout`` nodes under the partial, each with its verdict row. On code
    tasks a rollout is the whole function the model wrote; otherwise the partial plus the
    continuation.
    """
    opts = ctx.options
    code = ctx.task.kind == "code"
    key = "rollout_code" if code else "rollout"
    tokens = opts.code_max_tokens if code else opts.rollout_max_tokens

    def job(i: int, p: Partial) -> Callable[[], Awaitable[list[Sample]]]:
        prompt = f"{draft_prompt(ctx.task)}\n\n{render(PROMPTS, key, partial=p['text'])}"
        return lambda: ctx.sample(
            messages(prompt),
            role="rollout",
            round_=p["depth"],
            n=opts.rollouts,
            temperature=opts.temperature,
            max_tokens=tokens,
            seed=ctx.call_seed("rollout", p["depth"], i),
        )

    got, reason = await budgeted(ctx, [(opts.rollouts, job(i, p)) for i, p in enumerate(parts)])
    runs: list[list[Candidate]] = []
    for p, samples in zip(parts, got, strict=True):
        runs.append(
            [
                add_candidate(
                    ctx,
                    s,
                    role="rollout",
                    parent_id=p["node_id"],
                    depth=p["depth"] + 1,
                    round_=p["depth"],
                    content=s.text if code else p["text"] + opts.delimiter + s.text,
                )
                for s in samples or []
            ]
        )
    checked = await asyncio.gather(*(verify_all(ctx, r) for r in runs))
    values = [sum(bool(c["passed"]) for c in cs) / len(cs) if cs else None for cs in checked]
    return values, reason


SCORERS: dict[str, Callable[[LoopContext[BeamOptions], Sequence[Partial]], Awaitable[Scores]]] = {
    "value": value_scores,
    "prm": prm_scores,
    "rollout": rollout_scores,
}
"""Scorer name -> how it rates a depth's partials."""
