"""The loop contract: a named LangGraph graph, how to start it and read its outcome, and
``run_loop``, the one place a loop's graph is run for a task.

Nodes follow one convention: ``async def node(state: S, runtime: Runtime[LoopContext[Opts]])
-> dict`` with ``ctx = runtime.context``, in a ``StateGraph(S, context_schema=LoopContext)``.
``run_loop`` hands the task's context to the graph and turns a budget that ran out anywhere
into a clean stop with the best candidate so far, so no node needs a decorator for that.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar, cast

from loopwright.loops.errors import BudgetExhausted
from loopwright.loops.graphs.context import LoopContext, Opts
from pydantic import BaseModel, ConfigDict, Field

AnyNode = TypeVar("AnyNode", bound=Callable[..., Awaitable[dict[str, Any]]])

MAX_STEPS = 200
"""Graph steps a loop may take per task unless its spec says otherwise."""


class LoopOutcome(BaseModel):
    """What a loop returns for one task."""

    model_config = ConfigDict(frozen=True)

    final_node_id: str | None = Field(description="Node chosen as the answer (best so far).")
    final_text: str | None = None
    answer: str | None = Field(None, description="Extracted final answer.")
    verified: bool | None = Field(None, description="In-loop verifier verdict on the final node.")
    score: float | None = None
    stop_reason: str = Field(description="verified, critic_satisfied, max_rounds, budget: ...")
    rounds: int = 0


def _empty_state(ctx: LoopContext[Any]) -> dict[str, Any]:
    return {}


def _best_candidate(ctx: LoopContext[Any], state: Mapping[str, Any]) -> LoopOutcome:
    from loopwright.loops.graphs.common import candidates_outcome

    return candidates_outcome(ctx, state)


def _max_steps(options: BaseModel) -> int:
    return MAX_STEPS


def _always(options: BaseModel) -> bool:
    return True


class LoopSpec(BaseModel, Generic[Opts]):
    """A loop the runner can execute by name.

    Only ``name``, ``description``, ``options`` and ``build`` are required: by default a loop
    starts from an empty state, answers with the best candidate it made (``ctx.candidates``,
    stopped for the state's ``stop_reason`` if a node set one), may take ``MAX_STEPS`` graph
    steps, and uses in-loop verdicts.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    description: str
    options: type[Opts]
    build: Callable[[], Any] = Field(description="Returns a compiled LangGraph graph.")
    initial_state: Callable[[LoopContext[Opts]], dict[str, Any]] = _empty_state
    outcome: Callable[[LoopContext[Opts], dict[str, Any]], LoopOutcome] = _best_candidate
    recursion_limit: Callable[[Opts], int] = _max_steps
    uses_verdicts: Callable[[Opts], bool] = Field(
        _always,
        description="Whether the loop's choice reads in-loop verdicts with these options; "
        "under --verifier auto a loop that does not gets no in-loop verifier.",
    )


def budget_outcome(ctx: LoopContext[Any], exc: BudgetExhausted) -> LoopOutcome:
    """A stop because the budget ran out: the best candidate made so far answers."""
    from loopwright.loops.graphs.common import best, chosen_outcome

    return chosen_outcome(ctx, best(ctx.candidates.values()), f"budget: {exc.reason}")


async def run_loop(spec: LoopSpec[Any], graph: Any, ctx: LoopContext[Any]) -> LoopOutcome:
    """Run ``spec``'s compiled ``graph`` on ``ctx``'s task and return its outcome.

    A ``BudgetExhausted`` that escapes any node ends the loop as a budget stop answered by the
    best candidate so far (never a failed task); other exceptions propagate.
    """
    try:
        final = await graph.ainvoke(
            spec.initial_state(ctx),
            context=ctx,
            config={"recursion_limit": spec.recursion_limit(ctx.options)},
        )
    except BudgetExhausted as exc:
        return budget_outcome(ctx, exc)
    return spec.outcome(ctx, final)


def budget_guard(fn: AnyNode) -> AnyNode:
    """Turn an exhausted budget inside one node into ``stop_reason`` in the state, for a
    graph that routes on it (e.g. to verify what it has before ending). Without it the
    budget stop ends the loop at once (``run_loop``), with the same meaning.

    Keeps the node's own signature (its state type and what it takes), so LangGraph and mypy
    see it unchanged.
    """

    @functools.wraps(fn)
    async def wrapped(state: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await fn(state, *args, **kwargs)
        except BudgetExhausted as exc:
            return {"stop_reason": f"budget: {exc.reason}"}

    return cast(AnyNode, wrapped)


__all__ = [
    "MAX_STEPS",
    "LoopContext",
    "LoopOutcome",
    "LoopSpec",
    "budget_guard",
    "budget_outcome",
    "run_loop",
]
