"""Math benchmarks: GSM8K, MATH, MATH-500, AIME 2024 and AIME 2025.

The prompt is the problem as the dataset states it (a loop's math prompt asks for the final
answer); the reference is the final answer, graded by the math checker (math-verify, as
lighteval grades these). GSM8K's reference is the number after ``####``; MATH's is the
``answer`` column or, in copies without one, the last ``\\boxed{}`` of the solution (as
lm-evaluation-harness reads it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loopwright.loops.tasks.benchmarks.rows import (
    HubCopy,
    Row,
    convert,
    load_rows,
    spec_of,
    task_set,
)
from loopwright.loops.tasks.sources import TaskFileError, reference_text, task_source
from loopwright.loops.tasks.task import Task
from loopwright.loops.tasks.taskset import TaskSet

GSM8K_HUB = (HubCopy("openai/gsm8k", "test", "main"),)
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")  # fmt: skip
MATH_HUB = tuple(HubCopy("EleutherAI/hendrycks_math", "test", s) for s in MATH_SUBJECTS)
MATH500_HUB = (HubCopy("HuggingFaceH4/MATH-500", "test"),)
AIME24_HUB = (HubCopy("HuggingFaceH4/aime_2024", "train"),)
AIME25_HUB = (HubCopy("yentinglin/aime_2025", "train"),)

_GSM_ANSWER = re.compile(r"####\s*(.+?)\s*$")


def _gsm8k_task(row: Row) -> Task:
    question = row.need("question")
    answer = row.need("answer")
    if not isinstance(answer, str):
        raise TaskFileError(f"{row.where}: field 'answer' must be text ending '#### N'")
    m = _GSM_ANSWER.search(answer.strip())
    if not m:
        raise TaskFileError(f"{row.where}: field 'answer' has no '#### N' final answer")
    return _task(
        row,
        id=f"gsm8k-{row.index}",
        prompt=question,
        kind="math",
        reference=m.group(1).replace(",", ""),
        metadata={"solution": answer},
    )


def _task(row: Row, **fields: Any) -> Task:
    from loopwright.loops.tasks.sources import _make_task

    return _make_task(row.where, **fields)


def load_gsm8k(path: Path | None = None) -> list[Task]:
    """The GSM8K tasks of a copy at ``path`` (None: the hub's), as a list."""
    return gsm8k_source(path).tasks


# No ?options: a path may hold a "?" (gsm8k:PATH has always read it whole).
@task_source("gsm8k", optional_arg=True)
def gsm8k_source(path: Path | None = None, limit: int | None = None) -> TaskSet:
    """GSM8K: ``question`` and ``answer`` ending in ``#### N`` (openai/gsm8k, or a local copy)."""
    rows = load_rows("gsm8k", path, GSM8K_HUB)
    tasks = convert(rows.rows, _gsm8k_task, limit)
    spec = spec_of("gsm8k", path)
    return task_set(
        "gsm8k", tasks, rows, spec=spec, fields={"prompt": "question", "reference": "answer"}
    )


# -- MATH ------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed N``) in
    ``text``, braces matched; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    if rest.startswith("\\boxed "):
        return rest[len("\\boxed ") :].split("$")[0].strip() or None
    open_at = rest.find("{")
    if open_at < 0:
        return None
    depth = 0
    for i, ch in enumerate(rest[open_at:], open_at):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : i].strip() or None
    return None


_MATH_META = ("solution", "subject", "level", "type")
_MATH_PUBLIC = ("subject", "level", "type")


def _math_task(prefix: str) -> Any:
    def make(row: Row) -> Task:
        problem = row.need("problem")
        answer = row.get("answer")
        if answer is None or answer == "":
            solution = row.get("solution")
            answer = last_boxed(solution) if isinstance(solution, str) else None
            if answer is None:
                raise TaskFileError(f"{row.where}: missing field 'answer'")
        meta = {k: row.data[k] for k in _MATH_META if row.data.get(k) is not None}
        return _task(
            row,
            id=str(row.get("unique_id") or f"{prefix}-{row.index}"),
            prompt=problem,
            kind="math",
            reference=reference_text(answer, row.where, "answer"),
            metadata=meta,
            public_metadata=[k for k in _MATH_PUBLIC if k in meta],
        )

    return make


def load_math(path: Path | None = None) -> list[Task]:
    """The MATH tasks of a copy at ``path`` (None: the hub's), as a list."""
    return math_source(path).tasks


@task_source("math", optional_arg=True)
def math_source(
    path: Path | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """MATH: ``problem`` and ``answer`` or a boxed answer in ``solution`` (plus subject or
    type, level); without a path the seven subjects of EleutherAI/hendrycks_math."""
    hub = MATH_HUB if config is None else (HubCopy(MATH_HUB[0].id, "test", config),)
    rows = load_rows(
        "math", path, hub, split=split, config=config if path else None, revision=revision
    )
    tasks = convert(rows.rows, _math_task("math"), limit)
    spec = spec_of("math", path, split=split, config=config, revision=revision)
    return task_set(
        "math", tasks, rows, spec=spec, fields={"prompt": "problem", "reference": "answer"}
    )


@task_source("math500", optional_arg=True)
def load_math500(
    path: Path | None = None,
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """MATH-500: ``problem``, ``answer``, ``unique_id`` (HuggingFaceH4/MATH-500, or a copy)."""
    rows = load_rows("math500", path, MATH500_HUB, split=split, revision=revision)
    tasks = convert(rows.rows, _math_task("math500"), limit)
    spec = spec_of("math500", path, split=split, revision=revision)
    return task_set(
        "math500", tasks, rows, spec=spec, fields={"prompt": "problem", "reference": "answer"}
    )


# -- AIME ------------------------------------------------------------------------------------
_AIME_PROBLEM = ("problem", "Problem", "question", "Question")
_AIME_ANSWER = ("answer", "Answer")
_AIME_ID = ("id", "ID", "Id", "problem_id", "unique_id")


def _aime_task(name: str) -> Any:
    def make(row: Row) -> Task:
        problem = row.text(*_AIME_PROBLEM)
        answer = reference_text(row.need(*_AIME_ANSWER), row.where, "answer") or ""
        if answer.strip().isdigit():
            answer = str(int(answer.strip()))  # "023" and 23 are the same AIME answer
        given = row.get(*_AIME_ID)
        meta = {
            k: row.data[k]
            for k in ("solution", "Solution", "url", "year")
            if row.data.get(k) is not None
        }
        return _task(
            row,
            id=f"{name}-{given if given is not None else row.index}",
            prompt=problem,
            kind="math",
            reference=answer,
            metadata=meta,
        )

    return make


def _aime(name: str, hub: tuple[HubCopy, ...], path: Path | None, split: str | None,
          config: str | None, revision: str | None, limit: int | None) -> TaskSet:  # fmt: skip
    if config is not None and path is None:
        hub = tuple(HubCopy(h.id, h.split, config) for h in hub)
    rows = load_rows(
        name, path, hub, split=split, config=config if path else None, revision=revision
    )
    tasks = convert(rows.rows, _aime_task(name), limit)
    spec = spec_of(name, path, split=split, config=config, revision=revision)
    return task_set(
        name,
        tasks,
        rows,
        spec=spec,
        fields={"prompt": "problem|Problem|question", "reference": "answer|Answer"},
    )


@task_source("aime24", optional_arg=True)
def load_aime24(
    path: Path | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """AIME 2024: ``problem``/``answer`` (HuggingFaceH4/aime_2024) or ``Problem``/``Answer``
    (Maxwell-Jia/AIME_2024) copies."""
    return _aime("aime24", AIME24_HUB, path, split, config, revision, limit)


@task_source("aime25", optional_arg=True)
def load_aime25(
    path: Path | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """AIME 2025: ``problem``/``answer`` (yentinglin/aime_2025, math-ai/aime25) or
    ``question``/``answer`` (opencompass/AIME2025) copies."""
    return _aime("aime25", AIME25_HUB, path, split, config, revision, limit)
