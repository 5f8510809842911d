"""Votes: plurality and weighted tallies over answer keys, maj@k, and best-of-k by a proxy score.

Re-exported by :mod:`loopwright.traces.metrics`, which lists the references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from loopwright.traces.metrics_estimators import check_k, mean_or_nan

# --------------------------------------------------------------------------- voting


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The winner of :func:`tally`."""
    return tally(answers, weights)[0]


def tally(
    answers: Sequence[str | None], weights: Sequence[float] | None = None
) -> tuple[str | None, dict[str, float]]:
    """(winner, score per key) of a plurality (or weighted) vote over answer keys, as in self-consistency (Wang et al. 2023).

    ``score(key) = sum_{i : answers[i] == key} w_i`` with ``w_i = 1`` when ``weights`` is None.
    ``None`` answers (unparsed) are ignored. The highest score wins; ties go to the key whose
    first occurrence is earliest. Returns ``None`` when every answer is ``None`` (or there are
    none). ``weights`` must be as long as ``answers`` and finite.
    """
    if weights is not None:
        if len(weights) != len(answers):
            raise ValueError(f"weights has {len(weights)} entries but answers has {len(answers)}")
        for i, w in enumerate(weights):
            if not math.isfinite(w):
                raise ValueError(f"weights[{i}] is not finite: {w!r}")
    scores: dict[str, float] = {}  # insertion order == order of first occurrence
    for i, key in enumerate(answers):
        if key is None:
            continue
        w = 1.0 if weights is None else float(weights[i])
        scores[key] = scores.get(key, 0.0) + w
    best: str | None = None
    best_score = -math.inf
    for key, score in scores.items():
        if score > best_score:  # strict: an equal later key never displaces an earlier one
            best, best_score = key, score
    return best, scores


def maj_at_k(
    samples: Sequence[Sequence[tuple[str | None, bool]]],
    k: int,
    weights: Sequence[Sequence[float]] | None = None,
) -> float:
    """maj@k: accuracy of the (weighted) majority answer over the first ``k`` samples per task.

    Each task is a sequence of ``(answer_key, correct)`` samples. Per task the first ``k``
    samples vote (:func:`vote`, optional per-sample ``weights`` as in weighted self-consistency
    / reward-weighted voting); the task counts as solved when the winning key is correct, i.e.
    when any of those ``k`` samples carrying the winning key is correct. A task whose samples
    are all unparsed (``None``) counts as wrong. Result: ``(1 / T) * sum_i solved_i``.

    Raises ``ValueError`` for an empty task list, a task with fewer than ``k`` samples, or
    weights whose shape does not match the samples.
    """
    k = check_k(k)
    if len(samples) == 0:
        raise ValueError("samples is empty: maj@k needs at least one task")
    if weights is not None and len(weights) != len(samples):
        raise ValueError(f"weights has {len(weights)} tasks but samples has {len(samples)}")
    solved = 0
    for i, task in enumerate(samples):
        if len(task) < k:
            raise ValueError(f"task {i} has {len(task)} samples, fewer than k={k}")
        head = task[:k]
        task_weights: Sequence[float] | None = None
        if weights is not None:
            if len(weights[i]) < k:
                raise ValueError(
                    f"task {i}: weights has {len(weights[i])} entries, fewer than k={k}"
                )
            task_weights = weights[i][:k]
        winner = vote([key for key, _ in head], task_weights)
        if winner is not None and any(ok for key, ok in head if key == winner):
            solved += 1
    return solved / len(samples)


def best_of_k(
    samples: Sequence[Sequence[tuple[float | None, bool]]], k: int
) -> tuple[float, float]:
    """Best-of-k selection by a proxy score, for over-optimisation curves (Gao et al. 2023).

    Each task is a sequence of ``(proxy_score, correct)`` samples. Per task, pick the sample with
    the highest proxy score among the first ``k`` (``None`` scores rank below every number; ties
    go to the earliest sample). Returns ``(mean proxy score of the picks, accuracy of the
    picks)``; plotting both against ``k`` shows the proxy rising while true accuracy may fall.
    Picks without a score (a task whose first ``k`` scores are all ``None``) are left out of the
    proxy mean (``nan`` if no pick has a score) but still count, as picked, for accuracy.

    Raises ``ValueError`` for an empty task list or a task with fewer than ``k`` samples.
    """
    k = check_k(k)
    if len(samples) == 0:
        raise ValueError("samples is empty: best-of-k needs at least one task")
    picked_scores: list[float] = []
    correct = 0
    for i, task in enumerate(samples):
        if len(task) < k:
            raise ValueError(f"task {i} has {len(task)} samples, fewer than k={k}")
        best_j = 0
        best_score: float | None = None
        for j, (score, _) in enumerate(task[:k]):
            if score is None:
                continue
            if math.isnan(score):
                raise ValueError(f"task {i}, sample {j}: proxy score is NaN")
            if best_score is None or score > best_score:
                best_j, best_score = j, score
        if best_score is not None:
            picked_scores.append(float(best_score))
        if task[best_j][1]:
            correct += 1
    return mean_or_nan(picked_scores), correct / len(samples)
