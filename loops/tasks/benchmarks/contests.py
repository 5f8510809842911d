"""Contest-style benchmarks: LiveCodeBench code generation and APPS.

Both hold stdin/stdout problems (tests as ``io`` cases) and function problems called by
``fn_name`` (tests as assert programs calling the function, or ``Solution().fn(...)`` for
LeetCode's class starter code), compared as the benchmark's own checker does.

LiveCodeBench: the prompt is LiveCodeBench's own generic template (``### Question``,
``### Format`` with the starter code or the stdin instruction, ``### Answer``); public tests
are the visible ones, public and private together are graded. Private tests stored as
base64(zlib(pickle(json))) are decoded inside the sandbox (``sandboxed.decode_compressed``):
pickle never runs on the host, and without a sandbox that can run such a row is refused.

APPS: the prompt is bigcode-evaluation-harness' (``QUESTION:`` ... ``Use Standard Input
format`` / ``Use Call-Based format`` ... ``ANSWER:``); ``input_output`` holds the tests.
"""

from __future__ import annotations

import json
import math
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
from loopwright.loops.tasks.benchmarks.sandboxed import decode_compressed
from loopwright.loops.tasks.sources import TaskFileError, task_source
from loopwright.loops.tasks.task import COMPLETE_PROMPT, Task
from loopwright.loops.tasks.taskset import TaskSet

LCB_HUB = (HubCopy("livecodebench/code_generation_lite", "test"),)
APPS_HUB = (HubCopy("codeparrot/apps", "test"),)

LCB_STARTER = (
    "You will use the following starter code to write the solution to the problem and enclose "
    "your code within delimiters."
)
LCB_STDIN = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows. "
    "Ensure that when the python program runs, it reads the inputs, runs the algorithm and "
    "writes output to STDOUT."
)


def lcb_prompt(content: str, starter_code: str) -> str:
    """LiveCodeBench's generic code-generation prompt (lcb_runner's
    ``get_generic_question_template_answer``)."""
    prompt = f"### Question:\n{content}\n\n"
    if starter_code:
        prompt += f"### Format: {LCB_STARTER}\n```python\n{starter_code}\n```\n\n"
    else:
        prompt += f"### Format: {LCB_STDIN}\n```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "### Answer: (use the provided format with backticks)\n\n"


def apps_prompt(question: str, starter_code: str, fn_name: str | None) -> str:
    """bigcode-evaluation-harness' APPS prompt."""
    prompt = "\nQUESTION:\n" + question + (starter_code or "")
    prompt += "\nUse Call-Based format" if fn_name else "\nUse Standard Input format"
    return prompt + "\nANSWER:\n"


def py_literal(value: Any) -> str:
    """A JSON value as Python source (``true`` -> ``True``, ``Infinity`` ->
    ``float('inf')``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _caller(fn_name: str, starter_code: str) -> str:
    return f"Solution().{fn_name}" if "class Solution" in (starter_code or "") else fn_name


def call_test(call: str, args: list[Any], expected: Any, *, unwrap: bool = False) -> str:
    """An assert program calling ``call(*args)``: a tuple result counts as a list (as both
    benchmarks' checkers do); with ``unwrap`` (APPS) ``[x]`` also accepts ``x``."""
    lines = [
        f"_out = {call}({', '.join(py_literal(a) for a in args)})",
        f"_exp = {py_literal(expected)}",
        "_out = list(_out) if isinstance(_out, tuple) else _out",
    ]
    if unwrap:
        lines.append(
            "assert _out == _exp or (isinstance(_exp, list) and len(_exp) > 0 and _out == _exp[0])"
        )
    else:
        lines.append("assert _out == _exp")
    return "\n".join(lines)


def _task(row: Row, **fields: Any) -> Task:
    """A contest task: its prompt is the harness's whole instruction (``COMPLETE_PROMPT``)."""
    from loopwright.loops.tasks.sources import _make_task, _with_test_style

    fields["metadata"] = {**fields.get("metadata", {}), COMPLETE_PROMPT: True}
    fields["public_metadata"] = [*fields.get("public_metadata", []), COMPLETE_PROMPT]
    return _with_test_style(_make_task(row.where, **fields), {}, row.where)


def _json(row: Row, name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise TaskFileError(f"{row.where}: field {name!r} is not valid JSON") from None


# -- LiveCodeBench -----------------------------------------------------------------------------
def _cases(row: Row, name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(
        isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
        for c in value
    ):
        raise TaskFileError(
            f"{row.where}: field {name!r} must be a list of test cases with 'input' and 'output' text"
        )
    return value


def _private_text(row: Row) -> tuple[str | None, str | None]:
    """(JSON text, blob to decode in the sandbox) of a row's private tests."""
    raw = row.get("private_test_cases")
    if raw is None or raw == "":
        return "[]", None
    if not isinstance(raw, str):
        return json.dumps(raw), None
    try:
        json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None, raw  # base64(zlib(pickle(json))): for the sandbox only
    return raw, None


def _lcb_task(row: Row, private_json: str) -> Task:
    content = row.text("question_content")
    starter = row.get("starter_code") or ""
    public = _cases(
        row,
        "public_test_cases",
        _json(row, "public_test_cases", row.get("public_test_cases") or "[]"),
    )
    private = _cases(row, "private_test_cases", _json(row, "private_test_cases", private_json))
    meta_raw = _json(row, "metadata", row.get("metadata") or "{}")
    fn_name = meta_raw.get("func_name") if isinstance(meta_raw, dict) else None
    qid = str(row.need("question_id"))
    meta: dict[str, Any] = {
        k: row.data[k]
        for k in ("platform", "difficulty", "contest_date", "question_title", "contest_id")
        if row.data.get(k) is not None
    }
    meta = {k: str(v) if k == "contest_date" else v for k, v in meta.items()}
    public_keys = [k for k in ("platform", "difficulty", "contest_date") if k in meta]
    functional = any(c.get("testtype") == "functional" for c in public + private)
    if functional:
        if not fn_name:
            raise TaskFileError(f"{row.where}: functional tests but no func_name in 'metadata'")
        call = _caller(fn_name, starter)

        def as_test(case: dict[str, Any]) -> str:
            try:
                args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
                expected = json.loads(case["output"])
            except (json.JSONDecodeError, RecursionError):
                raise TaskFileError(f"{row.where}: a functional test case is not JSON") from None
            return call_test(call, args, expected)

        shown = [as_test(c) for c in public]
        return _task(
            row, id=f"lcb-{qid}", prompt=lcb_prompt(content, starter), kind="code",
            tests=shown + [as_test(c) for c in private], visible_tests=shown,
            entry_point=fn_name, metadata={**meta, "test_style": "asserts", "fn_name": fn_name},
            public_metadata=[*public_keys, "fn_name"],
        )  # fmt: skip
    visible = [[c["input"], c["output"]] for c in public]
    cases = visible + [[c["input"], c["output"]] for c in private]
    if not cases:
        raise TaskFileError(f"{row.where}: no test cases")
    return _task(
        row, id=f"lcb-{qid}", prompt=lcb_prompt(content, starter), kind="code",
        metadata={**meta, "test_style": "io", "io_cases": cases, "visible_io_cases": visible},
        public_metadata=public_keys,
    )  # fmt: skip


def _lcb_keep(
    row: Row, start: str | None, end: str | None, platform: str | None, difficulty: str | None
) -> bool:
    date = str(row.get("contest_date") or "")[:10]
    if start and (not date or date < start):
        return False
    if end and (not date or date > end):
        return False
    if platform and str(row.get("platform") or "").lower() != platform.lower():
        return False
    return not (difficulty and str(row.get("difficulty") or "").lower() != difficulty.lower())


def lcb_release_files(path: Path, release: str) -> list[Path]:
    """The JSONL files of a release in a LiveCodeBench folder: ``release_vN`` is test.jsonl
    to testN.jsonl, ``vN`` testN.jsonl alone (test.jsonl for v1)."""
    name = release.removeprefix("release_")
    if not name.startswith("v") or not name[1:].isdigit() or int(name[1:]) < 1:
        raise UserError(
            f"livecodebench release {release!r}: use release_vN (all up to N) or vN (only N)"
        )
    n = int(name[1:])
    numbers = range(1, n + 1) if release.startswith("release_") else [n]
    files = [path / ("test.jsonl" if i == 1 else f"test{i}.jsonl") for i in numbers]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise UserError(f"livecodebench release {release}: {path} lacks {', '.join(missing)}")
    return files


@task_source("livecodebench", optional_arg=True)
def load_livecodebench(
    path: Path | None = None,
    release: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    platform: str | None = None,
    difficulty: str | None = None,
    sandbox: str = "bwrap",
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """LiveCodeBench code generation (livecodebench/code_generation_lite rows; a folder of its
    test*.jsonl files with ``release=release_vN``; ``start_date``/``end_date`` filter by
    contest date)."""
    if release is not None and (path is None or not path.is_dir()):
        raise UserError("livecodebench release=... picks files of a folder: give livecodebench:DIR")
    rows = _rows_or_hint("livecodebench", path, LCB_HUB, split, revision, release)
    kept = [r for r in rows.rows if _lcb_keep(r, start_date, end_date, platform, difficulty)]
    kept = kept if limit is None else kept[:limit]
    texts = [_private_text(r) for r in kept]
    blobs = [blob for _, blob in texts if blob is not None]
    decoded = iter(decode_compressed(blobs, sandbox) if blobs else [])
    private: dict[int, str] = {}
    for r, (text, blob) in zip(kept, texts, strict=True):
        if blob is None:
            private[r.index] = text or "[]"
            continue
        got = next(decoded)
        if isinstance(got, Exception):
            raise TaskFileError(
                f"{r.where}: private_test_cases do not decode to JSON tests ({got})"
            )
        private[r.index] = got
    tasks = convert(kept, lambda r: _lcb_task(r, private[r.index]), limit)
    spec = spec_of("livecodebench", path, release=release, start_date=start_date, end_date=end_date,
                   platform=platform, difficulty=difficulty, split=split, revision=revision)  # fmt: skip
    return task_set(
        "livecodebench",
        tasks,
        rows,
        spec=spec,
        template=lcb_prompt("{question_content}", "{starter_code}"),
    )


def _rows_or_hint(name: str, path: Path | None, hub: tuple[HubCopy, ...], split: str | None,
                  revision: str | None, release: str | None = None) -> Rows:  # fmt: skip
    if path is not None and release is not None:
        from loopwright.loops.tasks.benchmarks.rows import Row as _Row
        from loopwright.loops.tasks.sources import read_jsonl

        out: list[_Row] = []
        for f in lcb_release_files(path, release):
            out.extend(
                _Row(obj, f"{f}:{n}", len(out) + k)
                for k, (n, obj) in enumerate(read_jsonl(f, "data file"))
            )
        return Rows(out, "jsonl", str(path.resolve()), split=split)
    try:
        return load_rows(name, path, hub, split=split, revision=revision)
    except UserError as exc:
        if path is not None:
            raise
        raise UserError(
            f"{exc} ({hub[0].id} is a dataset script, which datasets 4 no longer runs: download "
            f"its files, `huggingface-cli download {hub[0].id} --repo-type dataset --local-dir "
            f"DIR`, then use {name}:DIR)"
        ) from None


# -- APPS --------------------------------------------------------------------------------------
def _lines(value: Any) -> str:
    """An APPS stdin or stdout: text, or a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _apps_task(row: Row) -> Task | None:
    raw = row.get("input_output")
    if raw in (None, ""):
        return None  # a problem without tests cannot be graded: APPS' own harness skips it
    io = _json(row, "input_output", raw)
    if (
        not isinstance(io, dict)
        or not isinstance(io.get("inputs"), list)
        or not isinstance(io.get("outputs"), list)
    ):
        raise TaskFileError(
            f"{row.where}: field 'input_output' must hold 'inputs' and 'outputs' lists"
        )
    inputs, outputs = io["inputs"], io["outputs"]
    if len(inputs) != len(outputs):
        raise TaskFileError(
            f"{row.where}: input_output has {len(inputs)} inputs but {len(outputs)} outputs"
        )
    if not inputs:
        return None
    fn_name = io.get("fn_name") or None
    starter = row.get("starter_code") or ""
    question = row.text("question")
    solutions = _json(row, "solutions", row.get("solutions") or "[]")
    meta: dict[str, Any] = {
        k: row.data[k] for k in ("difficulty", "url") if row.data.get(k) is not None
    }
    common: dict[str, Any] = {
        "id": f"apps-{row.need('problem_id')}",
        "prompt": apps_prompt(question, starter, fn_name),
        "kind": "code",
        "reference": solutions[0]
        if isinstance(solutions, list) and solutions and isinstance(solutions[0], str)
        else None,
        "public_metadata": [k for k in ("difficulty",) if k in meta],
    }
    if fn_name:
        call = _caller(fn_name, starter)
        tests = []
        for args, expected in zip(inputs, outputs, strict=True):
            tests.append(
                call_test(call, args if isinstance(args, list) else [args], expected, unwrap=True)
            )
        return _task(row, **common, tests=tests, entry_point=fn_name,
                     metadata={**meta, "test_style": "asserts", "fn_name": fn_name})  # fmt: skip
    cases = [[_lines(i), _lines(o)] for i, o in zip(inputs, outputs, strict=True)]
    return _task(row, **common, metadata={**meta, "test_style": "io", "io_cases": cases})


@task_source("apps", optional_arg=True)
def load_apps(
    path: Path | None = None,
    difficulty: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> TaskSet:
    """APPS (codeparrot/apps rows: problem_id, question, solutions, input_output with
    optional fn_name, starter_code, difficulty); ``difficulty`` keeps one level."""
    rows = _rows_or_hint("apps", path, APPS_HUB, split, revision)
    kept = [r for r in rows.rows if not difficulty or str(r.get("difficulty") or "") == difficulty]
    tasks = convert(kept, _apps_task, limit)
    spec = spec_of("apps", path, difficulty=difficulty, split=split, revision=revision)
    return task_set(
        "apps", tasks, rows, spec=spec, template=apps_prompt("{question}", "{starter_code}", None)
    )
