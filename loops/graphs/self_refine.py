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
from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec, budget_guard, ctx_of
from loopwright.loops.graphs.common import unless_stopped
from loopwright.loops.models.config import Sample
from loopwright.loops.prompts import render
from loopwright.loops.verify import extract_answer, run_verifier, verdict_record
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


class Draft(TypedDict):
    node_id: str
    text: str
    answer: str | None
    passed: bool | None
    score: float | None
    feedback: str | None
    round: int
    depth: int


class State(TypedDict, total=False):
    drafts: list[Draft]
    critique: str | None
    critique_id: str | None
    stop_reason: str | None


def _draft(ctx: LoopContext, s: Sample, *, round_: int, depth: int) -> Draft:
    """A not-yet-verified draft from one sample."""
    answer = extract_answer(ctx.task, s.text)
    return Draft(
        node_id=s.node_id,
        text=s.text,
        answer=answer,
        passed=None,
        score=None,
        feedback=None,
        round=round_,
        depth=depth,
    )


def _messages(ctx: LoopContext, user: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": render(PROMPTS, "system")},
        {"role": "user", "content": user},
    ]


def _flavour(ctx: LoopContext) -> str:
    return ctx.task.kind if ctx.task.kind in ("math", "code") else "text"


def _draft_tokens(ctx: LoopContext) -> int:
    opts: SelfRefineOptions = ctx.options  # type: ignore[assignment]
    return opts.code_max_tokens if ctx.task.kind == "code" else opts.max_tokens


def _shown(ctx: LoopContext, draft: Draft) -> str:
    """The draft as critic and refiner see it: the extracted program for code, else the text."""
    if ctx.task.kind == "code":
        return (draft["answer"] or draft["text"]).strip()
    return draft["text"]


def _test_feedback(draft: Draft) -> str:
    return draft["feedback"] or "not run (this task has no tests)."


@budget_guard
async def generate(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    opts: SelfRefineOptions = ctx.options  # type: ignore[assignment]
    prompt = render(PROMPTS, f"generate_{_flavour(ctx)}", question=ctx.task.prompt.rstrip())
    [s] = await ctx.sample(
        _messages(ctx, prompt),
        role="generator",
        round_=0,
        temperature=opts.temperature,
        max_tokens=_draft_tokens(ctx),
    )
    draft = _draft(ctx, s, round_=0, depth=0)
    ctx.add_node(s, role="generator", parent_id=None, depth=0, round_=0, answer=draft["answer"])
    return {"drafts": [draft]}


async def verify(state: State, config: RunnableConfig) -> dict[str, Any]:
    ctx = ctx_of(config)
    drafts = list(state["drafts"])
    last = drafts[-1]
    if ctx.verifier is None:
        return {}
    v = await run_verifier(ctx.verifier, ctx.task, last["text"], ctx)
    ctx.record_verdict(
        verdict_record(
            v, run_id=ctx.run_id, task_id=ctx.task.id, node_id=last["node_id"], stage="in_loop"
        )
    )
    drafts[-1] = {**last, "passed": v.passed, "score": v.score, "feedback": v.feedback}
    for node in ctx.nodes:
        if node.node_id == last["node_id"]:
            node.score = v.score
    return {"drafts": drafts}


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
            answer=_shown(ctx, last),
            test_feedback=_test_feedback(last),
        )
    else:
        prompt = render(PROMPTS, "critique", question=ctx.task.prompt, answer=last["text"])
    [s] = await ctx.sample(
        _messages(ctx, prompt),
        role="critic",
        round_=last["round"],
        temperature=opts.critic_temperature,
        max_tokens=opts.critic_max_tokens,
    )
    ctx.add_node(
        s, role="critic", parent_id=last["node_id"], depth=last["depth"] + 1, round_=last["round"]
    )
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
        f"refine_{_flavour(ctx)}",
        question=ctx.task.prompt.rstrip() if code else ctx.task.prompt,
        answer=_shown(ctx, last),
        feedback=state.get("critique") or "",
        test_feedback=_test_feedback(last),  # only the code template uses it
    )
    [s] = await ctx.sample(
        _messages(ctx, prompt),
        role="refiner",
        round_=round_,
        temperature=opts.temperature,
        max_tokens=_draft_tokens(ctx),
    )
    draft = _draft(ctx, s, round_=round_, depth=last["depth"] + 1)
    ctx.add_node(
        s,
        role="refiner",
        parent_id=last["node_id"],
        depth=draft["depth"],
        round_=round_,
        answer=draft["answer"],
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


def best_draft(drafts: list[Draft]) -> Draft | None:
    """The last passing draft, else the highest-scoring one (latest on ties)."""
    if not drafts:
        return None
    return max(reversed(drafts), key=lambda d: (bool(d["passed"]), d["score"] or 0.0, d["round"]))


def outcome(ctx: LoopContext, state: dict[str, Any]) -> LoopOutcome:
    drafts: list[Draft] = state.get("drafts") or []
    best = best_draft(drafts)
    last = drafts[-1] if drafts else None
    reason = state.get("stop_reason")
    if reason is None and last is not None:
        if last["passed"]:
            reason = "verified"
        elif ctx.verifier is None or last["round"] >= ctx.options.max_rounds:  # type: ignore[attr-defined]
            reason = "max_rounds"
        else:
            reason = "unknown"
    return LoopOutcome(
        final_node_id=best["node_id"] if best else None,
        final_text=best["text"] if best else None,
        answer=best["answer"] if best else None,
        verified=best["passed"] if best else None,
        score=best["score"] if best else None,
        stop_reason=reason or "no_draft",
        rounds=last["round"] if last else 0,
    )


def initial_state(ctx: LoopContext) -> dict[str, Any]:
    return {"drafts": [], "critique": None, "critique_id": None, "stop_reason": None}


SELF_REFINE: LoopSpec[SelfRefineOptions] = LoopSpec(
    name="self-refine",
    description="generate -> verify -> critique -> refine, until verified, critic satisfied, "
    "max rounds or budget",
    options=SelfRefineOptions,
    build=build,
    initial_state=initial_state,
    outcome=outcome,
    recursion_limit=lambda o: 4 * (o.max_rounds + 2) + 10,
)
