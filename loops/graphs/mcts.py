"""MCTS in the style of LATS: select -> expand k -> evaluate -> reflect -> backpropagate.

The root is the question; every other node is one attempt at the whole answer: first drafts
under the root, refinements of their parent ("improve on this attempt") below that. Each
simulation

1. selects a leaf by UCT from the root (``mcts_tree.select``),
2. expands it with ``children`` attempts in one request (``n=children``),
3. verifies them; an attempt that passes the in-loop verifier ends the search ("verified"),
4. rates each attempt with the LLM value prompt (0..10, normalised), and mixes
   ``reward = value_weight * value + (1 - value_weight) * verifier score`` (the value alone
   on tasks without a verifier),
5. reflects on the best-rewarded failed terminal attempt (failed the verifier, or reached
   ``max_depth`` unchecked); the latest ``max_reflections`` lessons go into later expansion
   prompts,
6. backs the best child reward up from the expanded node to the root.

Every attempt, value judgement and reflection is a node; attempts carry ``visits`` and
``value`` (mean backed-up reward) after each simulation. The answer is the verified attempt
if any, else the highest-value attempt (more visits break ties).
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any, TypedDict

from loopwright.loops.errors import BudgetExhausted
from loopwright.loops.graphs import common
from loopwright.loops.graphs import mcts_tree as mt
from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.common import END
from loopwright.loops.graphs.mcts_tree import TreeNode
from loopwright.loops.prompts import render
from loopwright.tools.judge_parse import parse_score
from loopwright.traces.records import Role
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

PROMPTS = "mcts"
VALUE_SCALE = (0.0, 10.0)
_REFLECTION_CHARS = 500  # a rambling reflection must not crowd the expansion prompt
_BLANK_LINES = re.compile(r"\n{3,}")


class MctsOptions(BaseModel):
    """Options of the MCTS (LATS) loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    simulations: int = Field(8, ge=1, le=200, description="Select-expand-evaluate-backup rounds.")
    children: int = Field(3, ge=1, le=16, description="Attempts per expansion (one n=k request).")
    c_uct: float = Field(1.0, ge=0, le=10, description="UCT exploration constant.")
    max_depth: int = Field(4, ge=1, le=20, description="Deepest refinement chain under the root.")
    value_weight: float = Field(
        0.5, ge=0, le=1, description="Weight of the LLM value against the verifier score."
    )
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature of attempts.")
    max_tokens: int = Field(256, gt=0, description="Completion cap of attempts.")
    code_max_tokens: int = Field(384, gt=0, description="Completion cap of attempts on code tasks.")
    value_temperature: float = Field(0.0, ge=0, le=2, description="Temperature of value ratings.")
    value_max_tokens: int = Field(96, gt=0, description="Completion cap of value ratings.")
    reflect: bool = Field(True, description="Reflect on failed terminal attempts.")
    max_reflections: int = Field(
        3, ge=1, le=20, description="Latest reflections shown in expansion prompts."
    )
    reflect_max_tokens: int = Field(96, gt=0, description="Completion cap of reflections.")


class State(TypedDict, total=False):
    root_id: str
    tree: dict[str, TreeNode]
    leaf: str | None
    fresh: list[str]
    reflections: list[str]
    simulations: int
    reflect: bool  # reflect on this simulation's attempts (decided by evaluate)
    stop_reason: str | None


def _fields(ctx: LoopContext[MctsOptions], node: TreeNode) -> dict[str, str]:
    """Template fields describing ``node`` (question, attempt, status, test feedback)."""
    status = "status_failed" if node["passed"] is False else "status_unchecked"
    return {
        "question": ctx.task.prompt.rstrip(),
        "attempt": common.shown(ctx.task, node),
        "status": render(PROMPTS, status),
        "test_feedback": node["feedback"] or "not run (this task has no tests).",
    }


def _prompt(key: str, **fields: str) -> str:
    return _BLANK_LINES.sub("\n\n", render(PROMPTS, key, **fields))


def expansion_messages(
    ctx: LoopContext[MctsOptions], node: TreeNode, reflections: list[str]
) -> list[dict[str, Any]]:
    """First drafts under the root; an "improve on this attempt" prompt below it."""
    if node["parent_id"] is None:
        return common.messages(common.draft_prompt(ctx.task))
    items = "\n".join(f"- {r}" for r in reflections)
    lessons = render(PROMPTS, "lessons", items=items) if reflections else ""
    key = f"expand_{common.flavour(ctx.task)}"
    return common.messages(_prompt(key, lessons=lessons, **_fields(ctx, node)), prompts=PROMPTS)


async def plant(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    """Record the root (the question; no model call)."""
    ctx = runtime.context
    rec = ctx.add_node(
        None, role="root", parent_id=None, depth=0, round_=0, content=ctx.task.prompt
    )
    root = mt.make_node(
        common.Candidate(
            node_id=rec.node_id,
            parent_id=None,
            text=ctx.task.prompt,
            answer=None,
            passed=None,
            score=None,
            feedback=None,
            logprob=None,
            round=0,
            depth=0,
        )
    )
    return {"root_id": rec.node_id, "tree": {rec.node_id: root}}


async def select(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    opts = runtime.context.options
    leaf = mt.select(state["tree"], state["root_id"], opts.c_uct, opts.max_depth)
    return {"leaf": leaf, "stop_reason": None if leaf else "exhausted"}


@budget_guard
async def expand(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    leaf = state["tree"][state["leaf"] or ""]
    round_ = state.get("simulations", 0) + 1
    role: Role = "generator" if leaf["parent_id"] is None else "expander"
    samples = await ctx.sample(
        expansion_messages(ctx, leaf, state.get("reflections") or []),
        role=role,
        round_=round_,
        n=opts.children,
        temperature=opts.temperature,
        max_tokens=common.max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
    )
    cands = [
        common.add_candidate(
            ctx, s, role=role, parent_id=leaf["node_id"], depth=leaf["depth"] + 1, round_=round_
        )
        for s in samples
    ]
    cands = await common.verify_all(ctx, cands)
    kids = [mt.make_node(c) for c in cands]
    return {
        "tree": mt.add_children(state["tree"], leaf["node_id"], kids),
        "fresh": [k["node_id"] for k in kids],
    }


def _value_messages(ctx: LoopContext[MctsOptions], node: TreeNode) -> list[dict[str, Any]]:
    key = "value_code" if ctx.task.kind == "code" else "value"
    return common.messages(_prompt(key, **_fields(ctx, node)), prompts=PROMPTS)


async def _rate(
    ctx: LoopContext[MctsOptions], node: TreeNode, index: int, round_: int
) -> float | None:
    """The LLM value of ``node`` in 0..1 (None when the rating cannot be parsed)."""
    opts = ctx.options
    [s] = await ctx.sample(
        _value_messages(ctx, node),
        role="value",
        round_=round_,
        temperature=opts.value_temperature,
        max_tokens=opts.value_max_tokens,
        seed=ctx.call_seed("value", round_, index),
    )
    score, _why = parse_score(s.text, VALUE_SCALE)
    rated = None if score is None else score / VALUE_SCALE[1]
    ctx.add_node(
        s,
        role="value",
        parent_id=node["node_id"],
        depth=node["depth"] + 1,
        round_=round_,
        score=rated,
    )
    return rated


@budget_guard
async def evaluate(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    """Rate the fresh attempts and set their rewards (their first visit).

    Value calls are skipped once an attempt verified (the search ends) and when the value
    has no weight. A budget stop keeps the rewards of what was rated; the rest fall back to
    their verifier score, so the simulation can still be backed up.
    """
    ctx = runtime.context
    opts = ctx.options
    tree = dict(state["tree"])
    kids = [tree[i] for i in state["fresh"]]
    round_ = state.get("simulations", 0) + 1
    has_verifier = ctx.verifier is not None
    ask = not any(k["passed"] for k in kids) and (opts.value_weight > 0 or not has_verifier)
    values: list[float | None] = [None] * len(kids)
    stop: str | None = None
    if ask:
        try:
            ctx.budget.check(calls=len(kids))  # concurrent calls would all pass one-by-one
            got = await asyncio.gather(
                *(_rate(ctx, k, i, round_) for i, k in enumerate(kids)), return_exceptions=True
            )
        except BudgetExhausted as exc:
            got, stop = [], f"budget: {exc.reason}"
        for i, g in enumerate(got):
            if isinstance(g, BudgetExhausted):
                stop = f"budget: {g.reason}"
            elif isinstance(g, BaseException):
                raise g
            else:
                values[i] = g
    for k, v in zip(kids, values, strict=True):
        reward = mt.mix_reward(v, k["score"], opts.value_weight, has_verifier)
        tree[k["node_id"]] = mt.evaluated(k, reward, v)
    verified = any(k["passed"] for k in kids)
    reflect = opts.reflect and not verified and stop is None
    return {"tree": tree, "stop_reason": stop, "reflect": reflect}


def _failed_terminal(node: TreeNode, max_depth: int) -> bool:
    return node["passed"] is False or (node["passed"] is None and node["depth"] >= max_depth)


@budget_guard
async def reflect(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    """One short lesson per simulation, on its best-rewarded failed terminal attempt."""
    ctx = runtime.context
    opts = ctx.options
    kids = [state["tree"][i] for i in state["fresh"]]
    failed = [k for k in kids if _failed_terminal(k, opts.max_depth)]
    if not failed:
        return {}
    node = max(failed, key=lambda k: k["reward"] or 0.0)  # the first of equals
    round_ = state.get("simulations", 0) + 1
    key = "reflect_code" if ctx.task.kind == "code" else "reflect"
    [s] = await ctx.sample(
        common.messages(_prompt(key, **_fields(ctx, node)), prompts=PROMPTS),
        role="reflector",
        round_=round_,
        temperature=opts.temperature,
        max_tokens=opts.reflect_max_tokens,
    )
    ctx.add_node(
        s, role="reflector", parent_id=node["node_id"], depth=node["depth"] + 1, round_=round_
    )
    lesson = " ".join(s.text.split())[:_REFLECTION_CHARS]
    kept = [*(state.get("reflections") or []), lesson][-opts.max_reflections :]
    return {"reflections": kept if lesson else state.get("reflections") or []}


async def backprop(state: State, runtime: Runtime[LoopContext[MctsOptions]]) -> dict[str, Any]:
    """Back the best fresh reward up to the root; write visits and values onto the nodes."""
    ctx = runtime.context
    opts = ctx.options
    kids = [state["tree"][i] for i in state["fresh"]]
    reward = max(k["reward"] or 0.0 for k in kids)
    leaf = state["leaf"] or ""
    tree = mt.backprop(state["tree"], leaf, reward)
    for nid in [*state["fresh"], *mt.path_to_root(tree, leaf)]:
        node = tree[nid]
        common.set_node(ctx, nid, visits=node["visits"], value=mt.value(node))
    sims = state.get("simulations", 0) + 1
    stop = state.get("stop_reason")
    if any(k["passed"] for k in kids):
        stop = "verified"
    elif stop is None and sims >= opts.simulations:
        stop = "max_simulations"
    return {"tree": tree, "simulations": sims, "stop_reason": stop}


# Routers read the state only (LangGraph resolves a router's annotations when it builds the
# graph, and Runtime is imported for type checkers only); nodes put what they decided from the
# options there. Async, so LangGraph calls them on the event loop instead of a thread pool.
async def after_select(state: State) -> str:
    return END if state.get("leaf") is None else "expand"


async def after_expand(state: State) -> str:
    return END if state.get("stop_reason") else "evaluate"


async def after_evaluate(state: State) -> str:
    return "reflect" if state.get("reflect") and not state.get("stop_reason") else "backprop"


async def after_backprop(state: State) -> str:
    return END if state.get("stop_reason") else "select"


def build() -> Any:
    from langgraph.graph import START, StateGraph

    g = StateGraph(State, context_schema=LoopContext)
    g.add_node("plant", plant)
    g.add_node("select", select)
    g.add_node("expand", expand)
    g.add_node("evaluate", evaluate)
    g.add_node("reflect", reflect)
    g.add_node("backprop", backprop)
    g.add_edge(START, "plant")
    g.add_edge("plant", "select")
    g.add_conditional_edges("select", after_select, ["expand", END])
    g.add_conditional_edges("expand", after_expand, ["evaluate", END])
    g.add_conditional_edges("evaluate", after_evaluate, ["reflect", "backprop"])
    g.add_edge("reflect", "backprop")
    g.add_conditional_edges("backprop", after_backprop, ["select", END])
    return g.compile()


def initial_state(ctx: LoopContext[MctsOptions]) -> dict[str, Any]:
    return {"tree": {}, "fresh": [], "reflections": [], "simulations": 0, "stop_reason": None}


def outcome(ctx: LoopContext[MctsOptions], state: dict[str, Any]) -> LoopOutcome:
    tree: dict[str, TreeNode] = state.get("tree") or {}
    root_id = state.get("root_id") or ""
    attempts = [n for nid, n in tree.items() if nid != root_id]
    chosen = mt.final_node(tree, root_id) if tree else None
    sims = state.get("simulations") or 0
    return common.outcome(attempts, chosen, state.get("stop_reason") or "unknown", rounds=sims)


MCTS: LoopSpec[MctsOptions] = LoopSpec(
    name="mcts",
    description="LATS-style tree search: UCT select, expand k attempts, LLM value + verifier "
    "reward, reflections on failures, backpropagation",
    options=MctsOptions,
    build=build,
    initial_state=initial_state,
    outcome=outcome,
    # plant + five nodes per simulation + the select that finds the tree exhausted
    recursion_limit=lambda o: 5 * o.simulations + 20,
)
