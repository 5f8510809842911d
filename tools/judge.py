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

import statistics
from collections.abc import Sequence
from typing import Any, Literal, Protocol, get_args

from loopwright.tools.errors import ModelCallError, UserError, unknown
from loopwright.tools.judge_parse import Position, parse_preference, parse_score
from loopwright.tools.judge_report import BiasReport, report, report_by_model
from loopwright.tools.judgements import (
    VERSION as VERSION,  # re-exported for old imports; kept out of ``__all__`` (and the package's)
)
from loopwright.tools.judgements import (
    Aggregate,
    AnyJudgement,
    OrderResult,
    PairwiseJudgement,
    PanelComparison,
    PanelScore,
    PointwiseJudgement,
    Winner,
)
from loopwright.tools.judging import (
    Ask,
    JudgingBase,
    gather_all,
    mode_share,
    normalize,
    plurality,
)
from loopwright.tools.prompts import render
from loopwright.tools.reward_model import RewardEndpoint, RewardModel, RewardScore


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

OnInconsistent = Literal["tie", "abstain", "pooled"]


def _fmt(x: float) -> str:
    return f"{x:g}"


class Judge(JudgingBase[PointwiseJudgement, PairwiseJudgement]):
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

    def _calls(self, pairwise: bool) -> int | None:
        # both orders or neither: half a comparison is worthless; one score is one request
        return 2 * self.k if pairwise else None

    async def _ask(self, prompt: str, ask: Ask) -> tuple[list[str], str | None]:
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
                budget=ask.budget,
                context=ask.context,
                role="judge",
            )
        except ModelCallError as exc:  # an outside failure is data; BudgetExhausted propagates
            return [], str(exc)
        return [s.text for s in samples], None

    def _reference(self, reference: str | None) -> str:
        return render("judge", "reference", reference=reference) if reference else ""

    async def _score(self, ask: Ask, answer: str) -> PointwiseJudgement:
        low, high = self.scale
        prompt = render(
            "judge", "pointwise", question=ask.question, answer=answer, rubric=self.rubric,
            low=_fmt(low), high=_fmt(high), reference=self._reference(ask.reference),
        )  # fmt: skip
        texts, error = await self._ask(prompt, ask)
        results = [parse_score(t, self.scale) for t in texts]
        scores = [s for s, _ in results if s is not None]
        mean = statistics.fmean(scores) if scores else None
        ms = mode_share(scores)
        return PointwiseJudgement(
            judge_model=self.model,
            score=mean,
            normalized=normalize(mean, self.scale),
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
        )

    async def _compare(self, ask: Ask, a: str, b: str) -> PairwiseJudgement:
        ref = self._reference(ask.reference)
        prompts = [
            render("judge", "pairwise", question=ask.question, first=x, second=y,
                   rubric=self.rubric, reference=ref)
            for x, y in ((a, b), (b, a))
        ]  # fmt: skip
        asked = await gather_all(self._ask(p, ask) for p in prompts)
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
                winner = plurality(pooled)
        ms = mode_share(pooled)
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
        )


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
    ms = mode_share(parsed)
    return OrderResult(
        order=order,
        raw=texts,
        votes=votes,
        winner=plurality(parsed),
        agreement=None if ms is None else ms[1],
        error=error,
    )


class Panel(JudgingBase[PanelScore, PanelComparison]):
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

    def _calls(self, pairwise: bool) -> int | None:
        return sum((2 if pairwise else 1) * j.k for j in self.judges)

    async def _score(self, ask: Ask, answer: str) -> PanelScore:
        members = await gather_all(
            j.score(ask.question, answer, ask.reference, ask.budget, ask.context)
            for j in self.judges
        )
        scores = [m.score for m in members if m.score is not None]
        ms = mode_share(scores)
        agg: float | None = None
        if scores and self.aggregate == "mean":
            agg = statistics.fmean(scores)
        elif ms is not None:
            agg = ms[0] if ms[0] is not None else statistics.median(scores)
        return PanelScore(
            judge_model=self.model,
            aggregate=self.aggregate,
            score=agg,
            normalized=normalize(agg, self.scale),
            scale=self.scale,
            parsed=bool(scores),
            members=members,
            agreement=None if ms is None else ms[1],
            stdev=statistics.pstdev(scores) if scores else None,
        )

    async def _compare(self, ask: Ask, a: str, b: str) -> PanelComparison:
        members = await gather_all(
            j.compare(ask.question, a, b, ask.reference, ask.budget, ask.context)
            for j in self.judges
        )
        votes = [m.winner for m in members if m.winner is not None]
        winner: Winner | None = None
        if votes and self.aggregate == "mean":
            pref = statistics.fmean({"a": 1.0, "tie": 0.0, "b": -1.0}[v] for v in votes)
            winner = "a" if pref > 0 else "b" if pref < 0 else "tie"
        elif votes:
            winner = plurality(votes)
        return PanelComparison(
            judge_model=self.model,
            aggregate=self.aggregate,
            winner=winner,
            parsed=bool(votes),
            members=members,
            agreement=votes.count(winner) / len(votes) if votes and winner else None,
        )
