"""An in-loop verifier with options: a function of any of (task, response, answer, ctx,
options), by name, returning a bool, a score in [0, 1] or a Verdict.

    loopwright run self-refine --plugin examples/short_answer_verifier.py \
        --verifier short-answer --verifier-option max_words=40 --tasks 'builtin:arithmetic?n=5'

A loop can also hand it to ``ctx.verify(cands, verifier=short_answer)`` directly.

    python examples/short_answer_verifier.py # self-refine checked by it, embedded model
"""

from loopwright.loops import verifier
from pydantic import BaseModel, Field


class Limits(BaseModel):
    max_words: int = Field(60, gt=0, description="Words a response may take.")


@verifier(options=Limits, threshold=0.5)
def short_answer(response: str, answer: str | None, options: Limits) -> float:
    """Has an answer, and says it in at most max_words words (score: how short)."""
    if answer is None:
        return 0.0
    words = len(response.split())
    return max(0.0, 1.0 - words / (2 * options.max_words))


if __name__ == "__main__":
    import asyncio

    from loopwright.loops import RunConfig, run

    # A loop calls the verifier on its drafts; here self-refine on the embedded model.
    config = RunConfig(
        loop="self-refine", tasks="builtin:arithmetic?n=3", verifier="short-answer",
        verifier_options={"max_words": 40}, options={"max_rounds": 1},
    )  # fmt: skip
    result = asyncio.run(run(config))
    print(result.name, result.summary)
