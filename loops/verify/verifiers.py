"""The in-loop verifiers that ship: what a loop may see, by name.

- ``visible-tests`` (code): the tests the problem statement shows (``Task.blind()``:
  ``visible_tests``, else the docstring's examples, else the first assert). Hidden tests run
  only in the grader.
- ``self`` (any kind): the model checks its own answer (``verify.toml``), ``k`` samples;
  the score is the share that say CORRECT.
- ``consistency`` (math, text): agreement with the majority answer of ``k`` fresh samples of
  the task, drawn once per task in one request.
- ``judge`` (any kind): an LLM judge scores the answer on a rubric (no reference given).
- ``reward`` (any kind): a reward-model endpoint scores it.
- ``none``: no in-loop verifier (loops stop on their own signals).
- ``oracle`` (any kind): the grader's own check against the reference / hidden tests.
  Opt-in only, for upper-bound studies; every place that shows a run that used it says so.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Sequence
from typing import Any

from loopwright.loops.errors import ModelCallError
from loopwright.loops.models.config import CallContext, Sample
from loopwright.loops.options import NoOptions
from loopwright.loops.prompts import draft_messages, render
from loopwright.loops.tasks import Task
from loopwright.loops.tasks.answers import normalise_answer, vote_keys
from loopwright.loops.verify.base import (
    LoopVerifier,
    Verdict,
    VerifyContext,
    register_verifier,
    run_grader,
)
from loopwright.loops.verify.graders import CodeTests, extract_answer, grader_for
from loopwright.tools.judge import Judge
from loopwright.tools.reward_model import RewardEndpoint, RewardModel
from loopwright.traces.records import Role
from pydantic import BaseModel, ConfigDict, Field

_FROZEN = ConfigDict(frozen=True, extra="forbid")
VERSION = "verify-1"


@register_verifier
class Oracle(LoopVerifier[NoOptions]):
    """The grader's own check (reference answer, hidden tests): an upper bound, not a result."""

    name = "oracle"
    description = "the grader's check against the answer key (opt-in; results are upper bounds)"
    oracle = True

    def __init__(self, options: NoOptions, *, sandbox: str = "bwrap") -> None:
        super().__init__(options, sandbox=sandbox)
        self._keyed: Task | None = None

    def bind(self, task: Task) -> Oracle:
        """An oracle holding ``task`` with its answer key: loops only ever get the blind
        view."""
        bound = copy.copy(self)
        bound._keyed = task
        return bound

    def applies(self, task: Task) -> bool:
        return grader_for(task, sandbox=self.sandbox) is not None

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        keyed = self._keyed
        if keyed is None or keyed.id != task.id:
            raise RuntimeError(f"oracle verifier was not bound to task {task.id!r}")
        grader = grader_for(keyed, sandbox=self.sandbox)
        assert grader is not None  # applies() said so
        v = await run_grader(grader, keyed, response)
        return v.model_copy(
            update={
                "verifier": self.name,
                "version": f"{v.verifier}/{v.version}",
                "details": {**v.details, "oracle": True},
            }
        )


@register_verifier
class VisibleTests(LoopVerifier[NoOptions]):
    """The tests the problem statement shows; the hidden ones stay with the grader."""

    name = "visible-tests"
    description = "code: the tests the problem shows (docstring examples, visible_tests)"
    kinds = ("code",)

    def __init__(self, options: NoOptions, *, sandbox: str = "bwrap") -> None:
        super().__init__(options, sandbox=sandbox)
        self._shown: Task | None = None

    def applies(self, task: Task) -> bool:
        blind = task.blind()
        if task.metadata.get("test_style") == "io":
            return bool(blind.metadata.get("visible_io_cases"))
        return task.kind == "code" and bool(blind.visible_tests)

    def bind(self, task: Task) -> VisibleTests:
        """A verifier holding ``task`` with only its visible tests, built once, not on every
        verification."""
        bound = copy.copy(self)
        bound._shown = _shown_tests(task)
        return bound

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        shown = self._shown if self._shown is not None and self._shown.id == task.id else None
        v = await run_grader(CodeTests(self.sandbox), shown or _shown_tests(task), response)
        return v.model_copy(
            update={
                "verifier": self.name,
                "version": f"{VERSION}/{v.version}",
                "details": {**v.details, "visible": True},
            }
        )


def _shown_tests(task: Task) -> Task:
    """A code task whose only tests are the visible ones (``task`` may be blind already)."""
    blind = task.blind() if task.reference is not None or task.tests else task
    if task.metadata.get("test_style") == "io":
        cases = blind.metadata.get("visible_io_cases") or []
        return blind.model_copy(update={"metadata": {**blind.metadata, "io_cases": cases}})
    meta = {**blind.metadata, "test_style": "asserts"}
    return blind.model_copy(update={"tests": list(blind.visible_tests or []), "metadata": meta})


class SelfOptions(BaseModel):
    """Options of the self-check verifier."""

    model_config = _FROZEN

    k: int = Field(1, ge=1, le=16, description="Checks sampled per answer (one request).")
    temperature: float | None = Field(
        None, ge=0, le=2, description="Default 0 for k=1, 0.7 for k>1."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Share of CORRECT votes to pass.")
    max_tokens: int = Field(64, gt=0, description="Completion cap of a check.")


_VERDICT = re.compile(r"\b(IN)?CORRECT\b", re.IGNORECASE)


@register_verifier
class SelfCheck(LoopVerifier[SelfOptions]):
    """The model (role ``verifier``) checks the answer without any reference."""

    name = "self"
    description = "the model checks its own answer (no reference); score = share of CORRECT"
    Options = SelfOptions

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        o = self.options
        t0 = time.perf_counter()
        shown = _answer_text(task, response)
        msgs = [
            {"role": "system", "content": render("verify", "system")},
            {"role": "user", "content": render("verify", "self_check", question=task.prompt.rstrip(), answer=shown)},
        ]  # fmt: skip
        temp = o.temperature if o.temperature is not None else (0.0 if o.k == 1 else 0.7)
        try:
            samples = await ctx.sample(
                msgs, role="verifier", round_=0, n=o.k, temperature=temp, max_tokens=o.max_tokens
            )
        except ModelCallError as exc:  # an outside failure: no pass, said why
            return self._verdict(task, response, None, [], f"self-check call failed: {exc}", t0)
        votes = [_first_verdict(s.text) for s in samples]
        counted = [v for v in votes if v is not None]
        share = sum(counted) / len(counted) if counted else None
        note = samples[0].text.strip() if samples else ""
        v = self._verdict(task, response, share, votes, note, t0)
        return v.model_copy(update={"details": {**v.details, **cost_of(samples)}})

    def _verdict(
        self,
        task: Task,
        response: str,
        share: float | None,
        votes: list[bool | None],
        note: str,
        t0: float,
    ) -> Verdict:
        o = self.options
        feedback = " ".join(note.split())[:500] if note else "no usable verdict"
        return own_verdict(
            self, task, response, t0,
            passed=share is not None and share >= o.threshold,
            score=share if share is not None else 0.0,
            feedback=feedback,
            details={"votes": votes, "unparsed": sum(v is None for v in votes)},
        )  # fmt: skip


def own_verdict(
    verifier: LoopVerifier[Any],
    task: Task,
    response: str,
    t0: float,
    *,
    passed: bool,
    score: float,
    feedback: str,
    details: dict[str, Any],
) -> Verdict:
    """A verdict a verifier reached itself (not a wrapped check's): its name and version,
    the answer it judged, the time since ``t0``."""
    return Verdict(
        passed=passed,
        score=score,
        answer=extract_answer(task, response),
        feedback=feedback,
        verifier=verifier.name,
        version=VERSION,
        latency_s=time.perf_counter() - t0,
        details=details,
    )


def cost_of(samples: Sequence[Sample]) -> dict[str, float]:
    """What a verifier's own model calls cost, kept on its verdict (``details.cost_*``) so a
    report can charge each best-of-n sample its verification exactly."""
    return {
        "cost_tokens": float(sum(s.tokens for s in samples)),
        "cost_calls": float(len(samples)),
        "cost_usd": float(sum(s.cost_usd for s in samples)),
    }


def _first_verdict(text: str) -> bool | None:
    """The check's verdict: its first CORRECT / INCORRECT (the prompt asks for it first)."""
    m = _VERDICT.search(text)
    return None if m is None else m.group(1) is None


def _answer_text(task: Task, response: str) -> str:
    """What a checker is shown: the program for code, else the whole response."""
    if task.kind == "code":
        return (extract_answer(task, response) or response).strip()
    return response.strip()


class ConsistencyOptions(BaseModel):
    """Options of the consistency verifier."""

    model_config = _FROZEN

    k: int = Field(4, ge=2, le=64, description="Fresh samples of the task, drawn once per task.")
    temperature: float = Field(0.8, ge=0, le=2, description="Their sampling temperature.")
    max_tokens: int = Field(256, gt=0, description="Their completion cap.")


@register_verifier
class Consistency(LoopVerifier[ConsistencyOptions]):
    """Pass when the answer agrees with the majority of ``k`` fresh samples of the task."""

    name = "consistency"
    description = "math/text: agreement with the majority answer of k fresh samples"
    kinds = ("math", "text")
    Options = ConsistencyOptions

    async def _reference_keys(
        self, ctx: VerifyContext, task: Task
    ) -> tuple[list[str | None], dict[str, float]]:
        """The fresh samples' answer keys, and what they cost when drawn by this call (the
        first verdict of a task carries the cost; later ones reuse the samples)."""
        memo_key = f"consistency:{self.options.model_dump_json()}"
        cost: dict[str, float] = {}
        if memo_key not in ctx.memo:
            o = self.options
            samples = await ctx.sample(
                draft_messages(task), role="verifier", round_=0, n=o.k,
                temperature=o.temperature, max_tokens=o.max_tokens,
            )  # fmt: skip
            ctx.memo[memo_key] = [_key(task, s.text) for s in samples]
            cost = cost_of(samples)
        keys: list[str | None] = ctx.memo[memo_key]
        return keys, cost

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        t0 = time.perf_counter()
        error: str | None = None
        cost: dict[str, float] = {}
        try:
            keys, cost = await self._reference_keys(ctx, task)
        except ModelCallError as exc:
            keys, error = [], f"consistency samples failed: {exc}"
        mine = _key(task, response)
        winner, tally = vote_keys(keys)
        agree = sum(1 for k in keys if k is not None and k == mine) / len(keys) if keys else 0.0
        passed = mine is not None and winner is not None and mine == winner
        if error:
            feedback = error
        elif mine is None:
            feedback = "no final answer found"
        else:
            feedback = f"{agree:.0%} of {len(keys)} fresh samples agree with {mine}" + (
                "" if passed else f"; the majority answer is {winner}"
            )
        return own_verdict(
            self, task, response, t0, passed=passed, score=agree, feedback=feedback,
            details={"majority": winner, "tally": tally, "samples": len(keys), **cost},
        )  # fmt: skip


def _key(task: Task, text: str) -> str | None:
    answer = extract_answer(task, text) if task.kind == "math" else text
    return normalise_answer(task.kind, answer)


class JudgeOptions(BaseModel):
    """Options of the LLM-judge verifier (role ``judge``; see ``--role-model``)."""

    model_config = _FROZEN

    threshold: float = Field(0.7, ge=0, le=1, description="Normalised rubric score to pass.")
    rubric: str | None = Field(None, description="Rubric text; default judge.toml's.")
    k: int = Field(1, ge=1, le=16, description="Judge samples per answer.")
    max_tokens: int = Field(256, gt=0, description="Completion cap of judge replies.")


@register_verifier
class JudgeVerifier(LoopVerifier[JudgeOptions]):
    """An LLM judge scores the answer on a rubric; no reference answer is shown to it."""

    name = "judge"
    description = "an LLM judge scores the answer on a rubric (no reference)"
    Options = JudgeOptions

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        o = self.options
        judge = Judge(
            ctx.client_for("judge"), rubric=o.rubric, k=o.k, max_tokens=o.max_tokens,
            seed=ctx.call_seed("judge", 0),
        )  # fmt: skip
        where = _call_context(ctx, "judge")
        j = await judge.score(
            task.prompt, _answer_text(task, response), budget=_budget(ctx), context=where
        )
        v = j.to_verdict(o.threshold)
        return v.model_copy(
            update={"verifier": self.name, "version": f"{VERSION}/{v.version}",
                    "answer": extract_answer(task, response)}
        )  # fmt: skip


class RewardOptions(BaseModel):
    """Options of the reward-model verifier."""

    model_config = _FROZEN

    api_base: str = Field(description="Reward model server (OpenAI-compatible).")
    model: str = Field(description="Reward model name on that server.")
    api_key_env: str | None = Field(None, description="Env var holding its API key.")
    endpoint: RewardEndpoint = Field("pooling", description="pooling, classify or chat.")
    threshold: float = Field(0.0, description="Reward to pass, on the model's own scale.")


@register_verifier
class RewardVerifier(LoopVerifier[RewardOptions]):
    """A reward-model endpoint scores the answer."""

    name = "reward"
    description = (
        "a reward-model endpoint scores the answer (--verifier-option api_base=URL model=NAME)"
    )
    Options = RewardOptions

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        o = self.options
        rm = RewardModel(o.api_base, o.model, o.api_key_env, endpoint=o.endpoint)
        r = await rm.score(task.prompt, _answer_text(task, response), budget=_budget(ctx))
        v = r.to_verdict(o.threshold)
        return v.model_copy(update={"verifier": self.name, "version": f"{VERSION}/{v.version}"})


@register_verifier
class NoVerifier(LoopVerifier[NoOptions]):
    """No in-loop verifier: loops stop on their own signals (critic, max rounds)."""

    name = "none"
    description = "no in-loop verifier"
    Options = NoOptions

    def applies(self, task: Task) -> bool:
        return False

    async def verify(self, ctx: VerifyContext, task: Task, response: str) -> Verdict:
        raise RuntimeError("the 'none' verifier never verifies")


def _budget(ctx: VerifyContext) -> Any:
    return getattr(ctx, "budget", None)


def _call_context(ctx: VerifyContext, role: Role) -> CallContext:
    return CallContext(
        run_id=getattr(ctx, "run_id", ""),
        task_id=ctx.task.id,
        loop=getattr(ctx, "loop", ""),
        round=0,
        role=role,
    )
