"""LLM judge: rubric scores, pairwise comparisons in both orders, panels.

A :class:`Judge` asks a model through any :class:`Sampler` (loopwright's model client is one),
so its calls are budgeted, cached and traced like every other model call (role ``"judge"``).
Judge outputs are parsed by :mod:`loopwright.tools.judge_parse`: what cannot be parsed
becomes ``parsed=False`` with the raw text kept. A failed model call becomes a failed
judgement; only an exhausted budget (and user errors) raise.

Pairwise comparisons are always judged twice — answer *a* shown first, then *b* shown first —
so position bias is measured rather than inherited; :func:`~loopwright.tools.judge_report.report`
turns many judgements into a bias report. :class:`~loopwright.tools.reward_model.RewardModel`
scores answers with a reward model over HTTP. Both are re-exported here.

Prompts live in ``tools/prompts/judge.toml``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeVar, get_args

from loopwright.tools.errors import ModelCallError, UserError, unknown
from loopwright.tools.judge_parse import Position, parse_preference, parse_score
from loopwright.tools.judge_report import BiasReport, report, report_by_model
from loopwright.tools.prompts import render
from loopwright.tools.reward_model import RewardEndpoint, RewardModel, RewardScore
from loopwright.tools.verdict import Verdict
from pydantic import BaseModel, ConfigDict, Field


class Sampled(Protocol):
    """One completion: its text."""

    text: str


class Sampler(Protocol):
    """What a judge asks: something with a model name and an async ``sample`` (loopwright's
    ``ModelClient``; ``budget`` and ``context`` are passed through to it untouched)."""

    @property
    def model(self) -> str: ...

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        budget: Any = None,
        context: Any = None,
        role: str | None = None,
    ) -> Sequence[Sampled]: ...


__all__ = [
    "VERSION",
    "Aggregate",
    "AnyJudgement",
    "BiasReport",
    "Judge",
    "OnInconsistent",
    "OrderResult",
    "PairwiseJudgement",
    "Panel",
    "PanelComparison",
    "PanelScore",
    "PointwiseJudgement",
    "Position",
    "RewardEndpoint",
    "RewardModel",
    "RewardScore",
    "Winner",
    "parse_preference",
    "parse_score",
    "report",
    "report_by_model",
]

VERSION = "judge-1"
Winner = Literal["a", "b", "tie"]
OnInconsistent = Literal["tie", "abstain", "pooled"]
Aggregate = Literal["majority", "mean"]
T = TypeVar("T")

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


class PanelScore(BaseModel):
    """A panel's pointwise judgement: every member's, and their aggregate."""

    model_config = _FROZEN

    kind: Literal["panel-pointwise"] = Field("panel-pointwise", description="Discriminator.")
    judge_model: str = Field(description="'panel:' and the member models.")
    aggregate: Aggregate = Field(description="How member scores were combined.")
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


class PanelComparison(BaseModel):
    """A panel's pairwise judgement: every member's, and their aggregate."""

    model_config = _FROZEN

    kind: Literal["panel-pairwise"] = Field("panel-pairwise", description="Discriminator.")
    judge_model: str = Field(description="'panel:' and the member models.")
    aggregate: Aggregate = Field(description="How member winners were combined.")
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


# -- judges ---------------------------------------------------------------------------------
def _mode_share(values: Sequence[Any]) -> tuple[Any, float] | None:
    """The most common value (None when the top count is shared) and its share."""
    if not values:
        return None
    counts = Counter(values).most_common()
    top = counts[0][1]
    modal = counts[0][0] if len(counts) == 1 or counts[1][1] < top else None
    return modal, top / len(values)


def _plurality(votes: Sequence[Winner]) -> Winner | None:
    ms = _mode_share(votes)
    if ms is None:
        return None
    return ms[0] if ms[0] is not None else "tie"


async def _gather_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; wait for all, then re-raise the first failure (no orphaned calls)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def _fmt(x: float) -> str:
    return f"{x:g}"


class Judge:
    """An LLM judge over one model client: rubric scores and order-flipped comparisons.

    ``k`` samples per prompt are drawn in one request (``n=k``); ``temperature`` defaults to
    0 for ``k=1`` and 0.7 for ``k>1`` (repeats of a greedy judge would all agree).
    ``on_inconsistent`` decides a comparison whose two orders disagree: ``tie`` (default),
    ``abstain`` (winner None) or ``pooled`` (plurality of all votes of both orders).
    """

    def __init__(
        self,
        client: Sampler,
        *,
        rubric: str | None = None,
        scale: tuple[float, float] = (1, 10),
        temperature: float | None = None,
        k: int = 1,
        max_tokens: int = 512,
        seed: int | None = None,
        on_inconsistent: OnInconsistent = "tie",
    ) -> None:
        if not scale[0] < scale[1]:
            raise UserError(f"judge scale must be (low, high) with low < high, got {scale}")
        if k < 1:
            raise UserError(f"judge k must be at least 1, got {k}")
        if on_inconsistent not in get_args(OnInconsistent):
            raise unknown("on_inconsistent policy", on_inconsistent, get_args(OnInconsistent))
        self.client = client
        self.rubric = (rubric or render("judge", "default_rubric")).strip()
        self.scale = (float(scale[0]), float(scale[1]))
        self.k = k
        self.temperature = temperature if temperature is not None else (0.0 if k == 1 else 0.7)
        self.max_tokens = max_tokens
        self.seed = seed
        self.on_inconsistent = on_inconsistent

    @property
    def model(self) -> str:
        return self.client.model

    async def _ask(self, prompt: str, budget: Any, context: Any) -> tuple[list[str], str | None]:
        """The judge's k raw outputs, or no outputs and the error of a failed call."""
        messages = [
            {"role": "system", "content": render("judge", "system")},
            {"role": "user", "content": prompt},
        ]
        try:
            samples = await self.client.sample(
                messages,
                n=self.k,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=self.seed,
                budget=budget,
                context=context,
                role="judge",
            )
        except ModelCallError as exc:  # an outside failure is data; BudgetExhausted propagates
            return [], str(exc)
        return [s.text for s in samples], None

    def _reference(self, reference: str | None) -> str:
        return render("judge", "reference", reference=reference) if reference else ""

    async def score(
        self,
        question: str,
        answer: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> PointwiseJudgement:
        """Score ``answer`` on the rubric. A failed call or unparseable output gives parsed=False."""
        t0 = time.perf_counter()
        low, high = self.scale
        prompt = render(
            "judge", "pointwise", question=question, answer=answer, rubric=self.rubric,
            low=_fmt(low), high=_fmt(high), reference=self._reference(reference),
        )  # fmt: skip
        texts, error = await self._ask(prompt, budget, context)
        results = [parse_score(t, self.scale) for t in texts]
        scores = [s for s, _ in results if s is not None]
        mean = statistics.fmean(scores) if scores else None
        ms = _mode_share(scores)
        return PointwiseJudgement(
            judge_model=self.model,
            score=mean,
            normalized=None if mean is None else (mean - low) / (high - low),
            scale=self.scale,
            parsed=bool(scores),
            sample_scores=[s for s, _ in results],
            raw=texts,
            parse_notes=[note for _, note in results],
            n_samples=self.k,
            n_unparsed=self.k - len(scores),
            agreement=None if ms is None else ms[1],
            stdev=statistics.pstdev(scores) if scores else None,
            answer_chars=len(answer),
            error=error,
            latency_s=time.perf_counter() - t0,
        )

    async def compare(
        self,
        question: str,
        a: str,
        b: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> PairwiseJudgement:
        """Compare ``a`` with ``b``, once with each shown first; the flip is recorded."""
        if budget is not None:  # both orders or neither: half a comparison is worthless
            budget.check(calls=2 * self.k)
        t0 = time.perf_counter()
        ref = self._reference(reference)
        prompts = [
            render("judge", "pairwise", question=question, first=x, second=y,
                   rubric=self.rubric, reference=ref)
            for x, y in ((a, b), (b, a))
        ]  # fmt: skip
        asked = await _gather_all(self._ask(p, budget, context) for p in prompts)
        ab, ba = _order("ab", *asked[0]), _order("ba", *asked[1])
        pooled = [v for v in (*ab.votes, *ba.votes) if v is not None]
        winner: Winner | None = None
        consistent: bool | None = None
        if ab.winner is not None and ba.winner is not None:
            consistent = ab.winner == ba.winner
            if consistent:
                winner = ab.winner
            elif self.on_inconsistent == "tie":
                winner = "tie"
            elif self.on_inconsistent == "pooled":
                winner = _plurality(pooled)
        ms = _mode_share(pooled)
        return PairwiseJudgement(
            judge_model=self.model,
            winner=winner,
            parsed=ab.winner is not None and ba.winner is not None,
            position_consistent=consistent,
            a_first=ab,
            b_first=ba,
            first_position_wins=ab.votes.count("a") + ba.votes.count("b"),
            second_position_wins=ab.votes.count("b") + ba.votes.count("a"),
            position_ties=pooled.count("tie"),
            n_samples=2 * self.k,
            n_unparsed=2 * self.k - len(pooled),
            agreement=None if ms is None else ms[1],
            a_chars=len(a),
            b_chars=len(b),
            latency_s=time.perf_counter() - t0,
        )

    def score_sync(self, question: str, answer: str, **kw: Any) -> PointwiseJudgement:
        """:meth:`score` for scripts (not inside a running event loop)."""
        return asyncio.run(self.score(question, answer, **kw))

    def compare_sync(self, question: str, a: str, b: str, **kw: Any) -> PairwiseJudgement:
        """:meth:`compare` for scripts (not inside a running event loop)."""
        return asyncio.run(self.compare(question, a, b, **kw))


def _order(order: Literal["ab", "ba"], texts: list[str], error: str | None) -> OrderResult:
    to_answer: dict[Position, Winner] = (
        {"first": "a", "second": "b", "tie": "tie"}
        if order == "ab"
        else {"first": "b", "second": "a", "tie": "tie"}
    )
    votes: list[Winner | None] = []
    for t in texts:
        pos = parse_preference(t)
        votes.append(None if pos is None else to_answer[pos])
    parsed = [v for v in votes if v is not None]
    ms = _mode_share(parsed)
    return OrderResult(
        order=order,
        raw=texts,
        votes=votes,
        winner=_plurality(parsed),
        agreement=None if ms is None else ms[1],
        error=error,
    )


class Panel:
    """Several judges on the same question; their judgements aggregated and all kept.

    ``majority``: the most common member score (median when the top is shared) or winner
    (tie when the top is shared). ``mean``: the mean member score, or the sign of the mean
    preference (a=+1, tie=0, b=-1).
    """

    def __init__(self, judges: Sequence[Judge], aggregate: Aggregate = "majority") -> None:
        if not judges:
            raise UserError("a judge panel needs at least one judge")
        if aggregate not in get_args(Aggregate):
            raise unknown("panel aggregate", aggregate, get_args(Aggregate))
        if len({j.scale for j in judges}) > 1:
            raise UserError("panel judges must share one scale: pass the same scale= to each")
        self.judges = list(judges)
        self.aggregate = aggregate
        self.scale = self.judges[0].scale

    @property
    def model(self) -> str:
        return "panel:" + ",".join(j.model for j in self.judges)

    async def score(
        self,
        question: str,
        answer: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> PanelScore:
        """Every member scores ``answer``; the scores are aggregated."""
        if budget is not None:
            budget.check(calls=sum(j.k for j in self.judges))
        t0 = time.perf_counter()
        members = await _gather_all(
            j.score(question, answer, reference, budget, context) for j in self.judges
        )
        scores = [m.score for m in members if m.score is not None]
        ms = _mode_share(scores)
        agg: float | None = None
        if scores and self.aggregate == "mean":
            agg = statistics.fmean(scores)
        elif ms is not None:
            agg = ms[0] if ms[0] is not None else statistics.median(scores)
        low, high = self.scale
        return PanelScore(
            judge_model=self.model,
            aggregate=self.aggregate,
            score=agg,
            normalized=None if agg is None else (agg - low) / (high - low),
            scale=self.scale,
            parsed=bool(scores),
            members=members,
            agreement=None if ms is None else ms[1],
            stdev=statistics.pstdev(scores) if scores else None,
            latency_s=time.perf_counter() - t0,
        )

    async def compare(
        self,
        question: str,
        a: str,
        b: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> PanelComparison:
        """Every member compares ``a`` and ``b`` (both orders); the winners are aggregated."""
        if budget is not None:
            budget.check(calls=sum(2 * j.k for j in self.judges))
        t0 = time.perf_counter()
        members = await _gather_all(
            j.compare(question, a, b, reference, budget, context) for j in self.judges
        )
        votes = [m.winner for m in members if m.winner is not None]
        winner: Winner | None = None
        if votes and self.aggregate == "mean":
            pref = statistics.fmean({"a": 1.0, "tie": 0.0, "b": -1.0}[v] for v in votes)
            winner = "a" if pref > 0 else "b" if pref < 0 else "tie"
        elif votes:
            winner = _plurality(votes)
        return PanelComparison(
            judge_model=self.model,
            aggregate=self.aggregate,
            winner=winner,
            parsed=bool(votes),
            members=members,
            agreement=votes.count(winner) / len(votes) if votes and winner else None,
            latency_s=time.perf_counter() - t0,
        )

    def score_sync(self, question: str, answer: str, **kw: Any) -> PanelScore:
        """:meth:`score` for scripts (not inside a running event loop)."""
        return asyncio.run(self.score(question, answer, **kw))

    def compare_sync(self, question: str, a: str, b: str, **kw: Any) -> PanelComparison:
        """:meth:`compare` for scripts (not inside a running event loop)."""
        return asyncio.run(self.compare(question, a, b, **kw))
