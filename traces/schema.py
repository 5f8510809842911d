"""DuckDB schema for the trace store.

Every table carries ``run_id``; nodes and calls also carry ``loop``, ``model`` and ``round`` so a
harvested row keeps its provenance without joins. Bump ``SCHEMA_VERSION`` when a table is
added or changed: ``TraceStore`` creates missing tables on open and records the new version;
a column added to a table that exists also goes in ``ADDED_COLUMNS``, which ``TraceStore``
applies to older files on open.
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 8

ADDED_COLUMNS: list[tuple[int, str, str, str]] = [
    (4, "tasks", "worker", "VARCHAR"),  # where a task ran (--executor ray)
    (6, "tasks", "answer_key", "JSON"),  # the keyed task, what grading reads
    (7, "runs", "provenance", "JSON"),  # what the run ran on (loops/execution/provenance.py)
    (8, "models", "step", "INTEGER"),  # the GRPO step a checkpoint was taken at
]
"""``(schema version, table, column, type)`` of columns added after a table's first version."""

TABLES: dict[str, str] = {
    "schema_version": """
        CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER NOT NULL,
            applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        )""",
    "runs": """
        CREATE TABLE IF NOT EXISTS runs (
            run_id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            loop VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            tasks_spec VARCHAR,
            config JSON,
            config_hash VARCHAR,
            seed BIGINT,
            version VARCHAR,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            provenance JSON
        )""",
    "tasks": """
        CREATE TABLE IF NOT EXISTS tasks (
            run_id VARCHAR NOT NULL,
            task_id VARCHAR NOT NULL,
            idx INTEGER,
            kind VARCHAR,
            prompt VARCHAR,
            reference VARCHAR,
            final_answer VARCHAR,
            final_node_id VARCHAR,
            verdict BOOLEAN,
            graded BOOLEAN,
            score DOUBLE,
            stop_reason VARCHAR,
            rounds INTEGER,
            prompt_tokens BIGINT,
            completion_tokens BIGINT,
            total_tokens BIGINT,
            cost_usd DOUBLE,
            calls INTEGER,
            wall_s DOUBLE,
            status VARCHAR NOT NULL,
            error VARCHAR,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            worker VARCHAR,
            answer_key JSON,
            PRIMARY KEY (run_id, task_id)
        )""",
    "nodes": """
        CREATE TABLE IF NOT EXISTS nodes (
            node_id VARCHAR PRIMARY KEY,
            parent_id VARCHAR,
            run_id VARCHAR NOT NULL,
            task_id VARCHAR NOT NULL,
            loop VARCHAR,
            model VARCHAR,
            role VARCHAR NOT NULL,
            depth INTEGER,
            round INTEGER,
            content VARCHAR,
            answer VARCHAR,
            score DOUBLE,
            value DOUBLE,
            visits INTEGER,
            is_final BOOLEAN,
            created_at TIMESTAMP
        )""",
    "calls": """
        CREATE TABLE IF NOT EXISTS calls (
            call_id VARCHAR PRIMARY KEY,
            request_id VARCHAR NOT NULL,
            run_id VARCHAR,
            task_id VARCHAR,
            node_id VARCHAR,
            loop VARCHAR,
            round INTEGER,
            role VARCHAR,
            model VARCHAR NOT NULL,
            messages JSON,
            temperature DOUBLE,
            max_tokens INTEGER,
            n INTEGER,
            seed BIGINT,
            sample_index INTEGER,
            output VARCHAR,
            finish_reason VARCHAR,
            logprob_mean DOUBLE,
            prompt_tokens BIGINT,
            completion_tokens BIGINT,
            cost_usd DOUBLE,
            latency_s DOUBLE,
            attempts INTEGER,
            cache_hit BOOLEAN,
            cache_key VARCHAR,
            error VARCHAR,
            created_at TIMESTAMP
        )""",
    "verdicts": """
        CREATE TABLE IF NOT EXISTS verdicts (
            verdict_id VARCHAR PRIMARY KEY,
            run_id VARCHAR NOT NULL,
            task_id VARCHAR NOT NULL,
            node_id VARCHAR,
            stage VARCHAR NOT NULL,
            verifier VARCHAR NOT NULL,
            verifier_version VARCHAR,
            passed BOOLEAN,
            score DOUBLE,
            feedback VARCHAR,
            details JSON,
            latency_s DOUBLE,
            created_at TIMESTAMP
        )""",
    "call_cache": """
        CREATE TABLE IF NOT EXISTS call_cache (
            cache_key VARCHAR NOT NULL,
            sample_index INTEGER NOT NULL,
            model VARCHAR,
            output VARCHAR,
            finish_reason VARCHAR,
            logprob_mean DOUBLE,
            prompt_tokens BIGINT,
            completion_tokens BIGINT,
            cost_usd DOUBLE,
            created_at TIMESTAMP,
            PRIMARY KEY (cache_key, sample_index)
        )""",
    # v2: a sweep is a grid of runs (strategy x value x model x seed) read together by reports.
    "sweeps": """
        CREATE TABLE IF NOT EXISTS sweeps (
            sweep_id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            tasks_spec VARCHAR,
            grid VARCHAR,
            config JSON,
            config_hash VARCHAR,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP
        )""",
    "sweep_points": """
        CREATE TABLE IF NOT EXISTS sweep_points (
            point_id VARCHAR PRIMARY KEY,
            sweep_id VARCHAR NOT NULL,
            strategy VARCHAR NOT NULL,
            loop VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            seed BIGINT,
            param VARCHAR,
            value DOUBLE,
            options JSON,
            run_name VARCHAR NOT NULL,
            derived BOOLEAN NOT NULL,
            status VARCHAR NOT NULL,
            error VARCHAR
        )""",
    # v3: self-improvement lineage. A model row is written only after its weights are in
    # place (renamed atomically), so a row always names a complete file.
    "models": """
        CREATE TABLE IF NOT EXISTS models (
            model_id VARCHAR PRIMARY KEY,
            parent VARCHAR,
            base VARCHAR NOT NULL,
            improve VARCHAR,
            round INTEGER,
            method VARCHAR,
            path VARCHAR NOT NULL,
            data_hash VARCHAR,
            data_rows INTEGER,
            train_config JSON,
            final_loss DOUBLE,
            train_s DOUBLE,
            created_at TIMESTAMP,
            step INTEGER
        )""",
    "rounds": """
        CREATE TABLE IF NOT EXISTS rounds (
            improve VARCHAR NOT NULL,
            round INTEGER NOT NULL,
            model VARCHAR,
            train_run VARCHAR,
            eval_run VARCHAR,
            stage VARCHAR NOT NULL,
            error VARCHAR,
            metrics JSON,
            config JSON,
            updated_at TIMESTAMP,
            PRIMARY KEY (improve, round)
        )""",
    # v5: nothing is lost whatever the text. Text UTF-8 cannot encode (surrogate code points)
    # is repaired on its way into a row (records.repair_text): one row here per repaired value.
    # A row the database still refuses is kept in write_errors, as JSON text, with the reason.
    "text_repairs": """
        CREATE TABLE IF NOT EXISTS text_repairs (
            run_id VARCHAR,
            task_id VARCHAR,
            table_name VARCHAR NOT NULL,
            row_key VARCHAR,
            field VARCHAR NOT NULL,
            joined_pairs INTEGER NOT NULL,
            replaced INTEGER NOT NULL,
            created_at TIMESTAMP
        )""",
    "write_errors": """
        CREATE TABLE IF NOT EXISTS write_errors (
            run_id VARCHAR,
            task_id VARCHAR,
            table_name VARCHAR NOT NULL,
            error VARCHAR NOT NULL,
            record VARCHAR NOT NULL,
            created_at TIMESTAMP
        )""",
    # v8: online RL (GRPO). One row per rollout (a completion of a step's run, keyed by its
    # generator node): the step, its group, the reward per term, the advantage. One row of
    # metrics per step (traces/rollouts.py writes and reads both).
    "rollouts": """
        CREATE TABLE IF NOT EXISTS rollouts (
            run_id VARCHAR NOT NULL,
            node_id VARCHAR PRIMARY KEY,
            improve VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            task_id VARCHAR NOT NULL,
            group_index INTEGER,
            sample_index INTEGER,
            policy VARCHAR,
            reward DOUBLE,
            rewards JSON,
            advantage DOUBLE,
            completion_tokens INTEGER,
            clipped BOOLEAN,
            pseudo_label VARCHAR,
            correct BOOLEAN,
            created_at TIMESTAMP
        )""",
    "train_steps": """
        CREATE TABLE IF NOT EXISTS train_steps (
            improve VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            run_id VARCHAR,
            metrics JSON,
            created_at TIMESTAMP,
            PRIMARY KEY (improve, step)
        )""",
}

# Tables rows may only be appended to (never updated): the writer batches these as Arrow.
APPEND_TABLES = ("nodes", "calls", "verdicts")

ROW_KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "tasks": ("run_id", "task_id"),
    "nodes": ("node_id",),
    "calls": ("call_id",),
    "verdicts": ("verdict_id",),
    "call_cache": ("cache_key", "sample_index"),
    "rollouts": ("node_id",),
    "train_steps": ("improve", "step"),
}
"""The columns that identify a row of each table the writer (or ``insert_run``) writes."""

JSON_COLUMNS: dict[str, frozenset[str]] = {
    table: frozenset(re.findall(r"^\s*(\w+) JSON\b", ddl, flags=re.MULTILINE))
    for table, ddl in TABLES.items()
}
"""Columns of type JSON per table (their text is repaired as JSON)."""
