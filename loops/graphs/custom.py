"""Node factories for loops written as graphs: compose them (and your own nodes) into a
LangGraph graph, decorate its builder with ``@loop(graph=True)``.

A graph loop gets what the built-in ones get -- every call, candidate and verdict traced,
per-task and per-run budgets, concurrency across tasks, the held-out grader, ``--resume`` --
without extra code, because all of that lives in the runner and in ``LoopContext``::

    from langgraph.graph import END, START, StateGraph
    from loopwright.loops import Context, loop
    from loopwright.loops.graphs.custom import (
        CandidatesState, make_generate, make_refine, make_verify, until_verified,
    )

    @loop(graph=True)
    def generate_refine() -> StateGraph:
        g = StateGraph(CandidatesState, context_schema=Context)
        g.add_node("generate", make_generate(n=4))
        g.add_node("verify", make_verify())
        g.add_node("refine", make_refine())
        g.add_edge(START, "generate")
        g.add_edge("generate", "verify")
        g.add_conditional_edges("verify", until_verified(max_rounds=2), ["refine", END])
        g.add_edge("refine", "verify")
        return g                                # now: loopwright run generate-refine

Nodes are ``async def node(state, runtime: Runtime[Context[Opts]]) -> dict``; inside,
``runtime.context`` is the task's ``LoopContext`` (task, model client, verifier, budget,
options, and the steps ``draft``, ``critique``, ``refine``, ``verify``, ``best``). Routers are
plain (async) functions of the state. See ``examples/custom_loop.py`` for a whole file.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypedDict

from loopwright.loops.graphs.common import END
from loopwright.loops.graphs.context import Candidate, LoopContext

if TYPE_CHECKING:
    from langgraph.runtime import Runtime


class CandidatesState(TypedDict, total=False):
    """State of a graph loop over candidates: every candidate so far (appended by nodes), the
    verified ones, the round, and why it stopped."""

    candidates: Annotated[list[Candidate], operator.add]
    verified: list[Candidate]
    round: int
    stop_reason: str | None


class Node(Protocol):
    """A node of a graph over ``CandidatesState``, as LangGraph calls it."""

    def __call__(
        self, state: CandidatesState, *, runtime: Runtime[LoopContext[Any]]
    ) -> Awaitable[dict[str, Any]]: ...


def make_generate(n: int = 1, *, temperature: float = 0.7, max_tokens: int | None = None) -> Node:
    """A node that samples ``n`` first drafts (one request) and appends them as candidates."""

    async def generate(
        state: CandidatesState, runtime: Runtime[LoopContext[Any]]
    ) -> dict[str, Any]:
        cands = await runtime.context.draft(n, temperature=temperature, max_tokens=max_tokens)
        return {"candidates": cands, "round": 0}

    return generate


def make_verify() -> Node:
    """A node that runs the in-loop verifier on every candidate not verified yet."""

    async def verify(state: CandidatesState, runtime: Runtime[LoopContext[Any]]) -> dict[str, Any]:
        done = {c["node_id"] for c in state.get("verified") or []}
        todo = [c for c in state.get("candidates") or [] if c["node_id"] not in done]
        checked = await runtime.context.verify(todo)
        return {"verified": [*(state.get("verified") or []), *checked]}

    return verify


def make_refine(*, temperature: float = 0.7, max_tokens: int | None = None) -> Node:
    """A node that revises the best candidate verified so far, with the verifier's feedback
    in the prompt, and counts the refinement in the state's ``round``; with nothing verified
    it stops the loop."""

    async def refine(state: CandidatesState, runtime: Runtime[LoopContext[Any]]) -> dict[str, Any]:
        ctx = runtime.context
        target = ctx.best(state.get("verified") or [])
        if target is None:
            return {"stop_reason": "nothing to refine"}
        cand = await ctx.refine(target, temperature=temperature, max_tokens=max_tokens)
        return {"candidates": [cand], "round": int(state.get("round") or 0) + 1}

    return refine


def until_verified(
    max_rounds: int, *, refine: str = "refine"
) -> Callable[[CandidatesState], Awaitable[str]]:
    """A router: END once a candidate passed, a node set ``stop_reason`` or ``max_rounds``
    refinements were made; otherwise go to the ``refine`` node."""

    async def route(state: CandidatesState) -> str:
        if state.get("stop_reason"):
            return END
        if any(c["passed"] for c in state.get("verified") or []):
            return END
        if int(state.get("round") or 0) >= max_rounds:
            return END
        return refine

    return route


__all__ = ["CandidatesState", "make_generate", "make_refine", "make_verify", "until_verified"]
