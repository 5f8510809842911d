"""Building blocks every loop shares: candidates, prompts by task kind, verification, outcome.

A *candidate* is one model-written attempt (a draft, a sample, a search-tree leaf) as loop
state carries it; its node record lives in ``ctx.nodes``. Loops compose these helpers inside
their own LangGraph nodes so that tracing, verdict rows and the in-loop/graded split work the
same everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from loopwright.loops.graphs.base import LoopOutcome
from loopwright.loops.graphs.context import Candidate, LoopContext
from loopwright.loops.models.config import Sample
from loopwright.loops.prompts import (  # noqa: F401  (re-exported for loops)
    DRAFT_PROMPTS,
    draft_messages,
    draft_prompt,
    flavour,
    messages,
)
from loopwright.loops.tasks import Task, answers
from loopwright.loops.verify import LoopVerifier, extract_answer, run_verifier, verdict_record
from loopwright.traces.metrics import tally
from loopwright.traces.records import Role

END = "__end__"
"""LangGraph's end node (``langgraph.graph.END``), named here so that listing loops does not
import LangGraph."""


def add_candidate(
    ctx: LoopContext[Any],
    s: Sample,
    *,
    role: Role,
    parent_id: str | None,
    depth: int,
    round_: int,
    content: str | None = None,
) -> Candidate:
    """Record ``s`` as a node and return it as an unverified candidate (also kept in
    ``ctx.candidates``).

    ``content`` overrides the node text (e.g. a partial solution = prefix + new step).
    """
    text = s.text if content is None else content
    answer = extract_answer(ctx.task, text)
    ctx.add_node(
        s, role=role, parent_id=parent_id, depth=depth, round_=round_, content=text, answer=answer
    )
    cand = Candidate(
        node_id=s.node_id,
        parent_id=parent_id,
        text=text,
        answer=answer,
        passed=None,
        score=None,
        feedback=None,
        logprob=s.logprob_mean,
        round=round_,
        depth=depth,
    )
    ctx.candidates[cand["node_id"]] = cand
    return cand


async def verify(
    ctx: LoopContext[Any], cand: Candidate, *, verifier: LoopVerifier | None = None
) -> Candidate:
    """Run ``verifier`` (default: the in-loop verifier) on ``cand`` (off the event loop);
    record the verdict row.

    Returns the candidate with passed/score/feedback set (unchanged when there is no verifier).
    """
    check = ctx.verifier if verifier is None else verifier
    if check is None:
        return cand
    v = await run_verifier(check, ctx.task, cand["text"], ctx)
    ctx.record_verdict(
        verdict_record(
            v, run_id=ctx.run_id, task_id=ctx.task.id, node_id=cand["node_id"], stage="in_loop"
        )
    )
    set_node(ctx, cand["node_id"], score=v.score)
    checked: Candidate = {**cand, "passed": v.passed, "score": v.score, "feedback": v.feedback}
    if checked["node_id"] in ctx.candidates:
        ctx.candidates[checked["node_id"]] = checked
    return checked


async def verify_all(
    ctx: LoopContext[Any], cands: Iterable[Candidate], *, verifier: LoopVerifier | None = None
) -> list[Candidate]:
    """``verify`` many candidates concurrently; results in input order."""
    return list(await asyncio.gather(*(verify(ctx, c, verifier=verifier) for c in cands)))


def set_node(ctx: LoopContext[Any], node_id: str, **fields: Any) -> None:
    """Update fields (score, value, visits, ...) of a recorded node before it is written."""
    for node in ctx.nodes:
        if node.node_id == node_id:
            for key, value in fields.items():
                setattr(node, key, value)
            return


def best(cands: Iterable[Candidate]) -> Candidate | None:
    """Passing before failing, then higher score, then the later round."""
    ranked = list(cands)
    if not ranked:
        return None
    return max(reversed(ranked), key=lambda c: (bool(c["passed"]), c["score"] or 0.0, c["round"]))


def normalise_answer(task: Task, answer: str | None) -> str | None:
    """A voting key for ``task``'s kind (``loopwright.loops.tasks.answers.normalise_answer``)."""
    return answers.normalise_answer(task.kind, answer)


def vote(
    task: Task, cands: Iterable[Candidate], weights: Iterable[float] | None = None
) -> tuple[str | None, dict[str, float]]:
    """(winning normalised answer, total weight per answer); plain majority without weights.

    Ties go to the answer seen first, so the result is deterministic.
    """
    keys = [normalise_answer(task, c["answer"]) for c in cands]
    return tally(keys, list(weights) if weights is not None else None)


def outcome(
    cands: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, Any] | None,
    stop_reason: str,
    rounds: int = 0,
) -> LoopOutcome:
    """The LoopOutcome for ``chosen`` (None -> no answer)."""
    return LoopOutcome(
        final_node_id=chosen["node_id"] if chosen else None,
        final_text=chosen["text"] if chosen else None,
        answer=chosen["answer"] if chosen else None,
        verified=chosen["passed"] if chosen else None,
        score=chosen["score"] if chosen else None,
        stop_reason=stop_reason if cands or stop_reason.startswith("budget") else "no_draft",
        rounds=rounds,
    )


def max_tokens_for(task: Task, max_tokens: int, code_max_tokens: int) -> int:
    """Code needs room for a whole function; other kinds use ``max_tokens``."""
    return code_max_tokens if task.kind == "code" else max_tokens


def shown(task: Task, cand: Mapping[str, Any]) -> str:
    """An attempt as the loop shows it back to the model (to critique, learn from or refine):
    the extracted program for code, so no chatter around it, else the text; stripped."""
    if task.kind == "code":
        return (cand["answer"] or cand["text"]).strip()
    return cand["text"].strip()


async def verify_last(ctx: LoopContext[Any], cands: list[Candidate]) -> list[Candidate]:
    """``cands`` with the latest one run through ``verify`` (a new list)."""
    return [*cands[:-1], await verify(ctx, cands[-1])]


def add_note(
    ctx: LoopContext[Any],
    s: Sample | None,
    *,
    role: Role,
    about: Candidate,
    content: str | None = None,
) -> None:
    """Record ``s`` (or ``content`` alone) as a node about ``about`` -- a critique, a lesson,
    an evidence block: its child, in its round."""
    ctx.add_node(
        s,
        role=role,
        parent_id=about["node_id"],
        depth=about["depth"] + 1,
        round_=about["round"],
        content=content,
    )


def chain_outcome(
    cands: list[Candidate], stop_reason: str | None, *, last_round: int, at_last_round: str
) -> LoopOutcome:
    """The outcome of a loop that makes one attempt after another: the best attempt, stopped
    for ``stop_reason`` (set by a node, e.g. the budget), else because the latest attempt was
    verified, or is of round ``last_round`` (``at_last_round``), or else for lack of a
    verifier."""
    last = cands[-1] if cands else None
    reason = stop_reason
    if reason is None and last is not None:
        if last["passed"]:
            reason = "verified"
        elif last["round"] >= last_round:
            reason = at_last_round
        else:
            reason = "no_verifier"
    return outcome(cands, best(cands), reason or "no_draft", last["round"] if last else 0)


def rounds_outcome(ctx: LoopContext[Any], state: Mapping[str, Any]) -> LoopOutcome:
    """:func:`chain_outcome` of a draft-then-revise loop: ``state["drafts"]``, at most
    ``max_rounds`` revisions (the loop's option)."""
    return chain_outcome(
        state.get("drafts") or [],
        state.get("stop_reason"),
        last_round=ctx.options.max_rounds,
        at_last_round="max_rounds",
    )


def chosen_outcome(
    ctx: LoopContext[Any], chosen: Mapping[str, Any] | None, stop_reason: str | None = None
) -> LoopOutcome:
    """The outcome that answers with ``chosen`` (as last verified) among every candidate the
    loop made, stopped for ``stop_reason``, else because ``chosen`` passed ("verified"), else
    "done"; its rounds are the latest round of a candidate."""
    cands = list(ctx.candidates.values())
    if chosen is not None:
        chosen = ctx.candidates.get(chosen["node_id"], chosen)
    reason = stop_reason or ("verified" if chosen is not None and chosen["passed"] else "done")
    return outcome(cands, chosen, reason, rounds=max((c["round"] for c in cands), default=0))


def candidates_outcome(ctx: LoopContext[Any], state: Mapping[str, Any]) -> LoopOutcome:
    """The default outcome of a loop: the best candidate it made (``ctx.candidates``),
    stopped for the state's ``stop_reason`` if a node set one; the state's ``round`` if it
    counts them."""
    result = chosen_outcome(ctx, best(ctx.candidates.values()), state.get("stop_reason"))
    if "round" in state:
        return result.model_copy(update={"rounds": int(state["round"] or 0)})
    return result


Router = Callable[[Mapping[str, Any]], Awaitable[str]]


def unless_stopped(to: str, *, needs: str | None = None) -> Router:
    """A router to node ``to`` -- or to END once a node has set ``stop_reason`` (the budget
    ran out) or while the state key ``needs`` is still empty (nothing was sampled)."""

    # Async so LangGraph calls it on the event loop instead of a thread pool.
    async def route(state: Mapping[str, Any]) -> str:
        if state.get("stop_reason") or (needs is not None and not state.get(needs)):
            return END
        return to

    return route
