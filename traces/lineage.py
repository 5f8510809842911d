"""Lineage of self-improvement series: the ``models`` and ``rounds`` tables.

A ``rounds`` row moves through stages (generate, grade, harvest, train, eval, done, or
failed); each stage is idempotent, so a resumed series re-enters at the row's stage. A
``models`` row is inserted only once its weights file is complete.
"""

from __future__ import annotations

import json
from typing import Any

from loopwright.traces.records import repair_row, utcnow
from loopwright.traces.schema import JSON_COLUMNS
from loopwright.traces.store import TraceStore
from pydantic import BaseModel, ConfigDict, Field

STAGES = ("generate", "grade", "harvest", "train", "eval", "done", "failed")


class ModelRecord(BaseModel):
    """One trained model (or the base, which has no row)."""

    model_config = ConfigDict(frozen=True)

    model_id: str = Field(description="Model string it is served as (local/PATH.gguf).")
    parent: str | None = Field(description="Model the round's samples came from.")
    base: str = Field(description="Weights training started from.")
    improve: str = Field(description="Series name.")
    round: int
    method: str
    path: str = Field(description="The GGUF file.")
    data_hash: str = Field(description="sha256 of the training file.")
    data_rows: int
    train_config: dict[str, Any]
    final_loss: float | None
    train_s: float
    step: int | None = Field(None, description="GRPO: the step the checkpoint was taken at.")


def _storable(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its text made storable as every row's is (``records.repair_row``): a
    series name or a model path from the command line may hold a lone surrogate."""
    return repair_row(row, JSON_COLUMNS.get(table, frozenset()))[0]


def add_model(store: TraceStore, m: ModelRecord) -> None:
    row = _storable("models", {**m.model_dump(), "train_config": json.dumps(m.train_config)})
    store.execute(
        f"INSERT INTO models ({', '.join(row)}, created_at) VALUES ({'?, ' * len(row)}?)",
        [*row.values(), utcnow()],
    )


def model_of_round(store: TraceStore, improve: str, rnd: int) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM models WHERE improve = ? AND round = ?", [improve, rnd])
    return rows[0] if rows else None


def models_of(store: TraceStore, improve: str) -> list[dict[str, Any]]:
    """The ``models`` rows of a series (no ``train_config``), by round."""
    return store.query(
        "SELECT round, model_id, parent, base, data_rows, data_hash, final_loss, train_s "
        "FROM models WHERE improve = ? ORDER BY round",
        [improve],
    )


def get_round(store: TraceStore, improve: str, rnd: int) -> dict[str, Any] | None:
    rows = store.query("SELECT * FROM rounds WHERE improve = ? AND round = ?", [improve, rnd])
    if not rows:
        return None
    row = rows[0]
    for col in ("metrics", "config"):
        if isinstance(row[col], str):
            row[col] = json.loads(row[col])
    return row


def rounds_of(store: TraceStore, improve: str) -> list[dict[str, Any]]:
    out = []
    for r in store.query("SELECT round FROM rounds WHERE improve = ? ORDER BY round", [improve]):
        row = get_round(store, improve, int(r["round"]))
        if row is not None:
            out.append(row)
    return out


def set_round(store: TraceStore, improve: str, rnd: int, **fields: Any) -> None:
    """Create or update the row of round ``rnd`` (JSON fields given as dicts)."""
    bad = set(fields) - {"model", "train_run", "eval_run", "stage", "error", "metrics", "config"}
    if bad:
        raise ValueError(f"unknown rounds columns {sorted(bad)}")
    if "stage" in fields and fields["stage"] not in STAGES:
        raise ValueError(f"unknown stage {fields['stage']!r}")
    for col in ("metrics", "config"):
        if col in fields and not isinstance(fields[col], str | None):
            fields[col] = json.dumps(fields[col])
    fields = _storable("rounds", fields)
    if get_round(store, improve, rnd) is None:
        store.execute(
            "INSERT INTO rounds (improve, round, stage, updated_at) VALUES (?, ?, ?, ?)",
            [improve, rnd, fields.get("stage", "generate"), utcnow()],
        )
    sets = ", ".join(f"{k} = ?" for k in fields)
    store.execute(
        f"UPDATE rounds SET {sets}, updated_at = ? WHERE improve = ? AND round = ?",
        [*fields.values(), utcnow(), improve, rnd],
    )


def improve_names(store: TraceStore) -> list[str]:
    return [r["improve"] for r in store.query("SELECT DISTINCT improve FROM rounds ORDER BY 1")]
