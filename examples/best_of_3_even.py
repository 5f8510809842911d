"""Pick the best of 3 drafts, checked by an "answer is even" verifier.

    python examples/best_of_3_even.py       # 3 arithmetic tasks, embedded model
    loopwright run best-of-3-even --plugin examples/best_of_3_even.py \
        --tasks 'builtin:arithmetic?n=5'

Every draft, verdict and call lands in the trace database (loopwright.duckdb); budgets,
--resume and the held-out grader work as for the built-in loops.
"""

from loopwright.loops import Context, RunConfig, loop, run, verifier


@verifier
def even(answer: str | None) -> bool:
    """The final answer is an even whole number."""
    return answer is not None and answer.lstrip("-").isdigit() and int(answer) % 2 == 0


@loop
async def best_of_3_even(ctx: Context):
    """3 drafts -> 'answer is even' check -> the best one."""
    drafts = await ctx.draft(n=3)
    return ctx.best(await ctx.verify(drafts, verifier=even))


if __name__ == "__main__":
    import asyncio

    result = asyncio.run(run(RunConfig(loop="best-of-3-even", tasks="builtin:arithmetic?n=3")))
    print(result.name, result.summary)
