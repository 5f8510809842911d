"""Every GRPO rollout in the trace store: one run per step, read like best-of-n samples.

``record_step`` turns one step's completions into the rows a normal run writes — a ``tasks``
row per prompt (with its answer key, as the runner stores it; its answer is the group's
majority vote, as best-of-n's vote picks it), and per completion a generator
node, its call, an ``in_loop`` verdict holding the reward (verifier ``reward:grader``,
``reward:verifier[:NAME]`` or ``reward:majority``; score = total, details = the terms,
advantage, pseudo-label) and a ``graded`` verdict from the held-out grader (the record of
correctness) — so the viewer, ``harvest``, ``grade``, ``report`` and plain SQL read a step
like any run. Beside them, a ``rollouts`` row per completion and the step's ``train_steps``
row (traces/rollouts.py). Recording a step again replaces it.

``ingest_completions`` reads TRL's ``completions/completions_*.parquet`` (``GRPOTrainer``
with ``log_completions=True``) into the same rows, so a run trained elsewhere is browsable,
harvestable and reportable like ours (``loopwright ingest``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.loops.analysis.samples import vote_key
from loopwright.loops.errors import UserError
from loopwright.loops.tasks import Task
from loopwright.loops.verify.base import verdict_record
from loopwright.tools.verdict import Verdict
from loopwright.traces import TraceStore, TraceWriter
from loopwright.traces import lineage as L
from loopwright.traces import rollouts as R
from loopwright.traces.records import CallRecord, NodeRecord, TaskRecord, VerdictRecord, new_id
from loopwright.traces.runs import finish_run, insert_run
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DraftTurn",
    "IngestResult",
    "RolloutReward",
    "RolloutRow",
    "discard_steps_after",
    "ingest_completions",
    "record_step",
    "rollouts_of",
    "step_metrics",
    "step_summary",
    "update_step_metrics",
]


class RolloutReward(BaseModel):
    """What the recorder reads of a completion's reward: the fields of ``rewards.RewardOutcome``
    (an outcome is accepted as it is, read by attribute)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    total: float | None = None
    terms: dict[str, float | None] = Field(default_factory=dict)
    answer: str | None = None
    verdict: Verdict | None = None
    pseudo_label: str | None = None
    passed: bool | None = Field(
        None,
        description="Whether the reward counts as a pass (the in-loop verdict's passed); None "
        "derives it: the verdict's, else the correct term > 0, else total > 0.",
    )


class DraftTurn(BaseModel):
    """The first turn of a two-turn episode (``--rollout self-refine``); the row's
    completion is the revision that answered ``turn``."""

    completion: str
    completion_tokens: int = 0
    finish_reason: str | None = None
    answer: str | None = Field(None, description="The draft's extracted answer.")
    graded: Verdict | None = Field(None, description="The held-out grader's verdict (record).")
    turn: str = Field("", description="The user turn after the draft that asked to revise it.")
    turn_tokens: int = Field(0, description="Tokens of that turn (chat template included).")


class RolloutRow(BaseModel):
    """One completion of a GRPO step, as the trainer saw it."""

    model_config = ConfigDict(from_attributes=True)

    task: Task = Field(description="The keyed task (its answer key is stored as a run's is).")
    messages: list[dict[str, Any]] = Field(description="The prompt as sent (chat messages).")
    completion: str
    completion_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = Field(None, description='"length": clipped at the cap.')
    outcome: RolloutReward = Field(description="Its reward (a rewards.RewardOutcome).")
    graded: Verdict | None = Field(None, description="The held-out grader's verdict (record).")
    advantage: float | None = None
    group_index: int | None = Field(
        None, description="Its prompt group in the step; None: consecutive rows of one task."
    )
    draft: DraftTurn | None = Field(
        None, description="Two-turn episodes: the draft this completion (the revision) revised."
    )


# -- the reward's label -----------------------------------------------------------------------
def _passed(o: RolloutReward) -> bool | None:
    if o.passed is not None:
        return o.passed
    if o.verdict is not None:
        return o.verdict.passed
    correct = o.terms.get("correct")
    if correct is not None and math.isfinite(correct):
        return correct > 0
    if o.total is not None and math.isfinite(o.total):
        return o.total > 0
    return None


def _reward_label(reward: str | None, rows: list[RolloutRow]) -> str:
    """``grader``, ``verifier[:NAME]``, ``majority``: the series' ``--reward``, else read off
    the outcomes (a pseudo-label: majority; the grader's own verdict: grader)."""
    if reward:
        return reward
    if any(r.outcome.pseudo_label is not None for r in rows):
        return "majority"
    for r in rows:
        v = r.outcome.verdict
        if v is not None:
            if r.graded is not None and v.verifier == r.graded.verifier:
                return "grader"
            return f"verifier:{v.verifier}" if v.verifier else "verifier"
    return "unknown"


# -- metrics -----------------------------------------------------------------------------------
def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _groups(rows: list[RolloutRow]) -> list[int]:
    """The group index of each row: as given (every row has one), else a new group wherever
    the task changes (TRL's order: a prompt's completions are consecutive)."""
    if all(r.group_index is not None for r in rows):
        return [int(r.group_index) for r in rows if r.group_index is not None]
    out: list[int] = []
    prev: str | None = None
    g = -1
    for r in rows:
        if r.task.id != prev:
            g += 1
            prev = r.task.id
        out.append(g)
    return out


def _holds_label(r: RolloutRow) -> bool:
    label = r.outcome.pseudo_label
    if label is None:
        return False
    return vote_key(r.task.kind, r.outcome.answer) == label or (
        r.outcome.answer is not None and r.outcome.answer == label
    )


def step_summary(rows: list[RolloutRow], groups: list[int] | None = None) -> dict[str, Any]:
    """Metrics of one step's rollouts: rewards (mean, std, per term), the grader's correctness
    rate, format rate (an answer was extracted), clip rate, mean completion tokens, the share
    of groups whose rewards all tie (no learning signal) and, for the majority reward, how
    often the group's pseudo-label was graded correct."""
    groups = _groups(rows) if groups is None else groups
    n = len(rows)
    out: dict[str, Any] = {"completions": n, "groups": len(set(groups))}
    totals = [t for r in rows if (t := _finite(r.outcome.total)) is not None]
    out["reward_mean"] = statistics.fmean(totals) if totals else None
    out["reward_std"] = statistics.stdev(totals) if len(totals) > 1 else (0.0 if totals else None)
    terms = sorted({k for r in rows for k in r.outcome.terms})
    for term in terms:
        vals = [v for r in rows if (v := _finite(r.outcome.terms.get(term))) is not None]
        out[f"reward_{term}_mean"] = statistics.fmean(vals) if vals else None
    graded = [r.graded.passed for r in rows if r.graded is not None]
    out["correct_rate"] = sum(graded) / len(graded) if graded else None
    out["format_rate"] = sum(r.outcome.answer is not None for r in rows) / n if n else None
    out["clip_rate"] = sum(r.finish_reason == "length" for r in rows) / n if n else None
    out["completion_tokens_mean"] = (
        statistics.fmean(r.completion_tokens for r in rows) if n else None
    )
    by_group: dict[int, list[float]] = {}
    for r, g in zip(rows, groups, strict=True):
        t = _finite(r.outcome.total)
        if t is not None:
            by_group.setdefault(g, []).append(t)
    flat = [max(v) - min(v) < 1e-9 for v in by_group.values()]
    out["frac_reward_zero_std"] = sum(flat) / len(flat) if flat else None
    if any(r.outcome.pseudo_label is not None for r in rows):
        agree: list[bool] = []
        for g in dict.fromkeys(groups):
            members = [r for r, gg in zip(rows, groups, strict=True) if gg == g]
            holders = [r.graded.passed for r in members if _holds_label(r) and r.graded is not None]
            if holders:
                agree.append(any(holders))
        out["majority_agreement"] = sum(agree) / len(agree) if agree else None
    pairs = [(r.draft.graded.passed, r.graded.passed) for r in rows
             if r.draft is not None and r.draft.graded is not None and r.graded is not None]  # fmt: skip
    if pairs:  # two-turn episodes: turn-1 vs turn-2 correctness
        out["turn1_correct_rate"] = sum(a for a, _ in pairs) / len(pairs)
        out["turn2_correct_rate"] = sum(b for _, b in pairs) / len(pairs)
        out["wrong_to_right"] = sum((not a) and b for a, b in pairs) / len(pairs)
        out["right_to_wrong"] = sum(a and not b for a, b in pairs) / len(pairs)
    return out


# -- recording ---------------------------------------------------------------------------------
@contextmanager
def _store(db: str | TraceStore, read_only: bool = False) -> Iterator[TraceStore]:
    if isinstance(db, TraceStore):
        yield db
        return
    if read_only and not Path(db).exists():
        raise UserError(f"no trace database at {db}")
    with TraceStore(db, read_only=read_only) as store:
        yield store


def _series_config(store: TraceStore, improve: str) -> dict[str, Any]:
    """The series' stored config (its round 0 row's), {} for a series without rounds."""
    row = L.get_round(store, improve, 0)
    cfg = (row or {}).get("config") or {}
    return cfg if isinstance(cfg, dict) else {}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loopwright")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class _StepRecords:
    tasks: list[TaskRecord] = field(default_factory=list)
    rows: list[NodeRecord | CallRecord | VerdictRecord] = field(default_factory=list)
    rollouts: list[R.RolloutRecord] = field(default_factory=list)


def _json_text(value: Any) -> str:
    return json.dumps(R.no_nan(value), default=str)


def _build(
    run_id: str,
    improve: str,
    step: int,
    policy: str,
    rows: list[RolloutRow],
    groups: list[int],
    *,
    verifier: str,
    seed: int | None,
    keyed: bool,
    temperature: float | None,
    max_tokens: int | None,
) -> _StepRecords:
    out = _StepRecords()
    sizes: dict[int, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    requests = {g: new_id() for g in sizes}
    seen: dict[int, int] = {}
    per_task: dict[str, list[tuple[RolloutRow, NodeRecord, int]]] = {}
    first_group: dict[str, int] = {}
    for r, g in zip(rows, groups, strict=True):
        first_group.setdefault(r.task.id, g)
        k = seen.get(g, 0)
        seen[g] = k + 1
        o = r.outcome
        total = _finite(o.total)
        adv = _finite(r.advantage)
        d = r.draft
        parent = None
        if d is not None:  # the draft: a generator node under which the revision is
            parent = NodeRecord(
                run_id=run_id, task_id=r.task.id, loop=R.GRPO_LOOP, model=policy,
                role="generator", depth=0, round=0, content=d.completion, answer=d.answer,
            )  # fmt: skip
            out.rows.append(parent)
            out.rows.append(
                CallRecord(
                    request_id=requests[g], run_id=run_id, task_id=r.task.id,
                    node_id=parent.node_id, loop=R.GRPO_LOOP, round=0, role="generator",
                    model=policy, messages=_json_text(r.messages), temperature=temperature,
                    max_tokens=max_tokens, n=sizes[g], seed=seed, sample_index=k,
                    output=d.completion, finish_reason=d.finish_reason,
                    prompt_tokens=r.prompt_tokens if k == 0 else 0,
                    completion_tokens=d.completion_tokens,
                )
            )  # fmt: skip
            if d.graded is not None:
                out.rows.append(
                    verdict_record(
                        d.graded,
                        run_id=run_id,
                        task_id=r.task.id,
                        node_id=parent.node_id,
                        stage="graded",
                    )
                )
        node = NodeRecord(
            run_id=run_id, task_id=r.task.id, loop=R.GRPO_LOOP, model=policy,
            role="generator" if d is None else "refiner", parent_id=parent and parent.node_id,
            depth=int(d is not None), round=int(d is not None), content=r.completion,
            answer=o.answer, score=total,
        )  # fmt: skip
        out.rows.append(node)
        per_task.setdefault(r.task.id, []).append((r, node, k))
        messages = r.messages
        if d is not None:
            messages = [*messages, {"role": "assistant", "content": d.completion},
                        {"role": "user", "content": d.turn}]  # fmt: skip
        out.rows.append(
            CallRecord(
                request_id=requests[g] if d is None else new_id(), run_id=run_id,
                task_id=r.task.id, node_id=node.node_id, loop=R.GRPO_LOOP,
                round=int(d is not None), role="generator" if d is None else "refiner",
                model=policy, messages=_json_text(messages), temperature=temperature,
                max_tokens=max_tokens, n=sizes[g] if d is None else 1, seed=seed,
                sample_index=k if d is None else 0, output=r.completion,
                finish_reason=r.finish_reason,
                prompt_tokens=(r.prompt_tokens + d.completion_tokens + d.turn_tokens
                               if d is not None else r.prompt_tokens if k == 0 else 0),
                completion_tokens=r.completion_tokens,
            )
        )  # fmt: skip
        v = o.verdict
        details = {
            "answer": o.answer, "reward": total, "terms": o.terms, "advantage": adv,
            "pseudo_label": o.pseudo_label, "step": step, "group": g,
            "from": v.verifier if v is not None else None,
            "verdict": v.details if v is not None else None,
        }  # fmt: skip
        out.rows.append(
            VerdictRecord(
                run_id=run_id, task_id=r.task.id, node_id=node.node_id, stage="in_loop",
                verifier=verifier, verifier_version=v.version if v is not None else None,
                passed=_passed(o), score=total, feedback=v.feedback if v is not None else None,
                details=_json_text(details), latency_s=v.latency_s if v is not None else 0.0,
            )
        )  # fmt: skip
        if r.graded is not None:
            out.rows.append(
                verdict_record(
                    r.graded, run_id=run_id, task_id=r.task.id, node_id=node.node_id, stage="graded"
                )
            )
        out.rollouts.append(
            R.RolloutRecord(
                run_id=run_id, node_id=node.node_id, improve=improve, step=step,
                task_id=r.task.id, group_index=g, sample_index=k, policy=policy, reward=total,
                rewards=_json_text(o.terms), advantage=adv,
                completion_tokens=r.completion_tokens,
                clipped=None if r.finish_reason is None else r.finish_reason == "length",
                pseudo_label=o.pseudo_label,
                correct=r.graded.passed if r.graded is not None else None,
            )
        )  # fmt: skip
    for idx, (tid, members) in enumerate(per_task.items()):
        task = members[0][0].task
        totals = [t for x, _, _ in members if (t := _finite(x.outcome.total)) is not None]
        prompt_tokens = sum(x.prompt_tokens for x, _, k in members if k == 0)
        completion_tokens = sum(x.completion_tokens for x, _, _ in members)
        final = _vote(members)
        if final is not None:
            final[1].is_final = True
        out.tasks.append(
            TaskRecord(
                run_id=run_id, task_id=tid, idx=first_group.get(tid, idx), kind=task.kind,
                prompt=task.prompt, reference=task.reference if keyed else None,
                answer_key=task.answer_key() if keyed else None,
                final_answer=final[0].outcome.answer if final else None,
                final_node_id=final[1].node_id if final else None,
                verdict=_passed(final[0].outcome) if final else None,
                graded=final[0].graded.passed if final and final[0].graded else None,
                score=statistics.fmean(totals) if totals else None, stop_reason="grpo step",
                rounds=int(any(x.draft is not None for x, _, _ in members)), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens, calls=len(members), status="done",
            )
        )  # fmt: skip
    return out


def _vote(
    members: list[tuple[RolloutRow, NodeRecord, int]],
) -> tuple[RolloutRow, NodeRecord, int] | None:
    """A prompt's answer as best-of-n's vote gives it: the first completion holding the most
    common answer (vote key); None when no completion has an answer."""
    keys = [vote_key(r.task.kind, r.outcome.answer) for r, _, _ in members]
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    top = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == top)
    return members[keys.index(winner)]


def record_step(
    db: str | TraceStore,
    improve: str,
    step: int,
    policy: str,
    rows: list[RolloutRow],
    metrics: dict[str, float | None],
    seed: int | None,
    *,
    reward: str | None = None,
    config: dict[str, Any] | None = None,
    tasks_spec: str | None = None,
    keyed: bool = True,
) -> str:
    """Write step ``step`` of series ``improve`` as run ``{improve}-g{step:05d}`` (loop grpo,
    model ``policy``) with its rollouts and its ``train_steps`` row (``metrics`` given, over
    the metrics derived from ``rows``: ``step_summary``); returns the run id. Recording a
    step again replaces every row of it.

    ``reward`` labels the in-loop verdicts (``reward:<reward>``); None reads it from the
    series' config (else from the outcomes). ``config`` is stored in the run's config (the
    series' own when None); ``keyed=False`` stores no answer key (ingested prompts)."""
    if not rows:
        raise ValueError(f"step {step} of {improve!r} has no rollouts to record")
    groups = _groups(rows)
    derived = step_summary(rows, groups)
    with _store(db) as store:
        series = _series_config(store, improve)
        grpo = series.get("grpo") or {}
        reward = _reward_label(reward or grpo.get("reward"), rows)
        verifier = f"reward:{reward}"
        run_cfg = {
            **(config if config is not None else series),
            "improve": improve, "step": step, "policy": policy, "reward": reward,
            "verifier": verifier,
            # the grader's reward reads the train tasks' answer keys (RLVR): label it as
            # every loop that read a key is labelled
            "oracle": reward.split(":", 1)[0] == "grader",
        }  # fmt: skip
        name = R.step_run_name(improve, step)
        R.discard_step(store, improve, step)
        taken = R.name_taken(store, name)
        if taken is not None:
            raise UserError(
                f"run name {name!r} is taken by a {taken} run: GRPO step runs are named "
                "{series}-gNNNNN; pick another series name"
            )
        stable = {k: v for k, v in run_cfg.items() if k not in ("step", "policy")}
        run_id = insert_run(
            store, name=name, loop=R.GRPO_LOOP, model=policy,
            tasks_spec=tasks_spec or str(series.get("tasks") or ""),
            config=_json_text(run_cfg),
            config_hash=hashlib.sha256(_json_text(stable).encode()).hexdigest()[:16],
            seed=seed, version=_version(), provenance=None,
        )  # fmt: skip
        recs = _build(
            run_id, improve, step, policy, rows, groups, verifier=verifier, seed=seed,
            keyed=keyed, temperature=grpo.get("temperature"),
            max_tokens=grpo.get("max_completion_tokens"),
        )  # fmt: skip
        writer = TraceWriter(store)
        try:
            for rec in recs.rows:
                writer.write(rec)
            for task in recs.tasks:  # a task's row after its nodes, as the runner writes
                writer.write(task)
        finally:
            writer.close()
        R.write_rollouts(store, recs.rollouts)
        R.write_train_step(store, improve, step, run_id, {**derived, **metrics})
        finish_run(store, run_id, "done")
    return run_id


def update_step_metrics(
    db: str | TraceStore, improve: str, step: int, metrics: dict[str, float | None]
) -> None:
    """Merge ``metrics`` (the trainer's logs: loss, KL, entropy, step time) into the step's
    ``train_steps`` row (one is made when the step has none yet)."""
    with _store(db) as store:
        row = next((r for r in R.step_metrics(store, improve) if r["step"] == step), None)
        merged = {**((row or {}).get("metrics") or {}), **metrics}
        R.write_train_step(store, improve, step, row["run_id"] if row else None, merged)


def discard_steps_after(db: str | TraceStore, improve: str, step: int) -> int:
    """Delete every row of the series' steps after ``step`` (their runs, rollouts and
    metrics): a series resumed from its step-``step`` checkpoint samples them again.
    Returns how many steps were discarded."""
    with _store(db) as store:
        return len(R.discard_steps_after(store, improve, step))


def step_metrics(db: str | TraceStore, improve: str) -> list[dict[str, Any]]:
    """The series' ``train_steps`` rows in step order: ``step``, ``run_id``, ``run_name``,
    ``metrics`` (a dict)."""
    with _store(db, read_only=True) as store:
        return R.step_metrics(store, improve)


def rollouts_of(
    db: str | TraceStore, improve: str, step: int | None = None
) -> list[dict[str, Any]]:
    """The series' ``rollouts`` rows (one step's with ``step``), with each completion's text."""
    with _store(db, read_only=True) as store:
        return R.rollouts_of(store, improve, step)


# -- ingest of TRL's completion logs --------------------------------------------------------------
_RESERVED = ("step", "prompt", "completion", "advantage", "image", "images")
_STEP_FILE = re.compile(r"completions_(\d+)\.parquet$")


@dataclass
class IngestResult:
    """What ``ingest_completions`` stored: steps, completions, and the files it skipped."""

    steps: list[int] = field(default_factory=list)
    completions: int = 0
    runs: list[str] = field(default_factory=list)
    reward_terms: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per file that could not be read: ``FILE: why``."""


def _text(value: Any) -> str:
    """A prompt's or completion's text: a string as is; chat messages joined by content."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _text(value.get("content"))
    if isinstance(value, list | tuple):
        parts = []
        for item in value:
            if not isinstance(item, dict):
                parts.append(_text(item))
            elif item.get("type") in (None, "text"):  # a message or a text block, no image
                parts.append(_text(item["text"] if "text" in item else item.get("content")))
        return "\n".join(p for p in parts if p)
    return str(value)


def _messages(prompt: Any) -> list[dict[str, Any]]:
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{k: v for k, v in m.items() if v is not None} for m in prompt]
    return [{"role": "user", "content": _text(prompt)}]


def _prompt_text(prompt: Any) -> str:
    """What a task shows as its prompt: the last user message of a chat, else the text."""
    msgs = _messages(prompt)
    users = [m for m in msgs if m.get("role") == "user"]
    return _text((users or msgs)[-1].get("content")) if msgs else ""


def _task_id(prompt: Any) -> str:
    canon = json.dumps(_messages(prompt), sort_keys=True, default=str, ensure_ascii=False)
    return "p-" + hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _completion_files(folder: Path) -> list[Path]:
    for d in (folder / "completions", folder):
        if d.is_dir():
            files = sorted(p for p in d.glob("completions_*.parquet") if p.is_file())
            if files:
                return files
    return []


def _trainer_logs(folder: Path) -> dict[int, dict[str, float | None]]:
    """TRL's per-step logs (``trainer_state.json``'s ``log_history``: loss, KL, entropy, ...)
    from the folder or its newest checkpoint, by step; {} when there are none."""
    states = [folder / "trainer_state.json"]
    ckpts = sorted(folder.glob("checkpoint-*/trainer_state.json"),
                   key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))  # fmt: skip
    states += ckpts[::-1]
    for path in states:
        try:
            history = json.loads(path.read_text(encoding="utf-8")).get("log_history") or []
        except (OSError, ValueError, AttributeError):
            continue
        out: dict[int, dict[str, float | None]] = {}
        for entry in history:
            if isinstance(entry, dict) and isinstance(entry.get("step"), int):
                nums = {k: _number(v) for k, v in entry.items() if k != "step"}
                out.setdefault(entry["step"], {}).update(
                    {k: v for k, v in nums.items() if v is not None}
                )
        return out
    return {}


def _read_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of one completions file and its reward columns; ValueError saying why not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(
            f"not a readable parquet file ({(str(exc).splitlines() or [''])[0]})"
        ) from None
    cols = table.column_names
    missing = [c for c in ("prompt", "completion") if c not in cols]
    if missing:
        raise ValueError(f"no {missing[0]!r} column (TRL's completions files have prompt, "
                         "completion, one column per reward function, advantage)")  # fmt: skip
    terms = [
        c for c in cols
        if c not in _RESERVED and (pa.types.is_floating(table.schema.field(c).type)
                                   or pa.types.is_integer(table.schema.field(c).type))
    ]  # fmt: skip
    return table.to_pylist(), terms


def ingest_completions(
    folder: str | Path,
    name: str,
    db: str | TraceStore,
    *,
    model: str = "trl",
    pass_above: float = 0.0,
) -> IngestResult:
    """Store TRL's completion logs under series ``name``: one run per step
    (``{name}-gNNNNN``), each prompt a task (id: a hash of the prompt, no answer key), each
    completion a node with its call, an in-loop verdict holding the reward (each reward
    column a term; total: their sum, TRL's default weights; passed: total > ``pass_above``),
    the advantage, and a ``train_steps`` row with the step's metrics (TRL's logged ones from
    ``trainer_state.json`` when present). Ingesting again replaces the same steps. A file that
    cannot be read is skipped with one line in ``skipped``."""
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: give the trainer's output_dir (or its "
                        "completions/ folder)")  # fmt: skip
    files = _completion_files(path)
    if not files:
        raise UserError(f"no completions_*.parquet in {path} or {path / 'completions'}: TRL "
                        "writes them with GRPOConfig(log_completions=True)")  # fmt: skip
    logs = _trainer_logs(path)
    result = IngestResult()
    terms_seen: dict[str, None] = {}
    with _store(db) as store:
        for file in files:
            try:
                data, terms = _read_file(file)
            except ValueError as exc:
                result.skipped.append(f"{file}: {exc}")
                continue
            by_step: dict[int, list[dict[str, Any]]] = {}
            m = _STEP_FILE.search(file.name)
            fallback = int(m.group(1)) if m else 0
            for row in data:
                s = row.get("step")
                by_step.setdefault(int(s) if isinstance(s, int) else fallback, []).append(row)
            if not by_step:
                result.skipped.append(f"{file}: no rows")
                continue
            terms_seen.update(dict.fromkeys(terms))
            for step, items in sorted(by_step.items()):
                rows = [_ingest_row(x, terms, pass_above) for x in items]
                cfg = {
                    "source": "trl", "folder": str(path), "file": file.name,
                    "reward_terms": terms, "pass_above": pass_above, "model": model,
                }  # fmt: skip
                run_id = record_step(
                    store, name, step, f"{model}@step{max(step - 1, 0)}", rows,
                    dict(logs.get(step, {})), None, reward="trl", config=cfg,
                    tasks_spec=f"trl:{path}", keyed=False,
                )  # fmt: skip
                result.steps.append(step)
                result.runs.append(run_id)
                result.completions += len(rows)
    result.reward_terms = list(terms_seen)
    return result


def _ingest_row(x: dict[str, Any], terms: list[str], pass_above: float) -> RolloutRow:
    prompt = x.get("prompt")
    values = {t: _number(x.get(t)) for t in terms}
    given = [v for v in values.values() if v is not None]
    total = sum(given) if given else None
    task = Task(id=_task_id(prompt), prompt=_prompt_text(prompt), kind="text")
    return RolloutRow(
        task=task,
        messages=_messages(prompt),
        completion=_text(x.get("completion")),
        outcome=RolloutReward(
            total=total, terms=values, passed=None if total is None else total > pass_above
        ),
        advantage=_number(x.get("advantage")),
    )
