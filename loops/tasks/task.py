"""The task record: what a loop is asked, and what only the grader may see."""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal, get_args

from loopwright.traces.records import repair_text
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticSerializationError

TaskKind = Literal["math", "code", "text", "choice"]
"""What a task asks for, which picks its verifier and grader: a math answer, a program, free
text, or one of ``choices`` (answered by its letter: A, B, ...)."""
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
TestStyle = Literal["asserts", "humaneval", "io"]
TEST_STYLES: tuple[str, ...] = get_args(TestStyle)
COMPLETE_PROMPT = "complete_prompt"
"""Public metadata flag of a code task whose prompt is a whole instruction written by its
benchmark's harness (a problem statement and the answer format: LiveCodeBench, APPS),
not a function to complete: the loops send it as it is instead of wrapping it in theirs."""


class Task(BaseModel):
    """One problem a loop works on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique within the task set; resume keys on it.")
    prompt: str = Field(description="What the model is asked.")
    kind: TaskKind = Field(
        "text", description="math, code, text or choice: picks the verifier and the grader."
    )
    reference: str | None = Field(None, description="Gold answer for the grader.")
    tests: list[str] = Field(
        default_factory=list, description="Hidden test code for code tasks (the grader's)."
    )
    visible_tests: list[str] | None = Field(
        None,
        description="Assert tests the problem statement shows (what an in-loop verifier may "
        "run); None derives them: the prompt's doctest examples, else the first assert.",
    )
    entry_point: str | None = Field(None, description="Function under test for code tasks.")
    choices: list[str] | None = Field(
        None,
        description="The options of a multiple-choice task, in the order shown (A, B, ...); "
        "public: the reference is the letter of the right one.",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Anything else; only the grader sees it, except the keys named in "
        "public_metadata (and test_style, visible_io_cases).",
    )
    public_metadata: list[str] = Field(
        default_factory=list,
        description="Metadata keys a loop and its verifier may see (kept by blind()).",
    )

    @field_validator("id")
    @classmethod
    def _stored_id(cls, value: str) -> str:
        """An id is a key (resume, seeds, every trace row): it takes the form the trace store
        keeps, in which text UTF-8 cannot encode is repaired (``records.repair_text``)."""
        return repair_text(value)[0]

    def answer_key(self) -> str:
        """The keyed task as JSON, as a run stores it for its grader (``tasks.answer_key``). A
        lone surrogate (legal in a JSON task file) is escaped; the store repairs it as it
        repairs every other text."""
        try:
            return self.model_dump_json()
        except PydanticSerializationError:
            return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))

    def blind(self) -> Task:
        """The task as a deployed system sees it, built from an allow-list.

        Kept: ``id``, ``prompt``, ``kind``, ``entry_point``, ``choices``, the visible tests
        (``visible_tests(self)``), and of ``metadata`` only ``test_style``,
        ``visible_io_cases`` (derived for stdin/stdout tasks: the first case unless given) and
        the keys named in ``public_metadata``. Everything else — the reference, hidden tests,
        any other metadata key (a solution, expected outputs, a gold label under any name) —
        is dropped. Loops and in-loop verifiers get this view; only the grader (and the
        opt-in ``oracle`` verifier) sees the keyed task.
        """
        keep = BLIND_METADATA.union(self.public_metadata)
        meta = {k: v for k, v in self.metadata.items() if k in keep}
        if self.kind == "code" and self.metadata.get("test_style") == "io":
            cases = self.metadata.get("io_cases") or []
            meta["visible_io_cases"] = self.metadata.get("visible_io_cases", cases[:1])
        return Task(
            id=self.id,
            prompt=self.prompt,
            kind=self.kind,
            visible_tests=visible_tests(self),
            entry_point=self.entry_point,
            choices=None if self.choices is None else list(self.choices),
            metadata=meta,
            public_metadata=list(self.public_metadata),
        )


BLIND_METADATA = frozenset({"test_style", "visible_io_cases"})
"""Metadata keys every blind task keeps: how its tests run and the stdin/stdout cases it
shows. A task source adds keys with ``Task.public_metadata``."""


_QUOTES = re.compile(r"^\s*(?:\"\"\"|\'\'\')")
_ARROW = re.compile(r"^\s*(?P<call>[A-Za-z_]\w*\(.*\))\s*(?:==>|==|=>|->|➞|→)\s*(?P<want>.+?)\s*$")


def _expr(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes or
        return False  # half a surrogate pair, which no Python source holds
    return True


def doctest_asserts(prompt: str, entry_point: str | None = None) -> list[str]:
    """The examples a prompt's docstring shows, as assert lines.

    ``>>> expr`` followed by its expected value (doctest), and, for ``entry_point``,
    ``f(args) == value`` / ``f(args) => value`` / ``f(args) ➞ value`` lines. Examples whose
    expected output is not a Python expression (printed text, tracebacks) are left out; so
    are statements (``>>> x = 1``), which expect nothing.
    """
    import doctest

    out: list[str] = []
    try:
        examples = doctest.DocTestParser().get_examples(prompt)
    except ValueError:  # inconsistent indentation in the docstring
        examples = []
    for ex in examples:
        lines = []
        for line in ex.want.splitlines():
            if _QUOTES.match(line):  # the docstring's closing quotes end the expected value
                break
            lines.append(line)
        src, want = ex.source.strip(), "\n".join(lines).strip()
        if not want or "\n" in src or "Traceback" in want or not (_expr(src) and _expr(want)):
            continue
        out.append(f"assert ({src}) == ({want})")
    if out or not entry_point:
        return out
    for line in prompt.splitlines():
        m = _ARROW.match(line)
        if m and m["call"].startswith(f"{entry_point}(") and _expr(m["call"]):
            want = m["want"].rstrip(".,;")
            if _expr(want):
                out.append(f"assert ({m['call']}) == ({want})")
    return out


def visible_tests(task: Task) -> list[str]:
    """The tests a code task's statement shows: ``visible_tests`` when given, else its
    doctest examples, else (MBPP style) the first hidden assert."""
    if task.visible_tests is not None:
        return list(task.visible_tests)
    if task.kind != "code" or task.metadata.get("test_style") == "io":
        return []
    shown = doctest_asserts(task.prompt, task.entry_point)
    if shown:
        return shown
    if task.metadata.get("test_style", "asserts") == "asserts" and task.tests:
        return [task.tests[0]]
    return []
