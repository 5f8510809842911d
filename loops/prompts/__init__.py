"""The loops' prompt templates: TOML files beside this module, not in code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loopwright.tools.prompts import Templates

if TYPE_CHECKING:
    from loopwright.loops.tasks import Task

DRAFT_PROMPTS = "self_refine"
"""The prompt file whose ``system`` and ``generate_{math,code,text}`` keys write first drafts."""


_LOOPS = Templates(__name__)
load = _LOOPS.load
render = _LOOPS.render


def flavour(task: Task) -> str:
    """Which prompt family fits the task: math, code or text. A code task whose prompt is a
    benchmark harness's whole instruction (``COMPLETE_PROMPT``) is sent as it is, as text."""
    from loopwright.loops.tasks.task import COMPLETE_PROMPT

    if task.kind == "code" and task.metadata.get(COMPLETE_PROMPT):
        return "text"
    return task.kind if task.kind in ("math", "code") else "text"


def messages(user: str, *, prompts: str = DRAFT_PROMPTS) -> list[dict[str, Any]]:
    """System prompt of ``prompts`` plus one user turn."""
    return [
        {"role": "system", "content": render(prompts, "system")},
        {"role": "user", "content": user},
    ]


def draft_prompt(task: Task) -> str:
    """The first-draft prompt for ``task`` (by kind)."""
    return render(DRAFT_PROMPTS, f"generate_{flavour(task)}", question=task.prompt.rstrip())


def draft_messages(task: Task) -> list[dict[str, Any]]:
    """The messages of a first draft of ``task``: what every loop's generator sends."""
    return messages(draft_prompt(task))


REVISION_PROMPTS = "two_turn"
"""The prompt file of the two-turn episode's second user turn."""


def revision_turn(task: Task, feedback: str | None = None) -> str:
    """The user turn that asks for a revision of the draft above it in the conversation
    (by kind); ``feedback``: an in-loop verifier's words on the draft, put in front."""
    ask = render(REVISION_PROMPTS, f"revise_{flavour(task)}")
    if feedback:
        return f"{render(REVISION_PROMPTS, 'check', feedback=feedback.strip())}\n\n{ask}"
    return ask


def revision_messages(task: Task, draft: str, feedback: str | None = None) -> list[dict[str, Any]]:
    """The two-turn episode's second request: the first draft's messages, the draft as the
    assistant's turn, then :func:`revision_turn`."""
    return [
        *draft_messages(task),
        {"role": "assistant", "content": draft},
        {"role": "user", "content": revision_turn(task, feedback)},
    ]
