"""What runs: model client, local and scripted models, tasks, loop graphs, runner, CLI.

Public names are re-exported lazily so ``loopwright --help`` does not pay for importing
litellm and LangGraph.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "budget",
    "BudgetLimits": "budget",
    "BudgetExhausted": "errors",
    "CallContext": "client",
    "ClientConfig": "client",
    "ModelCallError": "errors",
    "ModelClient": "client",
    "Sample": "client",
    "Fault": "scripted",
    "ScriptedModel": "scripted",
    "Task": "tasks",
    "load_tasks": "tasks",
    "UserError": "errors",
    "LoopContext": "context",
    "RunConfig": "runner",
    "run": "runner",
    "LOOPS": "graphs",
    "LoopSpec": "graphs",
    "get_loop": "graphs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
