"""Self-refine: generate -> verify -> critique -> refine -> verify ...

Stops when the in-loop verifier passes, when the critic finds nothing to fix, after
``max_rounds`` refinements, or when the budget runs out (returning the best draft so far).
Every draft and critique is a node; a refinement's parent is the draft it revises.

Prompts are chosen by task kind (math, code, text). On code tasks the critic and the refiner
also see the verifier's feedback on the draft (the first failing test), and drafts get
``code_max_tokens``.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from loopwright.loops.graphs.base import LoopContext, LoopSpec, budget_guard, ctx_of
from loopwright.loops.graphs.common import (
    Candidate,
    add_candidate,
    add_note,
    draft_messages,
    flavour,
    max_tokens_for,
    messages,
    rounds_outcome,
    shown,
    unless_stopped,
    verify_last,
)
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


class State(TypedDict, total=False):
    drafts: list[Candidate]
    critique: str | None
    critique_id: str | None
    stop_reason: str | None


def _test_feedback(draft: Candidate) -> str:
    return draft["feedback"] or "not run (this task has no tests)."


@budget_guard
async def generate(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    opts: SelfRefineOptions = ctx.options  # type: ignore[assignment]
    [s] = await ctx.sample(
        draft_messages(ctx.task),
        role="generator",
        round_=0,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    return {"drafts": [add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=0)]}


async def verify(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    if ctx.verifier is None:
        return {}
    return {"drafts": await verify_last(ctx, list(state["drafts"]))}


@budget_guard
async def critique(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    opts: SelfRefineOptions = ctx.options  # type: ignore[assignment]
    last = state["drafts"][-1]
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
    update: dict[str, Any] = {"critique": s.text, "critique_id": s.node_id}
    if opts.stop_on_no_issues and _NO_ISSUES.search(s.text):
        update["stop_reason"] = "critic_satisfied"
    return update


@budget_guard
async def refine(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    opts: SelfRefineOptions = ctx.options  # type: ignore[assignment]
    last = state["drafts"][-1]
    round_ = last["round"] + 1
    code = ctx.task.kind == "code"
    prompt = render(
        PROMPTS,
        f"refine_{flavour(ctx.task)}",
        question=ctx.task.prompt.rstrip() if code else ctx.task.prompt,
        answer=shown(ctx.task, last),
        feedback=state.get("critique") or "",
        test_feedback=_test_feedback(last),  # only the code template uses it
    )
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="refiner",
        round_=round_,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    draft = add_candidate(
        ctx, s, role="refiner", parent_id=last["node_id"], depth=last["depth"] + 1, round_=round_
    )
    return {"drafts": [*state["drafts"], draft]}


# Routers are async so LangGraph calls them on the event loop instead of a thread pool.
after_generate = unless_stopped("verify", needs="drafts")
after_critique = unless_stopped("refine")
after_refine = unless_stopped("verify")


async def after_verify(state: State, config: RunnableConfig) -> str:
    opts: SelfRefineOptions = ctx_of(config).options  # type: ignore[assignment]
    last = state["drafts"][-1]
    if state.get("stop_reason"):
        return END
    if last["passed"]:
        return END
    if last["round"] >= opts.max_rounds:
        return END
    return "critique"


def build() -> Any:
    g = StateGraph(State)
    g.add_node("generate", generate)
    g.add_node("verify", verify)
    g.add_node("critique", critique)
    g.add_node("refine", refine)
    g.add_edge(START, "generate")
    g.add_conditional_edges("generate", after_generate, ["verify", END])
    g.add_conditional_edges("verify", after_verify, ["critique", END])
    g.add_conditional_edges("critique", after_critique, ["refine", END])
    g.add_conditional_edges("refine", after_refine, ["verify", END])
    return g.compile()


def initial_state(ctx: LoopContext) -> dict[str, Any]:
    return {"drafts": [], "critique": None, "critique_id": None, "stop_reason": None}


SELF_REFINE: LoopSpec[SelfRefineOptions] = LoopSpec(
    name="self-refine",
    description="generate -> verify -> critique -> refine, until verified, critic satisfied, "
    "max rounds or budget",
    options=SelfRefineOptions,
    build=build,
    initial_state=initial_state,
    outcome=rounds_outcome,
    recursion_limit=lambda o: 4 * (o.max_rounds + 2) + 10,
)
