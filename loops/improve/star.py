"""STaR's rationalisation (Zelikman et al. 2022): for train tasks the model never solved, ask
again with the reference answer as a hint, keep the graded-correct rationales, and train on
them under the original prompt (the hint is removed), so the model learns to reach the
answer without being told it. Only train-task references are used; eval tasks never are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopwright.loops.tasks import Task, load_tasks
from loopwright.traces import TraceStore, run_by_name
from loopwright.traces.grading import done_task_ids, graded_passed_task_ids

MARK = "\n\n(Hint: the correct answer is"
HINT = MARK + " {reference}. Explain step by step how to get it.)"


def unsolved_tasks(db: str, run: str, spec: str, limit: int | None) -> list[Task]:
    """Train tasks of ``run`` whose samples the grader failed, every one of them."""
    with TraceStore(db, read_only=True) as store:
        row = run_by_name(store, run)
        if row is None:
            return []
        solved = graded_passed_task_ids(store, row["run_id"])
        ran = done_task_ids(store, row["run_id"])
    return [t for t in load_tasks(spec, limit) if t.id in ran - solved and t.reference]


def hinted_task_file(tasks: list[Task], out: Path) -> Path:
    """A task file whose prompts carry the reference as a hint; ids are kept."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in tasks:
        row = t.model_dump(mode="json")
        row["prompt"] = t.prompt + HINT.format(reference=t.reference)
        row["metadata"] = {**t.metadata, "rationalise_of": t.prompt}
        rows.append(row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def strip_hints(data: Path, rationalise_runs: set[str]) -> None:
    """Rows harvested from a rationalisation run get their original prompt back."""
    out: list[dict[str, Any]] = []
    for line in data.read_text(encoding="utf-8").splitlines():
        if not line:
            continue
        row = json.loads(line)
        if (row.get("provenance") or {}).get("run_name") in rationalise_runs:
            for msg in row["messages"]:
                if msg["role"] == "user" and MARK in msg["content"]:
                    msg["content"] = msg["content"].split(MARK)[0]
        out.append(row)
    tmp = data.with_name(f".{data.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    tmp.replace(data)
