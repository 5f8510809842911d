"""Small read helpers over the trace store. Everything else is plain SQL."""

from __future__ import annotations

import json
from typing import Any

from loopwright.traces.store import TraceStore


def lit(text: str | None) -> str:
    """A SQL string literal."""
    if text is None:
        return "NULL"
    return "'" + text.replace("'", "''") + "'"


def in_list(column: str, values: tuple[str, ...] | list[str]) -> str:
    """``column IN ('a', 'b')`` with each value quoted as a literal."""
    return f"{column} IN ({', '.join(lit(v) for v in values)})"


def cache_lookup(store: TraceStore, cache_key: str, n: int) -> list[dict[str, Any]] | None:
    """The cached samples 0..n-1 for a request, or None unless all n are cached."""
    rows = store.query(
        "SELECT * FROM call_cache WHERE cache_key = ? AND sample_index < ? ORDER BY sample_index",
        [cache_key, n],
    )
    return rows if len(rows) == n else None


def table_names(store: TraceStore) -> set[str]:
    """The tables of the database (a file from an older version may lack some)."""
    return {r["table_name"] for r in store.query("SELECT table_name FROM duckdb_tables()")}


def cache_has_rows(store: TraceStore) -> bool:
    """True when the call cache holds any sample (else a new request's key cannot be in it)."""
    rows = store.query("SELECT EXISTS (SELECT 1 FROM call_cache) AS any")
    return bool(rows[0]["any"])


def verifier_label(config: str | dict[str, Any] | None) -> tuple[str, bool]:
    """How a run's in-loop verifier is shown, and whether it read the answer key.

    Runs recorded before in-loop verifiers were chosen (no ``verifier`` in their config)
    checked drafts against the reference: they are oracle runs.
    """
    cfg = json.loads(config) if isinstance(config, str) else dict(config or {})
    if "verifier" not in cfg:
        return "oracle (legacy)", True
    names = sorted(set((cfg.get("verifiers") or {}).values())) or [str(cfg["verifier"])]
    oracle = bool(cfg.get("oracle")) or "oracle" in names
    return ",".join(names), oracle


def verifier_sql(config: str) -> str:
    """SQL for a run's in-loop verifier as shown, from its ``config`` JSON column (the same
    reading as ``verifier_label``): the verifiers it resolved, else the name it was given,
    else ``oracle (legacy)``."""
    return (
        f"coalesce(nullif(array_to_string(list_sort(list_distinct("
        f"json_extract_string({config}, '$.verifiers.*'))), ','), ''), "
        f"json_extract_string({config}, '$.verifier'), 'oracle (legacy)')"
    )


def oracle_sql(config: str) -> str:
    """SQL: did the run's loop see the answer key (``verifier_label``'s second value)."""
    return (
        f"(coalesce(CAST(json_extract({config}, '$.oracle') AS BOOLEAN), FALSE) "
        f"OR json_extract_string({config}, '$.verifier') IS NULL "
        f"OR json_extract_string({config}, '$.verifier') = 'oracle')"
    )
