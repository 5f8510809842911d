"""Pure metric functions for inference-time-scaling reports.

Everything here works on plain Python / numpy data: no I/O, no trace store, no plotting.
Randomised functions take an explicit ``seed`` and are deterministic under it. Invalid input
raises ``ValueError`` with a message that names the offending argument (and task index where
one applies).

The functions live in three modules and are all re-exported here: estimators
(:mod:`~loopwright.traces.metrics_estimators`: pass@k, bootstrap CIs, compute-matched
comparison), votes (:mod:`~loopwright.traces.metrics_votes`: tallies, maj@k, best-of-k) and
caution metrics (:mod:`~loopwright.traces.metrics_caution`: revision-chain transitions,
diversity, judge biases and agreement).

References:
    Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (pass@k).
    Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning" (majority vote).
    Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization" (best-of-n, proxy vs gold).
    Efron & Tibshirani 1993, "An Introduction to the Bootstrap" (percentile / cluster bootstrap).
    Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally..." (compute-matched comparison).
    Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"
        (distinct-n).
    Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"
        (position and verbosity bias of pairwise judges).
"""

from __future__ import annotations

from loopwright.traces.metrics_caution import (
    change_rate,
    diversity,
    judge_agreement,
    length_correlation,
    pairwise_judge_stats,
    transitions,
)
from loopwright.traces.metrics_estimators import (
    CurvePoint,
    MatchedRow,
    bootstrap_ci,
    compute_matched,
    mean_pass_at_k,
    pass_at_k,
)
from loopwright.traces.metrics_votes import best_of_k, maj_at_k, tally, vote

__all__ = [
    "CurvePoint",
    "MatchedRow",
    "best_of_k",
    "bootstrap_ci",
    "change_rate",
    "compute_matched",
    "diversity",
    "judge_agreement",
    "length_correlation",
    "maj_at_k",
    "mean_pass_at_k",
    "pairwise_judge_stats",
    "pass_at_k",
    "tally",
    "transitions",
    "vote",
]
