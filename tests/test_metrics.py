"""The pure metric functions behind the inference-time-scaling reports."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from loopwright.traces.metrics import (
    CurvePoint,
    MatchedRow,
    best_of_k,
    bootstrap_ci,
    change_rate,
    compute_matched,
    diversity,
    judge_agreement,
    length_correlation,
    maj_at_k,
    mean_pass_at_k,
    pairwise_judge_stats,
    pass_at_k,
    transitions,
    vote,
)

# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(10, 3, 1) == 0.3
    assert pass_at_k(5, 0, 3) == 0
    assert pass_at_k(5, 5, 1) == 1
    assert pass_at_k(4, 1, 2) == 0.5
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples: any k-subset has a correct one
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0


def test_pass_at_k_matches_brute_force_enumeration() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            correct = [i < c for i in range(n)]
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hits = sum(1 for s in subsets if any(correct[i] for i in s))
                assert pass_at_k(n, c, k) == float(Fraction(hits, len(subsets))), (n, c, k)


def test_pass_at_k_large_n_matches_product_form() -> None:
    n, c, k = 1000, 10, 100
    product = 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
    assert pass_at_k(n, c, k) == pytest.approx(product, rel=1e-12)
    assert 0.0 <= pass_at_k(5000, 1, 2500) <= 1.0


def test_pass_at_k_accepts_numpy_ints() -> None:
    assert pass_at_k(np.int64(10), np.int64(3), np.int64(1)) == 0.3


@pytest.mark.parametrize(
    ("n", "c", "k", "match"),
    [
        (3, 1, 4, "k must be <= n"),
        (3, 4, 1, "c .* must be <= n"),
        (3, -1, 1, "c .* must be >= 0"),
        (3, 1, 0, "k must be >= 1"),
        (3.5, 1, 1, "n must be an integer"),
    ],
)
def test_pass_at_k_errors(n: int, c: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_mean_pass_at_k() -> None:
    assert mean_pass_at_k([(10, 3), (5, 5), (4, 1)], 1) == pytest.approx((0.3 + 1 + 0.25) / 3)
    assert mean_pass_at_k([(4, 1), (5, 0)], 2) == 0.25


def test_mean_pass_at_k_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match=r"task 1 has n=2 samples, fewer than k=3"):
        mean_pass_at_k([(5, 1), (2, 1)], 3)
    with pytest.raises(ValueError, match=r"task 0: c .* must be <= n"):
        mean_pass_at_k([(5, 6)], 1)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], 1)


# --------------------------------------------------------------------------- voting


def test_vote_plurality_and_ties() -> None:
    assert vote(["1", "2", "2", "1", "3", "2"]) == "2"
    assert vote(["2", "1", "1", "2"]) == "2"  # tie: earliest first occurrence
    assert vote(["1", "2", "1", "2"]) == "1"
    assert vote([None, "7", None, "8"]) == "7"
    assert vote([None, None]) is None
    assert vote([]) is None


def test_weighted_vote_flips_plurality() -> None:
    answers = ["1", "1", "2"]
    assert vote(answers) == "1"
    assert vote(answers, [0.3, 0.3, 1.0]) == "2"
    assert vote(answers, [0.5, 0.5, 1.0]) == "1"  # weighted tie: earliest first occurrence
    assert vote([None, "x"], [100.0, 0.1]) == "x"  # a None answer's weight is ignored


def test_vote_errors() -> None:
    with pytest.raises(ValueError, match="weights has 1 entries but answers has 2"):
        vote(["a", "b"], [1.0])
    with pytest.raises(ValueError, match=r"weights\[1\] is not finite"):
        vote(["a", "b"], [1.0, math.nan])


TASKS = [
    [("4", True), ("5", False), ("4", True), ("5", False)],
    [("1", False), ("2", True), ("1", False)],
    [(None, False), (None, False), ("7", True)],
]


def test_maj_at_k_hand_built() -> None:
    assert maj_at_k(TASKS, 3) == pytest.approx(2 / 3)
    assert maj_at_k(TASKS, 1) == pytest.approx(1 / 3)  # task 2's first sample is unparsed
    assert maj_at_k(TASKS, 2) == pytest.approx(1 / 3)  # task 0: tie 4/5 -> earliest "4"
    weights = [[1, 1, 1], [0.1, 5.0, 0.1], [1, 1, 1]]
    assert maj_at_k(TASKS, 3, weights) == 1.0


def test_maj_at_k_key_correct_if_any_sample_is() -> None:
    assert maj_at_k([[("x", False), ("x", True), ("y", False)]], 3) == 1.0
    assert maj_at_k([[("x", False), ("x", False), ("y", True)]], 3) == 0.0


def test_maj_at_k_errors() -> None:
    with pytest.raises(ValueError, match="task 1 has 3 samples, fewer than k=4"):
        maj_at_k([TASKS[0], TASKS[1]], 4)
    with pytest.raises(ValueError, match="weights has 1 tasks but samples has 3"):
        maj_at_k(TASKS, 1, [[1.0]])
    with pytest.raises(ValueError, match="empty"):
        maj_at_k([], 1)


def test_best_of_k_picks() -> None:
    samples = [
        [(0.5, False), (0.9, True), (0.9, False)],
        [(None, True), (0.2, False), (0.8, True)],
    ]
    # k=1: task 0 picks 0.5 (wrong); task 1 picks its only (unscored) sample (right).
    assert best_of_k(samples, 1) == (0.5, 0.5)
    proxy, acc = best_of_k(samples, 2)
    assert proxy == pytest.approx(0.55) and acc == 0.5  # a scored sample beats a None score
    proxy, acc = best_of_k(samples, 3)  # task 0: tie at 0.9 -> earliest (correct)
    assert proxy == pytest.approx(0.85) and acc == 1.0


def test_best_of_k_proxy_up_accuracy_down() -> None:
    samples = [[(0.1, True), (0.4, False), (0.9, False)]] * 3
    curve = [best_of_k(samples, k) for k in (1, 2, 3)]
    assert [p for p, _ in curve] == pytest.approx([0.1, 0.4, 0.9])
    assert [a for _, a in curve] == [1.0, 0.0, 0.0]


def test_best_of_k_all_unscored_and_errors() -> None:
    proxy, acc = best_of_k([[(None, False), (None, True)]], 2)
    assert math.isnan(proxy) and acc == 0.0
    with pytest.raises(ValueError, match="task 0 has 1 samples, fewer than k=2"):
        best_of_k([[(1.0, True)]], 2)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_mean_exact_and_contains_mean() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    mean, lo, hi = bootstrap_ci(values)
    assert mean == 2.5
    assert 1.0 <= lo < mean < hi <= 4.0


def test_bootstrap_narrower_with_more_data() -> None:
    rng = np.random.default_rng(123)
    small = rng.integers(0, 2, size=30).astype(float)
    large = rng.integers(0, 2, size=3000).astype(float)
    _, lo_s, hi_s = bootstrap_ci(small)
    m_l, lo_l, hi_l = bootstrap_ci(large)
    assert lo_l <= m_l <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_bootstrap_deterministic_under_seed() -> None:
    values = np.random.default_rng(7).normal(size=50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci(list(values), seed=3) == bootstrap_ci(values, seed=3)


def test_bootstrap_alpha_widens() -> None:
    values = np.random.default_rng(8).normal(size=40)
    _, lo95, hi95 = bootstrap_ci(values, alpha=0.05)
    _, lo50, hi50 = bootstrap_ci(values, alpha=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_cluster_bootstrap_equals_plain_with_singleton_groups() -> None:
    values = np.random.default_rng(9).normal(size=25)
    plain = bootstrap_ci(values, seed=5)
    assert bootstrap_ci(values, seed=5, groups=[f"task{i}" for i in range(25)]) == plain
    assert bootstrap_ci(values, seed=5, groups=list(range(25))) == plain


def test_cluster_bootstrap_wider_when_values_within_a_task_agree() -> None:
    per_task = np.random.default_rng(10).integers(0, 2, size=20).astype(float)
    values = np.repeat(per_task, 5)  # 5 seeds per task, all agreeing
    groups = np.repeat(np.arange(20), 5).tolist()
    m_plain, lo_p, hi_p = bootstrap_ci(values)
    m_cl, lo_c, hi_c = bootstrap_ci(values, groups=groups)
    assert m_plain == m_cl == per_task.mean()
    assert hi_c - lo_c > 1.5 * (hi_p - lo_p)
    # Clustering the repeats gives the same interval as bootstrapping one value per task.
    assert (lo_c, hi_c) == pytest.approx(bootstrap_ci(per_task)[1:], abs=0.06)


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="groups has 1 entries but values has 2"):
        bootstrap_ci([1.0, 2.0], groups=["a"])
    with pytest.raises(ValueError, match="alpha must be in"):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_boot must be >= 1"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, math.nan])


# --------------------------------------------------------------------------- compute-matched


def test_compute_matched() -> None:
    a1 = CurvePoint("A", 1.0, 0.5, 0.4, 0.6)
    a4 = CurvePoint("A", 4.0, 0.8, 0.72, 0.88, label="n=4")
    b2 = CurvePoint("B", 2.0, 0.6, 0.5, 0.7)
    b4 = CurvePoint("B", 4.0, 0.6, 0.45, 0.75)
    rows = compute_matched([a1, a4, b2, b4])
    assert [r.budget for r in rows] == [1.0, 2.0, 4.0]

    r1, r2, r4 = rows
    assert r1 == MatchedRow(1.0, {"A": a1, "B": None}, "A", None, None, None)

    assert r2.best == {"A": a1, "B": b2}
    assert (r2.winner, r2.runner_up) == ("B", "A")
    assert r2.margin == pytest.approx(0.1)
    assert r2.significant is False  # B.lo 0.5 <= A.hi 0.6

    assert r4.best == {"A": a4, "B": b2}  # B's tie at 0.6: the cheaper point
    assert (r4.winner, r4.runner_up) == ("A", "B")
    assert r4.margin == pytest.approx(0.2)
    assert r4.significant is True  # A.lo 0.72 > B.hi 0.7


def test_compute_matched_explicit_budgets_and_empty() -> None:
    a1 = CurvePoint("A", 1.0, 0.5)
    b1 = CurvePoint("B", 1.0, 0.7)
    rows = compute_matched([a1, b1], budgets=[0.5, 10.0])
    assert rows[0] == MatchedRow(0.5, {"A": None, "B": None}, None, None, None, None)
    assert (rows[1].winner, rows[1].runner_up) == ("B", "A")
    assert rows[1].margin == pytest.approx(0.2)
    assert rows[1].significant is None  # no CIs
    assert compute_matched([]) == []


def test_compute_matched_ties() -> None:
    # Equal accuracy: the cheaper point wins; equal accuracy and cost: the name decides.
    rows = compute_matched([CurvePoint("E", 1.0, 0.5), CurvePoint("F", 0.5, 0.5)], [1.0])
    assert (rows[0].winner, rows[0].runner_up, rows[0].margin) == ("F", "E", 0.0)
    rows = compute_matched([CurvePoint("D", 1.0, 0.5), CurvePoint("C", 1.0, 0.5)], [1.0])
    assert (rows[0].winner, rows[0].runner_up) == ("C", "D")


def test_compute_matched_significance_needs_both_bounds() -> None:
    w = CurvePoint("W", 1.0, 0.9, lo=0.85, hi=0.95)
    r = CurvePoint("R", 1.0, 0.1, lo=0.05)  # no hi
    assert compute_matched([w, r])[0].significant is None


# --------------------------------------------------------------------------- chains


def test_transitions() -> None:
    chains = [[False, True, True], [True, False], [True, True, False, False], [True]]
    assert transitions(chains) == [
        {"wrong_to_right": 1, "right_to_wrong": 1, "right_to_right": 1, "wrong_to_wrong": 0},
        {"wrong_to_right": 0, "right_to_wrong": 1, "right_to_right": 1, "wrong_to_wrong": 0},
        {"wrong_to_right": 0, "right_to_wrong": 0, "right_to_right": 0, "wrong_to_wrong": 1},
    ]
    assert transitions([[True], []]) == []
    assert transitions([]) == []


def test_change_rate() -> None:
    chains = [["1", "2", "2"], [None, None], [None, "3", "3", "4"], ["9"]]
    assert change_rate(chains) == [pytest.approx(2 / 3), 0.0, 1.0]
    assert change_rate([[None, "1"], ["1", None]]) == [1.0]
    assert change_rate([["x"]]) == []


# --------------------------------------------------------------------------- diversity


def test_diversity_tiny_inputs() -> None:
    samples = [["The cat sat", "the CAT"], ["a b", "c d"]]
    d = diversity(samples, keys=[["1", "1", None], ["2", "3"]])
    assert d["distinct_answers"] == 1.5
    assert d["distinct_1"] == pytest.approx((3 / 5 + 4 / 4) / 2)
    assert d["distinct_2"] == pytest.approx((2 / 3 + 2 / 2) / 2)
    assert d["mean_pairwise_jaccard"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_diversity_without_keys_and_degenerate_tasks() -> None:
    d = diversity([["same words", "same words", "same words"]])
    assert "distinct_answers" not in d
    assert d["distinct_1"] == pytest.approx(2 / 6)
    assert d["distinct_2"] == pytest.approx(1 / 3)
    assert d["mean_pairwise_jaccard"] == 1.0
    single = diversity([["one"]])  # no bigram, no pair
    assert single["distinct_1"] == 1.0
    assert math.isnan(single["distinct_2"]) and math.isnan(single["mean_pairwise_jaccard"])


def test_diversity_errors() -> None:
    with pytest.raises(ValueError, match="samples is empty"):
        diversity([])
    with pytest.raises(ValueError, match="keys has 2 tasks but samples has 1"):
        diversity([["x"]], keys=[["a"], ["b"]])


# --------------------------------------------------------------------------- judges


def test_pairwise_judge_position_bias_case() -> None:
    # The judge always picks whatever is shown first: a in "ab", b in "ba".
    assert pairwise_judge_stats([("a", "b", 10, 10)]) == {
        "n": 1,
        "decided": 1,
        "order_flip_rate": 1.0,
        "first_position_win_rate": 1.0,  # 2 of 2
        "longer_win_rate": None,
    }


def test_pairwise_judge_stats_mixed() -> None:
    judgements = [
        ("a", "a", 100, 50),  # consistent, longer won
        ("b", "b", 100, 50),  # consistent, shorter won
        ("tie", "tie", 3, 4),  # consistent tie: no position vote, no length decision
        (None, "a", 1, 2),  # only the ba order parsed: a (shown second) won
        ("a", "b", 5, 5),  # flip, both first-position wins
        (None, None, 1, 1),
    ]
    stats = pairwise_judge_stats(judgements)
    assert stats["n"] == 6
    assert stats["decided"] == 4
    assert stats["order_flip_rate"] == 0.25
    assert stats["first_position_win_rate"] == pytest.approx(4 / 7)
    assert stats["longer_win_rate"] == 0.5


def test_pairwise_judge_stats_empty_and_errors() -> None:
    assert pairwise_judge_stats([]) == {
        "n": 0,
        "decided": 0,
        "order_flip_rate": None,
        "first_position_win_rate": None,
        "longer_win_rate": None,
    }
    with pytest.raises(ValueError, match=r"judgement 0: winner_ba must be 'a', 'b', 'tie' or None"):
        pairwise_judge_stats([("a", "A", 1, 2)])
    with pytest.raises(ValueError, match="judgement 0: expected"):
        pairwise_judge_stats([("a", "b")])  # type: ignore[list-item]


def test_judge_agreement() -> None:
    pred = [True, True, False, None, True, False]
    truth = [True, False, True, True, True, False]
    out = judge_agreement(pred, truth)
    assert out["n"] == 6 and out["unparsed"] == 1
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(3 / 5)


def test_judge_agreement_precision_recall_differ() -> None:
    out = judge_agreement([True, True, True, False], [True, False, False, False])
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == 1.0
    assert out["f1"] == pytest.approx(0.5)
    assert out["accuracy"] == 0.5


def test_judge_agreement_undefined() -> None:
    out = judge_agreement([False, False], [False, False])
    assert out["precision"] is None and out["recall"] is None and out["f1"] is None
    assert out["accuracy"] == 1.0
    out = judge_agreement([False, True], [True, False])
    assert (out["precision"], out["recall"], out["f1"]) == (0.0, 0.0, 0.0)
    out = judge_agreement([None], [True])
    assert out == {
        "n": 1,
        "unparsed": 1,
        "precision": None,
        "recall": None,
        "f1": None,
        "accuracy": None,
    }
    with pytest.raises(ValueError, match="pred has 1 items but truth has 2"):
        judge_agreement([True], [True, False])


def test_length_correlation() -> None:
    assert length_correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert length_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert length_correlation([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    x, y = [3.0, 10.0, 7.5, 1.0, 4.0], [0.2, 0.9, 0.1, 0.4, 0.5]
    assert length_correlation(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert length_correlation([1, 2], [1, 2]) is None
    assert length_correlation([1, 2, 3], [0.1, 0.1, 0.1]) is None
    assert length_correlation([5, 5, 5], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="lengths has 3 items but scores has 2"):
        length_correlation([1, 2, 3], [1, 2])
