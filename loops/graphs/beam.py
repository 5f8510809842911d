"""Step-level beam search: expand -> score -> select, one solution step per depth.

Each depth, every open partial solution gets ``expansions`` next steps (the model is asked
for one step and stopped at ``delimiter``); the children are scored (LLM value prompt, PRM
endpoint or verifier rollouts) and ``select_beams`` keeps the best: the top ``beam_width``
(``variant="beam"``), or the best child of each of ``beam_width`` independent subtrees
(``variant="dvts"``, diverse verifier tree search: same calls per depth, no shared pruning).

A child is terminal when its step has a final answer ("The answer is", ``\\boxed{}``, ``####``;
a closed code block on code tasks), when the step is empty (the model had nothing to add),
or at ``max_depth``. Terminal children are verified by the in-loop verifier; their value is
the verifier's score (the scorer's when there is no verifier). The answer is the best
terminal: verified first, then verifier score, then value. Stops when a terminal is
verified (``stop_on_verified``), when no partial is left open, at ``max_depth``, or when the
budget runs out (the best open partial is then verified and returned if nothing finished).

Nodes: a step is an ``expander`` node (parent: the partial it extends, depth: step index,
content: the whole partial so far, value: its score); value replies and rollouts hang under
the partial they rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.beam_score import (
    SCORERS,
    Partial,
    budgeted,
    has_final_answer,
    split_step,
    step_prompt,
)
from loopwright.loops.graphs.common import (
    END,
    add_candidate,
    max_tokens_for,
    messages,
    set_node,
    verify_all,
)
from loopwright.loops.graphs.common import (
    outcome as common_outcome,
)
from loopwright.loops.models.config import Sample
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

Scorer = Literal["value", "prm", "rollout"]
Variant = Literal["beam", "dvts"]


class BeamOptions(BaseModel):
    """Options of the step-level beam search loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    beam_width: int = Field(
        4, ge=1, le=32, description="Partials kept per depth (beam) or independent subtrees (dvts)."
    )
    expansions: int = Field(2, ge=1, le=16, description="Next steps sampled per open partial.")
    max_depth: int = Field(6, ge=1, le=64, description="Most steps per solution.")
    delimiter: str = Field(
        "\n",
        min_length=1,
        description="A step ends here (stop sequence); e.g. -o 'delimiter=\"\\n\\n\"'.",
    )
    scorer: Scorer = Field("value", description="How partials are rated: value, prm or rollout.")
    variant: Variant = Field("beam", description="beam (shared top-k) or dvts (k subtrees).")
    rollouts: int = Field(2, ge=1, le=16, description="Completions per partial (scorer=rollout).")
    temperature: float = Field(0.8, ge=0, le=2, description="Temperature of steps and rollouts.")
    value_temperature: float = Field(0.0, ge=0, le=2, description="Temperature of value replies.")
    max_tokens: int = Field(96, gt=0, description="Completion cap of one step.")
    code_max_tokens: int = Field(384, gt=0, description="Cap of steps and rollouts on code tasks.")
    rollout_max_tokens: int = Field(256, gt=0, description="Completion cap of one rollout.")
    value_max_tokens: int = Field(64, gt=0, description="Completion cap of a value reply.")
    stop_on_verified: bool = Field(True, description="Stop once a finished solution verifies.")
    prm_api_base: str | None = Field(None, description="PRM server URL (scorer=prm).")
    prm_model: str | None = Field(None, description="PRM model name on that server (scorer=prm).")
    prm_endpoint: Literal["pooling", "classify", "chat"] = Field(
        "pooling", description="PRM response shape (see tools.reward_model)."
    )
    prm_api_key_env: str | None = Field(None, description="Env var holding the PRM API key.")

    @model_validator(mode="after")
    def _prm_needs_endpoint(self) -> BeamOptions:
        if self.scorer == "prm" and not (self.prm_api_base and self.prm_model):
            raise ValueError(
                "scorer=prm needs prm_api_base and prm_model "
                "(e.g. -o prm_api_base=http://localhost:8000 -o prm_model=NAME)"
            )
        return self


class State(TypedDict, total=False):
    beams: list[Partial]  # open partials, to expand at ``depth``
    children: list[Partial]  # the newest depth, before selection
    terminals: list[Partial]  # finished solutions (verified when there is a verifier)
    depth: int  # the next step index
    stop_reason: str | None


def _rank(p: Partial) -> float:
    return float("-inf") if p["value"] is None else p["value"]


def select_beams(children: Sequence[Partial], beam_width: int, variant: Variant) -> list[Partial]:
    """The children that stay open. Pure: the test asserts the kept set exactly.

    ``beam``: the ``beam_width`` highest-valued non-terminal children. ``dvts``: the
    highest-valued non-terminal child of each subtree (width 1 per subtree). Unscored children
    rank last; ties keep the earlier child. The result is in the children's order.
    """
    open_ = [(i, c) for i, c in enumerate(children) if not c["terminal"]]
    ranked = sorted(open_, key=lambda ic: (-_rank(ic[1]), ic[0]))
    if variant == "beam":
        kept = ranked[:beam_width]
    else:
        seen: set[int] = set()
        kept = []
        for i, c in ranked:
            if c["tree"] not in seen:
                seen.add(c["tree"])
                kept.append((i, c))
    return [c for _, c in sorted(kept, key=lambda ic: ic[0])]


def best_terminal(terminals: Sequence[Partial]) -> Partial | None:
    """Verified first, then the verifier's score, then value; the earliest on ties."""
    if not terminals:
        return None
    order = range(len(terminals), 0, -1)  # max() keeps the first maximum; earlier wins ties
    _, chosen = max(
        zip(order, terminals, strict=True),
        key=lambda oc: (bool(oc[1]["passed"]), oc[1]["score"] or 0.0, _rank(oc[1]), oc[0]),
    )
    return chosen


# -- nodes -------------------------------------------------------------------------------------


def _child(
    ctx: LoopContext[BeamOptions], s: Sample, parent: Partial | None, tree: int, depth: int
) -> Partial:
    opts = ctx.options
    step = split_step(s.text, opts.delimiter)
    content = parent["text"] + opts.delimiter + step if parent else step
    cand = add_candidate(
        ctx,
        s,
        role="expander",
        parent_id=parent["node_id"] if parent else None,
        depth=depth,
        round_=depth,
        content=content,
    )
    terminal = (
        not step.strip() or depth + 1 >= opts.max_depth or has_final_answer(ctx.task, step, content)
    )
    return Partial(**cand, value=None, terminal=terminal, tree=tree, step=step)


@budget_guard
async def expand(state: State, runtime: Runtime[LoopContext[BeamOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    depth = state["depth"]
    parents: list[Partial | None] = (
        list(state["beams"]) if depth else [None] * opts.beam_width  # beam_width empty roots
    )

    def job(i: int, parent: Partial | None) -> Any:
        return lambda: ctx.sample(
            messages(step_prompt(ctx.task, parent["text"] if parent else "")),
            role="expander",
            round_=depth,
            n=opts.expansions,
            temperature=opts.temperature,
            max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
            seed=ctx.call_seed("expander", depth, i),
            stop=[opts.delimiter],
        )

    got, reason = await budgeted(ctx, [(opts.expansions, job(i, p)) for i, p in enumerate(parents)])
    if reason and all(g is None for g in got):
        raise BudgetExhausted(reason)
    children = [
        _child(ctx, s, parent, parent["tree"] if parent else i, depth)
        for i, (parent, samples) in enumerate(zip(parents, got, strict=True))
        for s in samples or []
    ]
    return {"children": children, "stop_reason": f"budget: {reason}" if reason else None}


@budget_guard
async def score(state: State, runtime: Runtime[LoopContext[BeamOptions]]) -> dict[str, Any]:
    """Verify terminal children; rate the rest (and terminals, without a verifier)."""
    ctx = runtime.context
    opts = ctx.options
    children = list(state["children"])
    if ctx.verifier is not None:
        done = [i for i, c in enumerate(children) if c["terminal"]]
        checked = await verify_all(ctx, [children[i] for i in done])
        for i, c in zip(done, checked, strict=True):
            children[i] = Partial(**{**children[i], **c, "value": c["score"]})
            set_node(ctx, c["node_id"], value=c["score"])
    todo = [i for i, c in enumerate(children) if not c["terminal"] or ctx.verifier is None]
    update: dict[str, Any] = {"children": children}
    if todo and not state.get("stop_reason"):
        values, reason = await SCORERS[opts.scorer](ctx, [children[i] for i in todo])
        for i, v in zip(todo, values, strict=True):
            children[i] = {**children[i], "value": v}
            set_node(ctx, children[i]["node_id"], value=v)
        if reason:
            update["stop_reason"] = f"budget: {reason}"
    return update


async def select(state: State, runtime: Runtime[LoopContext[BeamOptions]]) -> dict[str, Any]:
    opts = runtime.context.options
    children = state["children"]
    finished = [c for c in children if c["terminal"]]
    kept = select_beams(children, opts.beam_width, opts.variant)
    depth = state["depth"] + 1
    reason = state.get("stop_reason")
    if reason is None:
        if opts.stop_on_verified and any(c["passed"] for c in finished):
            reason = "verified"
        elif not kept:
            reason = "max_depth" if depth >= opts.max_depth else "completed"
    return {
        "beams": kept,
        "children": [],
        "terminals": [*state["terminals"], *finished],
        "depth": depth,
        "stop_reason": reason,
    }


async def finish(state: State, runtime: Runtime[LoopContext[BeamOptions]]) -> dict[str, Any]:
    """Stopped before anything finished (budget): verify the best open partial and offer it."""
    ctx = runtime.context
    beams = state.get("beams") or []
    if state.get("terminals") or not beams:
        return {}
    best = max(beams, key=_rank)  # the earliest on ties
    [checked] = await verify_all(ctx, [best])
    return {"terminals": [Partial(**{**best, **checked})]}


async def after_expand(state: State) -> str:
    return "score" if state.get("children") else "finish"


async def after_select(state: State) -> str:
    return "finish" if state.get("stop_reason") else "expand"


def build() -> Any:
    from langgraph.graph import START, StateGraph

    g = StateGraph(State, context_schema=LoopContext)
    g.add_node("expand", expand)
    g.add_node("score", score)
    g.add_node("select", select)
    g.add_node("finish", finish)
    g.add_edge(START, "expand")
    g.add_conditional_edges("expand", after_expand, ["score", "finish"])
    g.add_edge("score", "select")
    g.add_conditional_edges("select", after_select, ["expand", "finish"])
    g.add_edge("finish", END)
    return g.compile()


def initial_state(ctx: LoopContext[BeamOptions]) -> dict[str, Any]:
    opts = ctx.options
    if opts.scorer == "rollout" and ctx.verifier is None:
        raise UserError(
            f"beam scorer=rollout needs an in-loop verifier, and task {ctx.task.id!r} "
            f"({ctx.task.kind}) has none: use -o scorer=value or -o scorer=prm"
        )
    return {"beams": [], "children": [], "terminals": [], "depth": 0, "stop_reason": None}


def outcome(ctx: LoopContext[BeamOptions], state: dict[str, Any]) -> LoopOutcome:
    terminals: list[Partial] = state.get("terminals") or []
    chosen = best_terminal(terminals)
    reason = state.get("stop_reason") or "completed"
    return common_outcome(terminals, chosen, reason, rounds=state.get("depth", 0))


BEAM: LoopSpec[BeamOptions] = LoopSpec(
    name="beam",
    description="step-level beam search: expand steps, score partials (value, prm, rollout), "
    "keep the top-k per depth (or dvts subtrees) until verified, max depth or budget",
    options=BeamOptions,
    build=build,
    initial_state=initial_state,
    outcome=outcome,
    # 3 supersteps per depth (expand, score, select) plus finish; doubled for headroom.
    recursion_limit=lambda o: 6 * (o.max_depth + 2) + 10,
)
