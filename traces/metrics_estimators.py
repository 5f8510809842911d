"""Estimators: unbiased pass@k, percentile and cluster bootstrap CIs of a mean, and the
compute-matched comparison of strategies' accuracy-vs-cost curves.

Re-exported by :mod:`loopwright.traces.metrics`, which lists the references.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

# Upper bound on the number of indices drawn per bootstrap chunk (bounds memory use).
_MAX_DRAWS_PER_CHUNK = 1_000_000


# --------------------------------------------------------------------------- helpers


def as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def check_k(k: int) -> int:
    k = as_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def mean_or_nan(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else float("nan")


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
    n = as_int(n, "n")
    c = as_int(c, "c")
    k = check_k(k)
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
    k = check_k(k)
    if len(counts) == 0:
        raise ValueError("counts is empty: pass@k needs at least one task")
    values = []
    for i, item in enumerate(counts):
        try:
            n, c = item
        except (TypeError, ValueError):
            raise ValueError(f"task {i}: expected an (n, c) pair, got {item!r}") from None
        n = as_int(n, f"task {i}: n")
        if n < k:
            raise ValueError(f"task {i} has n={n} samples, fewer than k={k}")
        try:
            values.append(pass_at_k(n, c, k))
        except ValueError as exc:
            raise ValueError(f"task {i}: {exc}") from None
    return mean_or_nan(values)


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
    n_boot = as_int(n_boot, "n_boot")
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
