"""What every benchmark spec shares: reading its rows from a local copy or its hub id(s),
picking a column among a benchmark's known spellings, and the provenance of the set.

A local copy is any file or folder ``readers.read_table`` reads (a ``save_to_disk`` folder,
parquet files, ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv``), or a folder of ``.jsonl``
files (how LiveCodeBench and APPS ship theirs). Hub ids go through ``datasets``; the cache
serves them offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.loops.tasks.readers import read_table
from loopwright.loops.tasks.sources import TaskFileError, read_jsonl
from loopwright.loops.tasks.task import Task
from loopwright.loops.tasks.taskset import SourceInfo, TaskSet, rows_sha256, tasks_sha256


@dataclass(frozen=True)
class HubCopy:
    """One hub dataset a benchmark loads when the spec names no path."""

    id: str
    split: str
    config: str | None = None


@dataclass(frozen=True)
class Row:
    """One dataset row, where an error names it, and its position from 0."""

    data: dict[str, Any]
    where: str
    index: int

    def get(self, *names: str) -> Any:
        """The first of ``names`` the row has (not None), else None."""
        for name in names:
            value = self.data.get(name)
            if value is not None:
                return value
        return None

    def need(self, *names: str) -> Any:
        """As ``get``, but a missing or empty value is one error naming the field."""
        value = self.get(*names)
        if value is None or value == "":
            label = " or ".join(repr(n) for n in names)
            raise TaskFileError(f"{self.where}: missing field {label}")
        return value

    def text(self, *names: str) -> str:
        """A required text field (one error when it is not text)."""
        value = self.need(*names)
        if not isinstance(value, str):
            name = next(n for n in names if self.data.get(n) is not None)
            raise TaskFileError(f"{self.where}: field {name!r} must be text")
        return value


@dataclass
class Rows:
    """The rows of a benchmark and where they came from."""

    rows: list[Row]
    kind: str
    location: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_rows(
    name: str,
    path: Path | None,
    hub: Sequence[HubCopy],
    *,
    split: str | None = None,
    config: str | None = None,
    revision: str | None = None,
) -> Rows:
    """The rows at ``path`` (a file or folder in any of the benchmark's schemas), or of its
    hub copies when ``path`` is None (their rows one after another)."""
    if path is not None:
        return _local(path, split, config)
    if not hub:
        raise UserError(f"{name} has no hub copy: give a local one ({name}:PATH)")
    out: list[Row] = []
    infos: list[SourceInfo] = []
    for copy in hub:
        table = read_table(
            f"hf:{copy.id}",
            config=config or copy.config,
            split=split or copy.split,
            revision=revision,
        )
        infos.append(table.info)
        base = len(out)
        out.extend(
            Row(r, lab, base + i)
            for i, (r, lab) in enumerate(zip(table.rows, table.labels, strict=True))
        )
    first = infos[0]
    configs = [i.config for i in infos if i.config]
    return Rows(
        out,
        "hub",
        ",".join(dict.fromkeys(i.location for i in infos)),
        config=",".join(configs) if configs else None,
        split=first.split,
        revision=",".join(i.revision for i in infos if i.revision) or None,
    )


def _local(path: Path, split: str | None, config: str | None) -> Rows:
    if path.is_dir() and _jsonl_folder(path):
        files = sorted(
            (p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))),
            key=_natural,
        )
        out: list[Row] = []
        for f in files:
            for lineno, obj in read_jsonl(f, "data file"):
                out.append(Row(obj, f"{f}:{lineno}", len(out)))
        return Rows(out, "jsonl", str(path.resolve()), split=split)
    if path.is_file() and path.name.endswith((".jsonl", ".jsonl.gz")):
        # positions by line number, as gsm8k:PATH and math:PATH have always counted them
        rows = [Row(obj, f"{path}:{n}", n - 1) for n, obj in read_jsonl(path)]
        return Rows(rows, "jsonl", str(path.resolve()), split=split)
    table = read_table(str(path), config=config, split=split)
    rows = [Row(r, lab, i) for i, (r, lab) in enumerate(zip(table.rows, table.labels, strict=True))]
    info = table.info
    return Rows(rows, info.kind, info.location, info.config, info.split, info.revision)


def _jsonl_folder(path: Path) -> bool:
    """A folder of ``.jsonl`` files and no dataset of another form."""
    try:
        names = [p.name for p in path.iterdir()]
    except OSError:
        return False
    if any(n in ("dataset_dict.json", "state.json") for n in names):
        return False
    if any(n.endswith(".parquet") for n in names):
        return False
    return any(n.endswith((".jsonl", ".jsonl.gz")) for n in names)


def _natural(p: Path) -> tuple[str, int]:
    """``test.jsonl`` < ``test2.jsonl`` < ``test10.jsonl`` (an unnumbered file is number 1,
    as LiveCodeBench's ``test.jsonl`` is its first release)."""
    m = re.fullmatch(r"(.*?)(\d*)\.jsonl(?:\.gz)?", p.name)
    return (m.group(1), int(m.group(2) or 1)) if m else (p.name, 0)


def convert(
    rows: Sequence[Row], make: Callable[[Row], Task | None], limit: int | None
) -> list[Task]:
    """``make`` over the rows until ``limit`` tasks (rows it returns None for are skipped);
    ids must be unique."""
    tasks: list[Task] = []
    seen: set[str] = set()
    for row in rows:
        if limit is not None and len(tasks) >= limit:
            break
        task = make(row)
        if task is None:
            continue
        if task.id in seen:
            raise TaskFileError(
                f"{row.where}: task id {task.id!r} appears twice; ids must be unique"
            )
        seen.add(task.id)
        tasks.append(task)
    return tasks


def task_set(
    name: str,
    tasks: list[Task],
    rows: Rows,
    *,
    spec: str,
    seeds: dict[str, int] | None = None,
    template: str | None = None,
    fields: dict[str, str] | None = None,
) -> TaskSet:
    """The tasks with their SourceInfo (rows hash over the tasks as loaded)."""
    from loopwright.loops.tasks.taskset import text_sha256

    info = SourceInfo(
        kind=rows.kind,
        location=rows.location,
        config=rows.config,
        split=rows.split,
        revision=rows.revision,
        rows_sha256=tasks_sha256(tasks),
        seeds=dict(seeds or {}),
        template_sha256=text_sha256(template),
        fields=dict(fields or {}),
        spec=spec,
    )
    return TaskSet(tasks=tasks, source=info)


def spec_of(name: str, path: Path | None, **options: Any) -> str:
    """The canonical spec string: ``NAME[:PATH][?key=value&...]`` (options that are None left
    out, paths absolute)."""
    head = name if path is None else f"{name}:{path.resolve()}"
    query = "&".join(f"{k}={v}" for k, v in options.items() if v is not None)
    return head + (f"?{query}" if query else "")


__all__ = [
    "HubCopy",
    "Row",
    "Rows",
    "convert",
    "load_rows",
    "rows_sha256",
    "spec_of",
    "task_set",
]
