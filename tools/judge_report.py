"""The judge bias report: what a set of judgements says about the judge itself.

:func:`report` turns many judgements into a :class:`BiasReport`: first-position win rate,
order consistency, parse failures and verbosity bias.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator

from loopwright.tools.judgements import (
    AnyJudgement,
    PairwiseJudgement,
    PanelComparison,
    PanelScore,
    PointwiseJudgement,
)
from pydantic import BaseModel, ConfigDict, Field

_FROZEN = ConfigDict(frozen=True)


class BiasReport(BaseModel):
    """What a set of judgements says about the judge itself."""

    model_config = _FROZEN

    judge_models: list[str] = Field(description="The judge models the judgements came from.")
    n_pointwise: int = Field(description="Pointwise judgements (panel members counted singly).")
    n_pairwise: int = Field(description="Pairwise judgements (panel members counted singly).")
    n_samples: int = Field(description="Judge outputs asked for, over all judgements.")
    parse_failure_rate: float | None = Field(description="Share of outputs without a score/vote.")
    call_failure_rate: float | None = Field(description="Share of judgements with a failed call.")
    mean_score: float | None = Field(description="Mean pointwise score, on the judges' scale.")
    mean_normalized: float | None = Field(description="Mean pointwise score mapped to 0..1.")
    length_score_correlation: float | None = Field(
        description="Pearson r of answer length and score: verbosity bias (None below 3 points)."
    )
    first_position_win_rate: float | None = Field(
        description="Share of decisive pairwise votes for the answer shown first (0.5 = unbiased)."
    )
    consistency_rate: float | None = Field(
        description="Share of comparisons whose winner survived the order flip."
    )
    tie_rate: float | None = Field(description="Share of parsed pairwise votes that were ties.")
    longer_answer_win_rate: float | None = Field(
        description="Among decided comparisons of unequal lengths, share won by the longer answer."
    )
    mean_agreement: float | None = Field(description="Mean self-agreement over k repeats.")
    warnings: list[str] = Field(description="Plain-language flags for biases worth a look.")


def _flatten(
    judgements: Iterable[AnyJudgement],
) -> Iterator[PointwiseJudgement | PairwiseJudgement]:
    for j in judgements:
        if isinstance(j, PanelScore | PanelComparison):
            yield from j.members
        else:
            yield j


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def report(judgements: Iterable[AnyJudgement]) -> BiasReport:
    """Aggregate judgements (panels are unpacked into their members) into a bias report."""
    flat = list(_flatten(judgements))
    points = [j for j in flat if isinstance(j, PointwiseJudgement)]
    pairs = [j for j in flat if isinstance(j, PairwiseJudgement)]
    n_samples = sum(j.n_samples for j in flat)
    scored = [j for j in points if j.score is not None and j.normalized is not None]
    corr: float | None = None
    if len(scored) >= 3:
        try:
            corr = statistics.correlation(
                [float(j.answer_chars) for j in scored], [j.normalized or 0.0 for j in scored]
            )
        except statistics.StatisticsError:  # constant lengths or scores
            corr = None
    first = sum(p.first_position_wins for p in pairs)
    second = sum(p.second_position_wins for p in pairs)
    ties = sum(p.position_ties for p in pairs)
    flipped = [p.position_consistent for p in pairs if p.position_consistent is not None]
    decided = [p for p in pairs if p.winner in ("a", "b") and p.a_chars != p.b_chars]
    longer_won = sum((p.winner == "a") == (p.a_chars > p.b_chars) for p in decided)
    agreements = [
        j.agreement
        for j in flat
        if j.agreement is not None and j.n_samples > (1 if isinstance(j, PointwiseJudgement) else 2)
    ]
    r = BiasReport(
        judge_models=sorted({j.judge_model for j in flat}),
        n_pointwise=len(points),
        n_pairwise=len(pairs),
        n_samples=n_samples,
        parse_failure_rate=_rate(sum(j.n_unparsed for j in flat), n_samples),
        call_failure_rate=_rate(sum(j.error is not None for j in flat), len(flat)),
        mean_score=statistics.fmean(j.score or 0.0 for j in scored) if scored else None,
        mean_normalized=statistics.fmean(j.normalized or 0.0 for j in scored) if scored else None,
        length_score_correlation=corr,
        first_position_win_rate=_rate(first, first + second),
        consistency_rate=_rate(sum(flipped), len(flipped)),
        tie_rate=_rate(ties, first + second + ties),
        longer_answer_win_rate=_rate(longer_won, len(decided)),
        mean_agreement=statistics.fmean(agreements) if agreements else None,
        warnings=[],
    )
    return r.model_copy(
        update={"warnings": _warnings(r, first + second, len(flipped), len(scored), len(decided))}
    )


def _warnings(r: BiasReport, decisive: int, flips: int, scored: int, decided: int) -> list[str]:
    out: list[str] = []
    fp = r.first_position_win_rate
    if fp is not None and decisive >= 4 and abs(fp - 0.5) >= 0.2:
        side = "first" if fp > 0.5 else "second"
        out.append(
            f"position bias: the {side}-shown answer won {fp:.0%} of {decisive} decisive votes"
        )
    if r.consistency_rate is not None and flips >= 4 and r.consistency_rate < 0.8:
        out.append(
            f"order sensitivity: only {r.consistency_rate:.0%} of {flips} comparisons survived the flip"
        )
    if r.parse_failure_rate is not None and r.parse_failure_rate > 0.1:
        out.append(
            f"parse failures: {r.parse_failure_rate:.0%} of {r.n_samples} judge outputs unusable"
        )
    c = r.length_score_correlation
    if c is not None and scored >= 5 and abs(c) >= 0.5:
        out.append(f"verbosity bias: answer length and score correlate at r={c:.2f} over {scored}")
    lw = r.longer_answer_win_rate
    if lw is not None and decided >= 4 and lw >= 0.7:
        out.append(
            f"verbosity bias: the longer answer won {lw:.0%} of {decided} decided comparisons"
        )
    return out


def report_by_model(judgements: Iterable[AnyJudgement]) -> dict[str, BiasReport]:
    """One bias report per judge model (panels unpacked)."""
    groups: dict[str, list[AnyJudgement]] = {}
    for j in _flatten(judgements):
        groups.setdefault(j.judge_model, []).append(j)
    return {model: report(js) for model, js in sorted(groups.items())}
