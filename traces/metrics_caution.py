"""Caution metrics: what the headline numbers can hide - per-turn transitions and answer changes
of revision chains, the diversity of samples, and the biases and agreement of judges.

Re-exported by :mod:`loopwright.traces.metrics`, which lists the references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from loopwright.traces.metrics_estimators import mean_or_nan

_JUDGE_WINNERS = ("a", "b", "tie", None)


def _tokens(text: str) -> list[str]:
    return text.lower().split()


# --------------------------------------------------------------------------- multi-turn chains


def transitions(chains: Sequence[Sequence[bool]]) -> list[dict[str, int]]:
    """Correctness transitions between consecutive turns of revision chains.

    Entry ``t`` counts, over the chains with at least ``t + 2`` turns, how turn ``t`` -> ``t + 1``
    went: ``wrong_to_right``, ``right_to_wrong``, ``right_to_right``, ``wrong_to_wrong``
    (the self-correction analysis of e.g. Huang et al. 2024, "Large Language Models Cannot
    Self-Correct Reasoning Yet"). The list has ``max_len - 1`` entries (empty if no chain has
    two turns).
    """
    longest = max((len(c) for c in chains), default=0)
    out: list[dict[str, int]] = []
    for t in range(longest - 1):
        counts = {
            "wrong_to_right": 0,
            "right_to_wrong": 0,
            "right_to_right": 0,
            "wrong_to_wrong": 0,
        }
        for chain in chains:
            if len(chain) > t + 1:
                before = "right" if chain[t] else "wrong"
                after = "right" if chain[t + 1] else "wrong"
                counts[f"{before}_to_{after}"] += 1
        out.append(counts)
    return out


def change_rate(chains: Sequence[Sequence[str | None]]) -> list[float]:
    """Per turn ``t`` -> ``t + 1``: the share of chains (long enough) whose answer key changed.

    ``rate_t = #{chains with len > t + 1 and key[t] != key[t + 1]} / #{chains with len > t + 1}``.
    ``None`` is an ordinary value (``None`` -> ``"4"`` is a change, ``None`` -> ``None`` is not).
    """
    longest = max((len(c) for c in chains), default=0)
    out: list[float] = []
    for t in range(longest - 1):
        eligible = [c for c in chains if len(c) > t + 1]
        changed = sum(1 for c in eligible if c[t] != c[t + 1])
        out.append(changed / len(eligible))
    return out


# --------------------------------------------------------------------------- diversity


def _jaccard(a: set[str], b: set[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def diversity(
    samples: Sequence[Sequence[str]], keys: Sequence[Sequence[str | None]] | None = None
) -> dict[str, float]:
    """Diversity of the samples drawn for each task, averaged over tasks.

    Texts are tokenised as lowercased whitespace-separated words.

    - ``distinct_answers`` (only when ``keys`` is given): mean number of distinct non-``None``
      answer keys per task.
    - ``distinct_1`` / ``distinct_2`` (Li et al. 2016): per task, distinct n-grams / total n-grams
      pooled over the task's texts (bigrams do not cross text boundaries); tasks without any
      n-gram are skipped.
    - ``mean_pairwise_jaccard``: per task, the mean over text pairs of
      ``|words(x) & words(y)| / |words(x) | words(y)|`` (two empty texts count as identical,
      1.0); tasks with fewer than two texts are skipped. Higher means less diverse.

    An average over no eligible task is ``nan``. Empty ``samples`` raises ``ValueError``.
    """
    if len(samples) == 0:
        raise ValueError("samples is empty: diversity needs at least one task")
    if keys is not None and len(keys) != len(samples):
        raise ValueError(f"keys has {len(keys)} tasks but samples has {len(samples)}")
    d1: list[float] = []
    d2: list[float] = []
    jac: list[float] = []
    for texts in samples:
        if isinstance(texts, str):
            raise ValueError("each task in samples must be a sequence of texts, not a string")
        toks = [_tokens(t) for t in texts]
        unigrams = [w for ts in toks for w in ts]
        bigrams = [(ts[j], ts[j + 1]) for ts in toks for j in range(len(ts) - 1)]
        if unigrams:
            d1.append(len(set(unigrams)) / len(unigrams))
        if bigrams:
            d2.append(len(set(bigrams)) / len(bigrams))
        if len(toks) >= 2:
            sets = [set(ts) for ts in toks]
            pairs = [
                _jaccard(sets[a], sets[b])
                for a in range(len(sets))
                for b in range(a + 1, len(sets))
            ]
            jac.append(mean_or_nan(pairs))
    out: dict[str, float] = {}
    if keys is not None:
        out["distinct_answers"] = mean_or_nan(
            [len({k for k in ks if k is not None}) for ks in keys]
        )
    out["distinct_1"] = mean_or_nan(d1)
    out["distinct_2"] = mean_or_nan(d2)
    out["mean_pairwise_jaccard"] = mean_or_nan(jac)
    return out


# --------------------------------------------------------------------------- judges


def pairwise_judge_stats(
    judgements: Sequence[tuple[str | None, str | None, int, int]],
) -> dict[str, float | int | None]:
    """Position and length bias of a pairwise judge (cf. Zheng et al. 2023).

    Each judgement is ``(winner_ab, winner_ba, len_a, len_b)``: the verdict with answer ``a``
    shown first, the verdict with ``b`` shown first, and the two answers' lengths. Verdicts name
    answers, not positions: ``"a"``, ``"b"``, ``"tie"``, or ``None`` (unparsed).

    - ``n``: number of judgements.
    - ``decided``: judgements with both verdicts parsed.
    - ``order_flip_rate``: among decided, share where ``winner_ab != winner_ba``.
    - ``first_position_win_rate``: over all parsed non-tie single-order verdicts, the share
      that chose the answer shown first (``"a"`` in the ab order, ``"b"`` in the ba order).
      Ties are left out so that 0.5 means no position bias.
    - ``longer_win_rate``: among consistent (``winner_ab == winner_ba``) non-tie decisions with
      ``len_a != len_b``, the share where the longer answer won.

    Rates with an empty denominator are ``None``.
    """
    n = len(judgements)
    decided = flips = 0
    first_votes = first_wins = 0
    length_decisions = longer_wins = 0
    for i, item in enumerate(judgements):
        try:
            w_ab, w_ba, len_a, len_b = item
        except (TypeError, ValueError):
            raise ValueError(
                f"judgement {i}: expected (winner_ab, winner_ba, len_a, len_b), got {item!r}"
            ) from None
        for name, w in (("winner_ab", w_ab), ("winner_ba", w_ba)):
            if w not in _JUDGE_WINNERS:
                raise ValueError(
                    f"judgement {i}: {name} must be 'a', 'b', 'tie' or None, got {w!r}"
                )
        if w_ab in ("a", "b"):
            first_votes += 1
            first_wins += w_ab == "a"
        if w_ba in ("a", "b"):
            first_votes += 1
            first_wins += w_ba == "b"
        if w_ab is None or w_ba is None:
            continue
        decided += 1
        if w_ab != w_ba:
            flips += 1
        elif w_ab != "tie" and len_a != len_b:
            length_decisions += 1
            longer = "a" if len_a > len_b else "b"
            longer_wins += w_ab == longer
    return {
        "n": n,
        "decided": decided,
        "order_flip_rate": flips / decided if decided else None,
        "first_position_win_rate": first_wins / first_votes if first_votes else None,
        "longer_win_rate": longer_wins / length_decisions if length_decisions else None,
    }


def judge_agreement(
    pred: Sequence[bool | None], truth: Sequence[bool]
) -> dict[str, float | int | None]:
    """Agreement of a pass/fail judge with ground truth ("pass" is the positive class).

    Over the parsed items (``pred`` not ``None``), with TP/FP/FN/TN counted as usual:
    ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
    ``f1 = 2 * precision * recall / (precision + recall)``, ``accuracy = (TP + TN) / parsed``.
    ``n`` counts all items, ``unparsed`` the ``None`` predictions. A metric whose denominator is
    zero (no predicted positives, no true positives, no parsed items) is ``None``; ``f1`` is
    ``None`` when precision or recall is, and ``0.0`` when both are zero.
    """
    if len(pred) != len(truth):
        raise ValueError(f"pred has {len(pred)} items but truth has {len(truth)}")
    tp = fp = fn = tn = unparsed = 0
    for p, t in zip(pred, truth, strict=True):
        if p is None:
            unparsed += 1
        elif p and t:
            tp += 1
        elif p:
            fp += 1
        elif t:
            fn += 1
        else:
            tn += 1
    parsed = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": len(pred),
        "unparsed": unparsed,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": (tp + tn) / parsed if parsed else None,
    }


def length_correlation(lengths: Sequence[float], scores: Sequence[float]) -> float | None:
    """Pearson correlation between answer length and score (a verbosity-bias diagnostic).

    ``r = sum((x - mean x)(y - mean y)) / sqrt(sum (x - mean x)^2 * sum (y - mean y)^2)``.
    ``None`` with fewer than 3 points or when either side is constant. Mismatched lengths or
    non-finite values raise ``ValueError``.
    """
    if len(lengths) != len(scores):
        raise ValueError(f"lengths has {len(lengths)} items but scores has {len(scores)}")
    if len(lengths) < 3:
        return None
    x = np.asarray(lengths, dtype=float)
    y = np.asarray(scores, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("lengths and scores must be finite")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    dx = x - x.mean()
    dy = y - y.mean()
    r = float(np.dot(dx, dy) / math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy))))
    return max(-1.0, min(1.0, r))
