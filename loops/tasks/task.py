"""The task record: what a loop is asked, and what only the grader may see."""

from __future__ import annotations

import ast
import re
from typing import Any, Literal, get_args

from loopwright.traces.records import repair_text
from pydantic import BaseModel, ConfigDict, Field, field_validator

TaskKind = Literal["math", "code", "text"]
TestStyle = Literal["asserts", "humaneval", "io"]
TEST_STYLES: tuple[str, ...] = get_args(TestStyle)


class Task(BaseModel):
    """One problem a loop works on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique within the task set; resume keys on it.")
    prompt: str = Field(description="What the model is asked.")
    kind: TaskKind = Field("text", description="math, code or text: picks the verifier.")
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
    metadata: dict[str, Any] = Field(default_factory=dict, description="Anything else.")

    @field_validator("id")
    @classmethod
    def _stored_id(cls, value: str) -> str:
        """An id is a key (resume, seeds, every trace row): it takes the form the trace store
        keeps, in which text UTF-8 cannot encode is repaired (``records.repair_text``)."""
        return repair_text(value)[0]

    def blind(self) -> Task:
        """The task as a deployed system sees it: no reference, no hidden tests, no solution.

        Loops and in-loop verifiers get this view; only the grader (and the opt-in
        ``oracle`` verifier) sees the answer key. Visible tests stay.
        """
        meta = {k: v for k, v in self.metadata.items() if k not in _ANSWER_KEY_METADATA}
        if self.kind == "code" and self.metadata.get("test_style") == "io":
            cases = self.metadata.get("io_cases") or []
            meta["visible_io_cases"] = self.metadata.get("visible_io_cases", cases[:1])
        return self.model_copy(
            update={
                "reference": None,
                "tests": [],
                "visible_tests": visible_tests(self),
                "metadata": meta,
            }
        )


_ANSWER_KEY_METADATA = frozenset({"solution", "io_cases", "canonical_solution", "answer"})


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
