"""What a judge and a panel share: vote tallies and ``JudgingBase``.

``JudgingBase`` holds ``score`` and ``compare`` once for :class:`~loopwright.tools.judge.Judge`
and :class:`~loopwright.tools.judge.Panel`: their signatures, the budget check up front, the
wall time, and the ``*_sync`` forms; each subclass makes the judgement itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from loopwright.tools.judgements import Winner
from pydantic import BaseModel

T = TypeVar("T")
S = TypeVar("S", bound=BaseModel)  # what ``score`` returns
C = TypeVar("C", bound=BaseModel)  # what ``compare`` returns
J = TypeVar("J", bound=BaseModel)


def mode_share(values: Sequence[Any]) -> tuple[Any, float] | None:
    """The most common value (None when the top count is shared) and its share."""
    if not values:
        return None
    counts = Counter(values).most_common()
    top = counts[0][1]
    modal = counts[0][0] if len(counts) == 1 or counts[1][1] < top else None
    return modal, top / len(values)


def plurality(votes: Sequence[Winner]) -> Winner | None:
    ms = mode_share(votes)
    if ms is None:
        return None
    return ms[0] if ms[0] is not None else "tie"


async def gather_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; wait for all, then re-raise the first failure (no orphaned calls)."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


class Ask(NamedTuple):
    """What every judgement of one question is asked with, besides the answers."""

    question: str
    reference: str | None
    budget: Any
    context: Any


class JudgingBase(Generic[S, C]):
    """What a judge and a panel share: ``score`` and ``compare`` with their budget check up
    front (a judgement is asked for whole or not at all) and their wall time, and the
    ``*_sync`` forms. Subclasses say how many calls each takes and make the judgement."""

    def _calls(self, pairwise: bool) -> int | None:
        """Calls to reserve before a judgement; None: leave the check to the client."""
        raise NotImplementedError

    async def _score(self, ask: Ask, answer: str) -> S:
        raise NotImplementedError

    async def _compare(self, ask: Ask, a: str, b: str) -> C:
        raise NotImplementedError

    @staticmethod
    async def _timed(work: Awaitable[J]) -> J:
        t0 = time.perf_counter()
        judged = await work
        return judged.model_copy(update={"latency_s": time.perf_counter() - t0})

    def _check(self, budget: Any, pairwise: bool) -> None:
        calls = self._calls(pairwise)
        if budget is not None and calls is not None:
            budget.check(calls=calls)

    async def score(
        self,
        question: str,
        answer: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> S:
        """Score ``answer`` on the rubric. A failed call or unparseable output gives parsed=False."""
        self._check(budget, pairwise=False)
        return await self._timed(self._score(Ask(question, reference, budget, context), answer))

    async def compare(
        self,
        question: str,
        a: str,
        b: str,
        reference: str | None = None,
        budget: Any = None,
        context: Any = None,
    ) -> C:
        """Compare ``a`` with ``b``, each judge once with each shown first; the flip is recorded."""
        self._check(budget, pairwise=True)
        return await self._timed(self._compare(Ask(question, reference, budget, context), a, b))

    def score_sync(self, question: str, answer: str, **kw: Any) -> S:
        """:meth:`score` for scripts (not inside a running event loop)."""
        return asyncio.run(self.score(question, answer, **kw))

    def compare_sync(self, question: str, a: str, b: str, **kw: Any) -> C:
        """:meth:`compare` for scripts (not inside a running event loop)."""
        return asyncio.run(self.compare(question, a, b, **kw))


def normalize(value: float | None, scale: tuple[float, float]) -> float | None:
    low, high = scale
    return None if value is None else (value - low) / (high - low)
