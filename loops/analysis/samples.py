"""Best-of-n samples read back from the trace store, and the replay of a loop's selector.

One row per best-of-n generator sample of finished tasks, in production order, with its
in-loop and graded verdicts, its cost, and the scores the loop's judge or reward selector
gave it. ``select`` replays best-of-n's own selection over stored samples, so a report can
read "best-of-k" for any k <= N from one run without substituting another selector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loopwright.loops.tasks.answers import normalise_answer
from loopwright.traces.report_queries import best_of_n_samples
from loopwright.traces.store import TraceStore

if TYPE_CHECKING:
    from loopwright.loops.graphs.best_of_n_select import Selector, WeightBy


@dataclass
class BestOfNSample:
    """One best-of-n sample, in the order the model produced it."""

    node_id: str
    text: str
    answer: str | None
    kind: str
    key: str | None
    verified: bool | None
    score: float | None
    correct: bool | None
    logprob: float | None
    completion_tokens: int
    prompt_tokens: int
    usd: float
    latency: float
    judge: float | None = None
    """The loop's judge score of this sample (normalised), when its selector judged."""
    reward: float | None = None
    """The loop's reward-model score of this sample, when its selector asked for one."""
    final: bool = False
    """The loop returned this sample (its own pick over all of its samples)."""
    check_tokens: float = 0.0
    """Tokens its in-loop verification spent (its verdict's ``details.cost_tokens``)."""
    check_calls: float = 0.0
    check_usd: float = 0.0


def vote_key(kind: str | None, answer: str | None) -> str | None:
    """The normalised answer a vote and a selector compare (the task kind picks the rule)."""
    return normalise_answer(kind or "math", answer)


def load_samples(
    store: TraceStore, run_ids: list[str]
) -> dict[str, dict[str, list[BestOfNSample]]]:
    """Best-of-n samples per run and task, in production order, with both verdicts."""
    rows = best_of_n_samples(store, run_ids)
    out: dict[str, dict[str, list[BestOfNSample]]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {}).setdefault(r["task_id"], []).append(
            BestOfNSample(
                node_id=r["node_id"],
                text=r["content"] or "",
                answer=r["answer"],
                kind=r["kind"] or "math",
                key=vote_key(r["kind"], r["answer"]),
                verified=r["verified"],
                score=r["score"],
                correct=r["correct"],
                logprob=r["logprob_mean"],
                completion_tokens=int(r["completion_tokens"] or 0),
                prompt_tokens=int(r["prompt_tokens"] or 0),
                usd=float(r["cost_usd"] or 0.0),
                latency=float(r["latency_s"] or 0.0),
                judge=r["judge"],
                reward=r["reward"],
                final=bool(r["is_final"]),
                check_tokens=float(r["ctok"] or 0.0),
                check_calls=float(r["ccalls"] or 0.0),
                check_usd=float(r["cusd"] or 0.0),
            )
        )
    return out


def select(
    samples: list[BestOfNSample], selector: Selector, weight_by: WeightBy = "logprob"
) -> bool:
    """Is the answer the loop's ``selector`` picks among ``samples`` graded correct?

    The selection is replayed with best-of-n's own function over what the loop stored for
    each sample: its in-loop verdict and score, mean logprob, and the scores its judge or
    reward selector gave. The pick is the sample the loop would return (for votes, the first
    sample with the winning answer), graded as returned.
    """
    from loopwright.loops.graphs.best_of_n_select import select as choose
    from loopwright.loops.graphs.common import Candidate
    from loopwright.loops.tasks import Task

    if not samples:
        return False
    task = Task.model_validate({"id": "replay", "prompt": "", "kind": samples[0].kind})
    cands: list[Candidate] = [
        {"node_id": s.node_id, "parent_id": None, "text": s.text, "answer": s.answer,
         "passed": s.verified, "score": s.score, "feedback": None, "logprob": s.logprob,
         "round": 0, "depth": 0}
        for s in samples
    ]  # fmt: skip
    signal = "reward" if "reward" in (selector, weight_by) else "judge"
    signals = {s.node_id: (s.reward if signal == "reward" else s.judge) for s in samples}
    has_verifier = any(s.verified is not None for s in samples)
    sel = choose(task, cands, selector, weight_by=weight_by, has_verifier=has_verifier,
                 signals=signals)  # fmt: skip
    if sel.chosen is None:
        return False
    if sel.used in ("majority", "weighted") and sel.winner is not None:
        return any(s.correct for s in samples if normalise_answer(s.kind, s.answer) == sel.winner)
    by_id = {s.node_id: s for s in samples}
    return bool(by_id[sel.chosen["node_id"]].correct)
