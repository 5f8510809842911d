"""What runs: model client, local and scripted models, tasks, loop graphs, runner, CLI.

Public names are re-exported lazily so ``loopwright --help`` does not pay for importing
litellm and LangGraph.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "models.budget",
    "BudgetLimits": "models.budget",
    "BudgetExhausted": "errors",
    "CallContext": "models.client",
    "ClientConfig": "models.client",
    "ModelCallError": "errors",
    "ModelClient": "models.client",
    "Sample": "models.client",
    "Fault": "models.scripted",
    "ScriptedModel": "models.scripted",
    "Task": "tasks",
    "load_tasks": "tasks",
    "UserError": "errors",
    "LoopContext": "graphs.context",
    "RunConfig": "execution.runner",
    "run": "execution.runner",
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
