"""The pairs post-hoc judging compares: a run's verified answers per task, paired and
ordered (pairs whose in-loop verdicts differ first), and which pairs are already judged."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loopwright.traces import TraceStore
from loopwright.traces.judging import done_tasks, judgement_details, verified_answers

VERIFIER = "llm-judge-pairwise"
"""The ``verifier`` of the verdict rows written (and of the rows that mark a pair judged)."""


@dataclass(frozen=True)
class VerifiedAnswer:
    """One verified answer of one task: a candidate for pairing."""

    run_id: str
    task_id: str
    node_id: str
    content: str
    passed: bool | None
    """The in-loop outcome: its checks all passed (None when no verdict said pass or fail)."""


@dataclass(frozen=True)
class Pair:
    """Two candidates of one task to compare; ``rank`` is the pair's place in its task."""

    a: VerifiedAnswer
    b: VerifiedAnswer
    differ: bool
    """True when one passed its in-loop checks and the other failed them."""
    rank: int

    @property
    def key(self) -> frozenset[str]:
        return frozenset((self.a.node_id, self.b.node_id))


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: texts equal under this are never paired."""
    return " ".join(text.lower().split())


def select_pairs(
    candidates: Sequence[VerifiedAnswer],
    *,
    pairs_per_task: int,
    seed: int,
    judged: Iterable[frozenset[str]] = (),
) -> list[Pair]:
    """The pairs to compare, at most ``pairs_per_task`` per task, in judging order.

    ``candidates`` come in their trace order (a pair's *a* is the earlier one). Within a task,
    one pair per distinct pair of normalised texts (an already ``judged`` one when there is);
    differing in-loop verdicts first, then the rest, each group shuffled under ``seed``.
    Across tasks the result interleaves: every task's first pair, then every second, ...
    """
    done = set(judged)
    by_task: dict[tuple[str, str], list[VerifiedAnswer]] = {}
    for c in candidates:
        by_task.setdefault((c.run_id, c.task_id), []).append(c)
    per_task: list[list[Pair]] = []
    for (run_id, task_id), cands in by_task.items():
        texts = [normalise(c.content) for c in cands]
        chosen: dict[frozenset[str], tuple[VerifiedAnswer, VerifiedAnswer]] = {}
        for i, j in itertools.combinations(range(len(cands)), 2):
            if texts[i] == texts[j]:
                continue
            texts_key = frozenset((texts[i], texts[j]))
            prev = chosen.get(texts_key)
            pair = (cands[i], cands[j])
            if prev is None or (
                frozenset(n.node_id for n in prev) not in done
                and frozenset((cands[i].node_id, cands[j].node_id)) in done
            ):
                chosen[texts_key] = pair
        differ: list[tuple[VerifiedAnswer, VerifiedAnswer, bool]] = []
        rest: list[tuple[VerifiedAnswer, VerifiedAnswer, bool]] = []
        for a, b in chosen.values():
            d = a.passed is not None and b.passed is not None and a.passed != b.passed
            (differ if d else rest).append((a, b, d))
        rng = random.Random(f"{seed}|{run_id}|{task_id}")
        rng.shuffle(differ)
        rng.shuffle(rest)
        ordered = (differ + rest)[:pairs_per_task]
        per_task.append([Pair(a, b, d, rank) for rank, (a, b, d) in enumerate(ordered)])
    return _interleave(per_task)


def _interleave(per_task: list[list[Pair]]) -> list[Pair]:
    out: list[Pair] = []
    for rank in range(max((len(ps) for ps in per_task), default=0)):
        out.extend(ps[rank] for ps in per_task if rank < len(ps))
    return out


def load_candidates(
    store: TraceStore, run_ids: list[str]
) -> tuple[dict[tuple[str, str], dict[str, Any]], list[VerifiedAnswer], dict[frozenset[str], bool]]:
    """Finished tasks, candidates (trace order) and judged pairs (-> whether that failed)."""
    order = {r: i for i, r in enumerate(run_ids)}
    tasks = done_tasks(store, run_ids)
    tasks.sort(key=lambda t: (order[t["run_id"]], t["idx"] if t["idx"] is not None else -1))
    rows = verified_answers(store, run_ids)
    place = {(t["run_id"], t["task_id"]): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: place[(r["run_id"], r["task_id"])])  # stable: trace order kept
    cands = [
        VerifiedAnswer(r["run_id"], r["task_id"], r["node_id"], r["content"], r["passed"])
        for r in rows
    ]
    judged: dict[frozenset[str], bool] = {}
    for text in judgement_details(store, run_ids, VERIFIER):
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            continue
        a, b = d.get("a_node_id"), d.get("b_node_id")
        if not (isinstance(a, str) and isinstance(b, str)):
            continue
        failed = any((d.get(o) or {}).get("error") for o in ("a_first", "b_first"))
        key = frozenset((a, b))
        judged[key] = judged.get(key, True) and failed  # any good judgement counts as done
    return {(t["run_id"], t["task_id"]): t for t in tasks}, cands, judged


def count_text_pairs(cands: Sequence[VerifiedAnswer]) -> int:
    """Pairs of distinct normalised texts over all tasks: what an unlimited cap would take."""
    texts: dict[tuple[str, str], set[str]] = {}
    for c in cands:
        texts.setdefault((c.run_id, c.task_id), set()).add(normalise(c.content))
    return sum(len(t) * (len(t) - 1) // 2 for t in texts.values())
