"""A custom loop: sample 4 drafts, verify them, refine the best failed one until one passes.

Run it from the CLI like a built-in loop (tracing, budgets and --resume come for free):

    loopwright run generate-refine --plugin examples/custom_loop.py \
        --tasks 'builtin:arithmetic?n=5'

or from Python: ``python examples/custom_loop.py`` (same thing, 3 tasks).
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from loopwright.loops.graphs.custom import (
    CandidatesState,
    define_loop,
    make_generate,
    make_refine,
    make_verify,
    until_verified,
)


def build() -> Any:
    g = StateGraph(CandidatesState)
    g.add_node("generate", make_generate(n=4, temperature=0.8))
    g.add_node("verify", make_verify())
    g.add_node("refine", make_refine(temperature=0.7))
    g.add_edge(START, "generate")
    g.add_edge("generate", "verify")
    g.add_conditional_edges("verify", until_verified(max_rounds=2), ["refine", END])
    g.add_edge("refine", "verify")
    return g.compile()


LOOP = define_loop(
    "generate-refine",
    build,
    description="4 drafts -> verify -> refine the best failed one (max 2 rounds)",
    register=True,
)


if __name__ == "__main__":
    import asyncio

    from loopwright.loops.execution.runner import RunConfig, run

    result = asyncio.run(run(RunConfig(loop="generate-refine", tasks="builtin:arithmetic?n=3")))
    print(result.name, result.summary)
