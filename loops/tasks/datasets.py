"""Any dataset as tasks: a field map from a dataset's columns to a task's fields, an optional
prompt template, and every ``--tasks`` spec resolved to a ``TaskSet`` with its provenance.

A dataset spec is a location and a query::

    hf:openai/gsm8k?config=main&split=test&prompt=question&reference=answer&kind=math
    data/mbpp.parquet?prompt=text&tests=test_list&kind=code
    data/aime.csv?prompt=Problem&reference=Answer&kind=math
    data/saved_folder?split=validation&template=...

``DatasetTasks`` is the same as a model (what a config file's ``tasks:`` mapping holds); its
``spec()`` is the canonical string. ``load_task_set(spec, limit)`` resolves any spec
``load_tasks`` takes (native JSONL, the registered task sources, a list of Tasks, a
DatasetTasks) to a ``TaskSet``.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.tasks import sources
from loopwright.loops.tasks.readers import (
    Table,
    dataset_folder,
    file_kind,
    is_hub,
    read_rows,
    read_table,
)
from loopwright.loops.tasks.sources import TaskFileError, _native_task, reference_text
from loopwright.loops.tasks.task import Task, TaskKind
from loopwright.loops.tasks.taskset import SourceInfo, TaskSet, tasks_sha256, text_sha256
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "DatasetTasks",
    "FieldMap",
    "SourceInfo",
    "TaskSet",
    "load_task_set",
    "read_rows",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class FieldMap(BaseModel):
    """Which column of a dataset fills which task field. A field left unset takes the column
    of its own name when the dataset has one (``prompt``, ``reference``, ``tests``, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = Field(
        None, description="Column of the question (default 'prompt'; not needed with a template)."
    )
    reference: str | None = Field(None, description="Column of the gold answer.")
    tests: str | None = Field(
        None, description="Column of the hidden tests: a list, or one text (assert lines or a "
        "check() program).",
    )  # fmt: skip
    visible_tests: str | None = Field(None, description="Column of the tests a loop may see.")
    entry_point: str | None = Field(None, description="Column of the function under test.")
    choices: str | list[str] | None = Field(
        None,
        description="Column holding the list of options, or the columns holding one option "
        "each, in order (A, B, ...).",
    )
    id: str | None = Field(None, description="Column of the task id (default: row-<i>).")
    metadata: list[str] | dict[str, str] | None = Field(
        None,
        description="Columns kept as metadata (grader only unless public): a list of columns, "
        "or a mapping metadata key -> column.",
    )
    public_metadata: list[str] = Field(
        default_factory=list, description="Metadata keys a loop and its verifier may see."
    )

    def as_text(self) -> dict[str, str]:
        """The map as SourceInfo.fields and spec strings write it (lists comma-joined, a
        metadata mapping as ``key:column`` pairs)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value in (None, []):
                continue
            if isinstance(value, dict):
                value = ",".join(f"{k}:{v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ",".join(value)
            out[name] = value
        return out

    @classmethod
    def from_text(cls, fields: Mapping[str, str]) -> FieldMap:
        """The map from ``as_text``'s form (a spec's query)."""
        data: dict[str, Any] = dict(fields)
        if "choices" in data and "," in data["choices"]:
            data["choices"] = data["choices"].split(",")
        if "metadata" in data:
            parts = [p for p in data["metadata"].split(",") if p]
            if any(":" in p for p in parts):
                pairs = [p.partition(":") for p in parts]
                if any(not k or not sep or not c for k, sep, c in pairs):
                    raise UserError(
                        f"metadata={fields['metadata']}: write columns (a,b) or key:column pairs "
                        "(topic:subject,lvl:level), not both"
                    )
                data["metadata"] = {k: c for k, _, c in pairs}
            else:
                data["metadata"] = parts
        if "public_metadata" in data:
            data["public_metadata"] = [p for p in data["public_metadata"].split(",") if p]
        return cls(**data)


class DatasetTasks(BaseModel):
    """A dataset read as tasks: where it is, which part, and how its columns map."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        description="hf:ORG/NAME (or ORG/NAME) for the hub; else a path: a .parquet, .jsonl, "
        ".json or .csv file, a save_to_disk folder or a folder of parquet files."
    )
    config: str | None = Field(None, description="The hub dataset's configuration (subset).")
    split: str | None = Field(None, description="The split (default: test, else the only one).")
    revision: str | None = Field(None, description="A hub commit, tag or branch.")
    fields: FieldMap = Field(default_factory=FieldMap, description="Columns -> task fields.")
    template: str | None = Field(
        None,
        description="The prompt as a str.format template over the row's columns, e.g. "
        "'{question}\\n\\nAnswer:' ({choices_text}: the lettered options).",
    )
    kind: TaskKind | None = Field(
        None, description="The tasks' kind (default: code with tests, choice with choices, "
        "else text).",
    )  # fmt: skip
    benchmark: str | None = Field(
        None, description="A benchmark task source (gsm8k, mbpp, ...) that reads `source`."
    )

    @field_validator("template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None:
            placeholders(value)
        return value

    @property
    def hub(self) -> bool:
        return is_hub(self.source)

    def spec(self) -> str:
        """The canonical spec string (what ``runs.tasks_spec`` stores; loads the same set)."""
        if self.benchmark:
            head = f"{self.benchmark}:{self.source}" if self.source else self.benchmark
        else:
            head = f"hf:{self.source.removeprefix('hf:')}" if self.hub else self.source
        query: dict[str, str] = {
            k: v
            for k, v in (
                ("config", self.config),
                ("split", self.split),
                ("revision", self.revision),
            )
            if v is not None
        }
        if not self.benchmark:
            query.update(self.fields.as_text())
            if self.kind is not None:
                query["kind"] = self.kind
            if self.template is not None:
                query["template"] = self.template
        return head + (f"?{urlencode(query, quote_via=quote, safe=',:/')}" if query else "")

    @classmethod
    def parse(cls, spec: str) -> DatasetTasks:
        """A dataset spec (``LOCATION?key=value&...``) as a DatasetTasks; an unknown key is one
        line with a did-you-mean."""
        location, _, query = spec.partition("?")
        top: dict[str, Any] = {"source": location}
        fields: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key in ("config", "split", "revision", "template", "kind"):
                top[key] = value
            elif key in FieldMap.model_fields:
                fields[key] = value
            else:
                raise unknown("dataset spec key", key, SPEC_KEYS)
        try:
            return cls(**top, fields=FieldMap.from_text(fields))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"task spec {spec!r}: {where}: {err['msg']}") from None

    def load(self, limit: int | None = None) -> TaskSet:
        """The tasks (the first ``limit``) and their SourceInfo."""
        if self.benchmark:
            return load_task_set(self.spec(), limit)
        table = read_table(
            self.source, config=self.config, split=self.split, revision=self.revision
        )
        return table_tasks(table, self, limit)


SPEC_KEYS = ("config", "split", "revision", "template", "kind", *FieldMap.model_fields)
"""The keys a dataset spec's query takes."""


# -- rows -> tasks ---------------------------------------------------------------------------
def placeholders(template: str) -> list[str]:
    """The column names a template uses; a malformed one, or attribute/index access, is one
    line."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise UserError(f"prompt template: {exc} (write a literal brace as {{{{ or }}}})") from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit() or any(c in name for c in ".["):
            raise UserError(
                f"prompt template: {{{name}}} is not a column name: use {{column}} placeholders"
            )
        names.append(name)
    return names


def _resolve(fields: FieldMap, columns: list[str], has_template: bool) -> dict[str, Any]:
    """The field map over these columns: unset fields take a same-named column."""
    out: dict[str, Any] = {}
    for name in ("prompt", "reference", "tests", "visible_tests", "entry_point", "choices", "id"):
        given = getattr(fields, name)
        if given is not None:
            out[name] = given
        elif name in columns and not (name == "prompt" and has_template):
            out[name] = name
    if "prompt" not in out and not has_template:
        out["prompt"] = "prompt"  # reported missing below, naming the columns
    if fields.metadata is not None:
        meta = fields.metadata
        out["metadata"] = dict(zip(meta, meta, strict=True)) if isinstance(meta, list) else meta
    return out


def _check_columns(resolved: dict[str, Any], template: str | None, table: Table) -> None:
    cols = set(table.columns)
    where = Path(table.info.location).name if table.info.kind != "hub" else table.info.location
    have = ", ".join(sorted(table.columns)) or "(none)"
    for name, col in resolved.items():
        wanted = col.values() if isinstance(col, dict) else col if isinstance(col, list) else [col]
        for c in wanted:
            if c not in cols:
                raise UserError(
                    f"field map: column {c!r} ({name}) is not in {where}; its columns are: {have}"
                )
    for name in placeholders(template or ""):
        if name not in cols and name != "choices_text":
            raise UserError(
                f"prompt template: {{{name}}} is not a column of {where}; its columns are: {have}"
            )


def _kind(dataset: DatasetTasks, resolved: dict[str, Any]) -> str:
    if dataset.kind is not None:
        return dataset.kind
    if "tests" in resolved or "io_cases" in resolved.get("metadata", {}):
        return "code"
    return "choice" if "choices" in resolved else "text"


def table_tasks(table: Table, dataset: DatasetTasks, limit: int | None = None) -> TaskSet:
    """The rows of ``table`` as tasks through ``dataset``'s field map and template."""
    resolved = _resolve(dataset.fields, table.columns, dataset.template is not None)
    _check_columns(resolved, dataset.template, table)
    meta_keys = set(resolved.get("metadata", {}))
    bad = [k for k in dataset.fields.public_metadata if k not in meta_keys]
    if bad:
        raise UserError(
            f"public_metadata {', '.join(bad)}: not a metadata key (map it with metadata=...)"
        )
    kind = _kind(dataset, resolved)
    tasks: list[Task] = []
    first_row: dict[str, int] = {}
    for i, (row, label) in enumerate(zip(table.rows, table.labels, strict=True)):
        if limit is not None and len(tasks) >= limit:
            break
        task = _row_task(row, label, i, resolved, dataset, kind)
        if task.id in first_row:
            raise TaskFileError(
                f"{table.info.location}: task id {task.id!r} appears twice (rows "
                f"{first_row[task.id]} and {i}); ids must be unique (map id= to a unique column)"
            )
        first_row[task.id] = i
        tasks.append(task)
    fields = {k: v for k, v in _flat(resolved).items()}
    if dataset.fields.public_metadata:
        fields["public_metadata"] = ",".join(dataset.fields.public_metadata)
    info = table.info.model_copy(
        update={
            "rows_sha256": tasks_sha256(tasks),
            "template_sha256": text_sha256(dataset.template),
            "fields": fields,
            "spec": dataset.spec(),
            "config": table.info.config or dataset.config,
        }
    )
    return TaskSet(tasks=tasks, source=info)


def _flat(resolved: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in resolved.items():
        if isinstance(v, dict):
            v = ",".join(f"{key}:{col}" if key != col else col for key, col in v.items())
        elif isinstance(v, list):
            v = ",".join(v)
        out[k] = v
    return out


def _row_task(
    row: dict[str, Any],
    where: str,
    index: int,
    resolved: dict[str, Any],
    dataset: DatasetTasks,
    kind: str,
) -> Task:
    """One row as a Task, read like a native JSONL line; errors name the row."""
    obj: dict[str, Any] = {"kind": kind}
    choices: list[str] | None = None
    if "choices" in resolved:
        choices = _choices(row, resolved["choices"], where)
        obj["choices"] = choices
    if dataset.template is not None:
        values = {"choices_text": choices_text(choices or []), **row}
        try:
            obj["prompt"] = dataset.template.format_map(values)
        except KeyError as exc:  # a column other rows have and this one lacks
            raise TaskFileError(f"{where}: prompt template: no column {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:  # a format spec the value does not take
            raise TaskFileError(f"{where}: prompt template: {exc}") from None
    else:
        prompt = row.get(resolved["prompt"])
        if prompt in (None, ""):
            raise TaskFileError(f"{where}: column {resolved['prompt']!r} (prompt) is empty")
        if isinstance(prompt, str) and choices:  # the model reads the prompt: show the options
            prompt = f"{prompt.rstrip()}\n\n{choices_text(choices)}"
        obj["prompt"] = prompt
    if "id" in resolved:
        value = row.get(resolved["id"])
        if value in (None, ""):
            raise TaskFileError(f"{where}: column {resolved['id']!r} (id) is empty")
        obj["id"] = value
    if "reference" in resolved:
        ref = reference_text(row.get(resolved["reference"]), where, resolved["reference"])
        obj["reference"] = (
            _letter(ref, row.get(resolved["reference"]), choices, where)
            if (kind == "choice" and ref is not None)
            else ref
        )
    for name in ("tests", "visible_tests"):
        if name in resolved:
            tests = _tests(row.get(resolved[name]), where, resolved[name])
            if tests is not None:
                obj[name] = tests
    if "entry_point" in resolved and row.get(resolved["entry_point"]) not in (None, ""):
        obj["entry_point"] = row[resolved["entry_point"]]
    if "metadata" in resolved:
        obj["metadata"] = {key: row.get(col) for key, col in resolved["metadata"].items()}
        obj["public_metadata"] = list(dataset.fields.public_metadata)
    return _native_task(obj, where, f"row-{index}")


def choices_text(choices: list[str]) -> str:
    """The options as a prompt shows them: ``A) ...`` a line."""
    return "\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(choices))


def _choices(row: dict[str, Any], columns: str | list[str], where: str) -> list[str]:
    values: Any
    if isinstance(columns, list):
        values = [row.get(c) for c in columns]
    else:
        values = row.get(columns)
        if not isinstance(values, list):
            raise TaskFileError(
                f"{where}: column {columns!r} (choices) must hold a list of options, not "
                f"{type(values).__name__} (or map choices= to one column per option)"
            )
    if not 2 <= len(values) <= len(LETTERS) or any(v is None for v in values):
        raise TaskFileError(
            f"{where}: choices must be 2 to {len(LETTERS)} options, none empty; got {values!r:.200}"
        )
    return [v if isinstance(v, str) else str(v) for v in values]


def _letter(ref: str, raw: Any, choices: list[str] | None, where: str) -> str:
    """A multiple-choice reference as its letter: given as the letter, the option's index
    (from 0), or the option's text."""
    n = len(choices or [])
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < n:
        return LETTERS[raw]
    text = ref.strip()
    if len(text) == 1 and text.upper() in LETTERS[: n or len(LETTERS)]:
        return text.upper()
    if choices and text in choices:
        return LETTERS[choices.index(text)]
    raise TaskFileError(
        f"{where}: reference {ref[:80]!r} is not a choice: give its letter (A-{LETTERS[max(n, 1) - 1]}), "
        "its index from 0, or the option's text"
    )


def _tests(value: Any, where: str, column: str) -> list[str] | None:
    """Tests as a list of code strings: a list as given; one text split into its assert lines
    when every line is one, else kept whole (a ``check()`` program)."""
    if value is None:
        return None
    if isinstance(value, str):
        lines = [ln for ln in value.splitlines() if ln.strip()]
        if lines and all(ln.lstrip().startswith("assert ") and ln == ln.lstrip() for ln in lines):
            return lines
        return [value] if value.strip() else []
    if isinstance(value, list | tuple) and all(isinstance(t, str) for t in value):
        return list(value)
    raise TaskFileError(
        f"{where}: column {column!r} must hold test code: a list of strings or one text"
    )


# -- every spec -> TaskSet -------------------------------------------------------------------
def dataset_spec(spec: str) -> DatasetTasks | None:
    """The DatasetTasks a spec string names, or None when it is no dataset spec (a native
    JSONL file without a field map, a registered source, nonsense)."""
    location, sep, _ = spec.partition("?")
    if location.startswith("hf:"):
        return DatasetTasks.parse(spec)
    kind = file_kind(location)
    if kind == "jsonl" and not sep:
        return None  # native JSONL, as always
    if kind is not None or (os.path.isdir(location) and dataset_folder(Path(location))):
        return DatasetTasks.parse(spec)
    return None


def load_task_set(spec: str | DatasetTasks | list[Task], limit: int | None = None) -> TaskSet:
    """Any ``--tasks`` spec (or a DatasetTasks, or a list of Tasks) as a TaskSet: the first
    ``limit`` tasks and where they came from."""
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    if isinstance(spec, DatasetTasks):
        ts = spec.load(limit)
        name = spec.spec()
    elif isinstance(spec, list):
        ts = inline_task_set(spec, limit)
        name = ts.source.spec
    else:
        ts = _from_string(spec, limit)
        name = spec
    if not ts.tasks:
        raise UserError(f"task spec {name!r} yielded no tasks")
    return ts


def inline_spec(tasks: list[Task]) -> str:
    """How a list of tasks passed in directly is named in ``runs.tasks_spec`` and hashed: by
    its content, so a resume with the same tasks matches and one with others does not."""
    import hashlib
    import json

    blob = json.dumps([t.model_dump(mode="json") for t in tasks], sort_keys=True)
    return f"inline:{len(tasks)} tasks sha256={hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def inline_task_set(tasks: Iterable[Task], limit: int | None = None) -> TaskSet:
    given = list(tasks)
    if not all(isinstance(t, Task) for t in given):
        raise UserError("tasks: a list of Task objects (or a spec string)")
    kept = given if limit is None else given[:limit]
    spec = inline_spec(given)
    sources._check_unique(kept, spec)
    info = SourceInfo(kind="inline", location="inline", rows_sha256=tasks_sha256(kept), spec=spec)
    return TaskSet(tasks=kept, source=info)


def _from_string(spec: str, limit: int | None) -> TaskSet:
    found = sources._find_source(spec)
    if found is not None:
        source, rest = found
        kwargs = sources._arguments(source, rest, limit)
        out = source.load(**kwargs)
        if isinstance(out, TaskSet):
            return out.limited(limit, spec)
        tasks = sources._collect(source, out, spec, limit)
        shipped = source.load.__module__.startswith("loopwright.")
        info = SourceInfo(
            kind="builtin" if shipped else "plugin",
            location=rest[1:].partition("?")[0] if rest.startswith(":") else source.name,
            rows_sha256=tasks_sha256(tasks),
            seeds={k: v for k, v in kwargs.items() if "seed" in k and type(v) is int},
            spec=spec,
        )
        return TaskSet(tasks=tasks, source=info)
    dataset = dataset_spec(spec)
    if dataset is not None:
        return dataset.load(limit)
    if spec.endswith((".jsonl", ".jsonl.gz")) or os.path.exists(spec):
        tasks = sources.load_native(Path(spec))
        tasks = tasks if limit is None else tasks[:limit]
        info = SourceInfo(
            kind="native",
            location=str(Path(spec).resolve()),
            rows_sha256=tasks_sha256(tasks),
            spec=spec,
        )
        return TaskSet(tasks=tasks, source=info)
    sources._no_such_spec(spec)
    raise AssertionError("unreachable")  # pragma: no cover: _no_such_spec raises
