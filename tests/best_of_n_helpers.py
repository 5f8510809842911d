"""Helpers shared by the best-of-n test modules: a scripted model that answers generation
and judge prompts, and readers of the vote record. What every loop test uses is in
loop_testkit.py."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from loop_testkit import LoopRunner, Rows, finals, last_user
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import Fault

run_loop = LoopRunner("best-of-n")

# Mode 7 (four ways of writing it), then 5 twice, 12 once, one reply without an answer.
MIXED = [
    "2 + 3 = 6, no. The answer is 5.",
    "The answer is 7.",
    "The answer is 7.0.",
    "I am not sure.",
    "The answer is $7$.",
    "The answer is 5.",
    "So \\boxed{7}",
    "The answer is 12.",
]


def is_judge(messages: list[dict[str, Any]]) -> bool:
    """Whether ``messages`` are the judge's prompt."""
    return "Rate the answer to the question below" in last_user(messages)


class Script:
    """Generation replies from a list (the k-th generation call gets item k); judge replies
    from ``rate(shown answer) -> reply``."""

    def __init__(
        self, replies: Sequence[str | Fault], rate: Callable[[str], str] | None = None
    ) -> None:
        self.replies = list(replies)
        self.rate = rate
        self.generated = 0
        self.judge_prompts: list[str] = []

    def __call__(self, call: ModelCall) -> str | Fault:
        if call.params.role == "judge":
            user = last_user(call.messages)
            self.judge_prompts.append(user)
            shown = user.split("[Answer]\n", 1)[1].split("\n[End of answer]", 1)[0]
            assert self.rate is not None
            return self.rate(shown)
        reply = self.replies[self.generated % len(self.replies)]
        self.generated += 1
        return reply


def rate_by_number(shown: str) -> str:
    """Rating = the last number in the judged answer (clipped to 1..10); none -> unparseable."""
    nums = re.findall(r"\d+", shown)
    if not nums:
        return "I cannot tell."
    return f"Fine. Rating: [[{min(10, max(1, int(nums[-1])))}]]"


def gens(rows: Rows) -> list[dict[str, Any]]:
    return [n for n in rows["nodes"] if n["role"] == "generator"]


def vote_record(rows: Rows) -> dict[str, Any]:
    [node] = [n for n in rows["nodes"] if n["role"] == "vote"]
    assert (node["parent_id"], node["depth"], node["round"], node["is_final"]) == (
        None,
        0,
        0,
        False,
    )
    return json.loads(node["content"])  # type: ignore[no-any-return]


def final(rows: Rows) -> dict[str, Any]:
    [node] = finals(rows)
    assert node["node_id"] == rows["tasks"][0]["final_node_id"]
    return node
