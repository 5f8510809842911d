"""Two-turn: draft -> (in-loop verifier) -> revision, in one conversation.

The episode SCoRe and RISE train, and what ``loopwright improve --method grpo --rollout
self-refine`` trains: the model answers, then sees its own draft as the assistant's turn
followed by a user turn asking it to check and correct it (``loops/prompts/two_turn.toml``;
an in-loop verifier's feedback on the draft is put in front when one ran), and answers again.
The answer is the revision, always (a deployed self-correcting model answers with its second
turn); the draft is its parent node, so reports read turn-1 and turn-2 correctness and the
wrong->right / right->wrong transitions off the run (``report``, ``report --improve``).
"""

from __future__ import annotations

from loopwright.loops.graphs.base import LoopContext, LoopOutcome
from loopwright.loops.graphs.common import (
    Candidate,
    add_candidate,
    draft_messages,
    max_tokens_for,
    outcome,
    verify,
)
from loopwright.loops.graphs.function import loop
from loopwright.loops.prompts import revision_messages
from pydantic import BaseModel, ConfigDict, Field


class TwoTurnOptions(BaseModel):
    """Options of the two-turn loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(
        0.8, ge=0, le=2, description="Sampling temperature of both turns (best-of-n's default)."
    )
    max_tokens: int = Field(256, gt=0, description="Completion cap of each turn.")
    code_max_tokens: int = Field(384, gt=0, description="Completion cap on code tasks.")
    verifier_feedback: bool = Field(
        True,
        description="Show the in-loop verifier's feedback on the draft in the second turn "
        "(when the task has a verifier); False: the instruction alone, as GRPO trains it.",
    )


@loop(
    description="draft -> revision in one conversation (the SCoRe/RISE episode that "
    "`improve --rollout self-refine` trains); answers with the revision",
    options=TwoTurnOptions,
    register=False,  # built-in loops are found by name without registering
)
async def two_turn(ctx: LoopContext[TwoTurnOptions]) -> LoopOutcome:
    opts = ctx.options
    cap = max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens)
    [s] = await ctx.sample(
        draft_messages(ctx.task), role="generator", round_=0,
        temperature=opts.temperature, max_tokens=cap,
    )  # fmt: skip
    draft: Candidate = add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=0)
    draft = await verify(ctx, draft)
    feedback = draft["feedback"] if opts.verifier_feedback else None
    [r] = await ctx.sample(
        revision_messages(ctx.task, draft["text"], feedback), role="refiner", round_=1,
        temperature=opts.temperature, max_tokens=cap,
    )  # fmt: skip
    revision = add_candidate(ctx, r, role="refiner", parent_id=draft["node_id"], depth=1, round_=1)
    revision = await verify(ctx, revision)
    return outcome([draft, revision], revision, "revised", 1)


TWO_TURN = two_turn
