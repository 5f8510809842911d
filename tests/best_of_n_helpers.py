"""Helpers shared by the best-of-n test modules: a scripted model that answers generation
and judge prompts, task files, and a runner wrapper that returns the trace rows."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loopwright.loops.runner import RunConfig, RunResult, run
from loopwright.loops.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore

QUESTION = "Tom has 2 apples and gets 3 more. How many apples does Tom have now?"
Rows = dict[str, list[dict[str, Any]]]

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


def last_user(messages: list[dict[str, Any]]) -> str:
    return next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")


def is_judge(messages: list[dict[str, Any]]) -> bool:
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

    def __call__(self, messages: list[dict[str, Any]], index: int) -> str | Fault:
        if is_judge(messages):
            user = last_user(messages)
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


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return str(path)


def math_task(tmp_path: Path, reference: str | None = "5", tid: str = "t1") -> str:
    task: dict[str, Any] = {"id": tid, "prompt": QUESTION, "kind": "math"}
    if reference is not None:
        task["reference"] = reference
    return write_tasks(tmp_path / f"{tid}.jsonl", [task])


async def run_loop(
    tmp_path: Path, model: ScriptedModel, tasks: str, **cfg: Any
) -> tuple[RunResult, Rows]:
    cfg.setdefault("db", str(tmp_path / "t.duckdb"))
    result = await run(
        RunConfig(loop="best-of-n", tasks=tasks, model=model.register(), backoff_base_s=0.0, **cfg)
    )
    with TraceStore(cfg["db"], read_only=True) as store:
        rid = [result.run_id]
        rows = {
            table: store.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY {order}", rid)
            for table, order in (
                ("nodes", "created_at"),
                ("calls", "created_at, sample_index"),
                ("tasks", "idx"),
                ("verdicts", "created_at"),
            )
        }
    return result, rows


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
    [node] = [n for n in rows["nodes"] if n["is_final"]]
    assert node["node_id"] == rows["tasks"][0]["final_node_id"]
    return node
