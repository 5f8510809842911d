"""CRITIC: generate -> verify (tool) -> [search] -> [critique] -> refine -> verify ...

Unlike self-refine, the refiner is told what the *tools* found: the math checker's verdict,
the first failing test of a code task and, with ``search_index`` set, the evidence a local
search index (built with ``loopwright search index``) returns for the question. An optional
model critique (``critique=True``) reads the same tool output and is added to the refine
prompt. Stops when the in-loop verifier passes, after ``max_rounds`` refinements, or when the
budget runs out (best draft so far). Without a verifier and without a search index there is
no tool feedback to refine from, so the loop stops after the first draft ("no_verifier").

Nodes: every draft (role generator/refiner; a refinement's parent is the draft it revises)
gets a verdict row; the evidence block (role "evidence") and critiques (role "critic") hang
off the draft they were gathered for.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from loopwright.loops.graphs.base import LoopContext, LoopSpec, budget_guard
from loopwright.loops.graphs.common import (
    END,
    Candidate,
    add_candidate,
    add_note,
    draft_prompt,
    flavour,
    max_tokens_for,
    messages,
    rounds_outcome,
    shown,
    unless_stopped,
    verify_last,
)
from loopwright.loops.prompts import render
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

PROMPTS = "critic"


class CriticOptions(BaseModel):
    """Options of the CRITIC loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_rounds: int = Field(3, ge=0, le=50, description="Refinements after the first draft.")
    temperature: float = Field(
        0.7, ge=0, le=2, description="Temperature of drafts and refinements."
    )
    max_tokens: int = Field(256, gt=0, description="Completion cap of drafts and refinements.")
    code_max_tokens: int = Field(
        384, gt=0, description="Completion cap of drafts and refinements on code tasks."
    )
    search_index: str | None = Field(
        None, description="Local search index (`loopwright search index`) for evidence."
    )
    search_k: int = Field(3, ge=1, le=20, description="Search results in the evidence block.")
    evidence_chars: int = Field(
        400, ge=50, le=4000, description="Characters kept per search result."
    )
    critique: bool = Field(
        False, description="Let a model critique the draft from the tool output before refining."
    )
    critic_temperature: float = Field(0.3, ge=0, le=2, description="Temperature of critiques.")
    critic_max_tokens: int = Field(128, gt=0, description="Completion cap of critiques.")

    @field_validator("search_index")
    @classmethod
    def _index_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(
                f"no search index at {v}; build one with `loopwright search index SOURCE "
                f"--index {v}`"
            )
        return v


class State(TypedDict, total=False):
    drafts: list[Candidate]
    next: str  # the step after verify (or search), decided there
    evidence: str | None
    critique: str | None
    stop_reason: str | None


def verdict_line(ctx: LoopContext[CriticOptions], cand: Candidate) -> str:
    """The verifier's feedback on ``cand``, labelled by task kind."""
    if ctx.verifier is None or cand["passed"] is None:
        return render(PROMPTS, "verdict_none")
    return render(PROMPTS, f"verdict_{flavour(ctx.task)}", feedback=cand["feedback"] or "failed")


def _section(key: str, **fields: str | None) -> str:
    """An optional prompt block: empty when its content is empty."""
    if not any(fields.values()):
        return ""
    return "\n" + render(PROMPTS, key, **fields) + "\n"


def _question(ctx: LoopContext[CriticOptions]) -> str:
    return ctx.task.prompt.rstrip()


@budget_guard
async def generate(state: State, runtime: Runtime[LoopContext[CriticOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    [s] = await ctx.sample(
        messages(draft_prompt(ctx.task)),
        role="generator",
        round_=0,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    return {"drafts": [add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=0)]}


def _feedback_step(opts: CriticOptions) -> str:
    return "critique" if opts.critique else "refine"


def _after_check(ctx: LoopContext[CriticOptions], last: Candidate, evidence: str | None) -> str:
    """The step after verifying ``last``: the end, the search, or the feedback step."""
    opts = ctx.options
    if last["passed"] or last["round"] >= opts.max_rounds:
        return END
    if ctx.verifier is None and opts.search_index is None:
        return END  # no tool has anything to say: nothing to refine from
    if opts.search_index is not None and evidence is None:
        return "search"
    return _feedback_step(opts)


async def check(state: State, runtime: Runtime[LoopContext[CriticOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    drafts = await verify_last(ctx, state["drafts"])
    return {"drafts": drafts, "next": _after_check(ctx, drafts[-1], state.get("evidence"))}


def _evidence(index_path: str, query: str, k: int, max_chars: int) -> str:
    from loopwright.tools.search import LocalIndex  # sqlite only when a loop searches

    with LocalIndex(index_path) as index:
        return index.evidence(query, k, max_chars)


async def search(state: State, runtime: Runtime[LoopContext[CriticOptions]]) -> dict[str, Any]:
    """Fetch the evidence block for the question once; it is the same every round."""
    ctx = runtime.context
    opts = ctx.options
    assert opts.search_index is not None
    text = await asyncio.to_thread(
        _evidence, opts.search_index, _question(ctx), opts.search_k, opts.evidence_chars
    )
    add_note(ctx, None, role="evidence", about=state["drafts"][-1], content=text)
    return {"evidence": text, "next": _feedback_step(opts)}


@budget_guard
async def critique(state: State, runtime: Runtime[LoopContext[CriticOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    last = state["drafts"][-1]
    prompt = render(
        PROMPTS,
        "critique",
        question=_question(ctx),
        answer=shown(ctx.task, last),
        verdict=verdict_line(ctx, last),
        evidence_section=_section("evidence_section", evidence=state.get("evidence")),
    )
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="critic",
        round_=last["round"],
        temperature=opts.critic_temperature,
        max_tokens=opts.critic_max_tokens,
    )
    add_note(ctx, s, role="critic", about=last)
    return {"critique": s.text.strip()}


@budget_guard
async def refine(state: State, runtime: Runtime[LoopContext[CriticOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    last = state["drafts"][-1]
    round_ = last["round"] + 1
    prompt = render(
        PROMPTS,
        f"refine_{flavour(ctx.task)}",
        question=_question(ctx),
        answer=shown(ctx.task, last),
        verdict=verdict_line(ctx, last),
        evidence_section=_section("evidence_section", evidence=state.get("evidence")),
        critique_section=_section("critique_section", critique=state.get("critique")),
    )
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="refiner",
        round_=round_,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    cand = add_candidate(
        ctx, s, role="refiner", parent_id=last["node_id"], depth=last["depth"] + 1, round_=round_
    )
    # A critique is about one draft; the next round gets a fresh one (if critiques are on).
    return {"drafts": [*state["drafts"], cand], "critique": None}


# Routers read the state only (LangGraph resolves a router's annotations when it builds the
# graph, and Runtime is imported for type checkers only); nodes put what they decided from the
# options there. Async, so LangGraph calls them on the event loop instead of a thread pool.
after_sample = unless_stopped("verify", needs="drafts")
after_critique = unless_stopped("refine")


async def decided(state: State) -> str:
    """The step the verify or search node chose."""
    return state["next"]


def build() -> Any:
    from langgraph.graph import START, StateGraph

    g = StateGraph(State, context_schema=LoopContext)
    g.add_node("generate", generate)
    g.add_node("verify", check)
    g.add_node("search", search)
    g.add_node("critique", critique)
    g.add_node("refine", refine)
    g.add_edge(START, "generate")
    g.add_conditional_edges("generate", after_sample, ["verify", END])
    g.add_conditional_edges("verify", decided, ["search", "critique", "refine", END])
    g.add_conditional_edges("search", decided, ["critique", "refine"])
    g.add_conditional_edges("critique", after_critique, ["refine", END])
    g.add_conditional_edges("refine", after_sample, ["verify", END])
    return g.compile()


def initial_state(ctx: LoopContext[CriticOptions]) -> dict[str, Any]:
    return {"drafts": [], "evidence": None, "critique": None, "stop_reason": None}


CRITIC: LoopSpec[CriticOptions] = LoopSpec(
    name="critic",
    description="generate -> verify with tools -> refine from the tool feedback (checker "
    "verdict, failing test, search evidence), until verified, max rounds or budget",
    options=CriticOptions,
    build=build,
    initial_state=initial_state,
    outcome=rounds_outcome,
    recursion_limit=lambda o: 4 * (o.max_rounds + 2) + 10,
)
