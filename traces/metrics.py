"""Pure metric functions for inference-time-scaling reports.

Everything here works on plain Python / numpy data: no I/O, no trace store, no plotting.
Randomised functions take an explicit ``seed`` and are deterministic under it. Invalid input
raises ``ValueError`` with a message that names the offending argument (and task index where
one applies).

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

import math
import operator
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

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

# Upper bound on the number of indices drawn per bootstrap chunk (bounds memory use).
_MAX_DRAWS_PER_CHUNK = 1_000_000

_JUDGE_WINNERS = ("a", "b", "tie", None)


# --------------------------------------------------------------------------- helpers


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_k(k: int) -> int:
    k = _as_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else float("nan")


def _tokens(text: str) -> list[str]:
    return text.lower().split()


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one task (Chen et al. 2021, eq. 1).

    Given ``n`` samples of which ``c`` are correct, the probability that at least one of ``k``
    samples drawn without replacement is correct::

        pass@k = 1 - C(n - c, k) / C(n, k)
               = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)      (product form)

    The product form is what the paper recommends to avoid overflowing floats. Here the same
    quantity is computed in exact integer arithmetic, ``(C(n, k) - C(n - c, k)) / C(n, k)``,
    with a single, correctly rounded division at the end: it cannot overflow or cancel, and
    simple cases come out exact (``pass_at_k(10, 3, 1) == 0.3``).

    Raises ``ValueError`` unless ``1 <= k <= n`` and ``0 <= c <= n``.
    """
    n = _as_int(n, "n")
    c = _as_int(c, "c")
    k = _check_k(k)
    if c < 0:
        raise ValueError(f"c (correct samples) must be >= 0, got {c}")
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n (samples), got c={c} > n={n}")
    if k > n:
        raise ValueError(f"k must be <= n (samples), got k={k} > n={n}")
    if n - c < k:
        return 1.0
    total = math.comb(n, k)
    return (total - math.comb(n - c, k)) / total


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over tasks of :func:`pass_at_k`; ``counts`` holds one ``(n_i, c_i)`` per task.

    ``pass@k = (1 / T) * sum_i pass_at_k(n_i, c_i, k)`` (Chen et al. 2021). A task with fewer
    than ``k`` samples raises ``ValueError`` naming its index; so does an empty ``counts``.
    """
    k = _check_k(k)
    if len(counts) == 0:
        raise ValueError("counts is empty: pass@k needs at least one task")
    values = []
    for i, item in enumerate(counts):
        try:
            n, c = item
        except (TypeError, ValueError):
            raise ValueError(f"task {i}: expected an (n, c) pair, got {item!r}") from None
        n = _as_int(n, f"task {i}: n")
        if n < k:
            raise ValueError(f"task {i} has n={n} samples, fewer than k={k}")
        try:
            values.append(pass_at_k(n, c, k))
        except ValueError as exc:
            raise ValueError(f"task {i}: {exc}") from None
    return _mean(values)


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
    k = _check_k(k)
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
    k = _check_k(k)
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
    return _mean(picked_scores), correct / len(samples)


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_means(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of ``n_boot`` resamples of the clusters (``sum of sums / sum of counts``)."""
    g = len(sums)
    chunk = max(1, _MAX_DRAWS_PER_CHUNK // g)
    out = np.empty(n_boot, dtype=float)
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        idx = rng.integers(0, g, size=(m, g))
        out[start : start + m] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of the mean: ``(mean, lo, hi)``.

    Without ``groups``: resample the ``N`` values (one per task) with replacement ``n_boot``
    times; ``lo`` / ``hi`` are the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resample
    means (Efron & Tibshirani 1993).

    With ``groups`` (one id per value, e.g. the task id when several seeds give several values
    per task): cluster bootstrap. The ``G`` distinct groups are resampled with replacement and
    each resample's statistic is the mean of all values in the drawn groups,
    ``sum_g S_g / sum_g n_g``. This respects the correlation between values of the same task.
    When every group holds exactly one value it draws the same indices as the plain version and
    returns identical results.

    ``mean`` is the plain mean of all values. Deterministic under ``seed``. Empty or
    non-finite input raises ``ValueError``; a single value ``v`` returns ``(v, v, v)``.
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("values is empty: cannot bootstrap the mean of nothing")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contains NaN or infinite entries")
    n_boot = _as_int(n_boot, "n_boot")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if groups is not None and len(groups) != arr.size:
        raise ValueError(f"groups has {len(groups)} entries but values has {arr.size}")

    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean

    if groups is None:
        sums = arr
        counts = np.ones(arr.size, dtype=float)
    else:
        codes_of: dict[Hashable, int] = {}
        codes = np.fromiter(
            (codes_of.setdefault(g, len(codes_of)) for g in groups), dtype=np.intp, count=arr.size
        )
        sums = np.bincount(codes, weights=arr, minlength=len(codes_of))
        counts = np.bincount(codes, minlength=len(codes_of)).astype(float)

    rng = np.random.default_rng(seed)
    means = _bootstrap_means(sums, counts, n_boot, rng)
    lo, hi = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return mean, float(lo), float(hi)


# --------------------------------------------------------------------------- compute-matched


@dataclass(frozen=True)
class CurvePoint:
    """One point of a strategy's accuracy-vs-cost curve (optionally with a CI ``[lo, hi]``)."""

    strategy: str
    cost: float
    accuracy: float
    lo: float | None = None
    hi: float | None = None
    label: str = ""


@dataclass(frozen=True)
class MatchedRow:
    """The compute-matched comparison of all strategies at one budget."""

    budget: float
    best: dict[str, CurvePoint | None]
    winner: str | None
    runner_up: str | None
    margin: float | None
    significant: bool | None


def _rank_key(p: CurvePoint) -> tuple[float, float, str]:
    # Sort ascending == best first: higher accuracy, then lower cost, then strategy name.
    return (-p.accuracy, p.cost, p.strategy)


def compute_matched(
    points: Sequence[CurvePoint], budgets: Sequence[float] | None = None
) -> list[MatchedRow]:
    """Compare strategies at matched compute budgets (cf. Snell et al. 2024).

    For each budget ``B`` and each strategy ``s``: ``best[s]`` is the point of ``s`` with the
    highest accuracy among those with ``cost <= B`` (ties: lower cost, then the earlier point),
    or ``None`` when ``s`` has no point that cheap. Among the strategies with a point, the
    ``winner`` has the highest accuracy (ties: lower cost, then strategy name) and the
    ``runner_up`` is the next in that order; ``margin = acc(winner) - acc(runner_up)``.
    ``significant = winner.lo > runner_up.hi`` (non-overlapping CIs, a conservative test) when
    both bounds exist, else ``None``. Without a runner-up, ``margin`` and ``significant`` are
    ``None``; with no point at all, ``winner`` is ``None`` too.

    ``best`` lists every strategy in ``points``, sorted by name. Default budgets: the sorted
    distinct costs of all points. Given budgets are used in the given order.
    """
    for i, p in enumerate(points):
        if math.isnan(p.cost) or math.isnan(p.accuracy):
            raise ValueError(f"points[{i}] ({p.strategy!r}) has a NaN cost or accuracy")
    if budgets is None:
        budgets = sorted({p.cost for p in points})
    strategies = sorted({p.strategy for p in points})
    rows: list[MatchedRow] = []
    for budget in budgets:
        if math.isnan(budget):
            raise ValueError("budgets contains NaN")
        best: dict[str, CurvePoint | None] = {}
        for s in strategies:
            affordable = [p for p in points if p.strategy == s and p.cost <= budget]
            # min() keeps the first of equal keys, so the earlier point wins a full tie.
            best[s] = min(affordable, key=_rank_key) if affordable else None
        ranked = sorted((p for p in best.values() if p is not None), key=_rank_key)
        winner = ranked[0] if ranked else None
        runner = ranked[1] if len(ranked) > 1 else None
        margin: float | None = None
        significant: bool | None = None
        if winner is not None and runner is not None:
            margin = winner.accuracy - runner.accuracy
            if winner.lo is not None and runner.hi is not None:
                significant = bool(winner.lo > runner.hi)
        rows.append(
            MatchedRow(
                budget=budget,
                best=best,
                winner=winner.strategy if winner else None,
                runner_up=runner.strategy if runner else None,
                margin=margin,
                significant=significant,
            )
        )
    return rows


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
            jac.append(_mean(pairs))
    out: dict[str, float] = {}
    if keys is not None:
        out["distinct_answers"] = _mean([len({k for k in ks if k is not None}) for ks in keys])
    out["distinct_1"] = _mean(d1)
    out["distinct_2"] = _mean(d2)
    out["mean_pairwise_jaccard"] = _mean(jac)
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
