"""What runs: model client, models, tasks, verifiers, loop graphs, runner, CLI -- and the public
face: everything needed to write and run a loop, a verifier, a grader, a task source or a
model is one import away::

    from loopwright.loops import Context, loop, verifier

    @verifier
    def even(answer: str | None) -> bool:
        return answer is not None and answer.lstrip("-").isdigit() and int(answer) % 2 == 0

    @loop
    async def best_of_3(ctx: Context) -> Candidate | None:
        \"\"\"Three drafts; the best one under the 'answer is even' check.\"\"\"
        return ctx.best(await ctx.verify(await ctx.draft(n=3), verifier=even))

Names are resolved on first use, so importing this package stays cheap: ``loopwright --help``
does not pay for litellm or LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time ``__getattr__`` imports on first use
    from loopwright.loops.errors import BudgetExhausted as BudgetExhausted
    from loopwright.loops.errors import ModelCallError as ModelCallError
    from loopwright.loops.errors import UserError as UserError
    from loopwright.loops.execution.run_config import RunConfig as RunConfig
    from loopwright.loops.execution.run_config import RunResult as RunResult
    from loopwright.loops.execution.runner import run as run
    from loopwright.loops.graphs import get_loop as get_loop
    from loopwright.loops.graphs import loop_names as loop_names
    from loopwright.loops.graphs import register_loop as register_loop
    from loopwright.loops.graphs.base import LoopOutcome as LoopOutcome
    from loopwright.loops.graphs.base import LoopSpec as LoopSpec
    from loopwright.loops.graphs.base import run_loop as run_loop
    from loopwright.loops.graphs.context import Candidate as Candidate
    from loopwright.loops.graphs.context import LoopContext as Context  # noqa: F401
    from loopwright.loops.graphs.function import loop as loop
    from loopwright.loops.improve.record import ingest_completions as ingest_completions
    from loopwright.loops.improve.rewards import reward_function as reward_function
    from loopwright.loops.improve.rewards import task_dataset as task_dataset
    from loopwright.loops.improve.rollout_engine import PolicyEngine as PolicyEngine
    from loopwright.loops.improve.rollout_engine import make_rollout_func as make_rollout_func
    from loopwright.loops.models.base import CallParams as CallParams
    from loopwright.loops.models.base import Completion as Completion
    from loopwright.loops.models.base import Model as Model
    from loopwright.loops.models.base import ModelCall as ModelCall
    from loopwright.loops.models.budget import Budget as Budget
    from loopwright.loops.models.budget import BudgetLimits as BudgetLimits
    from loopwright.loops.models.client import ModelClient as ModelClient
    from loopwright.loops.models.config import CallContext as CallContext
    from loopwright.loops.models.config import ClientConfig as ClientConfig
    from loopwright.loops.models.config import Sample as Sample
    from loopwright.loops.models.function_model import FunctionModel as FunctionModel
    from loopwright.loops.models.scripted import Fault as Fault
    from loopwright.loops.models.scripted import ScriptedModel as ScriptedModel
    from loopwright.loops.options import NoOptions as NoOptions
    from loopwright.loops.tasks import DatasetTasks as DatasetTasks
    from loopwright.loops.tasks import FieldMap as FieldMap
    from loopwright.loops.tasks import SourceInfo as SourceInfo
    from loopwright.loops.tasks import Task as Task
    from loopwright.loops.tasks import TaskSet as TaskSet
    from loopwright.loops.tasks import load_task_set as load_task_set
    from loopwright.loops.tasks import load_tasks as load_tasks
    from loopwright.loops.tasks.sources import task_source as task_source
    from loopwright.loops.verify import Grader as Grader
    from loopwright.loops.verify import LoopVerifier as LoopVerifier
    from loopwright.loops.verify import Verdict as Verdict
    from loopwright.loops.verify import as_verifier as as_verifier
    from loopwright.loops.verify import grader as grader
    from loopwright.loops.verify import register_grader as register_grader
    from loopwright.loops.verify import register_verifier as register_verifier
    from loopwright.loops.verify import verifier as verifier

_EXPORTS: dict[str, str] = {
    # loops
    "loop": "graphs.function",
    "register_loop": "graphs",
    "get_loop": "graphs",
    "loop_names": "graphs",
    "run_loop": "graphs.base",
    "LoopSpec": "graphs.base",
    "LoopOutcome": "graphs.base",
    "Context": "graphs.context:LoopContext",
    "Candidate": "graphs.context",
    "NoOptions": "options",
    # verifiers and graders
    "verifier": "verify",
    "grader": "verify",
    "as_verifier": "verify",
    "register_verifier": "verify",
    "register_grader": "verify",
    "Verdict": "verify",
    "LoopVerifier": "verify",
    "Grader": "verify",
    # tasks
    "task_source": "tasks.sources",
    "Task": "tasks",
    "load_tasks": "tasks",
    "load_task_set": "tasks",
    "TaskSet": "tasks",
    "SourceInfo": "tasks",
    "DatasetTasks": "tasks",
    "FieldMap": "tasks",
    # training elsewhere (TRL): a loopwright check as a reward, a task set as its dataset
    "reward_function": "improve.rewards",
    "task_dataset": "improve.rewards",
    "ingest_completions": "improve.record",  # TRL's completion logs into the store
    "PolicyEngine": "improve.rollout_engine",  # GRPO rollouts from the embedded engine
    "make_rollout_func": "improve.rollout_engine",
    # models
    "Model": "models.base",
    "CallParams": "models.base",
    "Completion": "models.base",
    "ModelCall": "models.base",
    "FunctionModel": "models.function_model",
    "ScriptedModel": "models.scripted",
    "Fault": "models.scripted",
    "ModelClient": "models.client",
    "ClientConfig": "models.config",
    "CallContext": "models.config",
    "Sample": "models.config",
    "Budget": "models.budget",
    "BudgetLimits": "models.budget",
    # running
    "RunConfig": "execution.run_config",
    "RunResult": "execution.run_config",
    "run": "execution.runner",
    # errors
    "BudgetExhausted": "errors",
    "ModelCallError": "errors",
    "UserError": "errors",
}
"""Public name -> module under loopwright.loops (``module:attribute`` when named otherwise)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attr = _EXPORTS[name].partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr or name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
