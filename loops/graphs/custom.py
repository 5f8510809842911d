"""Custom loops: compose node factories (ours or your own) into a LangGraph graph.

A custom loop gets what the built-in ones get -- every call, candidate and verdict traced,
per-task and per-run budgets, concurrency across tasks, the held-out grader, ``--resume`` --
without extra code, because all of that lives in the runner and in ``LoopContext``::

    from langgraph.graph import END, START, StateGraph
    from loopwright.loops.graphs.custom import (
        CandidatesState, define_loop, make_generate, make_refine, make_verify,
    )

    def build():
        g = StateGraph(CandidatesState)
        g.add_node("generate", make_generate(n=4))
        g.add_node("verify", make_verify())
        g.add_node("refine", make_refine())
        g.add_edge(START, "generate")
        g.add_edge("generate", "verify")
        g.add_conditional_edges("verify", until_verified(max_rounds=2), ["refine", END])
        g.add_edge("refine", "verify")
        return g.compile()

    define_loop("generate-refine", build, register=True)   # now: loopwright run generate-refine

Nodes are ``async def node(state, config) -> dict``; inside, ``ctx_of(config)`` is the
task's ``LoopContext`` (task, model client, verifier, budget, options) and the helpers in
``loopwright.loops.graphs.common`` record candidates and verdicts. Routers are plain
(async) functions of the state. See ``examples/custom_loop.py`` for a whole file.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END
from loopwright.loops.graphs import common
from loopwright.loops.graphs import register as _register
from loopwright.loops.graphs.base import LoopOutcome, LoopSpec, budget_guard, ctx_of
from loopwright.loops.graphs.context import LoopContext
from loopwright.loops.prompts import render
from pydantic import BaseModel, ConfigDict

Node = Callable[[dict[str, Any], RunnableConfig], Awaitable[dict[str, Any]]]


class CandidatesState(TypedDict, total=False):
    """State of a custom loop: every candidate so far (appended by nodes), and why it stopped."""

    candidates: Annotated[list[common.Candidate], operator.add]
    verified: list[common.Candidate]
    round: int
    stop_reason: str | None


class NoOptions(BaseModel):
    """A loop without options (``-o`` is rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def make_generate(
    n: int = 1, *, temperature: float = 0.7, max_tokens: int = 256, code_max_tokens: int = 384
) -> Node:
    """A node that samples ``n`` first drafts (one request) and appends them as candidates."""

    @budget_guard
    async def generate(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ctx = ctx_of(config)
        samples = await ctx.sample(
            common.messages(common.draft_prompt(ctx.task)),
            role="generator",
            round_=0,
            n=n,
            temperature=temperature,
            max_tokens=common.max_tokens_for(ctx.task, max_tokens, code_max_tokens),
        )
        cands = [
            common.add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=0)
            for s in samples
        ]
        return {"candidates": cands, "round": 0}

    return generate


def make_verify() -> Node:
    """A node that runs the in-loop verifier on every candidate not verified yet."""

    async def verify(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ctx = ctx_of(config)
        done = {c["node_id"] for c in state.get("verified") or []}
        todo = [c for c in state.get("candidates") or [] if c["node_id"] not in done]
        checked = await common.verify_all(ctx, todo)
        return {"verified": [*(state.get("verified") or []), *checked]}

    return verify


def make_refine(
    *, temperature: float = 0.7, max_tokens: int = 256, code_max_tokens: int = 384
) -> Node:
    """A node that revises the best failed candidate, with the verifier's feedback in the prompt."""

    @budget_guard
    async def refine(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ctx = ctx_of(config)
        target = common.best(state.get("verified") or [])
        if target is None:
            return {"stop_reason": "nothing to refine"}
        round_ = int(state.get("round") or 0) + 1
        flavour = common.flavour(ctx.task)
        prompt = render(
            common.DRAFT_PROMPTS,
            f"refine_{flavour}",
            question=ctx.task.prompt.rstrip(),
            answer=(target["answer"] if flavour == "code" else None) or target["text"],
            feedback=target["feedback"] or "The answer did not pass the check.",
            test_feedback=target["feedback"] or "",
        )
        [s] = await ctx.sample(
            common.messages(prompt),
            role="refiner",
            round_=round_,
            temperature=temperature,
            max_tokens=common.max_tokens_for(ctx.task, max_tokens, code_max_tokens),
        )
        cand = common.add_candidate(
            ctx,
            s,
            role="refiner",
            parent_id=target["node_id"],
            depth=target["depth"] + 1,
            round_=round_,
        )
        return {"candidates": [cand], "round": round_}

    return refine


def until_verified(max_rounds: int, *, refine: str = "refine") -> Callable[[dict[str, Any]], Any]:
    """A router: END once a candidate passed, the budget ran out or ``max_rounds`` refinements
    were made; otherwise go to the ``refine`` node."""

    async def route(state: dict[str, Any]) -> str:
        if state.get("stop_reason"):
            return END
        if any(c["passed"] for c in state.get("verified") or []):
            return END
        if int(state.get("round") or 0) >= max_rounds:
            return END
        return refine

    return route


def _initial(ctx: LoopContext) -> dict[str, Any]:
    return {"candidates": [], "verified": [], "round": 0, "stop_reason": None}


def _outcome(ctx: LoopContext, state: dict[str, Any]) -> LoopOutcome:
    verified = state.get("verified") or []
    by_id = {c["node_id"]: c for c in verified}
    cands = [by_id.get(c["node_id"], c) for c in state.get("candidates") or []]
    chosen = common.best(cands)
    reason = state.get("stop_reason") or (
        "verified" if chosen is not None and chosen["passed"] else "done"
    )
    return common.outcome(cands, chosen, reason, rounds=int(state.get("round") or 0))


def define_loop(
    name: str,
    build: Callable[[], Any],
    *,
    description: str = "a custom loop",
    options: type[BaseModel] = NoOptions,
    initial_state: Callable[[LoopContext], dict[str, Any]] = _initial,
    outcome: Callable[[LoopContext, dict[str, Any]], LoopOutcome] = _outcome,
    max_steps: int = 200,
    register: bool = False,
) -> LoopSpec[Any]:
    """A LoopSpec for a graph built by ``build``; ``register`` makes it runnable by name.

    The defaults fit graphs over ``CandidatesState``: the answer is the best candidate
    (verified first, then score). ``max_steps`` bounds graph steps per task; a loop that
    reaches it fails that task with a clear error instead of hanging.
    """
    spec: LoopSpec[Any] = LoopSpec(
        name=name,
        description=description,
        options=options,
        build=build,
        initial_state=initial_state,
        outcome=outcome,
        recursion_limit=lambda _opts: max_steps,
    )
    return _register(spec) if register else spec


__all__ = [
    "CandidatesState",
    "NoOptions",
    "define_loop",
    "make_generate",
    "make_refine",
    "make_verify",
    "until_verified",
]
