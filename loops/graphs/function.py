"""``@loop``: a loop is a decorated async function over its context, or a decorated builder
of a LangGraph graph over the same context.

::

    from loopwright.loops import Context, loop

    @loop
    async def best_of_3(ctx: Context) -> Candidate | None:
        \"\"\"Three drafts; the best one after verification.\"\"\"
        return ctx.best(await ctx.verify(await ctx.draft(n=3)))

The function runs as a one-node LangGraph graph; what it returns -- a candidate, None (no
answer) or a whole ``LoopOutcome`` -- is the task's outcome. The name is the function's
(underscores as hyphens: ``best-of-3``) unless given, the description is its docstring's first
line, ``options=`` a pydantic model that ``-o KEY=VALUE`` fills (``ctx.options``, typed as
``Context[MyOptions]``). The loop is registered, so ``loopwright run best-of-3`` finds it.

A loop that reads better as a graph decorates its builder instead::

    @loop(graph=True)
    def generate_refine() -> StateGraph:
        g = StateGraph(State, context_schema=Context)
        ...
        return g

Its nodes are ``async def node(state, runtime: Runtime[Context[Opts]]) -> dict`` with
``ctx = runtime.context``. It starts from an empty state and answers with the best candidate
it made, unless ``initial_state=`` / ``outcome=`` say otherwise. Either way a budget that runs
out ends the loop with the best candidate so far (stop reason ``budget: ...``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict, overload

from loopwright.loops.graphs import register_loop
from loopwright.loops.graphs.base import MAX_STEPS, LoopOutcome, LoopSpec
from loopwright.loops.graphs.context import Candidate, LoopContext
from loopwright.loops.options import NoOptions
from pydantic import BaseModel

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

LoopResult = Candidate | LoopOutcome | None
"""What a loop function returns: its answer, a whole outcome, or no answer."""
LoopFunction = Callable[[LoopContext[Any]], Awaitable[LoopResult]]
GraphBuilder = Callable[[], Any]


class FunctionState(TypedDict, total=False):
    """The state of a function loop's graph: the outcome its function returned."""

    outcome: LoopOutcome


def outcome_of(ctx: LoopContext[Any], result: LoopResult) -> LoopOutcome:
    """The outcome a loop function's ``result`` stands for."""
    from loopwright.loops.graphs.common import chosen_outcome

    if isinstance(result, LoopOutcome):
        return result
    if result is None or isinstance(result, dict):
        return chosen_outcome(ctx, result)
    raise TypeError(
        f"loop {ctx.loop!r} returned {type(result).__name__}; return a candidate (from "
        "ctx.draft / ctx.refine / ctx.best ...), None or a LoopOutcome"
    )


def function_graph(name: str, fn: LoopFunction) -> Any:
    """``fn`` as a compiled one-node LangGraph graph over the loop context."""
    from langgraph.graph import START, StateGraph

    async def body(state: FunctionState, runtime: Runtime[LoopContext[Any]]) -> dict[str, Any]:
        ctx = runtime.context
        return {"outcome": outcome_of(ctx, await fn(ctx))}

    g = StateGraph(FunctionState, context_schema=LoopContext)
    g.add_node(name, body)
    g.add_edge(START, name)
    return g.compile()


def _function_outcome(ctx: LoopContext[Any], state: Mapping[str, Any]) -> LoopOutcome:
    outcome: LoopOutcome = state["outcome"]
    return outcome


def _compiled(builder: GraphBuilder) -> Callable[[], Any]:
    def build() -> Any:
        graph = builder()
        return graph.compile() if hasattr(graph, "compile") else graph

    return build


def _description(fn: Callable[..., Any], given: str | None) -> str:
    if given is not None:
        return given
    doc = inspect.getdoc(fn)
    return doc.strip().splitlines()[0] if doc else f"the loop {fn.__name__}"


@overload
def loop(fn: LoopFunction, /) -> LoopSpec[Any]: ...


@overload
def loop(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    options: type[BaseModel] = NoOptions,
    graph: bool = False,
    initial_state: Callable[[LoopContext[Any]], dict[str, Any]] | None = None,
    outcome: Callable[[LoopContext[Any], dict[str, Any]], LoopOutcome] | None = None,
    max_steps: int | Callable[[Any], int] = MAX_STEPS,
    uses_verdicts: bool | Callable[[Any], bool] = True,
    register: bool = True,
) -> Callable[[Callable[..., Any]], LoopSpec[Any]]: ...


def loop(
    fn: LoopFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    options: type[BaseModel] = NoOptions,
    graph: bool = False,
    initial_state: Callable[[LoopContext[Any]], dict[str, Any]] | None = None,
    outcome: Callable[[LoopContext[Any], dict[str, Any]], LoopOutcome] | None = None,
    max_steps: int | Callable[[Any], int] = MAX_STEPS,
    uses_verdicts: bool | Callable[[Any], bool] = True,
    register: bool = True,
) -> LoopSpec[Any] | Callable[[Callable[..., Any]], LoopSpec[Any]]:
    """Make a loop of an async function ``(ctx) -> Candidate | None | LoopOutcome``, or with
    ``graph=True`` of a function returning a LangGraph ``StateGraph`` (or a compiled graph).

    ``name`` defaults to the function's name with hyphens for underscores, ``description``
    to the first line of its docstring. ``options`` is the pydantic model of its options
    (``-o KEY=VALUE``); ``max_steps`` bounds graph steps per task (a number, or a function of
    the options); ``uses_verdicts`` says whether the loop reads in-loop verdicts (a bool or a
    function of the options: False spares ``--verifier auto`` runs the verifier's cost).
    ``initial_state`` and ``outcome`` are for graphs whose state says more than the
    candidates made. ``register=False`` returns the spec without making it runnable by name.
    """

    def make(target: Callable[..., Any]) -> LoopSpec[Any]:
        if not callable(target):
            raise TypeError(f"@loop decorates a function, not {type(target).__name__}")
        loop_name = name or target.__name__.replace("_", "-")
        if graph:
            if inspect.iscoroutinefunction(target):
                raise TypeError(
                    f"@loop(graph=True) decorates a function that returns a StateGraph; "
                    f"{target.__name__} is async (drop graph=True to make it a function loop)"
                )
            build = _compiled(target)
        else:
            if not inspect.iscoroutinefunction(target):
                raise TypeError(
                    f"@loop decorates an async function (ctx) -> candidate; {target.__name__} "
                    "is not async (use @loop(graph=True) for a graph builder)"
                )
            if outcome is not None:
                raise TypeError("a function loop's outcome is what it returns; drop outcome=")

            def build() -> Any:
                return function_graph(target.__name__, target)

        extra: dict[str, Any] = {}
        if initial_state is not None:
            extra["initial_state"] = initial_state
        if not graph:
            extra["outcome"] = _function_outcome
        elif outcome is not None:
            extra["outcome"] = outcome
        steps, uses = max_steps, uses_verdicts
        spec: LoopSpec[Any] = LoopSpec(
            name=loop_name,
            description=_description(target, description),
            options=options,
            build=build,
            recursion_limit=steps if callable(steps) else (lambda _opts: steps),
            uses_verdicts=uses if callable(uses) else (lambda _opts: uses),
            **extra,
        )
        return register_loop(spec) if register else spec

    if fn is not None:
        return make(fn)
    return make


__all__ = ["FunctionState", "LoopResult", "function_graph", "loop", "outcome_of"]
