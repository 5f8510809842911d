"""Loop graphs by name. Add a loop by adding its LoopSpec to ``LOOPS``."""

from __future__ import annotations

from typing import Any

from loopwright.loops.errors import unknown
from loopwright.loops.graphs.base import LoopOutcome, LoopSpec, budget_guard
from loopwright.loops.graphs.self_refine import SELF_REFINE, SelfRefineOptions

LOOPS: dict[str, LoopSpec[Any]] = {SELF_REFINE.name: SELF_REFINE}


def get_loop(name: str) -> LoopSpec[Any]:
    if name not in LOOPS:
        raise unknown("loop", name, LOOPS)
    return LOOPS[name]


__all__ = ["LOOPS", "LoopOutcome", "LoopSpec", "SelfRefineOptions", "budget_guard", "get_loop"]
