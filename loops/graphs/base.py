"""The loop contract: a named LangGraph graph plus how to start it and read its outcome."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from langchain_core.runnables import RunnableConfig
from loopwright.loops.errors import BudgetExhausted
from loopwright.loops.graphs.context import LoopContext, ctx_of
from pydantic import BaseModel, ConfigDict, Field

Opts = TypeVar("Opts", bound=BaseModel)
Node = Callable[[dict[str, Any], RunnableConfig], Awaitable[dict[str, Any]]]
AnyNode = TypeVar("AnyNode", bound=Callable[..., Awaitable[dict[str, Any]]])


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


class LoopSpec(BaseModel, Generic[Opts]):
    """A loop the runner can execute by name."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    description: str
    options: type[Opts]
    build: Callable[[], Any] = Field(description="Returns a compiled LangGraph graph.")
    initial_state: Callable[[LoopContext], dict[str, Any]]
    outcome: Callable[[LoopContext, dict[str, Any]], LoopOutcome]
    recursion_limit: Callable[[Opts], int]


def budget_guard(fn: AnyNode) -> AnyNode:
    """Turn an exhausted budget into a clean stop: the loop returns its best so far.

    Keeps the node's own signature (its state type), so LangGraph and mypy see it unchanged.
    """

    @functools.wraps(fn)
    async def wrapped(state: Any, config: RunnableConfig) -> dict[str, Any]:
        try:
            return await fn(state, config)
        except BudgetExhausted as exc:
            return {"stop_reason": f"budget: {exc.reason}"}

    return wrapped  # type: ignore[return-value]


__all__ = ["LoopContext", "LoopOutcome", "LoopSpec", "budget_guard", "ctx_of"]
