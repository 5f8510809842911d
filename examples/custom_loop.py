"""A loop written as a graph: sample 4 drafts, verify them, refine the best failed one until
one passes (at most 2 refinements).

Run it from the CLI like a built-in loop (tracing, budgets and --resume come for free):

    loopwright run generate-refine --plugin examples/custom_loop.py \
        --tasks 'builtin:arithmetic?n=5'

or from Python: ``python examples/custom_loop.py`` (same thing, 3 tasks).

Nodes take the task's context as ``runtime.context``: the same ``Context`` a function loop
gets (``ctx.draft``, ``ctx.verify``, ``ctx.refine``, ``ctx.best``, ...). The loop answers
with the best candidate it made; a budget that runs out stops it with the best so far.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from loopwright.loops import Context, RunConfig, loop, run
from loopwright.loops.graphs.custom import CandidatesState, make_verify, until_verified


async def generate(state: CandidatesState, runtime: Runtime[Context[Any]]) -> dict[str, Any]:
    return {"candidates": await runtime.context.draft(n=4, temperature=0.8), "round": 0}


async def refine(state: CandidatesState, runtime: Runtime[Context[Any]]) -> dict[str, Any]:
    ctx = runtime.context
    target = ctx.best(state.get("verified") or [])
    if target is None:
        return {"stop_reason": "nothing to refine"}
    return {"candidates": [await ctx.refine(target)], "round": state.get("round", 0) + 1}


@loop(graph=True, description="4 drafts -> verify -> refine the best failed one (max 2 rounds)")
def generate_refine():
    g = StateGraph(CandidatesState, context_schema=Context)
    g.add_node("generate", generate)
    g.add_node("verify", make_verify())
    g.add_node("refine", refine)
    g.add_edge(START, "generate")
    g.add_edge("generate", "verify")
    g.add_conditional_edges("verify", until_verified(max_rounds=2), ["refine", END])
    g.add_edge("refine", "verify")
    return g


if __name__ == "__main__":
    import asyncio

    result = asyncio.run(run(RunConfig(loop="generate-refine", tasks="builtin:arithmetic?n=3")))
    print(result.name, result.summary)
