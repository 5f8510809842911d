"""Best-of-n samples read back from the trace store, and the replay of a loop's selector.

One row per best-of-n generator sample of finished tasks, in production order, with its
in-loop and graded verdicts, its cost, and the scores the loop's judge or reward selector
gave it. ``select`` replays best-of-n's own selection over stored samples, so a report can
read "best-of-k" for any k <= N from one run without substituting another selector.
"""

from __future__ import annotations

from dataclasses import dataclass

from loopwright.loops.tasks.answers import normalise_answer
from loopwright.traces.store import TraceStore


@dataclass
class Sample:
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


def answer_key(kind: str | None, answer: str | None) -> str | None:
    """The normalised answer a vote and a selector compare (the task kind picks the rule)."""
    return normalise_answer(kind or "math", answer)


def load_samples(store: TraceStore, run_ids: list[str]) -> dict[str, dict[str, list[Sample]]]:
    """Best-of-n samples per run and task, in production order, with both verdicts."""
    marks = ", ".join("?" for _ in run_ids)
    rows = store.query(
        f"""
        WITH v AS (
            SELECT node_id, stage, arg_max(passed, created_at) AS passed,
                   arg_max(score, created_at) AS score,
                   sum(coalesce(TRY_CAST(details->>'$.cost_tokens' AS DOUBLE), 0)) AS ctok,
                   sum(coalesce(TRY_CAST(details->>'$.cost_calls' AS DOUBLE), 0)) AS ccalls,
                   sum(coalesce(TRY_CAST(details->>'$.cost_usd' AS DOUBLE), 0)) AS cusd
            FROM verdicts WHERE run_id IN ({marks}) AND stage IN ('in_loop', 'graded')
              AND verifier NOT IN ('llm-judge', 'llm-judge-pairwise', 'reward-model')
            GROUP BY ALL),
        sig AS (  -- what the loop's own judge / reward selector scored each sample
            SELECT node_id,
                   arg_max(score, created_at) FILTER (WHERE verifier = 'llm-judge') AS judge,
                   arg_max(score, created_at) FILTER (WHERE verifier = 'reward-model') AS reward
            FROM verdicts WHERE run_id IN ({marks}) AND stage = 'in_loop'
              AND verifier IN ('llm-judge', 'reward-model')
            GROUP BY 1)
        SELECT n.run_id, n.task_id, n.node_id, n.content, n.answer, t.kind, n.is_final,
               sig.judge, sig.reward, il.ctok, il.ccalls, il.cusd,
               il.passed AS verified, il.score, g.passed AS correct,
               c.logprob_mean, c.completion_tokens, c.prompt_tokens, c.cost_usd,
               c.latency_s, c.created_at, c.sample_index
        FROM nodes n JOIN runs r USING (run_id)
        JOIN tasks t USING (run_id, task_id)
        LEFT JOIN calls c ON c.node_id = n.node_id
        LEFT JOIN v il ON il.node_id = n.node_id AND il.stage = 'in_loop'
        LEFT JOIN v g ON g.node_id = n.node_id AND g.stage = 'graded'
        LEFT JOIN sig ON sig.node_id = n.node_id
        WHERE n.run_id IN ({marks}) AND r.loop = 'best-of-n' AND n.role = 'generator'
          AND t.status = 'done'
        ORDER BY n.run_id, n.task_id, c.created_at, c.request_id, c.sample_index""",
        run_ids + run_ids + run_ids,
    )
    out: dict[str, dict[str, list[Sample]]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {}).setdefault(r["task_id"], []).append(
            Sample(
                node_id=r["node_id"],
                text=r["content"] or "",
                answer=r["answer"],
                kind=r["kind"] or "math",
                key=answer_key(r["kind"], r["answer"]),
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


def select(samples: list[Sample], selector: str, weight_by: str = "logprob") -> bool:
    """Is the answer the loop's ``selector`` picks among ``samples`` graded correct?

    The selection is replayed with best-of-n's own function over what the loop stored for
    each sample: its in-loop verdict and score, mean logprob, and the scores its judge or
    reward selector gave. The pick is the sample the loop would return (for votes, the first
    sample with the winning answer), graded as returned.
    """
    from loopwright.loops.graphs.best_of_n_select import select as choose
    from loopwright.loops.tasks import Task

    if not samples:
        return False
    task = Task(id="replay", prompt="", kind=samples[0].kind)  # type: ignore[arg-type]
    cands = [
        {"node_id": s.node_id, "parent_id": None, "text": s.text, "answer": s.answer,
         "passed": s.verified, "score": s.score, "feedback": None, "logprob": s.logprob,
         "round": 0, "depth": 0}
        for s in samples
    ]  # fmt: skip
    signal = "reward" if "reward" in (selector, weight_by) else "judge"
    signals = {s.node_id: (s.reward if signal == "reward" else s.judge) for s in samples}
    has_verifier = any(s.verified is not None for s in samples)
    sel = choose(task, cands, selector, weight_by=weight_by, has_verifier=has_verifier,  # type: ignore[arg-type]
                 signals=signals)  # fmt: skip
    if sel.chosen is None:
        return False
    if sel.used in ("majority", "weighted") and sel.winner is not None:
        return any(s.correct for s in samples if normalise_answer(s.kind, s.answer) == sel.winner)
    by_id = {s.node_id: s for s in samples}
    return bool(by_id[sel.chosen["node_id"]].correct)
