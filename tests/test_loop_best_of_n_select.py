"""Best-of-n selection as pure functions: every selector, weights and fallbacks."""

from __future__ import annotations

import math

import pytest
from loop_testkit import candidate
from loopwright.loops.graphs.best_of_n import BestOfNOptions, calls_left
from loopwright.loops.graphs.best_of_n_select import select, weights
from loopwright.loops.graphs.common import Candidate
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.tasks import Task

MATH = Task(id="m", prompt="?", kind="math", reference="5")
TEXT = Task(id="t", prompt="?")


def cand(
    i: int,
    answer: str | None,
    *,
    passed: bool | None = None,
    score: float | None = None,
    logprob: float | None = None,
    text: str | None = None,
) -> Candidate:
    text = text if text is not None else f"The answer is {answer}."
    return candidate(f"n{i}", text=text, answer=answer, passed=passed, score=score, logprob=logprob)


def test_majority_normalises_answers_and_ties_go_to_the_first_seen() -> None:
    cands = [cand(0, "1,000"), cand(1, "3"), cand(2, "1000.0"), cand(3, "3.0"), cand(4, None)]
    sel = select(MATH, cands, "majority", has_verifier=True)
    assert (sel.winner, sel.votes, sel.chosen) == ("1000", {"1000": 2.0, "3": 2.0}, cands[0])


def test_no_answer_to_vote_on_takes_the_first_sample() -> None:
    cands = [cand(0, None), cand(1, None)]
    sel = select(MATH, cands, "majority", has_verifier=False)
    assert (sel.chosen, sel.winner, sel.note) == (
        cands[0],
        None,
        "no answer to vote on: first sample",
    )


def test_no_candidates_selects_nothing() -> None:
    assert select(MATH, [], "verifier", has_verifier=True).chosen is None


def test_logprob_picks_the_most_confident_sample() -> None:
    cands = [cand(0, "1", logprob=-0.9), cand(1, "2", logprob=-0.1), cand(2, "3", logprob=-0.1)]
    sel = select(MATH, cands, "logprob", has_verifier=False)
    assert (sel.chosen, sel.used) == (cands[1], "logprob")


def test_weighted_by_logprob_sums_token_probabilities() -> None:
    # Two unsure votes for 1 (2 x e^-2 = 0.27) lose to one sure vote for 2 (e^-0.05 = 0.95).
    cands = [cand(0, "1", logprob=-2.0), cand(1, "1", logprob=-2.0), cand(2, "2", logprob=-0.05)]
    sel = select(MATH, cands, "weighted", weight_by="logprob", has_verifier=False)
    assert (sel.used, sel.winner, sel.chosen) == ("weighted", "2", cands[2])
    assert sel.weighted == pytest.approx({"1": 2 * math.exp(-2.0), "2": math.exp(-0.05)})
    assert sel.votes == {"1": 2.0, "2": 1.0}


def test_weighted_by_verifier_uses_partial_scores() -> None:
    cands = [cand(0, "a", score=0.2), cand(1, "a", score=0.2), cand(2, "b", score=0.6)]
    sel = select(MATH, cands, "weighted", weight_by="verifier", has_verifier=True)
    assert (sel.winner, sel.chosen) == ("b", cands[2])


@pytest.mark.parametrize(
    ("kwargs", "note"),
    [
        ({"weight_by": "verifier", "has_verifier": False}, "task has no verifier"),
        ({"weight_by": "logprob", "has_verifier": False}, "no logprob weights"),
        ({"weight_by": "judge", "has_verifier": False}, "no judge weights"),
        ({"weight_by": "verifier", "has_verifier": True}, "all weights are zero"),
    ],
)
def test_weighted_falls_back_to_majority(kwargs: dict[str, object], note: str) -> None:
    cands = [cand(0, "1", score=0.0), cand(1, "2", score=0.0), cand(2, "2", score=0.0)]
    sel = select(MATH, cands, "weighted", **kwargs)  # type: ignore[arg-type]
    assert (sel.used, sel.note, sel.chosen) == ("majority", note, cands[1])


def test_reward_weights_are_squashed_and_missing_scores_weigh_zero() -> None:
    cands = [cand(0, "1"), cand(1, "2"), cand(2, "3")]
    ws, why = weights(
        cands, "reward", has_verifier=False, signals={"n0": 0.0, "n1": -50.0, "n2": None}
    )
    assert why is None and ws == pytest.approx([0.5, 0.0, 0.0])


def test_judge_and_reward_selectors_use_signals_and_skip_missing() -> None:
    cands = [cand(0, "1"), cand(1, "2"), cand(2, "3")]
    signals = {"n0": 0.5, "n1": None, "n2": 0.9}
    for selector in ("judge", "reward"):
        sel = select(MATH, cands, selector, has_verifier=False, signals=signals)  # type: ignore[arg-type]
        assert (sel.used, sel.chosen) == (selector, cands[2])
    sel = select(MATH, cands, "judge", has_verifier=False, signals={})
    assert (sel.used, sel.note) == ("majority", "no judge scores")


def test_verifier_prefers_the_first_pass_then_the_top_partial_score() -> None:
    cands = [cand(0, "1", passed=False, score=0.4), cand(1, "2", passed=True, score=1.0)]
    assert select(MATH, cands, "verifier", has_verifier=True).chosen == cands[1]
    partial = [cand(0, "1", passed=False, score=0.4), cand(1, "2", passed=False, score=0.8)]
    assert select(MATH, partial, "verifier", has_verifier=True).chosen == partial[1]


def test_text_tasks_vote_over_their_whole_text() -> None:
    cands = [cand(i, None, text=t) for i, t in enumerate(["Yes.", "no", "  YES. "])]
    sel = select(TEXT, cands, "majority", has_verifier=False)
    assert (sel.winner, sel.chosen) == ("yes.", cands[0])


def test_calls_left_takes_the_tightest_of_task_and_run() -> None:
    run = Budget(BudgetLimits(calls=10))
    task = Budget(BudgetLimits(calls=6), parent=run)
    assert calls_left(Budget()) is None
    run.charge(0, 0, 7, 0.0)
    assert calls_left(task) == 3
    task.charge(0, 0, 2, 0.0)
    assert calls_left(task) == 1


def test_options_defaults() -> None:
    o = BestOfNOptions()
    assert (o.n, o.temperature, o.selector, o.weight_by, o.rejection, o.scorer) == (
        8,
        0.8,
        "verifier",
        "logprob",
        False,
        None,
    )
    assert BestOfNOptions(selector="weighted", weight_by="judge").scorer == "judge"
    assert BestOfNOptions(selector="judge").scorer == "judge"
