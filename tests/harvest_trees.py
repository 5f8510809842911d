"""Build small trace databases by hand, node by node, where the right harvest is known."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loopwright.traces.records import NodeRecord, TaskRecord, VerdictRecord
from loopwright.traces.store import TraceStore

_T0 = datetime(2026, 1, 1)


class Trees:
    """Writes runs, tasks, nodes and verdicts straight into a fresh trace database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = TraceStore(path)
        self._tick = 0
        self.ids: dict[str, str] = {}  # short name -> node id

    def _now(self) -> datetime:
        self._tick += 1
        return _T0 + timedelta(seconds=self._tick)

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.store.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    def run(self, name: str, loop: str = "self-refine", model: str = "m1") -> str:
        self._insert(
            "runs",
            {"run_id": f"run-{name}", "name": name, "loop": loop, "model": model,
             "config": json.dumps({"loop": loop}), "config_hash": f"h-{name}", "seed": 0,
             "version": "test", "status": "done"},
        )  # fmt: skip
        return f"run-{name}"

    def task(self, run: str, task_id: str, prompt: str) -> None:
        rec = TaskRecord(run_id=run, task_id=task_id, idx=0, kind="math", prompt=prompt,
                         reference="1", status="done")  # fmt: skip
        self._insert("tasks", rec.row())

    def node(
        self,
        name: str,
        run: str,
        task_id: str,
        content: str | None,
        *,
        role: str = "generator",
        parent: str | None = None,
        round_: int = 0,
        passed: bool | None = None,
        score: float | None = None,
        graded: bool | None = None,
        value: float | None = None,
        model: str = "m1",
        loop: str | None = None,
        feedback: str | None = None,
    ) -> str:
        """A node; ``passed``/``graded`` add in-loop/graded verdicts (score defaults to 0/1)."""
        loop_name = (
            loop or self.store.query("SELECT loop FROM runs WHERE run_id = ?", [run])[0]["loop"]
        )
        rec = NodeRecord(
            node_id=f"n-{name}", parent_id=None if parent is None else self.ids[parent],
            run_id=run, task_id=task_id, loop=loop_name, model=model, role=role,
            depth=round_, round=round_, content=content, value=value, created_at=self._now(),
        )  # fmt: skip
        self._insert("nodes", rec.row())
        self.ids[name] = rec.node_id
        for stage, ok in (("in_loop", passed), ("graded", graded)):
            if ok is None:
                continue
            sc = score if score is not None else float(ok)
            self.verdict(name, run, task_id, stage, ok, sc, feedback)
        return rec.node_id

    def verdict(
        self,
        name: str,
        run: str,
        task_id: str,
        stage: str,
        passed: bool | None,
        score: float | None,
        feedback: str | None = None,
        *,
        verifier: str = "math-answer",
        details: dict[str, Any] | None = None,
    ) -> str:
        rec = VerdictRecord(
            run_id=run, task_id=task_id, node_id=self.ids[name], stage=stage,  # type: ignore[arg-type]
            verifier=verifier, passed=passed, score=score, feedback=feedback,
            details=None if details is None else json.dumps(details), created_at=self._now(),
        )  # fmt: skip
        self._insert("verdicts", rec.row())
        return rec.verdict_id

    def judge(self, run: str, task_id: str, a: str, b: str, a_first: str | None,
              b_first: str | None, votes: int = 1) -> str:  # fmt: skip
        """A pairwise judgement of nodes ``a`` and ``b`` in both orders (winner per order)."""
        details = {
            "a_node_id": self.ids[a],
            "b_node_id": self.ids[b],
            "winner": a_first if a_first == b_first else "tie",
            "position_consistent": None if None in (a_first, b_first) else a_first == b_first,
            "a_first": {"order": "ab", "winner": a_first, "votes": [a_first] * votes},
            "b_first": {"order": "ba", "winner": b_first, "votes": [b_first] * votes},
        }
        return self.verdict(a, run, task_id, "judge", a_first == "a", None,
                            verifier="llm-judge-pairwise", details=details)  # fmt: skip

    def close(self) -> None:
        self.store.close()
