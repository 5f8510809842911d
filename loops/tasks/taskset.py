"""A task set and where it came from: the tasks of a spec with their ``SourceInfo``, the
provenance a run records (what was read, which rows, which template and seeds)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from loopwright.loops.tasks.task import Task
from pydantic import BaseModel, ConfigDict, Field

SOURCE_KINDS = ("hub", "disk", "parquet", "jsonl", "json", "csv", "native", "builtin", "inline",
                "plugin")  # fmt: skip
"""What ``SourceInfo.kind`` says: a hub id, a ``save_to_disk`` folder, a file or folder of
that format, a native JSONL file, a shipped source, tasks passed in directly, a user's
registered source."""


class SourceInfo(BaseModel):
    """Where a task set came from, as a run records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(description="hub, disk, parquet, jsonl, json, csv, native, builtin, "
                      "inline or plugin (see SOURCE_KINDS).")  # fmt: skip
    location: str = Field(description="The hub id, the path read, or the source's name.")
    config: str | None = Field(None, description="The hub dataset's configuration (subset).")
    split: str | None = Field(None, description="The split read (test, train, ...).")
    revision: str | None = Field(
        None, description="The commit the hub resolved, or the dataset's fingerprint, if known."
    )
    rows_sha256: str = Field(
        description="SHA-256 over the rows as loaded (each a canonical JSON line, in order): "
        "the same rows give the same hash, one changed row another."
    )
    seeds: dict[str, int] = Field(
        default_factory=dict, description="Seeds of any shuffle or permutation, by name."
    )
    template_sha256: str | None = Field(None, description="SHA-256 of the prompt template.")
    fields: dict[str, str] = Field(
        default_factory=dict, description="The field map used: task field -> column(s)."
    )
    spec: str = Field("", description="The canonical spec string that loads this set again.")


class TaskSet(BaseModel):
    """The tasks of a spec and their provenance."""

    model_config = ConfigDict(frozen=True)

    tasks: list[Task] = Field(description="The tasks, in order.")
    source: SourceInfo = Field(description="Where they came from.")

    def limited(self, limit: int | None, spec: str | None = None) -> TaskSet:
        """The first ``limit`` tasks, the rows hash taken over them (and ``spec`` recorded
        when the source left it empty)."""
        tasks = self.tasks if limit is None else self.tasks[:limit]
        update: dict[str, Any] = {"rows_sha256": tasks_sha256(tasks)}
        if spec and not self.source.spec:
            update["spec"] = spec
        return TaskSet(tasks=tasks, source=self.source.model_copy(update=update))


def canonical_json(value: Any) -> str:
    """One line of JSON that is the same for equal values: keys sorted, no spaces, ASCII
    (a lone surrogate escaped), anything JSON lacks (bytes, dates) as its ``str``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def rows_sha256(rows: Iterable[Any]) -> str:
    """SHA-256 over ``rows``, one canonical JSON line each, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(canonical_json(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def tasks_sha256(tasks: Iterable[Task]) -> str:
    """SHA-256 over the tasks as loaded (``rows_sha256`` of each task's JSON form)."""
    return rows_sha256(t.model_dump(mode="json") for t in tasks)


def text_sha256(text: str | None) -> str | None:
    """SHA-256 of a text (a prompt template), None for None."""
    return (
        None if text is None else hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    )
