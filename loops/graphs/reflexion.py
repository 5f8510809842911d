"""Reflexion: trials with an episodic memory of lessons.

Each trial the actor answers the task from scratch, with the lessons of earlier failed trials
in front of the task prompt. The in-loop verifier judges the attempt; on failure a reflector
sees the question, the attempt and the verifier's feedback and writes a short lesson. The
memory keeps the newest ``memory_size`` lessons. Stops when an attempt is verified, after
``max_trials`` trials, or when the budget runs out; the outcome is the best attempt. Without
a verifier there is no failure signal, so the loop stops after the first trial.

Two options follow the Feedback-Friction findings (models tend to repeat a rejected answer):
``temperature_step`` raises the actor's temperature every trial (up to ``max_temperature``),
and ``refuse_repeats`` resamples an attempt whose normalised answer was already tried, with
the tried answers listed in the prompt; each refused draft is kept as a "refused" node.

Tree: trial k's attempt (role generator, depth k, round k) is a child of trial k-1's attempt;
a lesson (role reflector) and refused drafts hang off the attempt they follow from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from loopwright.loops.graphs.base import LoopContext, LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.common import (
    END,
    Candidate,
    add_candidate,
    add_note,
    chain_outcome,
    draft_prompt,
    flavour,
    max_tokens_for,
    messages,
    normalise_answer,
    shown,
    unless_stopped,
    verify_last,
)
from loopwright.loops.prompts import render
from loopwright.loops.tasks import Task
from loopwright.loops.verify import extract_answer
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

PROMPTS = "reflexion"


class ReflexionOptions(BaseModel):
    """Options of the Reflexion loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_trials: int = Field(4, ge=1, le=20, description="Trials, the first one included.")
    memory_size: int = Field(
        3, ge=1, le=20, description="Lessons kept in memory; the oldest is dropped first."
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Actor temperature of the first trial.")
    temperature_step: float = Field(
        0.0, ge=0, le=1, description="Added to the actor temperature every trial."
    )
    max_temperature: float = Field(
        1.2, ge=0, le=2, description="Cap of the raised actor temperature."
    )
    refuse_repeats: bool = Field(
        False, description="Resample an attempt whose answer was already tried."
    )
    resample_tries: int = Field(
        2, ge=0, le=10, description="Resamples per trial when refuse_repeats is on."
    )
    max_tokens: int = Field(256, gt=0, description="Completion cap of attempts.")
    code_max_tokens: int = Field(384, gt=0, description="Completion cap of attempts on code tasks.")
    reflector_temperature: float = Field(0.3, ge=0, le=2, description="Temperature of lessons.")
    reflector_max_tokens: int = Field(96, gt=0, description="Completion cap of lessons.")

    @model_validator(mode="after")
    def _temperature_under_cap(self) -> ReflexionOptions:
        if self.temperature > self.max_temperature:
            raise ValueError("temperature must not exceed max_temperature")
        return self

    def trial_temperature(self, trial: int) -> float:
        """The actor temperature of ``trial`` (0-based)."""
        return round(min(self.temperature + trial * self.temperature_step, self.max_temperature), 6)


class Lesson(TypedDict):
    node_id: str
    text: str
    round: int


class State(TypedDict, total=False):
    attempts: list[Candidate]
    done: bool  # the latest attempt passed, was the last trial, or cannot fail (no verifier)
    memory: list[Lesson]
    tried: list[str]
    stop_reason: str | None


def _listed(task: Task, answers: list[str]) -> str:
    if task.kind == "code":
        return "\n".join(f"```python\n{a.strip()}\n```" for a in answers)
    return "\n".join(f"- {a}" for a in answers)


def actor_prompt(task: Task, memory: list[Lesson], tried: list[str]) -> str:
    """The task prompt, preceded by the lessons in memory and (when resampling) tried answers."""
    blocks = []
    if memory:
        lessons = "\n".join(f"{i}. {m['text']}" for i, m in enumerate(memory, 1))
        blocks.append(render(PROMPTS, "memory", lessons=lessons))
    if tried:
        blocks.append(render(PROMPTS, "tried", answers=_listed(task, tried)))
    task_prompt = draft_prompt(task)
    if not blocks:
        return task_prompt
    return render(PROMPTS, "with_blocks", blocks="\n\n".join(blocks), task=task_prompt)


def _key(task: Task, answer: str | None) -> str | None:
    return normalise_answer(task, answer)


@budget_guard
async def act(state: State, runtime: Runtime[LoopContext[ReflexionOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    attempts = state["attempts"]
    trial = len(attempts)
    parent = attempts[-1] if attempts else None
    tried = state["tried"]
    seen = {_key(ctx.task, a) for a in tried}
    tries = opts.resample_tries if opts.refuse_repeats else 0
    for r in range(tries + 1):
        [s] = await ctx.sample(
            messages(actor_prompt(ctx.task, state["memory"], tried if r else [])),
            role="generator",
            round_=trial,
            temperature=opts.trial_temperature(trial),
            max_tokens=max_tokens_for(ctx.task, opts.max_tokens, opts.code_max_tokens),
            seed=ctx.call_seed("generator", trial, r),
        )
        # The last resample is kept even if it repeats: the trial must end with an attempt.
        key = _key(ctx.task, extract_answer(ctx.task, s.text))
        refused = r < tries and key is not None and key in seen
        cand = add_candidate(
            ctx,
            s,
            role="refused" if refused else "generator",
            parent_id=parent["node_id"] if parent else None,
            depth=trial,
            round_=trial,
        )
        if not refused:
            return {"attempts": [*attempts, cand]}
    raise AssertionError("the last resample is always accepted")


async def check(state: State, runtime: Runtime[LoopContext[ReflexionOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    attempts = await verify_last(ctx, state["attempts"])
    last = attempts[-1]
    tried = list(state["tried"])
    key = _key(ctx.task, last["answer"])
    if last["answer"] is not None and key not in {_key(ctx.task, a) for a in tried}:
        tried.append(last["answer"])
    done = (
        bool(last["passed"]) or ctx.verifier is None or last["round"] + 1 >= ctx.options.max_trials
    )
    return {"attempts": attempts, "tried": tried, "done": done}


@budget_guard
async def reflect(state: State, runtime: Runtime[LoopContext[ReflexionOptions]]) -> dict[str, Any]:
    ctx = runtime.context
    opts = ctx.options
    last = state["attempts"][-1]
    verdict = render(PROMPTS, f"verdict_{flavour(ctx.task)}", feedback=last["feedback"] or "failed")
    prompt = render(
        PROMPTS,
        "reflect_code" if ctx.task.kind == "code" else "reflect",
        question=ctx.task.prompt.rstrip(),
        attempt=shown(ctx.task, last),
        verdict=verdict,
    )
    [s] = await ctx.sample(
        messages(prompt, prompts=PROMPTS),
        role="reflector",
        round_=last["round"],
        temperature=opts.reflector_temperature,
        max_tokens=opts.reflector_max_tokens,
    )
    add_note(ctx, s, role="reflector", about=last)
    lesson = Lesson(node_id=s.node_id, text=" ".join(s.text.split()), round=last["round"])
    return {"memory": [*state["memory"], lesson][-opts.memory_size :]}


# Routers read the state only (LangGraph resolves a router's annotations when it builds the
# graph, and Runtime is imported for type checkers only); nodes put what they decided from the
# options there. Async, so LangGraph calls them on the event loop instead of a thread pool.
after_act = unless_stopped("verify", needs="attempts")
after_reflect = unless_stopped("act")


async def after_verify(state: State) -> str:
    return END if state["done"] else "reflect"


def build() -> Any:
    from langgraph.graph import START, StateGraph

    g = StateGraph(State, context_schema=LoopContext)
    g.add_node("act", act)
    g.add_node("verify", check)
    g.add_node("reflect", reflect)
    g.add_edge(START, "act")
    g.add_conditional_edges("act", after_act, ["verify", END])
    g.add_conditional_edges("verify", after_verify, ["reflect", END])
    g.add_conditional_edges("reflect", after_reflect, ["act", END])
    return g.compile()


def reflexion_outcome(ctx: LoopContext[ReflexionOptions], state: dict[str, Any]) -> LoopOutcome:
    return chain_outcome(
        state.get("attempts") or [],
        state.get("stop_reason"),
        last_round=ctx.options.max_trials - 1,  # trial k is round k
        at_last_round="max_trials",
    )


def initial_state(ctx: LoopContext[ReflexionOptions]) -> dict[str, Any]:
    return {"attempts": [], "done": False, "memory": [], "tried": [], "stop_reason": None}


REFLEXION: LoopSpec[ReflexionOptions] = LoopSpec(
    name="reflexion",
    description="trials with an episodic memory: on failure a reflector writes a lesson the "
    "next trial sees; until verified, max trials or budget",
    options=ReflexionOptions,
    build=build,
    initial_state=initial_state,
    outcome=reflexion_outcome,
    recursion_limit=lambda o: 3 * o.max_trials + 10,
)
