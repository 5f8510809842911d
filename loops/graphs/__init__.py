"""Loop graphs by name.

Built-in loops are imported on first use (``get_loop``), so a loop's module loads only when
it runs. Users add their own graphs with ``register(spec)``; they then run from the runner
and the CLI like the built-in ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from loopwright.loops.errors import unknown
from loopwright.loops.graphs.base import LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.self_refine import SELF_REFINE, SelfRefineOptions

_BUILTIN: dict[str, tuple[str, str]] = {
    "self-refine": ("self_refine", "SELF_REFINE"),
    "critic": ("critic", "CRITIC"),
    "reflexion": ("reflexion", "REFLEXION"),
    "best-of-n": ("best_of_n", "BEST_OF_N"),
    "beam": ("beam", "BEAM"),
    "mcts": ("mcts", "MCTS"),
}
"""Loop name -> (module under loopwright.loops.graphs, LoopSpec attribute)."""

_REGISTERED: dict[str, LoopSpec[Any]] = {}


def register(spec: LoopSpec[Any]) -> LoopSpec[Any]:
    """Make ``spec`` runnable by name (``loopwright run NAME`` / ``RunConfig(loop=NAME)``)."""
    if spec.name in _BUILTIN:
        raise ValueError(f"{spec.name!r} is a built-in loop; choose another name")
    _REGISTERED[spec.name] = spec
    return spec


def loop_names() -> list[str]:
    return [*_BUILTIN, *_REGISTERED]


def get_loop(name: str) -> LoopSpec[Any]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _BUILTIN:
        raise unknown("loop", name, loop_names())
    module, attr = _BUILTIN[name]
    spec: LoopSpec[Any] = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    return spec


def all_loops() -> dict[str, LoopSpec[Any]]:
    """Every loop, built-in and registered, by name."""
    return {name: get_loop(name) for name in loop_names()}


def __getattr__(name: str) -> Any:
    if name == "LOOPS":  # kept for callers that want the dict
        return all_loops()
    raise AttributeError(name)


__all__ = [
    "SELF_REFINE",
    "LoopOutcome",
    "LoopSpec",
    "SelfRefineOptions",
    "all_loops",
    "budget_guard",
    "get_loop",
    "loop_names",
    "register",
]
