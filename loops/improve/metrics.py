"""Per-round metrics of an improve series, read from the round's traced runs.

Eval: pass@1 and pass@k from the plain samples (every sample graded by the held-out grader),
maj@k, the loop's own final answer, with bootstrap CIs over tasks. Train: yield (share of
samples the grader passed), tasks solved, distinct answers per task, mean completion length.
"""

from __future__ import annotations

from typing import Any

from loopwright.loops.analysis.pairs import VERIFIER as PAIRWISE
from loopwright.loops.analysis.samples import BestOfNSample, load_samples
from loopwright.traces import TraceStore, run_by_name
from loopwright.traces import metrics as M
from loopwright.traces.grading import final_grades
from loopwright.traces.judging import judgements_of_graded_pairs
from loopwright.traces.report_queries import revision_pairs


def _ci(values: list[float], seed: int = 0) -> dict[str, float]:
    mean, lo, hi = M.bootstrap_ci(values, n_boot=2000, seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi}


def _run_samples(store: TraceStore, run: str) -> tuple[str, dict[str, list[BestOfNSample]]]:
    row = run_by_name(store, run)
    if row is None:
        raise ValueError(f"no run {run!r}")
    return row["run_id"], load_samples(store, [row["run_id"]]).get(row["run_id"], {})


def _shape(per_task: dict[str, list[BestOfNSample]]) -> dict[str, Any]:
    samples = [s for ss in per_task.values() for s in ss]
    distinct = [len({s.key for s in ss if s.key is not None}) for ss in per_task.values()]
    return {
        "samples": len(samples),
        "distinct_answers": sum(distinct) / len(distinct) if distinct else None,
        "mean_completion_tokens": (
            sum(s.completion_tokens for s in samples) / len(samples) if samples else None
        ),
    }


def eval_metrics(store: TraceStore, run: str, k: int) -> dict[str, Any]:
    """Accuracy of the eval run ``run`` (best-of-n with ``k`` samples a task)."""
    run_id, per_task = _run_samples(store, run)
    tasks = sorted(per_task)
    counts = [(len(per_task[t]), sum(bool(s.correct) for s in per_task[t])) for t in tasks]
    out: dict[str, Any] = {"tasks": len(tasks), "k": k, **_shape(per_task)}
    if not tasks:
        return out
    kk = min(k, min(n for n, _ in counts))
    out["pass@1"] = _ci([M.pass_at_k(n, c, 1) for n, c in counts])
    out[f"pass@{kk}"] = _ci([M.pass_at_k(n, c, kk) for n, c in counts])
    out["pass@k"] = out[f"pass@{kk}"]
    votes = [[(s.key, bool(s.correct)) for s in per_task[t][:kk]] for t in tasks]
    out["maj@k"] = _ci([M.maj_at_k([v], kk) for v in votes])
    loop = final_grades(store, run_id)
    out["loop"] = _ci(loop) if loop else None
    return out


def turn_metrics(store: TraceStore, run: str) -> dict[str, Any]:
    """Turn-1 vs turn-2 accuracy of a two-turn run (draft -> revision): each turn's graded
    accuracy and the change with bootstrap CIs over episodes, and the wrong->right /
    right->wrong transition counts (episodes with both turns graded)."""
    row = run_by_name(store, run)
    if row is None:
        raise ValueError(f"no run {run!r}")
    pairs = [
        (bool(r["draft_passed"]), bool(r["revision_passed"]))
        for r in revision_pairs(store, row["run_id"])
        if r["draft_passed"] is not None and r["revision_passed"] is not None
    ]
    out: dict[str, Any] = {"episodes": len(pairs)}
    if not pairs:
        return out
    out["turn1"] = _ci([float(a) for a, _ in pairs])
    out["turn2"] = _ci([float(b) for _, b in pairs])
    out["delta"] = _ci([float(b) - float(a) for a, b in pairs])
    [counts] = M.transitions([[a, b] for a, b in pairs])
    out.update(counts)
    return out


def train_metrics(store: TraceStore, run: str) -> dict[str, Any]:
    """What the round's generation gave: yield of verified samples and their diversity."""
    _, per_task = _run_samples(store, run)
    samples = [s for ss in per_task.values() for s in ss]
    graded = [s for s in samples if s.correct is not None]
    solved = [any(s.correct for s in ss) for ss in per_task.values()]
    return {
        "tasks": len(per_task),
        "yield": sum(bool(s.correct) for s in graded) / len(graded) if graded else None,
        "solved": sum(solved) / len(solved) if solved else None,
        **_shape(per_task),
    }


def judge_agreement(store: TraceStore, run: str) -> dict[str, Any]:
    """self-reward: of the judged pairs whose graded verdicts differ, the share where the
    model's judge (same winner in both orders) picked the graded-correct answer."""
    row = run_by_name(store, run)
    if row is None:
        return {"pairs": 0, "agreement": None}
    rows = judgements_of_graded_pairs(store, row["run_id"], PAIRWISE)
    decided = [r for r in rows if r["af"] == r["bf"] and r["af"] in ("a", "b")]
    agree = sum((r["af"] == "a") == bool(r["pa"]) for r in decided)
    return {
        "pairs": len(rows),
        "decided": len(decided),
        "agreement": agree / len(decided) if decided else None,
    }
