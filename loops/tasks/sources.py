"""Tasks and the loaders behind ``--tasks SPEC``: task sources.

A task source is a decorated loader::

    @task_source("csv")
    def load_csv(path: Path, sep: str = ",") -> Iterator[dict]:
        ...

and ``--tasks csv:data.csv?sep=;`` then loads it: the text after ``NAME:`` goes to the
loader's first parameter without a default, ``?key=value&...`` to its other parameters
(converted to their annotated ``int``, ``float``, ``bool``, ``str`` or ``Path``), and a
parameter named ``limit`` receives ``--limit``. A loader yields ``Task``s or dicts; a dict
is read like a native JSONL line, and a bad one is one error naming the source and the row.
The shipped sources use the same registry: the benchmark specs (``gsm8k[:PATH]``,
``math[:PATH]``, ``humaneval``, ``mbpp``, ``gpqa-diamond``, ... in ``tasks/benchmarks/``),
``builtin:arithmetic`` (optionally ``builtin:arithmetic?seed=7&n=200``) and ``builtin:code``
(optionally ``builtin:code?seed=7&n=10``); a spec that names no source is a native JSONL
file (``PATH.jsonl``).

Code tasks say how their tests run in ``metadata["test_style"]``: ``asserts`` (``tests`` is a
list of assert statements), ``humaneval`` (``tests`` holds a program defining
``check(candidate)``; needs ``entry_point``) or ``io`` (``metadata["io_cases"]`` is a list of
``[stdin, expected stdout]`` pairs).
"""

from __future__ import annotations

import ast
import gzip
import inspect
import json
import math
import random
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.tasks.task import TEST_STYLES, Task
from pydantic import ValidationError

if TYPE_CHECKING:
    from loopwright.loops.tasks.taskset import TaskSet


class TaskFileError(UserError):
    """A task file line is unusable; the message names file, line and field."""


# -- the registry of task sources -----------------------------------------------------------
TaskRow = Task | dict[str, Any]
"""What a loader yields: a Task, or a dict read like a native JSONL line."""

Loader = TypeVar("Loader", bound=Callable[..., "Iterable[TaskRow] | TaskSet"])

_CONVERT: dict[Any, tuple[str, Callable[[str], Any]]] = {
    int: ("INT", int),
    float: ("FLOAT", float),
    str: ("TEXT", str),
    Path: ("PATH", Path),
    bool: ("BOOL", lambda v: {"1": True, "true": True, "0": False, "false": False}[v.lower()]),
}


@dataclass(frozen=True)
class TaskSource:
    """A registered loader: what its spec takes and how to call it."""

    name: str
    load: Callable[..., Iterable[TaskRow] | TaskSet]
    """Yields or returns Tasks or dicts, or returns a ``TaskSet`` (tasks with their provenance,
    e.g. a shuffle's seed)."""
    arg: str | None
    """The parameter the text after ``NAME:`` goes to (None: the spec takes none)."""
    arg_type: Any
    options: dict[str, Any]
    """``?key=value`` parameters and their types."""
    takes_limit: bool
    description: str
    arg_optional: bool = False
    """The spec may leave out ``:ARG`` (``gsm8k`` loads the hub copy, ``gsm8k:PATH`` a file)."""

    @property
    def usage(self) -> str:
        """The spec's form, e.g. ``mbpp[:PATH]?split=TEXT`` or ``builtin:code?seed=INT&n=INT``."""
        head = f"{self.name}:{self.arg.upper()}" if self.arg else self.name
        if self.arg and self.arg_optional:
            head = f"{self.name}[:{self.arg.upper()}]"
        return head + (f"?{self.query_usage}" if self.options else "")

    @property
    def query_usage(self) -> str:
        return "&".join(f"{k}={_type_label(t)}" for k, t in self.options.items())

    def convert(self, param: str, value: str, kind: Any) -> Any:
        """``value`` as the parameter's type, or one line saying what was expected."""
        try:
            return _CONVERT.get(kind, ("TEXT", str))[1](value)
        except (ValueError, KeyError):
            if param == self.arg:
                raise UserError(
                    f"task source {self.name}: {value!r} is not a {_type_label(kind)} "
                    f"(use {self.usage})"
                ) from None
            raise UserError(f"{self.name} takes ?{self.query_usage}, not {param}={value}") from None


TASK_SOURCES: dict[str, TaskSource] = {}
"""Task sources by name (``--tasks NAME[:ARG][?key=value&...]``)."""


def _type_label(kind: Any) -> str:
    return _CONVERT.get(kind, ("TEXT", str))[0]


def _plain_type(hint: Any) -> Any:
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``; else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def task_source(
    name: str, *, description: str | None = None, optional_arg: bool = False
) -> Callable[[Loader], Loader]:
    """Register a loader as the task source ``name`` (``--tasks name:ARG?key=value``); the
    loader is returned unchanged. See the module text for how a spec maps to its parameters.

    ``optional_arg``: the loader's first parameter (which has a default) is the argument, and
    the spec may leave it out (``mbpp`` or ``mbpp:PATH``)."""
    if not name or any(c in name for c in "?&=") or name.endswith(":"):
        raise ValueError(f"task source name {name!r}: use letters, digits, '-', '_' or ':'")

    def register(load: Loader) -> Loader:
        try:
            hints = typing.get_type_hints(load)
        except Exception:  # an annotation that does not resolve: parameters stay text
            hints = {}
        arg: str | None = None
        arg_type: Any = str
        options: dict[str, Any] = {}
        takes_limit = False
        params = list(inspect.signature(load).parameters.values())
        if optional_arg:
            if not params or params[0].default is params[0].empty or params[0].name == "limit":
                raise TypeError(
                    f"task source {name}: optional_arg needs a first parameter with a default"
                )
            arg, arg_type = params[0].name, _plain_type(hints.get(params[0].name, str))
            params = params[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"task source {name}: parameter *{p.name} cannot come from a spec")
            if p.name == "limit":
                takes_limit = True
            elif p.default is p.empty and arg is None and p.kind != p.KEYWORD_ONLY:
                arg, arg_type = p.name, _plain_type(hints.get(p.name, str))
            elif p.default is p.empty:
                raise TypeError(
                    f"task source {name}: parameter {p.name!r} needs a default (only the "
                    "first parameter comes from the text after NAME:)"
                )
            else:
                options[p.name] = _plain_type(hints.get(p.name, str))
        doc = inspect.getdoc(load)
        TASK_SOURCES[name] = TaskSource(
            name=name,
            load=load,
            arg=arg,
            arg_type=arg_type,
            options=options,
            takes_limit=takes_limit,
            description=description or (doc.splitlines()[0] if doc else ""),
            arg_optional=optional_arg,
        )
        return load

    return register


def task_source_names() -> list[str]:
    return sorted(TASK_SOURCES)


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
        public_metadata=["form"],
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
            row = {**json.loads(line), "public_metadata": ["category", "difficulty"]}
            tasks.append(_native_task(row, f"builtin:code:{lineno}", f"code-{lineno}"))
    if seed is not None:
        random.Random(seed).shuffle(tasks)
    return tasks if n is None else tasks[: max(n, 0)]


@task_source("builtin:arithmetic")
def _arithmetic_source(seed: int = 0, n: int | None = None, limit: int | None = None) -> list[Task]:
    """Seeded one-step arithmetic word problems (100 unless n or --limit says)."""
    return builtin_arithmetic(seed, n if n is not None else (limit or 100))


@task_source("builtin:code")
def _code_source(seed: int | None = None, n: int | None = None) -> list[Task]:
    """Small function-writing problems with hidden tests."""
    return builtin_code(seed, n)


# -- resolving a spec ------------------------------------------------------------------------
def load_tasks(spec: str, limit: int | None = None) -> list[Task]:
    """Resolve ``--tasks SPEC`` to a task list (first ``limit`` tasks if given); with where
    they came from, ``load_task_set`` (``loopwright.loops.tasks.datasets``)."""
    from loopwright.loops.tasks.datasets import load_task_set

    return load_task_set(spec, limit).tasks


def _no_such_spec(spec: str) -> None:
    """Raise the one line for a spec nothing reads: an unknown source of a known group, else
    the forms a spec takes."""
    group = spec.partition(":")[0] + ":"
    if ":" in spec and any(n.startswith(group) for n in TASK_SOURCES):
        raise unknown("task source", spec.partition("?")[0], task_source_names())
    usages = ", ".join(TASK_SOURCES[n].usage for n in task_source_names())
    raise UserError(
        f"cannot read task spec {spec!r}: use PATH.jsonl, a data file or folder "
        "(PATH.parquet?prompt=COL&reference=COL, also .csv, .json, a save_to_disk folder), "
        f"hf:ORG/NAME?split=S&prompt=COL..., or a task source: {usages}"
    )


def _find_source(spec: str) -> tuple[TaskSource, str] | None:
    """The source a spec names (the longest registered name it starts with) and the rest
    of the spec (``""``, ``":ARG..."`` or ``"?key=value..."``)."""
    for name in sorted(TASK_SOURCES, key=len, reverse=True):
        rest = spec[len(name) :]
        if spec.startswith(name) and (not rest or rest[0] in ":?"):
            return TASK_SOURCES[name], rest
    return None


def _arguments(source: TaskSource, rest: str, limit: int | None) -> dict[str, Any]:
    """The loader's keyword arguments from the rest of its spec."""
    kwargs: dict[str, Any] = {}
    text, query = rest, ""
    if source.options:  # only a source with options reads "?": a path may hold one
        text, _, query = rest.partition("?")
    elif rest.startswith("?"):
        raise UserError(f"task source {source.name} takes no ?options (use {source.usage})")
    if text.startswith(":"):
        if source.arg is None:
            raise UserError(f"task source {source.name} takes no argument (use {source.usage})")
        kwargs[source.arg] = source.convert(source.arg, text[1:], source.arg_type)
    elif source.arg is not None and not source.arg_optional:
        raise UserError(f"task source {source.name} needs an argument: {source.usage}")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in source.options:
            raise UserError(f"{source.name} takes ?{source.query_usage}, not {key}={value}")
        kwargs[key] = source.convert(key, value, source.options[key])
    if source.takes_limit:
        kwargs["limit"] = limit
    return kwargs


def _collect(
    source: TaskSource, rows: Iterable[TaskRow], spec: str, limit: int | None
) -> list[Task]:
    """The loader's rows as tasks (at most ``limit``), ids unique; a bad row is one error."""
    tasks: list[Task] = []
    for i, row in enumerate(rows, 1):
        if limit is not None and len(tasks) >= limit:
            break
        if isinstance(row, Task):
            tasks.append(row)
        elif isinstance(row, dict):
            tasks.append(_native_task(row, f"{spec} row {i}", f"{source.name}-{i}"))
        else:
            raise TaskFileError(
                f"{spec} row {i}: task source {source.name} yielded a "
                f"{type(row).__name__}: yield Task objects or dicts with a 'prompt'"
            )
    _check_unique(tasks, spec)
    return tasks


def _check_unique(tasks: list[Task], where: str) -> None:
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            raise TaskFileError(f"{where}: task id {t.id!r} appears twice; ids must be unique")
        seen.add(t.id)
