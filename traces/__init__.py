"""The DuckDB trace store: schema, one writer per process, and query helpers."""

from loopwright.traces.queries import cache_lookup
from loopwright.traces.records import (
    CacheRecord,
    CallRecord,
    NodeRecord,
    TaskRecord,
    VerdictRecord,
    new_id,
    utcnow,
)
from loopwright.traces.rollouts import (
    RolloutRecord,
    discard_steps_after,
    rollouts_of,
    step_metrics,
    step_run_name,
)
from loopwright.traces.runs import (
    UnknownRun,
    discard_partial_tasks,
    list_runs,
    resolve_runs,
    run_by_name,
    run_summary,
    task_statuses,
)
from loopwright.traces.schema import SCHEMA_VERSION
from loopwright.traces.store import TraceStore, TraceStoreError
from loopwright.traces.writer import TraceWriter

__all__ = [
    "SCHEMA_VERSION",
    "CacheRecord",
    "CallRecord",
    "NodeRecord",
    "RolloutRecord",
    "TaskRecord",
    "TraceStore",
    "TraceStoreError",
    "TraceWriter",
    "UnknownRun",
    "VerdictRecord",
    "cache_lookup",
    "discard_partial_tasks",
    "discard_steps_after",
    "list_runs",
    "new_id",
    "resolve_runs",
    "rollouts_of",
    "run_by_name",
    "run_summary",
    "step_metrics",
    "step_run_name",
    "task_statuses",
    "utcnow",
]
