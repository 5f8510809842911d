"""Self-refine: generate -> verify -> critique -> refine -> verify ...

Stops when the in-loop verifier passes, when the critic finds nothing to fix, after
``max_rounds`` refinements, or when the budget runs out (returning the best draft so far).
Every draft and critique is a node; a refinement's parent is the draft it revises.

Prompts are chosen by task kind (math, code, text). On code tasks the critic and the refiner
also see the verifier's feedback on the draft (the first failing test), and drafts get
``code_max_tokens``.

The loop is a plain sequence, so it is written as a loop function (``@loop``): LangGraph runs
it as a one-node graph, and a budget that runs out at any step ends it with the best draft so
far (stop reason ``budget: ...``).
"""

from __future__ import annotations

import re

from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec
from loopwright.loops.graphs.common import (
    Candidate,
    add_candidate,
    add_note,
    chain_outcome,
    draft_messages,
    flavour,
    max_tokens_for,
    messages,
    shown,
    verify,
)
from loopwright.loops.graphs.function import loop
from loopwright.loops.prompts import render
from pydantic import BaseModel, ConfigDict, Field

PROMPTS = "self_refine"
_NO_ISSUES = re.compile(r"\bno issues\b", re.IGNORECASE)


class SelfRefineOptions(BaseModel):
    """Options of the self-refine loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rounds: int = Field(3, ge=0, le=50, description="Refinements after the first draft.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of drafts.")
    critic_temperature: float = Field(0.3, ge=0, le=2, description="Temperature of critiques.")
    max_tokens: int = Field(256, gt=0, description="Completion cap of drafts and refinements.")
    code_max_tokens: int = Field(
        384, gt=0, description="Completion cap of drafts and refinements on code tasks."
    )
    critic_max_tokens: int = Field(128, gt=0, description="Completion cap of critiques.")
    stop_on_no_issues: bool = Field(True, description="Stop when the critic finds nothing to fix.")


def _test_feedback(draft: Candidate) -> str:
    return draft["feedback"] or "not run (this task has no tests)."


async def generate(ctx: LoopContext[SelfRefineOptions]) -> Candidate:
    """The first draft (round 0)."""
    opts = ctx.options
    [s] = await ctx.sample(
        draft_messages(ctx.task),
        role="generator",
        round_=0,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    return add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=0)


async def critique(ctx: LoopContext[SelfRefineOptions], last: Candidate) -> str:
    """The critic's reply on ``last`` (a node under it, in its round)."""
    opts = ctx.options
    if ctx.task.kind == "code":
        # A failed test is evidence: the critic explains it instead of judging from scratch.
        key = "critique_code" if last["feedback"] else "critique_code_untested"
        prompt = render(
            PROMPTS,
            key,
            question=ctx.task.prompt.rstrip(),
            answer=shown(ctx.task, last),
            test_feedback=_test_feedback(last),
        )
    else:
        prompt = render(PROMPTS, "critique", question=ctx.task.prompt, answer=last["text"])
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="critic",
        round_=last["round"],
        temperature=opts.critic_temperature,
        max_tokens=opts.critic_max_tokens,
    )
    add_note(ctx, s, role="critic", about=last)
    return s.text


async def refine(ctx: LoopContext[SelfRefineOptions], last: Candidate, feedback: str) -> Candidate:
    """A revision of ``last`` from the critic's ``feedback`` (its child, one round later)."""
    opts = ctx.options
    round_ = last["round"] + 1
    code = ctx.task.kind == "code"
    prompt = render(
        PROMPTS,
        f"refine_{flavour(ctx.task)}",
        question=ctx.task.prompt.rstrip() if code else ctx.task.prompt,
        answer=shown(ctx.task, last),
        feedback=feedback,
        test_feedback=_test_feedback(last),  # only the code template uses it
    )
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="refiner",
        round_=round_,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    return add_candidate(
        ctx, s, role="refiner", parent_id=last["node_id"], depth=last["depth"] + 1, round_=round_
    )


@loop(
    description="generate -> verify -> critique -> refine, until verified, critic satisfied, "
    "max rounds or budget",
    options=SelfRefineOptions,
    register=False,  # built-in loops are found by name without registering
)
async def self_refine(ctx: LoopContext[SelfRefineOptions]) -> LoopOutcome:
    opts = ctx.options
    drafts = [await generate(ctx)]
    stop_reason: str | None = None
    while True:
        drafts[-1] = await verify(ctx, drafts[-1])
        last = drafts[-1]
        if last["passed"] or last["round"] >= opts.max_rounds:
            break
        feedback = await critique(ctx, last)
        if opts.stop_on_no_issues and _NO_ISSUES.search(feedback):
            stop_reason = "critic_satisfied"
            break
        drafts.append(await refine(ctx, last, feedback))
    return chain_outcome(
        drafts, stop_reason, last_round=opts.max_rounds, at_last_round="max_rounds"
    )


SELF_REFINE: LoopSpec[SelfRefineOptions] = self_refine
