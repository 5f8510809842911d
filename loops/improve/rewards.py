"""GRPO rewards from loopwright's own checks, and the doors for users who train elsewhere.

``Rewards(cfg, tasks)`` scores a batch of completions the way ``--reward`` says:

- ``grader``: the held-out grader (``grader_for``, the run's ``--grader`` or the task kind's)
  on the *keyed* train task: its verdict's score (1/0 for math and choice, the share of hidden
  tests passed for code). RLVR: the train set's labels are the training signal.
- ``verifier[:NAME]``: an in-loop verifier (``make_verifier``; none named: the task kind's
  default, as ``--verifier auto`` picks) on the *blind* task (``Task.blind()``): its score.
  Code runs in the sandbox harness the grader uses. ``oracle`` (it reads the key) and
  ``none`` (it never verifies) are refused.
- ``majority`` (label-free, TTRL): the completions of one task in the batch vote with the
  keys best-of-n's majority uses (``normalise_answer`` of the extracted answer); the most
  common non-empty key is the pseudo-label (ties: the first holder), a completion gets 1
  when its key equals it, else 0. No answer key is read.

Optional terms, each kept apart in ``RewardOutcome.terms``: ``format`` (weight
``grpo.format_weight``: 1 when an answer can be extracted for the task kind, else 0) and
``length`` (weight ``grpo.length_weight``: -1 when the completion hit the token cap, else 0).
``total`` = ``correct`` + the weighted others.

One bad completion (a grader that raises on it, odd text) gets reward 0 with the error in its
verdict's feedback; it never fails the batch. An error the user must fix (no sandbox here, a
model verifier without a model) is a one-line ``UserError`` and does stop it.

``score`` is synchronous (TRL calls reward functions synchronously); the async graders and
verifiers run on a private event loop in a thread of their own, so it also works when called
from inside a running event loop.

For TRL elsewhere: ``task_dataset(spec)`` is a task set as a ``datasets.Dataset`` (``prompt``
as chat messages, ``task_id``, ``task`` JSON), and ``reward_function(...)`` a reward function
in ``GRPOTrainer``'s keyword contract that reads its ``task`` column.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.config import CallContext, ClientConfig, Connection, Sample
from loopwright.loops.prompts import draft_messages
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.tasks.answers import normalise_answer, vote_keys
from loopwright.loops.verify import (
    AUTO,
    VERIFIERS,
    Verdict,
    check_grader,
    check_verifier,
    grader_for,
    is_oracle,
    make_verifier,
    run_grader,
    run_verifier,
)
from loopwright.loops.verify.functions import answer_of
from loopwright.sandboxes import DEFAULT_BACKEND
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import datasets
    from loopwright.loops.improve.config import ImproveConfig
    from loopwright.loops.models.base import Model
    from loopwright.loops.models.client import ModelClient
    from loopwright.traces.records import Role

VERSION = "reward-1"
REWARD_KINDS: tuple[str, ...] = ("grader", "verifier", "majority")
MODEL_VERIFIERS: frozenset[str] = frozenset({"self", "consistency", "judge"})
"""Shipped verifiers that ask a model (the series' base model, or ``--role-model``'s)."""

T = TypeVar("T")
TrlReward = Callable[..., list[float | None]]


class RewardOutcome(BaseModel):
    """One completion's reward, every term kept."""

    total: float | None = Field(description="Weighted sum of the terms that apply.")
    terms: dict[str, float | None] = Field(
        description='Each term apart, e.g. {"correct": 1.0, "format": 1.0, "length": 0.0}.'
    )
    answer: str | None = Field(description="The extracted answer.")
    verdict: Verdict | None = Field(
        description="The verdict the main term came from (grader, verifier, majority vote)."
    )
    pseudo_label: str | None = Field(
        None, description="majority only: the group's most common answer (vote key)."
    )


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """What a scorer needs: the reward, its terms, and how checks and models are reached."""

    kind: str
    verifier: str = AUTO
    verifier_options: dict[str, Any] = field(default_factory=dict)
    grader: str | None = None
    sandbox: str = DEFAULT_BACKEND
    format_weight: float = 0.0
    length_weight: float = 0.0
    max_tokens: int | None = None
    model: str | None = None
    role_models: dict[str, str | Model] = field(default_factory=dict)
    connection: Connection = field(default_factory=Connection)
    budget: BudgetLimits = field(default_factory=BudgetLimits)
    seed: int = 0
    concurrency: int = 4

    def label(self) -> str:
        """How the reward is named on verdict rows: ``reward:grader``, ``reward:verifier:self``."""
        if self.kind == "verifier":
            return f"reward:verifier:{self.verifier}"
        return f"reward:{self.kind}"


def check_reward(reward: str, *, verifier_options: dict[str, Any] | None = None) -> None:
    """A one-line ``UserError`` unless ``reward`` (``--reward``) can be a reward: the
    ``oracle`` verifier reads the answer key, ``none`` never verifies, unknown names and bad
    verifier options are refused."""
    kind, _, name = reward.partition(":")
    if kind not in REWARD_KINDS:
        raise UserError(f"--reward {reward}: use grader, verifier[:NAME] or majority")
    if name and kind != "verifier":
        raise UserError(f"--reward {reward}: only verifier takes a :NAME")
    if kind != "verifier" or not name or name == AUTO:
        return
    if is_oracle(name):
        raise UserError(
            f"--reward verifier:{name} reads the answer key: use --reward grader to train on "
            f"the train tasks' labels, or a blind verifier ({', '.join(reward_verifiers())})"
        )
    if name == "none":
        raise UserError(
            f"--reward verifier:none gives no reward: choose one of {', '.join(reward_verifiers())}"
        )
    if name not in VERIFIERS:
        raise unknown("reward verifier", name, reward_verifiers())
    check_verifier(name, verifier_options)


def reward_verifiers() -> list[str]:
    """The in-loop verifiers that work as rewards (every registered one but oracle and none)."""
    return [n for n in sorted(VERIFIERS) if n != "none" and not is_oracle(n)]


def _settings_of(cfg: ImproveConfig) -> _Settings:
    g = cfg.grpo
    kind = g.reward_kind()
    name = g.reward_verifier() or AUTO
    # --verifier-option applies to the reward verifier when --verifier names it too
    options = dict(cfg.verifier_options) if name != AUTO and name == cfg.verifier else {}
    check_reward(g.reward, verifier_options=options or None)
    if kind == "grader":
        check_grader(cfg.grader)
    return _Settings(
        kind=kind,
        verifier=name,
        verifier_options=options,
        grader=cfg.grader,
        sandbox=cfg.sandbox,
        format_weight=g.format_weight,
        length_weight=g.length_weight,
        max_tokens=g.max_completion_tokens,
        model=cfg.base,
        role_models=dict(cfg.role_models),
        connection=cfg.connection,
        budget=cfg.budget,
        seed=cfg.seed,
        concurrency=max(1, cfg.connection.concurrency),
    )


# -- the private event loop ---------------------------------------------------------------------


class _LoopThread:
    """An event loop of its own in a daemon thread: synchronous callers run coroutines on it
    (and clients made there stay bound to it across batches)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="loopwright-rewards", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return fut.result()

    def close(self, final: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if final is not None:
            asyncio.run_coroutine_threadsafe(final(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


# -- the context a verifier reward gets -----------------------------------------------------------


class _RewardContext:
    """What an in-loop verifier may use when it is a reward: the blind task, a per-task memo,
    and sampling from the series' base model (``--role-model`` per role), made on first use."""

    loop = "grpo"
    run_id = "grpo-reward"

    def __init__(self, scorer: _Scorer, task: Task, memo: dict[str, Any]) -> None:
        self._scorer = scorer
        self.task = task
        self.memo = memo
        self.budget = Budget(scorer.settings.budget)

    def client_for(self, role: Role) -> ModelClient:
        return self._scorer.client_for(role)

    def call_seed(self, role: Role, round_: int, extra: int = 0) -> int:
        from loopwright.loops.graphs.context import derive_seed

        return derive_seed(self._scorer.settings.seed, self.task.id, role, round_, extra)

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        role: Role,
        round_: int,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[Sample]:
        return await self.client_for(role).sample(
            messages,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=self.call_seed(role, round_) if seed is None else seed,
            budget=self.budget,
            context=CallContext(
                run_id=self.run_id, task_id=self.task.id, loop=self.loop, round=round_, role=role
            ),
        )


# -- scoring --------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or chat messages (the last assistant turn's
    content; content parts joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion.get("content"))
    if isinstance(completion, Sequence):
        turns = [m for m in completion if isinstance(m, dict)]
        said = [m for m in turns if m.get("role", "assistant") == "assistant"] or turns
        return _content(said[-1].get("content")) if said else ""
    return "" if completion is None else str(completion)


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _answer(task: Task, text: str) -> str | None:
    try:
        a = answer_of(task, text)
    except Exception:  # odd text the extraction chokes on: no answer
        return None
    return a if a is None or a.strip() else None


def vote_key(task: Task, answer: str | None) -> str | None:
    """The key a majority vote compares (best-of-n's ``normalise_answer`` of the answer)."""
    key = normalise_answer(task.kind, answer)
    return key or None


def _formatted(task: Task, answer: str | None) -> float:
    """1.0 when an answer can be extracted for the task kind (code: a program that parses)."""
    if answer is None:
        return 0.0
    if task.kind == "code":
        try:
            ast.parse(answer)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return 0.0
    return 1.0


def _error_verdict(label: str, exc: BaseException) -> Verdict:
    said = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    return Verdict(
        passed=False,
        score=0.0,
        feedback=f"reward error: {said}",
        verifier=label,
        version=VERSION,
        details={"error": said},
    )


def _is_error(v: Verdict | None) -> bool:
    return v is not None and "error" in v.details and v.version == VERSION


def _score_of(v: Verdict) -> float:
    s = v.score
    if isinstance(s, (int, float)) and math.isfinite(s):
        return float(s)
    return 1.0 if v.passed else 0.0


class _Scorer:
    """The scoring core shared by ``Rewards`` (a series' tasks) and ``reward_function`` (the
    tasks a dataset's ``task`` column carries)."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self._runner = _LoopThread()
        self._clients: dict[str, ModelClient] = {}
        self._memo: dict[str, dict[str, Any]] = {}
        self._sem: asyncio.Semaphore | None = None

    # -- models, for verifiers that ask one
    def client_for(self, role: str) -> ModelClient:
        from loopwright.loops.execution.run_config import model_name
        from loopwright.loops.models.client import ModelClient

        s = self.settings
        model = s.role_models.get(role, s.model)
        if model is None:
            raise UserError(
                f"verifier {s.verifier!r} asks a model for its verdict: pass model= (a model "
                f"string) or use a verifier that does not ({', '.join(_modelless())})"
            )
        key = model_name(model)
        client = self._clients.get(key)
        if client is None:
            config = ClientConfig.of(key, s.connection)
            client = ModelClient(config, model=None if isinstance(model, str) else model)
            self._clients[key] = client
        return client

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a trainer copying its reward functions): the settings only; the event loop
        and clients are made again on first use."""
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def close(self) -> None:
        async def shut() -> None:
            for client in self._clients.values():
                await client.aclose()
            self._clients.clear()

        self._runner.close(shut)
        self._sem = None

    # -- the batch
    def score(
        self,
        tasks: list[Task | None],
        texts: list[str],
        finish_reasons: Sequence[str | None] | None = None,
        completion_tokens: Sequence[int | None] | None = None,
    ) -> list[RewardOutcome]:
        if len(tasks) != len(texts):
            raise ValueError(f"{len(tasks)} tasks for {len(texts)} completions")
        s = self.settings
        answers = [
            _answer(t, x) if t is not None else None for t, x in zip(tasks, texts, strict=True)
        ]
        labels: list[str | None] = [None] * len(texts)
        if s.kind == "majority":
            verdicts, labels = self._majority(tasks, answers)
        else:
            verdicts = self._runner.run(self._checks(tasks, texts))
        out = []
        for i, task in enumerate(tasks):
            v = verdicts[i]
            terms: dict[str, float | None] = {"correct": None if v is None else _score_of(v)}
            if s.format_weight > 0:
                terms["format"] = None if task is None else _formatted(task, answers[i])
            if s.length_weight > 0:
                terms["length"] = _length(i, finish_reasons, completion_tokens, s.max_tokens)
            weights = {"correct": 1.0, "format": s.format_weight, "length": s.length_weight}
            applied = [weights[k] * t for k, t in terms.items() if t is not None]
            seen = v.answer if v is not None and v.answer is not None and not _is_error(v) else None
            out.append(
                RewardOutcome(
                    total=sum(applied) if applied else None,
                    terms=terms,
                    answer=seen if seen is not None else answers[i],
                    verdict=v,
                    pseudo_label=labels[i],
                )
            )
        return out

    def grade(self, tasks: list[Task | None], texts: list[str]) -> list[Verdict | None]:
        """The held-out grader's verdicts (None: no grader, or it could not grade)."""
        got = self._runner.run(self._checks(tasks, texts, grader=True))
        return [None if _is_error(v) else v for v in got]

    async def _checks(
        self, tasks: list[Task | None], texts: list[str], *, grader: bool = False
    ) -> list[Verdict | None]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.settings.concurrency)
        sem = self._sem
        use_grader = grader or self.settings.kind == "grader"

        async def one(task: Task | None, text: str) -> Verdict | None:
            if task is None:
                return None
            async with sem:
                check = self._grade_one if use_grader else self._verify_one
                label = "grader" if use_grader else self.settings.label()
                try:
                    return await check(task, text)
                except UserError:
                    raise
                except Exception as exc:  # this completion only: reward 0, said why
                    return _error_verdict(label, exc)

        return list(await asyncio.gather(*(one(t, x) for t, x in zip(tasks, texts, strict=True))))

    async def _grade_one(self, task: Task, text: str) -> Verdict | None:
        s = self.settings
        g = grader_for(task, name=s.grader, sandbox=s.sandbox)
        return None if g is None else await run_grader(g, task, text)

    async def _verify_one(self, task: Task, text: str) -> Verdict | None:
        s = self.settings
        blind = task.blind()  # a verifier reward never holds the answer key
        options = s.verifier_options if s.verifier != AUTO else None
        verifier = make_verifier(s.verifier, blind, options=options, sandbox=s.sandbox)
        if verifier is None:
            return None
        if verifier.oracle:  # check_reward refused it; a registry change must not slip by
            raise UserError(f"verifier {verifier.name!r} reads the answer key: not a reward")
        ctx = _RewardContext(self, blind, self._memo.setdefault(blind.id, {}))
        v = await run_verifier(verifier, blind, text, ctx)
        return v

    def _majority(
        self, tasks: list[Task | None], answers: list[str | None]
    ) -> tuple[list[Verdict | None], list[str | None]]:
        """TTRL: per task in the batch, the most common vote key is the pseudo-label."""
        t0 = time.perf_counter()
        keys = [
            vote_key(t, a) if t is not None else None for t, a in zip(tasks, answers, strict=True)
        ]
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(tasks):
            if task is not None:
                groups.setdefault(task.id, []).append(i)
        verdicts: list[Verdict | None] = [None] * len(tasks)
        labels: list[str | None] = [None] * len(tasks)
        for members in groups.values():
            winner, tally = vote_keys([keys[i] for i in members])
            votes = int(tally.get(winner, 0)) if winner is not None else 0
            for i in members:
                agree = winner is not None and keys[i] == winner
                if winner is None:
                    feedback = f"no answer in any of the {len(members)} samples"
                elif keys[i] is None:
                    feedback = f"no answer; the majority answer is {winner}"
                else:
                    feedback = (
                        f"{'agrees with' if agree else 'differs from'} the majority answer "
                        f"{winner} ({votes} of {len(members)} samples)"
                    )
                labels[i] = winner
                verdicts[i] = Verdict(
                    passed=agree,
                    score=1.0 if agree else 0.0,
                    answer=answers[i],
                    feedback=feedback,
                    verifier="majority",
                    version=VERSION,
                    latency_s=time.perf_counter() - t0,
                    details={"pseudo_label": winner, "tally": tally, "samples": len(members)},
                )
        return verdicts, labels


def _length(
    i: int,
    finish_reasons: Sequence[str | None] | None,
    completion_tokens: Sequence[int | None] | None,
    cap: int | None,
) -> float | None:
    """-1.0 when completion ``i`` hit the token cap, 0.0 when it did not, None: unknown."""
    if finish_reasons is not None and i < len(finish_reasons) and finish_reasons[i] is not None:
        return -1.0 if finish_reasons[i] == "length" else 0.0
    if completion_tokens is not None and cap is not None and i < len(completion_tokens):
        n = completion_tokens[i]
        if n is not None:
            return -1.0 if n >= cap else 0.0
    return None


def _modelless() -> list[str]:
    return [n for n in reward_verifiers() if n not in MODEL_VERIFIERS]


# -- a series' rewards ----------------------------------------------------------------------------


class Rewards:
    """A series' rewards (``--reward``), built once: ``score`` for the trainer, ``grade`` for
    the record, ``trl_funcs`` for ``GRPOTrainer``, ``last`` for the recorder.

    ``tasks`` are the keyed train tasks. Only ``reward=grader`` (and ``grade``, the record)
    reads their answer keys; a verifier reward gets each task's blind view, the majority
    reward no task field but its kind.
    """

    def __init__(self, cfg: ImproveConfig, tasks: list[Task]) -> None:
        self.cfg = cfg
        self.settings = _settings_of(cfg)
        self._tasks = {t.id: t for t in tasks}
        self._scorer = _Scorer(self.settings)
        self._last: list[RewardOutcome] = []
        self._last_drafts: list[RewardOutcome] = []
        self._drafts_key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._last_key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        g = cfg.grpo
        self.improve_weight = g.improve_weight if g.episode() else 0.0
        """Weight of the ``improve`` term (two-turn episodes only)."""
        if self.settings.kind == "grader":
            s = self.settings
            if not any(grader_for(t, name=s.grader, sandbox=s.sandbox) for t in tasks):
                kinds = ", ".join(sorted({t.kind for t in tasks})) or "none"
                raise UserError(
                    f"--reward grader: no train task has a grader (kinds: {kinds}; text tasks "
                    "have none): give tasks references or tests, or use --reward majority"
                )

    @property
    def label(self) -> str:
        """The reward's name on verdict rows: ``reward:grader``, ``reward:verifier:NAME``,
        ``reward:majority``."""
        return self.settings.label()

    def _task(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise ValueError(f"task {task_id!r} is not a train task of this series") from None

    def score(
        self,
        task_ids: list[str],
        completions: list[str],
        finish_reasons: Sequence[str | None] | None = None,
        completion_tokens: Sequence[int | None] | None = None,
    ) -> list[RewardOutcome]:
        """The reward of each completion (``completions[i]`` answers ``task_ids[i]``; TRL's
        order: a task's group of completions is consecutive). ``finish_reasons`` ("length":
        clipped) or ``completion_tokens`` (>= ``max_completion_tokens``: clipped) feed the
        length term."""
        tasks: list[Task | None] = [self._task(t) for t in task_ids]
        out = self._scorer.score(tasks, list(completions), finish_reasons, completion_tokens)
        with self._lock:
            self._last = out
            self._last_key = (tuple(task_ids), tuple(completions))
        return out

    def score_episode(
        self,
        task_ids: list[str],
        drafts: list[str],
        revisions: list[str],
        draft_tokens: Sequence[int | None] | None = None,
        revision_tokens: Sequence[int | None] | None = None,
    ) -> list[RewardOutcome]:
        """The reward of each two-turn episode: the revision's (every term, as ``score``
        gives it), plus ``improve_weight`` x the ``improve`` term, the revision's correctness
        minus the draft's (SCoRe's progress bonus: +1 fixed, -1 broken, 0 kept; under the
        majority reward both are scored against the revisions' pseudo-label). The drafts' own
        outcomes are kept (``last_drafts``)."""
        tasks: list[Task | None] = [self._task(t) for t in task_ids]
        first = self._scorer.score(tasks, list(drafts), None, draft_tokens)
        second = self._scorer.score(tasks, list(revisions), None, revision_tokens)
        out = []
        for task, d, r in zip(tasks, first, second, strict=True):
            if self.improve_weight > 0:
                c1, c2 = d.terms.get("correct"), r.terms.get("correct")
                if self.settings.kind == "majority" and task is not None:
                    # one pseudo-label per task, the revisions' vote: the draft is scored
                    # against it too, not against a vote of its own
                    key = vote_key(task, d.answer)
                    c1 = float(key is not None and key == r.pseudo_label)
                gain = None if c1 is None or c2 is None else c2 - c1
                total = r.total
                if gain is not None:
                    total = (total or 0.0) + self.improve_weight * gain
                r = r.model_copy(update={"terms": {**r.terms, "improve": gain}, "total": total})
            out.append(r)
        with self._lock:
            self._last = out
            self._last_drafts = first
            self._drafts_key = (tuple(task_ids), tuple(drafts))
            self._last_key = (tuple(task_ids), tuple(revisions))
        return out

    def grade(self, task_ids: list[str], completions: list[str]) -> list[Verdict | None]:
        """The held-out grader's verdict of each completion, for the record (None: its task
        has no grader, or grading it failed). Under ``reward=grader`` the verdicts of the last
        ``score`` (or the drafts of the last ``score_episode``) of the same batch are reused,
        not graded twice."""
        key = (tuple(task_ids), tuple(completions))
        with self._lock:
            last = list(self._last) if self._last_key == key else None
            if last is None and self._drafts_key == key:
                last = list(self._last_drafts)
        if last is not None and self.settings.kind == "grader":
            return [None if _is_error(o.verdict) else o.verdict for o in last]
        return self._scorer.grade([self._task(t) for t in task_ids], list(completions))

    def weights(self) -> list[float]:
        """The weight of each of ``trl_funcs()`` (TRL's ``reward_weights``)."""
        s = self.settings
        out = [1.0]
        if s.format_weight > 0:
            out.append(s.format_weight)
        if s.length_weight > 0:
            out.append(s.length_weight)
        if self.improve_weight > 0:
            out.append(self.improve_weight)
        return out

    def term_names(self) -> list[str]:
        s = self.settings
        return (
            ["correct"]
            + ["format"] * (s.format_weight > 0)
            + ["length"] * (s.length_weight > 0)
            + ["improve"] * (self.improve_weight > 0)
        )

    def trl_funcs(self) -> list[TrlReward]:
        """One TRL reward function per term (``__name__`` = the term), weighted by
        ``weights()``. They read the ``task_id`` column; the first one of a batch scores it
        (``score``) and the others reuse that."""
        cap = self.settings.max_tokens

        def outcomes(kwargs: dict[str, Any]) -> list[RewardOutcome]:
            ids = [str(t) for t in kwargs["task_id"]]
            if "revision" in kwargs:  # two-turn episodes: the revision is the answer
                revs = [str(x) for x in kwargs["revision"]]
                with self._lock:
                    if self._last_key == (tuple(ids), tuple(revs)):
                        return list(self._last)
                dt, rt = kwargs.get("draft_tokens"), kwargs.get("revision_tokens")
                return self.score_episode(
                    ids, [str(x) for x in kwargs["draft"]], revs,
                    dt if cap and dt is not None else None, rt if cap and rt is not None else None,
                )  # fmt: skip
            texts = [completion_text(c) for c in kwargs["completions"]]
            with self._lock:
                if self._last_key == (tuple(ids), tuple(texts)):
                    return list(self._last)
            lengths = kwargs.get("completion_ids")
            tokens = [len(c) for c in lengths] if lengths is not None and cap else None
            return self.score(ids, texts, completion_tokens=tokens)

        funcs = []
        for term in self.term_names():

            def fn(*, _term: str = term, **kwargs: Any) -> list[float | None]:
                return [o.terms.get(_term) for o in outcomes(kwargs)]

            fn.__name__ = fn.__qualname__ = term
            funcs.append(fn)
        return funcs

    def last(self) -> list[RewardOutcome]:
        """The outcomes of the most recent batch (for the recorder)."""
        with self._lock:
            return list(self._last)

    def last_drafts(self) -> list[RewardOutcome]:
        """The drafts' own outcomes of the most recent two-turn batch (for the recorder)."""
        with self._lock:
            return list(self._last_drafts)

    def close(self) -> None:
        """Stop the private event loop and close the model clients verifiers used."""
        self._scorer.close()

    def __enter__(self) -> Rewards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- datasets -------------------------------------------------------------------------------------


def grpo_dataset(tasks: list[Task], *, keyed: bool) -> datasets.Dataset:
    """``tasks`` as the dataset ``GRPOTrainer`` reads: ``prompt`` (chat messages: the first
    draft every loop sends, the eval's best-of-n included), ``task_id``, and ``task`` (the
    task as JSON: keyed, with its answer key, only when ``keyed``; else the blind view)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - TRL depends on it
        raise UserError("a GRPO dataset needs `datasets`: pip install datasets") from None
    rows: dict[str, list[Any]] = {"prompt": [], "task_id": [], "task": []}
    for task in tasks:
        blind = task.blind()
        rows["prompt"].append(draft_messages(blind))
        rows["task_id"].append(task.id)
        rows["task"].append((task if keyed else blind).answer_key())
    return datasets.Dataset.from_dict(rows)


def task_dataset(spec: str, *, limit: int | None = None, keyed: bool = True) -> datasets.Dataset:
    """The tasks of ``spec`` (any ``--tasks`` spec) as a TRL GRPO dataset (``grpo_dataset``):
    the dataset ``reward_function`` reads."""
    return grpo_dataset(load_tasks(spec, limit), keyed=keyed)


def reward_function(
    grader: str | None = None,
    *,
    verifier: str | None = None,
    kind: str | None = None,
    model: str | None = None,
    format_weight: float = 0.0,
    length_weight: float = 0.0,
    max_completion_tokens: int | None = None,
    sandbox: str = DEFAULT_BACKEND,
) -> RewardFunction:
    """A loopwright check as a TRL reward function (``GRPOTrainer(reward_funcs=[...])``).

    ``kind`` is the reward: ``grader`` (default; ``grader`` names a registered grader, None:
    the task kind's), ``verifier`` (``verifier`` names an in-loop verifier, None: the task
    kind's default; on the blind task) or ``majority`` (label-free: the completions of one
    task in a batch vote). ``model`` serves the verifiers that ask one (self, consistency,
    judge). ``format_weight`` / ``length_weight`` add those terms (the length term needs
    ``max_completion_tokens`` and reads ``completion_ids``).

    The function takes TRL's keywords (``prompts``, ``completions``: strings or chat
    messages, ``completion_ids``, ``trainer_state``, and every dataset column) and reads the
    ``task`` column (``task_dataset``'s task JSON); it returns one float per completion, None
    where the check does not apply to the task.
    """
    if kind is None:
        kind = "verifier" if verifier is not None else "grader"
    if kind not in REWARD_KINDS:
        raise unknown("reward kind", kind, list(REWARD_KINDS))
    if verifier is not None and kind != "verifier":
        raise UserError(f"verifier={verifier!r} needs kind='verifier' (not {kind!r})")
    if grader is not None and kind != "grader":
        raise UserError(f"grader={grader!r} needs kind='grader' (not {kind!r})")
    if format_weight < 0 or length_weight < 0:
        raise UserError("format_weight and length_weight must be at least 0")
    name = verifier or AUTO
    if kind == "verifier":
        check_reward(f"verifier:{name}")
    check_grader(grader)
    scorer = _Scorer(
        _Settings(
            kind=kind,
            verifier=name,
            grader=grader,
            sandbox=sandbox,
            format_weight=format_weight,
            length_weight=length_weight,
            max_tokens=max_completion_tokens,
            model=model,
        )
    )
    return RewardFunction(scorer, name=f"loopwright_{kind}")


class RewardFunction:
    """A loopwright check in TRL's reward-function contract (``reward_function`` makes it):
    called with ``prompts``, ``completions`` and every dataset column by keyword, it reads
    the ``task`` column and returns one float per completion (None: the check does not apply
    to that task). ``last`` holds the outcomes of the latest call, every term kept."""

    def __init__(self, scorer: _Scorer, *, name: str) -> None:
        self._scorer = scorer
        self.__name__ = name
        self.last: list[RewardOutcome] = []
        self._parsed: dict[str, Task] = {}

    def __call__(
        self, prompts: list[Any] | None = None, completions: list[Any] | None = None, **columns: Any
    ) -> list[float | None]:
        if "task" not in columns:
            raise UserError(
                "reward_function needs a `task` column in the dataset: build it with "
                "loopwright.loops.task_dataset(SPEC) (or grpo_dataset(tasks))"
            )
        tasks = [self._task(t) for t in columns["task"]]
        texts = [completion_text(c) for c in completions or []]
        ids = columns.get("completion_ids")
        cap = self._scorer.settings.max_tokens
        tokens = [len(c) for c in ids] if ids is not None and cap else None
        self.last = self._scorer.score(tasks, texts, completion_tokens=tokens)
        return [o.total for o in self.last]

    def _task(self, raw: Any) -> Task | None:
        if raw is None or isinstance(raw, Task):
            return raw
        text = raw if isinstance(raw, str) else json.dumps(raw)
        task = self._parsed.get(text)
        if task is None:
            try:
                task = Task.model_validate_json(text)
            except ValueError:
                raise UserError(
                    "reward_function reads a `task` column of task JSON (task_dataset's): "
                    f"cannot read {text[:80]!r}"
                ) from None
            self._parsed[text] = task
        return task

    def close(self) -> None:
        """Stop its event loop thread and close the model clients its verifier used."""
        self._scorer.close()

    def __repr__(self) -> str:
        return f"<loopwright reward {self.__name__}: {self._scorer.settings.label()}>"


__all__ = [
    "MODEL_VERIFIERS",
    "RewardFunction",
    "RewardOutcome",
    "Rewards",
    "check_reward",
    "completion_text",
    "grpo_dataset",
    "reward_function",
    "reward_verifiers",
    "task_dataset",
    "vote_key",
]
