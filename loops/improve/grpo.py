"""``improve --method grpo``: online RL on loopwright's graders and verifiers, every rollout
in the trace store, checkpoints as rounds.

Round 0 evaluates the base; round r >= 1 is the policy at step ``cfg.grpo.checkpoints()[r-1]``
(exported to GGUF, a ``models`` row with its step, evaluated like a round). Each GRPO step's
rollouts become one run ``{name}-g{step:05d}`` (``record_step``) and one ``train_steps`` row,
which TRL's logged metrics and the step's time breakdown complete once the step is done.

Resumable like rounds: trainer checkpoints (optimizer included) go to ``work/grpo``; a killed
series resumes from the last complete one, after dropping the rows of the steps after it,
so every step is recorded once. A round whose ``models`` row exists is finished (evaluated)
before training goes on. A NaN loss or running out of memory ends the series in one line,
keeping everything before it. Only this module and ``train`` import torch and TRL (lazily).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loopwright.loops.execution.runner import RunConfig, prepare
from loopwright.loops.improve.config import ImproveConfig
from loopwright.loops.improve.rounds import (
    Events,
    ImproveResult,
    SeriesMirror,
    check_split,
    evaluate_round,
    mirrored,
    open_series,
    served_as,
)
from loopwright.loops.tasks import Task, load_tasks
from loopwright.traces import TraceStore, new_id
from loopwright.traces import lineage as L

CHECKPOINTS = "grpo"
"""Trainer checkpoints (HF Trainer format, optimizer included) under the work folder."""


class GrpoFailed(Exception):
    """Training stopped (NaN loss, out of memory): the series ends, everything before kept."""


def step_run_name(name: str, step: int) -> str:
    """The run holding step ``step``'s rollouts."""
    return f"{name}-g{step:05d}"


def policy_name(cfg: ImproveConfig, step: int) -> str:
    """The policy that sampled step ``step``'s rollouts: the weights after ``step - 1``."""
    return cfg.base if step <= 1 else f"{cfg.name}@step{step - 1}"


def train_order(n_tasks: int, steps: int, per_step: int, seed: int) -> list[int]:
    """Task indices in training order, ``per_step`` a step for ``steps`` steps: each pass over
    the train tasks a fresh seeded shuffle, as epochs are (fixed up front, so a resumed run
    trains on exactly the prompts an uninterrupted one would)."""
    rng = random.Random(seed)
    out: list[int] = []
    while len(out) < steps * per_step:
        epoch = list(range(n_tasks))
        rng.shuffle(epoch)
        out.extend(epoch)
    return out[: steps * per_step]


def last_checkpoint(folder: Path) -> tuple[int, Path] | None:
    """(step, dir) of the newest complete trainer checkpoint. A checkpoint is complete once
    its ``trainer_state.json`` (written last) parses; incomplete ones (a kill mid-save) are
    deleted, so the trainer neither loads nor rotates them."""
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for d in folder.glob("checkpoint-*"):
        try:
            step = int(d.name.removeprefix("checkpoint-"))
        except ValueError:
            continue
        try:
            state = json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
            ok = int(state.get("global_step", -1)) == step
        except (OSError, ValueError):
            ok = False
        if ok:
            found.append((step, d))
        else:
            shutil.rmtree(d, ignore_errors=True)
    return max(found) if found else None


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _steps_table(db: str, name: str) -> dict[int, dict[str, Any]]:
    """The series' ``train_steps`` rows by step: run_id and metrics (parsed)."""
    from loopwright.traces.rollouts import step_metrics

    with TraceStore(db) as store:
        rows = step_metrics(store, name)
    return {int(r["step"]): {"run_id": r.get("run_id"), "metrics": r["metrics"]} for r in rows}


def window_summary(steps: dict[int, dict[str, Any]], first: int, last: int) -> dict[str, Any]:
    """A round's ``train`` metrics: the mean of every numeric step metric over steps
    ``first..last``, with ``yield`` (share of rollouts the grader passed) as rounds have it."""
    rows = [steps[s]["metrics"] for s in range(first, last + 1) if s in steps]
    sums: dict[str, list[float]] = {}
    for m in rows:
        for k, v in _numbers(m).items():
            sums.setdefault(k, []).append(v)
    out: dict[str, Any] = {k: sum(v) / len(v) for k, v in sorted(sums.items())}
    out["steps"] = [first, last]
    out["recorded_steps"] = len(rows)
    for key in ("correct_rate", "correctness_rate", "graded_rate", "accuracy"):
        if key in out:
            out["yield"] = out[key]
            break
    out["data_rows"] = int(sum(m.get("completions") or 0 for m in rows)) or None  # rollouts
    return out


class _Session:
    """One ``trainer.train()`` of a series: what the trainer subclass and the callback share."""

    def __init__(self, cfg: ImproveConfig, work: Path, ev: Events, mirror: SeriesMirror,
                 tasks: dict[str, Task], rewards: Any, base: Any, device: str) -> None:  # fmt: skip
        self.cfg = cfg
        self.work = work
        self.ev = ev
        self.mirror = mirror
        self.tasks = tasks
        self.rewards = rewards
        self.base = base
        self.device = device
        self.marks = cfg.grpo.checkpoints()
        self.trainer: Any = None
        self.engine: Any = None
        self.failed: str | None = None
        self.logged: set[int] = set()
        self._t_step = 0.0
        self._gen_s = 0.0
        self._reward_s = 0.0
        self._score_s = 0.0
        self._step_s: dict[int, float] = {}

    # -- timing hooks -----------------------------------------------------------------------
    def timed_reward(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self._reward_s += time.perf_counter() - t

        return run

    def round_of(self, step: int) -> int:
        """The round step ``step`` trains towards (the first checkpoint at or after it)."""
        return next(r for r, mark in enumerate(self.marks, 1) if mark >= step)

    # -- recording --------------------------------------------------------------------------
    def record(self, trainer: Any, inputs: list[dict[str, Any]], out: dict[str, Any]) -> None:
        """Step ``global_step + 1``'s rollouts (the ones it trains on) into the store."""
        from loopwright.loops.improve.record import record_step

        step = int(trainer.state.global_step) + 1
        tok = trainer.processing_class
        ids = out["completion_ids"].detach().cpu()
        lens = out["completion_mask"].detach().cpu().sum(dim=1).tolist()
        prompt_lens = out["prompt_mask"].detach().cpu().sum(dim=1).tolist()
        adv = out["advantages"].detach().float().cpu().tolist()
        seqs = [ids[i, : int(n)].tolist() for i, n in enumerate(lens)]
        advs = [float(a) if math.isfinite(a) else None for a in adv]
        if inputs and "revision" in inputs[0]:
            rows = self._episode_rows(inputs, seqs, prompt_lens, advs)
        else:
            eos = set(getattr(trainer, "eos_token_ids", None) or [tok.eos_token_id])
            texts = [tok.decode(s, skip_special_tokens=True) for s in seqs]
            rows = self._rows(inputs, texts, seqs, prompt_lens, advs, eos)
        timings: dict[str, float | None] = {
            "generate_s": self._gen_s,
            "reward_s": self._reward_s,
            "tokens": float(sum(prompt_lens) + sum(len(s) for s in seqs)),
        }
        if self.engine is not None:
            sync = float(self.engine.timings.get("sync_s") or 0.0)
            timings["sync_s"] = sync
            timings["generate_s"] = max(0.0, self._gen_s - sync)
        record_step(self.cfg.db, self.cfg.name, step, policy_name(self.cfg, step), rows,
                    timings, self.cfg.seed)  # fmt: skip

    def _rows(self, inputs: list[dict[str, Any]], texts: list[str], seqs: list[list[int]],
              prompt_lens: list[int], advs: list[float | None], eos: set[int]) -> list[Any]:  # fmt: skip
        from loopwright.loops.improve.record import RolloutRow

        cap = self.cfg.grpo.max_completion_tokens
        task_ids = [str(x["task_id"]) for x in inputs]
        outcomes = self.rewards.last()
        if len(outcomes) != len(texts):
            outcomes = self.rewards.score(task_ids, texts)
        graded = self.rewards.grade(task_ids, texts)
        rows = []
        for i, tid in enumerate(task_ids):
            clipped = len(seqs[i]) >= cap and (not seqs[i] or seqs[i][-1] not in eos)
            rows.append(
                RolloutRow(
                    task=self.tasks[tid],
                    messages=list(inputs[i]["prompt"]),
                    completion=texts[i],
                    completion_tokens=len(seqs[i]),
                    prompt_tokens=int(prompt_lens[i]),
                    finish_reason="length" if clipped else "stop",
                    outcome=outcomes[i],
                    graded=graded[i],
                    advantage=advs[i],
                    group_index=i // self.cfg.grpo.generations,  # TRL's groups: consecutive
                )
            )
        return rows

    def _episode_rows(self, inputs: list[dict[str, Any]], seqs: list[list[int]],
                      prompt_lens: list[int], advs: list[float | None]) -> list[Any]:  # fmt: skip
        """Two-turn episodes: the revision is the row's completion, the draft its parent."""
        from loopwright.loops.improve.record import DraftTurn, RolloutRow
        from loopwright.loops.prompts import revision_turn

        task_ids = [str(x["task_id"]) for x in inputs]
        drafts = [str(x["draft"]) for x in inputs]
        revs = [str(x["revision"]) for x in inputs]
        outcomes = self.rewards.last()
        if len(outcomes) != len(revs):
            outcomes = self.rewards.score_episode(task_ids, drafts, revs)
        firsts = self.rewards.last_drafts()
        graded = self.rewards.grade(task_ids, revs)
        graded_drafts = self.rewards.grade(task_ids, drafts)
        rows = []
        for i, tid in enumerate(task_ids):
            x = inputs[i]
            d_tok, r_tok = int(x.get("draft_tokens") or 0), int(x.get("revision_tokens") or 0)
            task = self.tasks[tid]
            draft = DraftTurn(
                completion=drafts[i], completion_tokens=d_tok,
                finish_reason=x.get("draft_finish"),
                answer=firsts[i].answer if len(firsts) == len(revs) else None,
                graded=graded_drafts[i], turn=revision_turn(task),
                turn_tokens=max(0, len(seqs[i]) - d_tok - r_tok),
            )  # fmt: skip
            rows.append(
                RolloutRow(
                    task=task, messages=list(x["prompt"]), completion=revs[i],
                    completion_tokens=r_tok, prompt_tokens=int(prompt_lens[i]),
                    finish_reason="length" if x.get("revision_finish") == "length" else "stop",
                    outcome=outcomes[i], graded=graded[i], advantage=advs[i],
                    group_index=i // self.cfg.grpo.generations, draft=draft,
                )
            )  # fmt: skip
        return rows

    def step_logged(self, step: int, logs: dict[str, Any]) -> float | None:
        """Merge TRL's logs of ``step`` and the step's time into its ``train_steps`` row;
        returns the loss."""
        from loopwright.loops.improve.record import update_step_metrics

        metrics: dict[str, float | None] = {}
        for k, v in logs.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                metrics[k] = float(v) if math.isfinite(float(v)) else None
        step_s = self._step_s.get(step)
        if step_s is not None:
            metrics["step_s"] = step_s
            metrics["update_s"] = max(0.0, step_s - self._score_s)
            metrics["score_s"] = self._score_s
        update_step_metrics(self.cfg.db, self.cfg.name, step, metrics)
        loss = logs.get("loss")
        return float(loss) if isinstance(loss, int | float) else None

    # -- checkpoints as rounds --------------------------------------------------------------
    def checkpoint(self, step: int) -> None:
        """Export the policy at ``step`` (a checkpoint step), write its ``models`` row and
        evaluate it as its round, unless its row exists already."""
        rnd = self.marks.index(step) + 1
        cfg = self.cfg
        with TraceStore(cfg.db) as store:
            if L.model_of_round(store, cfg.name, rnd) is not None:
                return
            prev = L.model_of_round(store, cfg.name, rnd - 1) if rnd > 1 else None
        parent = str(prev["model_id"]) if prev is not None else cfg.base
        self.ev.stage(rnd, "export", f"step {step} to GGUF")
        models = self.work / "models"
        models.mkdir(parents=True, exist_ok=True)
        for stale in [*models.glob(f"step-{step:05d}-*"), *models.glob(f".step-{step:05d}-*")]:
            stale.unlink()  # files of an attempt that never got a row
        path = (models / f"step-{step:05d}-{new_id()[:8]}.gguf").resolve()
        t0 = time.perf_counter()
        from loopwright.loops.improve.export import export_gguf
        from loopwright.loops.improve.rollout_engine import policy_arrays

        arrays = policy_arrays(self.trainer.accelerator.unwrap_model(self.trainer.model))

        export_gguf(arrays, self.base.template, path, cfg.train.export)
        export_s = time.perf_counter() - t0
        steps = _steps_table(cfg.db, cfg.name)
        done = [s for s in sorted(steps) if s <= step]
        run_ids = [str(steps[s]["run_id"]) for s in done]
        last = steps.get(step, {}).get("metrics") or {}
        loss = last.get("loss")
        g = cfg.grpo
        record = L.ModelRecord(
            model_id=served_as(path),
            parent=parent,
            base=cfg.base,
            improve=cfg.name,
            round=rnd,
            step=step,
            method=cfg.method,
            path=str(path),
            data_hash=hashlib.sha256("\n".join(run_ids).encode()).hexdigest(),
            data_rows=step * g.prompts_per_step * g.generations,
            train_config={
                **cfg.train.model_dump(mode="json"),
                "grpo": g.model_dump(mode="json"),
                "steps": step,
                "tokens": int(sum(float(steps[s]["metrics"].get("tokens") or 0) for s in done)),
                "device": self.device,
                "data_seen": {
                    "prompts": step * g.prompts_per_step,
                    "completions": step * g.prompts_per_step * g.generations,
                    "step_runs": len(run_ids),
                },
                "export_s": export_s,
            },
            final_loss=float(loss) if isinstance(loss, int | float) else None,
            train_s=float(sum(float(steps[s]["metrics"].get("step_s") or 0) for s in done)),
        )
        with TraceStore(cfg.db) as store:
            L.add_model(store, record)
        first = self.marks[rnd - 2] + 1 if rnd > 1 else 1
        metrics: dict[str, Any] = {"train": window_summary(steps, first, step), "step": step}
        evaluate_round(cfg, rnd, record.model_id, metrics, self.ev, cfg.grpo.eval_selector)
        _release_engine(record.model_id)
        self.mirror.round(rnd)
        if rnd < len(self.marks):
            with TraceStore(cfg.db) as store:
                L.set_round(store, cfg.name, rnd + 1, stage="train", error=None)
            self.ev.stage(rnd + 1, "train", f"GRPO steps {step + 1}-{self.marks[rnd]}")

    def fail(self, step: int, why: str) -> None:
        if self.failed is None:
            rnd = self.round_of(step)
            self.failed = f"round {rnd}: {why}"
            with TraceStore(self.cfg.db) as store:
                L.set_round(store, self.cfg.name, rnd, stage="failed", error=why)


def _release_engine(model_id: str) -> None:
    """Drop the embedded engine that served a checkpoint's eval: the next checkpoint is
    another file, and a long series would otherwise keep one server per checkpoint."""
    from loopwright.loops.models.local_model import LocalEngine

    LocalEngine.release(model_id.removeprefix("local/"))


def _callback(session: _Session) -> Any:
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            # resumed right after a checkpoint step whose export never got its row
            if state.global_step in session.marks:
                session.checkpoint(int(state.global_step))

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            session._t_step = time.perf_counter()
            session._gen_s = session._reward_s = session._score_s = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            step = int(state.global_step)
            session._step_s[step] = time.perf_counter() - session._t_step
            if step in session.marks:
                control.should_save = True  # a round's checkpoint is resumable too

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any
                   ) -> None:  # fmt: skip
            logs = logs or {}
            step = int(state.global_step)
            if "loss" not in logs or step in session.logged:
                return
            session.logged.add(step)
            loss = session.step_logged(step, logs)
            grad = logs.get("grad_norm")
            bad = None
            if loss is not None and not math.isfinite(loss):
                bad = f"loss became {loss} at step {step}: lower --learning-rate"
            elif isinstance(grad, int | float) and not math.isfinite(float(grad)):
                bad = f"gradient norm became {grad} at step {step}: lower --learning-rate"
            if bad:
                session.fail(step, bad)
                control.should_training_stop = True
                control.should_save = False  # never a checkpoint of broken weights
            session.ev.train_step(step, int(state.max_steps), loss)

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            step = int(state.global_step)
            if step in session.marks and session.failed is None:
                session.checkpoint(step)

    return _Steps()


def _trainer_class() -> type:
    from trl import GRPOTrainer

    class RecordingGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        """TRL's trainer, each generation batch recorded before it is trained on."""

        session: _Session

        def _generate(self, prompts: list[Any]) -> Any:
            t = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self.session._gen_s += time.perf_counter() - t

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
            t = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            if getattr(self.model, "training", True):
                self.session._score_s += time.perf_counter() - t
                self.session.record(self, inputs, out)
            return out

    return RecordingGRPOTrainer


def grpo_args(cfg: ImproveConfig, work: Path, device: str,
              reward_weights: list[float] | None = None, **extra: Any) -> Any:  # fmt: skip
    """TRL's ``GRPOConfig`` for the series (shared with the benchmark's bare-TRL baseline):
    float32 on CPU (TRL's bf16 default fails there), one generation batch per step."""
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        output_dir=str(work / CHECKPOINTS),
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        gradient_checkpointing=False,
        beta=g.beta,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        num_generations=g.generations,
        per_device_train_batch_size=g.prompts_per_step * g.generations,
        gradient_accumulation_steps=1,
        max_completion_length=g.max_completion_tokens,
        temperature=g.temperature,
        max_steps=g.steps,
        learning_rate=cfg.train.lr(),
        lr_scheduler_type="constant",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
        save_strategy="steps",
        save_steps=g.save_every,
        save_total_limit=g.keep_checkpoints,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.train.seed,
        data_seed=cfg.train.seed,
        shuffle_dataset=False,  # train_order fixed the order (resume-exact)
        log_completions=False,  # every rollout is recorded in the store instead
        dataloader_pin_memory=device == "cuda",
        reward_weights=reward_weights,
        **extra,  # TRL's generation path (vLLM on a GPU when installed)
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _train(cfg: ImproveConfig, work: Path, ev: Events, mirror: SeriesMirror, train_spec: str,
           limit: int | None) -> str | None:  # fmt: skip
    """Train from the last checkpoint (or the start) to the end; returns why it stopped."""
    import os

    import torch
    from loopwright.loops.improve.record import discard_steps_after
    from loopwright.loops.improve.rewards import Rewards, grpo_dataset
    from loopwright.loops.improve.rollout_engine import engine_trainer_kwargs
    from loopwright.loops.improve.train import (
        load_model,
        lora_config,
        pick_device,
        resolve_base,
    )

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func's notice
    g = cfg.grpo
    tasks = load_tasks(train_spec, limit)
    order = train_order(len(tasks), g.steps, g.prompts_per_step, cfg.train.seed)
    dataset = grpo_dataset([tasks[i] for i in order], keyed=g.reward_kind() == "grader")
    device = pick_device(cfg.train.device)
    base = resolve_base(cfg.base)
    torch.manual_seed(cfg.train.seed)
    model, tok = load_model(base, device)

    resume = last_checkpoint(work / CHECKPOINTS)
    start = resume[0] if resume else 0
    discard_steps_after(cfg.db, cfg.name, start)  # the steps after it are trained again
    with Rewards(cfg, tasks) as rewards:
        session = _Session(cfg, work, ev, mirror, {t.id: t for t in tasks}, rewards, base,
                           device)  # fmt: skip
        rnd = session.round_of(min(start + 1, g.steps))
        with TraceStore(cfg.db) as store:
            L.set_round(store, cfg.name, rnd, stage="train", error=None)
        ev.stage(rnd, "train", f"GRPO ({g.reward}) from "
                 f"{f'step {start}' if start else cfg.base} to step {session.marks[rnd - 1]} "
                 f"of {g.steps}, rollouts from "
                 f"{'the embedded engine' if _engine_rollouts(cfg, device) else 'TRL'}")  # fmt: skip
        config_kw, trainer_kw, session.engine = engine_trainer_kwargs(
            g,
            device,
            tok,
            base.template,
            work / "engine",
            seed=cfg.seed,
            revision_turn=_revision_turns(tasks) if g.episode() else None,
        )
        try:
            with _quiet():
                args = grpo_args(cfg, work, device, reward_weights=rewards.weights(),
                                 **config_kw)  # fmt: skip
                trainer = _trainer_class()(
                    model=model,
                    reward_funcs=[session.timed_reward(f) for f in rewards.trl_funcs()],
                    args=args,
                    train_dataset=dataset,
                    processing_class=tok,
                    peft_config=lora_config(cfg.train),
                    callbacks=[_callback(session)],
                    **trainer_kw,
                )
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # our bar shows step and loss
            trainer.session = session
            session.trainer = trainer
            try:
                with _quiet():
                    trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
            except torch.OutOfMemoryError:
                step = int(trainer.state.global_step) + 1
                session.fail(step, f"out of memory on {device} at step {step} "
                             f"({g.prompts_per_step} prompts x {g.generations} generations, "
                             f"{g.max_completion_tokens} completion tokens): lower "
                             "--generations, --prompts-per-step or --max-completion-tokens")  # fmt: skip
        finally:
            if session.engine is not None:
                session.engine.close()
    return session.failed


def _revision_turns(tasks: list[Task]) -> Callable[[Any], str]:
    """A train prompt (its chat messages, as ``grpo_dataset`` writes them) -> the user turn
    that asks to revise a draft of its task (by the task's kind)."""
    from loopwright.loops.prompts import draft_messages, revision_turn

    turns = {json.dumps(draft_messages(t), sort_keys=True): revision_turn(t) for t in tasks}
    fallback = revision_turn(tasks[0]) if tasks else ""

    def turn(prompt: Any) -> str:
        return turns.get(json.dumps(prompt, sort_keys=True), fallback)

    return turn


def _engine_rollouts(cfg: ImproveConfig, device: str) -> bool:
    from loopwright.loops.improve.rollout_engine import use_engine

    return use_engine(cfg.grpo, device)


def run_grpo(cfg: ImproveConfig, work: Path, ev: Events) -> ImproveResult:
    """Run (or resume) a GRPO series; the caller holds the series lock."""
    from loopwright.loops.improve.train import _need_train

    train_spec, limit, _eval_file = check_split(cfg, work)
    train_cfg = {"loop": cfg.loop, "tasks": train_spec, "limit": limit, "options": cfg.options}
    prepare(RunConfig(**cfg.settings(), model=cfg.base, **train_cfg))
    _need_train()  # before round 0 spends its time
    open_series(cfg)
    marks = cfg.grpo.checkpoints()
    failed: str | None = None
    with mirrored(cfg) as mirror:
        with TraceStore(cfg.db) as store:
            row0 = L.get_round(store, cfg.name, 0) or {}
        if row0.get("stage") != "done":
            evaluate_round(
                cfg, 0, cfg.base, dict(row0.get("metrics") or {}), ev, cfg.grpo.eval_selector
            )
        mirror.round(0)
        todo = False
        for rnd in range(1, len(marks) + 1):
            with TraceStore(cfg.db) as store:
                row = L.get_round(store, cfg.name, rnd) or {}
                model = L.model_of_round(store, cfg.name, rnd)
            if row.get("stage") == "done":
                mirror.round(rnd)
                continue
            if model is None:
                todo = True
                break
            # killed while exporting's row was written or while evaluating: finish it
            metrics = dict(row.get("metrics") or {})
            if "train" not in metrics:
                first = marks[rnd - 2] + 1 if rnd > 1 else 1
                metrics["train"] = window_summary(_steps_table(cfg.db, cfg.name), first,
                                                  marks[rnd - 1])  # fmt: skip
                metrics["step"] = marks[rnd - 1]
            evaluate_round(cfg, rnd, str(model["model_id"]), metrics, ev, cfg.grpo.eval_selector)
            mirror.round(rnd)
        if todo:
            failed = _train(cfg, work, ev, mirror, train_spec, limit)
        mirror.status = "failed" if failed else "done"
    with TraceStore(cfg.db) as store:
        rows = L.rounds_of(store, cfg.name)
    return ImproveResult(name=cfg.name, rounds=rows, failed=failed)
