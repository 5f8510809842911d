"""Tasks: the record a loop is given (``task``), the task sources behind ``--tasks SPEC``
(``sources``: ``@task_source`` registers a loader), any dataset as tasks with its provenance
(``datasets``: a field map, a template, ``load_task_set``; ``readers``: the rows of a hub id,
folder or file), and answer normalisation per task kind (``answers``)."""

from loopwright.loops.tasks.benchmarks import (  # registers the benchmark specs
    BENCHMARKS,
    load_gsm8k,
    load_humaneval,
    load_math,
)
from loopwright.loops.tasks.datasets import DatasetTasks, FieldMap, load_task_set
from loopwright.loops.tasks.readers import read_rows
from loopwright.loops.tasks.sources import (
    CODE_TASKS,
    TASK_SOURCES,
    TaskFileError,
    TaskRow,
    TaskSource,
    builtin_arithmetic,
    builtin_code,
    load_native,
    load_tasks,
    read_jsonl,
    task_source,
    task_source_names,
)
from loopwright.loops.tasks.task import (
    BLIND_METADATA,
    TASK_KINDS,
    TEST_STYLES,
    Task,
    TaskKind,
    TestStyle,
    doctest_asserts,
    visible_tests,
)
from loopwright.loops.tasks.taskset import SourceInfo, TaskSet

__all__ = [
    "BENCHMARKS",
    "BLIND_METADATA",
    "CODE_TASKS",
    "TASK_KINDS",
    "TASK_SOURCES",
    "TEST_STYLES",
    "DatasetTasks",
    "FieldMap",
    "SourceInfo",
    "Task",
    "TaskFileError",
    "TaskKind",
    "TaskRow",
    "TaskSet",
    "TaskSource",
    "TestStyle",
    "builtin_arithmetic",
    "builtin_code",
    "doctest_asserts",
    "load_gsm8k",
    "load_humaneval",
    "load_math",
    "load_native",
    "load_task_set",
    "load_tasks",
    "read_jsonl",
    "read_rows",
    "task_source",
    "task_source_names",
    "visible_tests",
]
