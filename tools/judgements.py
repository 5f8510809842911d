"""What a judge returns: pointwise and pairwise judgements, a panel's, and their verdicts.

The result records of :mod:`loopwright.tools.judge` (which re-exports them), kept apart from
the judges that make them so :mod:`~loopwright.tools.judge_report` and
:mod:`~loopwright.tools.reward_model` can import them without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from loopwright.tools.verdict import Verdict
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "VERSION",
    "Aggregate",
    "AnyJudgement",
    "OrderResult",
    "PairwiseJudgement",
    "PanelComparison",
    "PanelScore",
    "PointwiseJudgement",
    "Winner",
]

VERSION = "judge-1"
Winner = Literal["a", "b", "tie"]
Aggregate = Literal["majority", "mean"]

# -- results --------------------------------------------------------------------------------
_FROZEN = ConfigDict(frozen=True)


class PointwiseJudgement(BaseModel):
    """One answer scored against a rubric, from ``k`` judge samples."""

    model_config = _FROZEN

    kind: Literal["pointwise"] = Field("pointwise", description="Discriminator for reports.")
    judge_model: str = Field(description="The judge's model string.")
    score: float | None = Field(
        description="Mean of the parsed sample scores; None if none parsed."
    )
    normalized: float | None = Field(description="The score mapped to 0..1 over the scale.")
    scale: tuple[float, float] = Field(description="Lowest and highest allowed score.")
    parsed: bool = Field(description="True when at least one sample yielded a score.")
    sample_scores: list[float | None] = Field(description="Per-sample scores, None where unparsed.")
    raw: list[str] = Field(description="The judge's raw outputs, one per sample.")
    parse_notes: list[str | None] = Field(description="Per sample, why no score was taken.")
    n_samples: int = Field(description="Samples asked for (k).")
    n_unparsed: int = Field(description="Samples without a usable score, failed calls included.")
    agreement: float | None = Field(description="Share of parsed samples equal to the modal score.")
    stdev: float | None = Field(description="Population stdev of the parsed sample scores.")
    answer_chars: int = Field(description="Length of the judged answer, for verbosity bias.")
    error: str | None = Field(None, description="The model-call failure, if the call failed.")
    latency_s: float = Field(0.0, description="Wall time of the judgement.")

    def to_verdict(self, threshold: float = 0.5) -> Verdict:
        """Passed when the normalised score reaches ``threshold``; the reasoning is the feedback."""
        return _verdict(
            "llm-judge",
            self.judge_model,
            self.normalized,
            threshold,
            self._feedback(),
            self.latency_s,
        )

    def _feedback(self) -> str:
        if self.error:
            return f"judge call failed: {self.error}"
        if not self.parsed:
            return f"judge gave no usable score ({self.parse_notes[0]}): {_head(self.raw)}"
        return _head(self.raw)


class OrderResult(BaseModel):
    """The judge's votes with the two answers shown in one order."""

    model_config = _FROZEN

    order: Literal["ab", "ba"] = Field(description="'ab': answer a shown first; 'ba': b first.")
    raw: list[str] = Field(description="The judge's raw outputs.")
    votes: list[Winner | None] = Field(description="Per sample, the preferred answer (a/b/tie).")
    winner: Winner | None = Field(description="Most common vote; tie when the top is shared.")
    agreement: float | None = Field(description="Share of parsed votes equal to the modal vote.")
    error: str | None = Field(None, description="The model-call failure, if the call failed.")


class PairwiseJudgement(BaseModel):
    """Two answers compared, judged in both orders."""

    model_config = _FROZEN

    kind: Literal["pairwise"] = Field("pairwise", description="Discriminator for reports.")
    judge_model: str = Field(description="The judge's model string.")
    winner: Winner | None = Field(description="The final winner; None when undecided.")
    parsed: bool = Field(description="True when both orders yielded a verdict.")
    position_consistent: bool | None = Field(description="Did flipping the order keep the winner?")
    a_first: OrderResult = Field(description="Votes with answer a shown first.")
    b_first: OrderResult = Field(description="Votes with answer b shown first.")
    first_position_wins: int = Field(description="Votes for whichever answer was shown first.")
    second_position_wins: int = Field(description="Votes for whichever answer was shown second.")
    position_ties: int = Field(description="Tie votes.")
    n_samples: int = Field(description="Samples asked for over both orders (2k).")
    n_unparsed: int = Field(description="Samples without a usable vote, failed calls included.")
    agreement: float | None = Field(description="Share of all parsed votes for the modal answer.")
    a_chars: int = Field(description="Length of answer a.")
    b_chars: int = Field(description="Length of answer b.")
    latency_s: float = Field(0.0, description="Wall time of the judgement.")

    @property
    def error(self) -> str | None:
        errs = [e for e in (self.a_first.error, self.b_first.error) if e]
        return "; ".join(errs) or None

    def to_verdict(self, side: Literal["a", "b"] = "a") -> Verdict:
        """The verdict on one side: score 1 win, 0.5 tie, 0 loss; passed on a win."""
        return _pair_verdict(
            "llm-judge-pairwise", self.judge_model, self.winner, side, self.latency_s, self.error
        )


class _PanelJudgement(BaseModel):
    """What a panel's judgements share: who judged and how the members were combined."""

    model_config = _FROZEN

    kind: str = Field(description="Discriminator.")
    judge_model: str = Field(description="'panel:' and the member models.")
    aggregate: Aggregate = Field(description="How member scores or winners were combined.")


class PanelScore(_PanelJudgement):
    """A panel's pointwise judgement: every member's, and their aggregate."""

    kind: Literal["panel-pointwise"] = Field("panel-pointwise", description="Discriminator.")
    score: float | None = Field(description="The aggregate score; None if no member scored.")
    normalized: float | None = Field(description="The aggregate mapped to 0..1.")
    scale: tuple[float, float] = Field(description="The members' shared scale.")
    parsed: bool = Field(description="True when at least one member gave a score.")
    members: list[PointwiseJudgement] = Field(description="Each member's judgement, in order.")
    agreement: float | None = Field(description="Share of scoring members at the modal score.")
    stdev: float | None = Field(description="Population stdev of the members' scores.")
    latency_s: float = Field(0.0, description="Wall time of the judgement.")

    def to_verdict(self, threshold: float = 0.5) -> Verdict:
        """Passed when the aggregate normalised score reaches ``threshold``."""
        fb = " | ".join(f"{m.judge_model}: {m.score}" for m in self.members)
        return _verdict(
            "llm-judge", self.judge_model, self.normalized, threshold, fb, self.latency_s
        )


class PanelComparison(_PanelJudgement):
    """A panel's pairwise judgement: every member's, and their aggregate."""

    kind: Literal["panel-pairwise"] = Field("panel-pairwise", description="Discriminator.")
    winner: Winner | None = Field(description="The panel's winner; None if no member decided.")
    parsed: bool = Field(description="True when at least one member decided.")
    members: list[PairwiseJudgement] = Field(description="Each member's judgement, in order.")
    agreement: float | None = Field(description="Share of deciding members that match the winner.")
    latency_s: float = Field(0.0, description="Wall time of the judgement.")

    def to_verdict(self, side: Literal["a", "b"] = "a") -> Verdict:
        """The verdict on one side: score 1 win, 0.5 tie, 0 loss; passed on a win."""
        return _pair_verdict(
            "llm-judge-pairwise", self.judge_model, self.winner, side, self.latency_s, None
        )


AnyJudgement = PointwiseJudgement | PairwiseJudgement | PanelScore | PanelComparison


def _head(raw: Sequence[str], limit: int = 1000) -> str:
    return raw[0].strip()[:limit] if raw else ""


def _verdict(
    name: str, model: str, normalized: float | None, threshold: float, feedback: str, latency: float
) -> Verdict:
    return Verdict(
        passed=normalized is not None and normalized >= threshold,
        score=normalized if normalized is not None else 0.0,
        answer=None if normalized is None else f"{normalized:.4g}",
        feedback=feedback,
        verifier=name,
        version=f"{VERSION}@{model}",
        latency_s=latency,
    )


def _pair_verdict(
    name: str, model: str, winner: Winner | None, side: str, latency: float, error: str | None
) -> Verdict:

    score = {None: 0.0, "tie": 0.5, side: 1.0}.get(winner, 0.0)
    feedback = (
        f"pairwise winner: {winner}" if winner else f"no pairwise verdict ({error or 'unparsed'})"
    )
    return Verdict(
        passed=winner == side,
        score=score,
        answer=winner,
        feedback=feedback,
        verifier=name,
        version=f"{VERSION}@{model}",
        latency_s=latency,
    )
