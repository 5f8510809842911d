"""How best-of-n picks one sample: verifier, majority or weighted vote, logprob, judge, reward.

Pure functions over candidates, so every selector is testable without a model. Votes are
over *normalised* answers (``common.normalise_answer``; math answers come from the math
checker's extraction), and the chosen node is the first candidate whose normalised answer is
the winner. A selector that has nothing to go on (no verifier, no logprobs, no judge scores,
only zero weights) falls back to plain majority and says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from loopwright.loops.graphs.common import Candidate, normalise_answer, vote
from loopwright.loops.tasks import Task

Selector = Literal["verifier", "majority", "weighted", "logprob", "judge", "reward"]
WeightBy = Literal["verifier", "logprob", "judge", "reward"]


@dataclass(frozen=True)
class Selection:
    """The chosen candidate and how it was chosen."""

    chosen: Candidate | None
    used: str
    """The selector actually applied (differs from the requested one after a fallback)."""
    note: str | None
    """Why a fallback happened, or what decided a verifier selection without a pass."""
    winner: str | None
    """The winning normalised answer of the vote that decided (None if no vote decided)."""
    votes: dict[str, float]
    """Plain majority tally over normalised answers (always computed: it is maj@k)."""
    weighted: dict[str, float] | None = None
    """The weighted tally, for the weighted selector."""


def keyed(task: Task, cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates whose ``answer`` is the vote key: text tasks have no extracted answer, so
    their whole text is compared (whitespace and case normalised)."""
    if task.kind in ("math", "code"):
        return list(cands)
    return [{**c, "answer": c["text"]} for c in cands]


def first_with(task: Task, cands: Sequence[Candidate], winner: str | None) -> int | None:
    """Index of the first candidate whose normalised answer is ``winner``."""
    if winner is None:
        return None
    for i, c in enumerate(keyed(task, cands)):
        if normalise_answer(task, c["answer"]) == winner:
            return i
    return None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def weights(
    cands: Sequence[Candidate],
    weight_by: WeightBy,
    *,
    has_verifier: bool,
    signals: Mapping[str, float | None],
) -> tuple[list[float] | None, str | None]:
    """Per-candidate vote weights in [0, 1], or (None, why) when there are none to use.

    verifier: the verdict score; logprob: exp(mean token logprob), the geometric-mean token
    probability; judge: the normalised judge score; reward: sigmoid(reward). A candidate
    without a value weighs 0.
    """
    raw: list[float | None]
    if weight_by == "verifier":
        if not has_verifier:
            return None, "task has no verifier"
        raw = [c["score"] for c in cands]
    elif weight_by == "logprob":
        raw = [None if c["logprob"] is None else math.exp(c["logprob"]) for c in cands]
    else:
        squash: Callable[[float], float] = _sigmoid if weight_by == "reward" else float
        raw = [None if (v := signals.get(c["node_id"])) is None else squash(v) for c in cands]
    if all(w is None for w in raw):
        return None, f"no {weight_by} weights"
    return [w or 0.0 for w in raw], None


def select(
    task: Task,
    cands: Sequence[Candidate],
    selector: Selector,
    *,
    weight_by: WeightBy = "logprob",
    has_verifier: bool,
    signals: Mapping[str, float | None] | None = None,
) -> Selection:
    """Pick one of ``cands`` with ``selector``; see the module docstring for fallbacks.

    ``signals`` maps node ids to judge (normalised) or reward scores.
    """
    signals = signals or {}
    cands = list(cands)
    winner, votes = vote(task, keyed(task, cands))

    def majority(note: str | None) -> Selection:
        i = first_with(task, cands, winner)
        chosen = cands[i] if i is not None else (cands[0] if cands else None)
        if i is None and cands:
            note = "; ".join(x for x in (note, "no answer to vote on: first sample") if x)
        return Selection(chosen, "majority", note, winner, votes)

    if not cands:
        return Selection(None, selector, None, None, {})
    if selector == "majority":
        return majority(None)
    if selector == "verifier":
        if not has_verifier:
            return majority("task has no verifier")
        passing = [c for c in cands if c["passed"]]
        if passing:
            return Selection(passing[0], "verifier", None, None, votes)
        # Nothing passed: the best partial score, ties settled by majority among the tied.
        top = max(c["score"] or 0.0 for c in cands)
        tied = [c for c in cands if (c["score"] or 0.0) == top]
        tie_winner, _ = vote(task, keyed(task, tied))
        i = first_with(task, tied, tie_winner)
        chosen = tied[i if i is not None else 0]
        note = "no sample passed: top score, then majority"
        return Selection(chosen, "verifier", note, tie_winner, votes)
    if selector == "weighted":
        ws, why = weights(cands, weight_by, has_verifier=has_verifier, signals=signals)
        if ws is None:
            return majority(why)
        w_winner, tally = vote(task, keyed(task, cands), ws)
        if not any(v > 0 for v in tally.values()):
            return majority("all weights are zero")
        i = first_with(task, cands, w_winner)
        chosen = cands[i] if i is not None else cands[0]
        return Selection(chosen, "weighted", None, w_winner, votes, tally)
    # logprob, judge, reward: the highest value wins; the earlier sample on ties.
    values = [c["logprob"] if selector == "logprob" else signals.get(c["node_id"]) for c in cands]
    scored = [(v, -i) for i, v in enumerate(values) if v is not None]
    if not scored:
        return majority(f"no {selector} scores")
    _, neg_i = max(scored)
    return Selection(cands[-neg_i], selector, None, None, votes)
