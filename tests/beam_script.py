"""The scripted beam-search model and helpers shared by the beam test modules.

The scripted model answers by the kind of call (step, value, rollout: the call's role).
A step reply is chosen by the *last step* of the partial it extends, so replies do not depend
on the order concurrent requests arrive in. Identical prompts (the empty roots of depth 0)
get successive replies; one request of n samples always gets n consecutive ones.

Use from a test module: ``from beam_script import Script, run_beam, ...``; what every loop
test uses is in loop_testkit.py.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from loop_testkit import LoopRunner, last_user
from loopwright.loops.models.base import ModelCall

run_beam = LoopRunner("beam")

STEPS = re.compile(r"The solution so far:\n(.*?)\n\nWrite only the next step", re.S)
_VALUED = re.compile(r"Solution so far:\n(.*?)\n\nJudge whether", re.S)
_ROLLED = re.compile(r"The start of a solution:\n(.*?)\n\n(?:Continue|Finish)", re.S)


KINDS = {"expander": "step", "value": "value", "rollout": "rollout"}


def kind_of(call: ModelCall) -> str:
    """What a call asks for (step, value or rollout), by its role."""
    return KINDS[str(call.params.role)]


class Script:
    """Replies by kind of call, keyed on the last step of the partial in the prompt.

    ``steps[last_step]`` lists the replies for the next step after it ("" = the first step),
    handed out in order; ``values[last_step]`` is the judge's 1..10 score of a partial ending
    there; ``rollouts[last_step]`` lists rollout replies.
    """

    def __init__(
        self,
        steps: dict[str, list[str]],
        values: dict[str, int] | None = None,
        rollouts: dict[str, list[str]] | None = None,
    ) -> None:
        self.steps = {k: list(v) for k, v in steps.items()}
        self.values = values or {}
        self.rollouts = {k: list(v) for k, v in (rollouts or {}).items()}
        self.kinds: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, call: ModelCall) -> str:
        kind, user = kind_of(call), last_user(call.messages)
        with self._lock:
            self.kinds.append(kind)
            if kind == "value":
                return f"Score: {self.values[_last(_VALUED, user)]}"
            if kind == "rollout":
                return self.rollouts[_last(_ROLLED, user)].pop(0)
            m = STEPS.search(user)
            return self.steps[m.group(1).split("\n")[-1] if m else ""].pop(0)


def _last(pattern: re.Pattern[str], user: str) -> str:
    m = pattern.search(user)
    assert m, user
    return [ln for ln in m.group(1).split("\n") if ln][-1]


def by_content(nodes: list[dict[str, Any]], role: str = "expander") -> dict[str, dict[str, Any]]:
    found = [n for n in nodes if n["role"] == role]
    out = {n["content"]: n for n in found}
    assert len(out) == len(found), "contents must be unique in these scripts"
    return out


def v(score: int) -> float:
    return (score - 1) / 9
