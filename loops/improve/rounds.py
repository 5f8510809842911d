"""Run an improve series: round 0 evaluates the base; round k samples the train tasks with
model k-1, grades every sample, harvests, trains model k and evaluates it.

Every stage is idempotent and recorded in the ``rounds`` row before the next starts, so a
series killed anywhere resumes with ``resume=True``: finished stages are skipped, a run cut
short resumes through the runner (unfinished tasks redone, none duplicated), an interrupted
training starts over from scratch (its partial files are deleted), and a model is used only
once its ``models`` row exists, which is written after the file is renamed into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from loopwright.loops.analysis.judge_pairs import judge_pairs
from loopwright.loops.errors import UserError
from loopwright.loops.execution.grade import grade_run
from loopwright.loops.execution.runner import Progress, RunConfig, prepare
from loopwright.loops.execution.runner import run as run_loop
from loopwright.loops.execution.trackers import Tracker, make_tracker, numeric_metrics
from loopwright.loops.improve.config import ImproveConfig
from loopwright.loops.improve.metrics import (
    eval_metrics,
    judge_agreement,
    train_metrics,
    turn_metrics,
)
from loopwright.loops.improve.star import hinted_task_file, strip_hints, unsolved_tasks
from loopwright.loops.tasks import load_tasks
from loopwright.traces import TraceStore, new_id, run_by_name
from loopwright.traces import lineage as L
from loopwright.traces.harvest import HarvestOptions, harvest, overlapping
from pydantic import BaseModel, Field

IMPLEMENTED = ("rest-em", "star", "dpo", "self-reward", "grpo")


class Events:
    """What a series reports as it goes; the CLI draws bars from it. No-ops by default."""

    def stage(self, rnd: int, stage: str, detail: str = "") -> None: ...

    def run_progress(self, label: str, p: Progress) -> None: ...

    def train_step(self, step: int, total: int, loss: float | None) -> None: ...


class ImproveResult(BaseModel):
    name: str
    rounds: list[dict[str, Any]] = Field(description="The rounds rows, in order.")
    failed: str | None = Field(None, description="Why the last round stopped, if it did.")


def _workdir(cfg: ImproveConfig) -> Path:
    if cfg.workdir:
        return Path(cfg.workdir)
    return Path(cfg.db).resolve().parent / f"{cfg.name}.improve"


def check_split(cfg: ImproveConfig, work: Path) -> tuple[str, int | None, Path]:
    """(train task spec to run, its limit, eval prompts file). Overlapping prompts are refused, in one
    line, by the same n-gram rule harvest's contamination check uses."""
    train = load_tasks(cfg.tasks, cfg.limit)
    evals = load_tasks(cfg.eval_tasks, cfg.eval_limit)
    bad = set(overlapping([t.prompt for t in train], [t.prompt for t in evals]))
    work.mkdir(parents=True, exist_ok=True)
    eval_file = work / "eval_prompts.jsonl"
    _write_jsonl(eval_file, [{"prompt": t.prompt} for t in evals])
    if not bad:
        return cfg.tasks, cfg.limit, eval_file
    if not cfg.drop_overlap:
        example = sorted(bad)[0]
        raise UserError(
            f"{len(bad)} of {len(train)} train prompts overlap the eval tasks (e.g. {example!r}): "
            "choose disjoint task sets, or pass --drop-overlap to train without them"
        )
    kept = [t for t in train if t.prompt not in bad]
    if not kept:
        raise UserError("every train prompt overlaps the eval tasks: choose disjoint task sets")
    spec = work / "train_tasks.jsonl"
    _write_jsonl(spec, [t.model_dump(mode="json") for t in kept])
    return str(spec), None, eval_file


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import json

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def open_series(cfg: ImproveConfig) -> None:
    """Check that a ``--resume`` names a series the database holds (one line if not)."""
    with TraceStore(cfg.db) as store:
        first = L.get_round(store, cfg.name, 0)
        if first is None and cfg.resume:
            known = ", ".join(L.improve_names(store)) or "none"
            raise UserError(f"no improve series named {cfg.name!r} in {cfg.db} (series: {known})")
        if first is not None and not cfg.resume:
            raise UserError(
                f"an improve series named {cfg.name!r} already exists in {cfg.db}: pass "
                "--resume to continue it, or choose another --name"
            )
        if first is not None and (first["config"] or {}).get("hash") != cfg.config_hash():
            raise UserError(
                f"improve series {cfg.name!r} was started with other settings; resume it with "
                "the same arguments or start a new --name"
            )
        if first is None:
            L.set_round(store, cfg.name, 0, stage="eval", model=cfg.base,
                        config={"hash": cfg.config_hash(), **cfg.identity()})  # fmt: skip


def _run(cfg: ImproveConfig, name: str, loop_cfg: dict[str, Any], events: Events, label: str
         ) -> None:  # fmt: skip
    """Start or resume the loop run ``name`` until it is done."""
    with TraceStore(cfg.db) as store:
        row = run_by_name(store, name)
    if row is not None and row["status"] == "done":
        return
    rc = RunConfig(**{**cfg.settings(), **loop_cfg}, run_name=name, resume=row is not None)
    # the series is mirrored as one tracker run (its rounds), not run by run
    asyncio.run(run_loop(rc, lambda p: events.run_progress(label, p), mirror=False))


def _grade(cfg: ImproveConfig, run: str) -> None:
    grade_run(cfg.db, [run], sandbox=cfg.sandbox, executor=cfg.executor,
              ray_address=cfg.ray_address, workers=cfg.workers)  # fmt: skip


def run_improve(cfg: ImproveConfig, events: Events | None = None) -> ImproveResult:
    """Run (or resume) the series; returns its rounds. A failed training ends the series with
    the reason in ``failed`` (and the round's row), keeping everything before it."""
    ev = events or Events()
    if cfg.method not in IMPLEMENTED:
        raise UserError(f"--method {cfg.method} is not implemented yet; use one of "
                        f"{', '.join(IMPLEMENTED)}")  # fmt: skip
    work = _workdir(cfg)
    work.mkdir(parents=True, exist_ok=True)
    lock = _hold_series(work, cfg.name)
    try:
        if cfg.method == "grpo":
            from loopwright.loops.improve.grpo import run_grpo

            return run_grpo(cfg, work, ev)
        return _run_series(cfg, work, ev)
    finally:
        lock.close()  # also released by the OS if this process is killed


def _hold_series(work: Path, name: str) -> IO[str]:
    """Hold the series' lock file for this process's lifetime; refuse, in one line, when
    another process holds it (two processes on one series would train the same round)."""
    import fcntl

    path = work / ".lock"
    fh = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise UserError(
            f"improve series {name!r} is being run by another process (pid {pid}, lock "
            f"{path}): wait for it to end, or stop it, then --resume"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _run_series(cfg: ImproveConfig, work: Path, ev: Events) -> ImproveResult:
    train_spec, limit, eval_file = check_split(cfg, work)
    train_cfg = {"loop": cfg.loop, "tasks": train_spec, "limit": limit, "options": cfg.options}
    prepare(RunConfig(**cfg.settings(), model=cfg.base, **train_cfg))
    if cfg.rounds:
        from loopwright.loops.improve.train import _need_train

        _need_train()  # before round 0 spends its time
    open_series(cfg)
    series = _Series(cfg, train_cfg, eval_file, work, ev)
    model = cfg.base
    failed = None
    with contextlib.ExitStack() as stack:
        mirror = stack.enter_context(mirrored(cfg))
        if cfg.executor == "ray":  # Ray up for the series; each run gets fresh workers
            from loopwright.loops.execution.ray_executor import ray_session

            stack.enter_context(ray_session(cfg.ray_address))
        for rnd in range(cfg.rounds + 1):
            with TraceStore(cfg.db) as store:
                row = L.get_round(store, cfg.name, rnd) or {}
            if row.get("stage") == "done":
                model = row["model"]
                mirror.round(rnd)
                continue
            try:
                model = _round(series, rnd, model, row)
            except _RoundFailed as exc:
                failed = str(exc)
                break
            mirror.round(rnd)
        mirror.status = "failed" if failed else "done"
    with TraceStore(cfg.db) as store:
        rows = L.rounds_of(store, cfg.name)
    return ImproveResult(name=cfg.name, rounds=rows, failed=failed)


class _RoundFailed(Exception):
    pass


class SeriesMirror:
    """The series' tracker run (``--tracker``): each finished round's metrics at step =
    round, on resume the rounds done before too. A no-op without a tracker."""

    def __init__(self, cfg: ImproveConfig) -> None:
        self.cfg = cfg
        self.status = "interrupted"
        self.tracker: Tracker | None = None
        if cfg.tracker:
            self.tracker = make_tracker(cfg.tracker, cfg.tracker_project)
            self.tracker.start(cfg.name, cfg.model_dump(mode="json"))

    def round(self, rnd: int) -> None:
        if self.tracker is None:
            return
        with TraceStore(self.cfg.db) as store:
            row = L.get_round(store, self.cfg.name, rnd) or {}
        self.tracker.log({**numeric_metrics(row.get("metrics") or {}), "round": rnd}, step=rnd)


@contextlib.contextmanager
def mirrored(cfg: ImproveConfig) -> Iterator[SeriesMirror]:
    """The series' :class:`SeriesMirror`, its tracker run finished with ``status`` on exit."""
    mirror = SeriesMirror(cfg)
    try:
        yield mirror
    finally:
        if mirror.tracker is not None:
            mirror.tracker.finish(mirror.status)


@dataclass(frozen=True)
class _Series:
    """What every round of a series shares: its config, the train runs' settings, the eval
    file held out of harvests, the work folder and where progress goes."""

    cfg: ImproveConfig
    train_cfg: dict[str, Any]
    eval_file: Path
    work: Path
    ev: Events


def served_as(path: Path) -> str:
    """The model string a trained file is served and traced under."""
    return f"local/{path}"


def _round(series: _Series, rnd: int, parent: str, row: dict[str, Any]) -> str:
    """Finish round ``rnd`` from the stage its row is at; returns the round's model."""
    cfg, train_cfg, eval_file, work, ev = (
        series.cfg, series.train_cfg, series.eval_file, series.work, series.ev
    )  # fmt: skip
    name = cfg.name
    stage = row.get("stage") or "generate"
    model = row.get("model") or parent
    metrics: dict[str, Any] = dict(row.get("metrics") or {})
    train_run = f"{name}-r{rnd}-train"
    if rnd > 0 and stage in ("generate", "grade", "harvest", "train", "failed"):
        with TraceStore(cfg.db) as store:
            L.set_round(store, name, rnd, stage="generate", train_run=train_run, error=None)
        ev.stage(rnd, "generate", f"{cfg.loop} with {parent} on {train_cfg['tasks']}")
        _run(cfg, train_run, {**train_cfg, "model": parent}, ev, f"r{rnd} generate")
        ev.stage(rnd, "grade")
        _grade(cfg, train_run)
        if cfg.method == "star":
            _rationalise(series, rnd, parent)
        if cfg.method == "self-reward":
            ev.stage(rnd, "judge", f"{parent} judges pairs of its own samples")
            asyncio.run(judge_pairs(cfg.db, [train_run], parent, seed=cfg.seed,
                                    pairs_per_task=cfg.max_per_prompt or 4,
                                    concurrency=cfg.connection.concurrency, with_reference=False))  # fmt: skip
        ev.stage(rnd, "harvest")
        data, rows = _harvest(cfg, rnd, eval_file, work)
        with TraceStore(cfg.db) as store:
            metrics["train"] = {**train_metrics(store, train_run), "data_rows": rows}
            if cfg.method == "self-reward":
                metrics["train"]["judge_grader_agreement"] = judge_agreement(store, train_run)
            L.set_round(store, name, rnd, stage="train", metrics=metrics)
        if rows == 0:
            _fail(cfg, rnd, "harvest found no training rows (no verified samples)")
        model = _train(series, rnd, parent, data, rows)
    evaluate_round(cfg, rnd, model, metrics, ev)
    return model


def evaluate_round(cfg: ImproveConfig, rnd: int, model: str, metrics: dict[str, Any],
                   ev: Events, selector: str = "verifier") -> None:  # fmt: skip
    """Evaluate round ``rnd``'s model on the held-out eval tasks (plain samples, graded) and
    mark the round done with ``metrics`` plus the eval's. Resumable like every stage.

    A GRPO series trained on two-turn episodes (``--rollout self-refine``) also runs the
    ``two-turn`` loop once per eval task (run ``NAME-rN-turns``, no in-loop verifier, as
    trained): ``metrics["turns"]`` holds turn-1 and turn-2 accuracy and the transitions."""
    name = cfg.name
    eval_run = f"{name}-r{rnd}-eval"
    with TraceStore(cfg.db) as store:
        L.set_round(store, name, rnd, stage="eval", model=model, eval_run=eval_run)
    ev.stage(rnd, "eval", f"{model} on {cfg.eval_tasks}")
    eval_opts = {"n": cfg.eval_samples, "selector": selector}
    _run(cfg, eval_run, {"loop": "best-of-n", "tasks": cfg.eval_tasks, "model": model,
                         "options": eval_opts, "limit": cfg.eval_limit}, ev, f"r{rnd} eval")  # fmt: skip
    _grade(cfg, eval_run)
    turns_run = f"{name}-r{rnd}-turns" if cfg.method == "grpo" and cfg.grpo.episode() else None
    if turns_run is not None:
        ev.stage(rnd, "eval", f"{model}: two-turn episodes on {cfg.eval_tasks}")
        turn_opts = {"max_tokens": cfg.grpo.max_completion_tokens, "verifier_feedback": False}
        _run(cfg, turns_run, {"loop": "two-turn", "tasks": cfg.eval_tasks, "model": model,
                              "options": turn_opts, "limit": cfg.eval_limit, "verifier": "none"},
             ev, f"r{rnd} two-turn")  # fmt: skip
        _grade(cfg, turns_run)
    with TraceStore(cfg.db) as store:
        metrics["eval"] = eval_metrics(store, eval_run, cfg.eval_samples)
        if turns_run is not None:
            metrics["turns"] = turn_metrics(store, turns_run)
        m = L.model_of_round(store, name, rnd)
        if m is not None:
            metrics["final_loss"] = m["final_loss"]
            metrics["train_s"] = m["train_s"]
        L.set_round(store, name, rnd, stage="done", metrics=metrics)


def _fail(cfg: ImproveConfig, rnd: int, why: str) -> NoReturn:
    with TraceStore(cfg.db) as store:
        L.set_round(store, cfg.name, rnd, stage="failed", error=why)
    raise _RoundFailed(f"round {rnd}: {why}")


def _harvest(cfg: ImproveConfig, rnd: int, eval_file: Path, work: Path) -> tuple[Path, int]:
    """The round's training file. Labels are the held-out grader's verdicts on the train
    samples; eval prompts are excluded again here (the contamination check)."""
    first = 1 if cfg.data == "accumulate" else rnd
    rounds = range(first, rnd + 1)
    rationalised = {f"{cfg.name}-r{r}-rationalise" for r in rounds}
    with TraceStore(cfg.db) as store:
        rationalised = {r for r in rationalised if run_by_name(store, r) is not None}
    runs = tuple(f"{cfg.name}-r{r}-train" for r in rounds) + tuple(sorted(rationalised))
    fmt = "dpo" if cfg.train.objective == "dpo" else "sft"
    opts = HarvestOptions(
        runs=runs,
        label="graded",
        contamination=(eval_file,),
        max_per_prompt=cfg.max_per_prompt,
        # self-reward: the model's own pairwise judgements pick chosen/rejected; the graded
        # labels (the reference) are used for the metrics only
        pairs=("judge",) if cfg.method == "self-reward" else ("siblings",),
    )
    out = work / f"r{rnd}" / f"{fmt}.jsonl"
    res = harvest(fmt, cfg.db, out, opts, overwrite=True)
    if rationalised:
        strip_hints(out, rationalised)
    return out, res.rows


def _rationalise(series: _Series, rnd: int, parent: str) -> None:
    """STaR: the never-solved train tasks again, with their reference as a hint."""
    cfg, train_cfg, work, ev = series.cfg, series.train_cfg, series.work, series.ev
    todo = unsolved_tasks(cfg.db, f"{cfg.name}-r{rnd}-train", train_cfg["tasks"],
                          train_cfg["limit"])  # fmt: skip
    if not todo:
        return
    spec = hinted_task_file(todo, work / f"r{rnd}" / "rationalise.jsonl")
    name = f"{cfg.name}-r{rnd}-rationalise"
    ev.stage(rnd, "rationalise", f"{len(todo)} unsolved train tasks with the answer as a hint")
    _run(cfg, name, {**train_cfg, "tasks": str(spec), "limit": None, "model": parent}, ev,
         f"r{rnd} rationalise")  # fmt: skip
    _grade(cfg, name)


def _train(series: _Series, rnd: int, parent: str, data: Path, rows: int) -> str:
    """Train and export model ``rnd`` unless its ``models`` row already exists."""
    cfg, work, ev = series.cfg, series.work, series.ev
    with TraceStore(cfg.db) as store:
        done = L.model_of_round(store, cfg.name, rnd)
    if done is not None:
        return str(done["model_id"])
    from loopwright.loops.improve.train import TrainingFailed, train_and_export

    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    for stale in models.glob(f"round-{rnd}-*"):  # files of an attempt that never got a row
        stale.unlink()
    for stale in models.glob(f".round-{rnd}-*"):
        stale.unlink()
    # A fresh file name per attempt: the model string is the cache key of its calls.
    path = (models / f"round-{rnd}-{new_id()[:8]}.gguf").resolve()
    start = cfg.base if cfg.restarts_from_base() else parent
    ev.stage(rnd, "train", f"{cfg.train.objective} on {rows} rows from {start}")
    try:
        res = train_and_export(start, data, path, cfg.train, ev.train_step)
    except TrainingFailed as exc:
        _fail(cfg, rnd, f"training failed: {exc}")
    model_id = served_as(path)
    record = L.ModelRecord(
        model_id=model_id,
        parent=parent,
        base=start,
        improve=cfg.name,
        round=rnd,
        method=cfg.method,
        path=str(path),
        data_hash=hashlib.sha256(data.read_bytes()).hexdigest(),
        data_rows=rows,
        train_config={
            **cfg.train.model_dump(mode="json"),
            "steps": res.steps,
            "tokens": res.tokens,
            "device": res.device,
        },
        final_loss=res.final_loss,
        train_s=res.seconds,
    )
    with TraceStore(cfg.db) as store:
        L.add_model(store, record)
    return model_id
