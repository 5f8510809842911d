"""Best-of-n: draw N samples in one request, then pick one.

Sampling is ONE ``ctx.sample(n=N)`` request (the model client fans out by itself when the
provider cannot take ``n>1``). Every sample is a ``generator`` node (no parent, depth 0, round =
the request it came from). When the loop has a verifier every sample is verified, whatever the
selector, so each node carries a pass/fail label for harvesting. A selection that ignores
verdicts (``uses_verdicts``: majority, logprob, judge, reward, or a vote weighted by anything but
the verifier, without rejection) gets no verifier under ``--verifier auto``, so it pays for no
verifier calls; name one (``--verifier self``, ``--verifier visible-tests``, ...) to label the
samples anyway.

Selectors (``best_of_n_select``): ``verifier`` (first passing sample; plain majority when the
task has no verifier), ``majority`` and ``weighted`` vote over normalised answers, ``logprob``
(highest mean token logprob), ``judge`` (an LLM judge scores each sample pointwise) and
``reward`` (a reward model over HTTP). Judge and reward scores go to the node's ``value`` and
to an ``in_loop`` verdict row named ``llm-judge`` / ``reward-model``; the node's ``score``
stays the verifier's.

Rejection mode draws ``batch_size`` samples per request and stops at the first verified
sample (``stop_reason`` "verified"), or after ``n`` samples, which the selector then decides.

Every finished selection adds one ``vote`` node (no parent) whose content is a JSON record:
requested and used selector, why a fallback happened, the plain and weighted tallies, the
number of samples and requests. ``stop_reason`` is "selected: <used selector>", "verified"
(rejection mode) or "budget: ..." (the best of what was drawn). A call budget smaller than
``n`` draws what fits.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.best_of_n_select import Selector, WeightBy, select
from loopwright.loops.graphs.common import (
    END,
    Candidate,
    add_candidate,
    draft_prompt,
    max_tokens_for,
    messages,
    outcome,
    set_node,
    verify_all,
)
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.config import CallContext, check_model
from loopwright.loops.verify import Verdict, verdict_record
from loopwright.tools.judge import Judge
from loopwright.tools.reward_model import RewardEndpoint, RewardModel
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from langgraph.runtime import Runtime


class BestOfNOptions(BaseModel):
    """Options of the best-of-n loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(8, ge=1, le=256, description="Samples to draw.")
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(256, gt=0, description="Completion cap per sample.")
    code_max_tokens: int = Field(384, gt=0, description="Completion cap per sample on code tasks.")
    selector: Selector = Field(
        "verifier", description="How to pick: verifier (majority without one), majority, "
        "weighted, logprob, judge or reward."
    )  # fmt: skip
    weight_by: WeightBy = Field("logprob", description="Vote weights of the weighted selector.")
    rejection: bool = Field(False, description="Sample in batches; stop at the first verified.")
    batch_size: int = Field(1, ge=1, le=256, description="Samples per request in rejection mode.")
    judge_model: str | None = Field(None, description="Judge model; default the sampled model.")
    judge_api_base: str | None = Field(None, description="Endpoint of judge_model.")
    judge_k: int = Field(1, ge=1, le=16, description="Judge samples per scored answer.")
    judge_max_tokens: int = Field(256, gt=0, description="Completion cap of judge replies.")
    reward_api_base: str | None = Field(None, description="Reward model server (OpenAI-style).")
    reward_model: str | None = Field(None, description="Reward model name on that server.")
    reward_api_key_env: str | None = Field(None, description="Env var holding its API key.")
    reward_endpoint: RewardEndpoint = Field("pooling", description="pooling, classify or chat.")

    @property
    def scorer(self) -> Literal["judge", "reward"] | None:
        """The external scorer the selection needs, if any."""
        used = self.weight_by if self.selector == "weighted" else self.selector
        if used == "judge":
            return "judge"
        return "reward" if used == "reward" else None

    def reward(self) -> RewardModel:
        """The reward model client; a bad URL or a missing key is a UserError."""
        if not self.reward_api_base or not self.reward_model:
            raise UserError(
                "best-of-n scoring by reward needs -o reward_api_base=URL and "
                "-o reward_model=NAME (an OpenAI-compatible reward model server)"
            )
        return RewardModel(
            self.reward_api_base,
            self.reward_model,
            self.reward_api_key_env,
            endpoint=self.reward_endpoint,
        )

    @model_validator(mode="after")
    def _scorer_reachable(self) -> BestOfNOptions:
        # Fail before any sampling: a missing key or server would otherwise surface per task.
        if self.scorer == "reward":
            self.reward()
        elif self.scorer == "judge" and self.judge_model is not None:
            check_model(self.judge_model, self.judge_api_base)
        return self


class State(TypedDict, total=False):
    cands: list[Candidate]
    checked: int
    next: str  # the step after check, decided there
    requests: int
    signals: dict[str, float | None]
    chosen_id: str | None
    stop_reason: str | None


def _rejecting(ctx: LoopContext[BestOfNOptions]) -> bool:
    """Rejection mode needs a verifier to stop on; without one all n come in one request."""
    return ctx.options.rejection and ctx.verifier is not None


def calls_left(budget: Budget | None) -> int | None:
    """Samples the tightest call limit (task or run) still allows; None when unlimited."""
    return None if budget is None else budget.calls_left()


def _fit(budget: Budget, want: int, per: int = 1) -> tuple[int, str | None]:
    """How many of ``want`` items (``per`` calls each) fit the call budget, and the reason when
    not all do. Zero fitting items is left to the client's own budget check to report."""
    left = calls_left(budget)
    if left is None or left >= want * per or left < per:
        return want, None
    fits = left // per
    return fits, f"budget: {budget.exhausted_reason(calls=(fits + 1) * per)}"


@budget_guard
async def sample(state: State, runtime: Runtime[LoopContext[BestOfNOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    drawn, round_ = len(state["cands"]), state["requests"]
    want = min(opts.batch_size, opts.n - drawn) if _rejecting(ctx) else opts.n
    k, short = _fit(ctx.budget, want)
    samples = await ctx.sample(
        messages(draft_prompt(ctx.task)),
        role="generator",
        round_=round_,
        n=k,
        temperature=opts.temperature,
        max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    new = [
        add_candidate(ctx, s, role="generator", parent_id=None, depth=0, round_=round_)
        for s in samples
    ]
    update: dict[str, Any] = {"cands": [*state["cands"], *new], "requests": round_ + 1}
    if short:
        update["stop_reason"] = short
    return update


async def check(state: State, runtime: Runtime[LoopContext[BestOfNOptions]]) -> dict[str, Any]:
    """Verify the samples not verified yet (all of them, whatever the selector)."""
    ctx = runtime.context
    cands, done = list(state["cands"]), state["checked"]
    if ctx.verifier is not None and done < len(cands):
        cands[done:] = await verify_all(ctx, cands[done:])
    step = _after_check(ctx, cands, stopped=bool(state.get("stop_reason")))
    return {"cands": cands, "checked": len(cands), "next": step}


def _after_check(ctx: LoopContext[BestOfNOptions], cands: list[Candidate], stopped: bool) -> str:
    """Sample again (rejection mode), score the samples, or choose one."""
    if stopped:  # the budget is spent: choose from what was drawn
        return "choose"
    if _rejecting(ctx):
        if any(c["passed"] for c in cands):
            return "choose"
        if len(cands) < ctx.options.n:
            return "sample"
    # No scorer: skip the score step (a LangGraph superstep costs ~1 ms of CPU per task).
    return "choose" if ctx.options.scorer is None else "score"


async def _score_each(
    ctx: LoopContext[BestOfNOptions],
    cands: Sequence[Candidate],
    per: int,
    score: Callable[[Candidate], Awaitable[tuple[float | None, Verdict]]],
) -> dict[str, Any]:
    """Score candidates concurrently, within the call budget; keep what finished."""
    fits, short = _fit(ctx.budget, len(cands), per)
    results = await asyncio.gather(*(score(c) for c in cands[:fits]), return_exceptions=True)
    signals: dict[str, float | None] = {}
    for c, r in zip(cands, results, strict=False):
        if isinstance(r, BudgetExhausted):
            short = short or f"budget: {r.reason}"
            continue
        if isinstance(r, BaseException):
            raise r
        value, verdict = r
        signals[c["node_id"]] = value
        set_node(ctx, c["node_id"], value=value)
        ctx.record_verdict(
            verdict_record(
                verdict,
                run_id=ctx.run_id,
                task_id=ctx.task.id,
                node_id=c["node_id"],
                stage="in_loop",
            )
        )
    update: dict[str, Any] = {"signals": signals}
    if short:
        update["stop_reason"] = short
    return update


async def _judge_all(
    ctx: LoopContext[BestOfNOptions], cands: Sequence[Candidate]
) -> dict[str, Any]:
    opts = ctx.options
    client = ctx.client_for("judge")
    if opts.judge_model is not None:  # same retries, timeouts and cache; its own endpoint
        client = ctx.client_of(opts.judge_model, opts.judge_api_base)
    judge = Judge(
        client, k=opts.judge_k, max_tokens=opts.judge_max_tokens, seed=ctx.call_seed("judge", 0)
    )
    where = CallContext(
        run_id=ctx.run_id, task_id=ctx.task.id, loop=ctx.loop, round=0, role="judge"
    )

    async def one(c: Candidate) -> tuple[float | None, Verdict]:
        j = await judge.score(ctx.task.prompt, c["text"], budget=ctx.budget, context=where)
        return j.normalized, j.to_verdict()

    return await _score_each(ctx, cands, opts.judge_k, one)


async def _reward_all(
    ctx: LoopContext[BestOfNOptions], cands: Sequence[Candidate]
) -> dict[str, Any]:
    rm = ctx.options.reward()
    gate = asyncio.Semaphore(ctx.client.config.concurrency)

    async def one(c: Candidate) -> tuple[float | None, Verdict]:
        async with gate:
            r = await rm.score(ctx.task.prompt, c["text"], budget=ctx.budget)
        return r.score, r.to_verdict()

    return await _score_each(ctx, cands, 1, one)


@budget_guard
async def score(state: State, runtime: Runtime[LoopContext[BestOfNOptions]]) -> dict[str, Any]:
    """Judge or reward-score every sample, when the selection needs it."""
    ctx = runtime.context
    scorer = ctx.options.scorer
    if scorer is None or not state["cands"]:
        return {}
    if scorer == "judge":
        return await _judge_all(ctx, state["cands"])
    return await _reward_all(ctx, state["cands"])


async def choose(state: State, runtime: Runtime[LoopContext[BestOfNOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    cands = state["cands"]
    if not cands:
        return {"chosen_id": None}
    passing = [c for c in cands if c["passed"]]
    reason = state.get("stop_reason")
    sel = select(
        ctx.task,
        cands,
        opts.selector,
        weight_by=opts.weight_by,
        has_verifier=ctx.verifier is not None,
        signals=state.get("signals") or {},
    )
    chosen, used = sel.chosen, sel.used
    if _rejecting(ctx) and passing:  # found before the budget ran out, so "verified"
        chosen, used, reason = passing[0], "rejection", "verified"
    record = {
        "selector": opts.selector,
        "used": used,
        "note": sel.note,
        "weight_by": opts.weight_by if opts.selector == "weighted" else None,
        "winner": sel.winner,
        "votes": sel.votes,
        "weighted": sel.weighted,
        "samples": len(cands),
        "requests": state["requests"],
        "rejection": _rejecting(ctx),
    }
    ctx.add_node(
        None,
        role="vote",
        parent_id=None,
        depth=0,
        round_=0,
        content=json.dumps(record),
        answer=sel.winner,
    )
    return {
        "chosen_id": chosen["node_id"] if chosen else None,
        "stop_reason": reason or f"selected: {used}",
    }


# Routers read the state only (LangGraph resolves a router's annotations when it builds the
# graph, and Runtime is imported for type checkers only); nodes put what they decided from the
# options there. Async, so LangGraph calls them on the event loop instead of a thread pool.
async def after_check(state: State) -> str:
    return state["next"]


def build() -> Any:
    from langgraph.graph import START, StateGraph

    g = StateGraph(State, context_schema=LoopContext)
    g.add_node("sample", sample)
    g.add_node("check", check)
    g.add_node("score", score)
    g.add_node("choose", choose)
    g.add_edge(START, "sample")
    g.add_edge("sample", "check")
    g.add_conditional_edges("check", after_check, ["sample", "score", "choose"])
    g.add_edge("score", "choose")
    g.add_edge("choose", END)
    return g.compile()


def initial_state(ctx: LoopContext[BestOfNOptions]) -> dict[str, Any]:
    return {
        "cands": [],
        "checked": 0,
        "requests": 0,
        "signals": {},
        "chosen_id": None,
        "stop_reason": None,
    }


def final(ctx: LoopContext[BestOfNOptions], state: dict[str, Any]) -> LoopOutcome:
    cands: list[Candidate] = state.get("cands") or []
    chosen = next((c for c in cands if c["node_id"] == state.get("chosen_id")), None)
    return outcome(cands, chosen, state.get("stop_reason") or "no_draft", state.get("requests", 0))


def uses_verdicts(o: BestOfNOptions) -> bool:
    """Whether the selection reads in-loop verdicts: rejection stops at the first verified
    sample, the verifier selector picks a passing one, a vote weighted by the verifier counts
    its scores. The other selectors decide by answers, logprobs or judge/reward scores."""
    return (
        o.rejection
        or o.selector == "verifier"
        or (o.selector == "weighted" and o.weight_by == "verifier")
    )


def _recursion_limit(o: BestOfNOptions) -> int:
    requests = math.ceil(o.n / o.batch_size) if o.rejection else 1
    return 2 * requests + 10  # sample + check per request, then score and choose


BEST_OF_N: LoopSpec[BestOfNOptions] = LoopSpec(
    name="best-of-n",
    description="N samples in one request, picked by verifier, vote, logprob, judge or reward "
    "model; rejection mode stops at the first verified sample. Selectors that ignore verdicts "
    "get no verifier under --verifier auto: pass --verifier self (or another) to label samples",
    options=BestOfNOptions,
    build=build,
    initial_state=initial_state,
    outcome=final,
    recursion_limit=_recursion_limit,
    uses_verdicts=uses_verdicts,
)
