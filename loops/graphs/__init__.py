"""Loop graphs by name.

Built-in loops are imported on first use (``get_loop``), so a loop's module loads only when
it runs. Users add their own with ``@loop`` (``loopwright.loops``), which calls
``register_loop(spec)``; they then run from the runner and the CLI like the built-in ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.graphs.base import LoopOutcome, LoopSpec, budget_guard, run_loop

_BUILTIN: dict[str, tuple[str, str]] = {
    "self-refine": ("self_refine", "SELF_REFINE"),
    "two-turn": ("two_turn", "TWO_TURN"),
    "critic": ("critic", "CRITIC"),
    "reflexion": ("reflexion", "REFLEXION"),
    "best-of-n": ("best_of_n", "BEST_OF_N"),
    "beam": ("beam", "BEAM"),
    "mcts": ("mcts", "MCTS"),
}
"""Loop name -> (module under loopwright.loops.graphs, LoopSpec attribute)."""

_REGISTERED: dict[str, LoopSpec[Any]] = {}


def register_loop(spec: LoopSpec[Any]) -> LoopSpec[Any]:
    """Make ``spec`` runnable by name (``loopwright run NAME`` / ``RunConfig(loop=NAME)``);
    registering a name again replaces the earlier loop."""
    if spec.name in _BUILTIN:
        raise UserError(f"{spec.name!r} is a built-in loop; choose another name")
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


__all__ = [
    "LoopOutcome",
    "LoopSpec",
    "all_loops",
    "budget_guard",
    "get_loop",
    "loop_names",
    "register_loop",
    "run_loop",
]
