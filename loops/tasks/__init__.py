"""Tasks: the record a loop is given (``task``), the task sources behind ``--tasks SPEC``
(``sources``: ``@task_source`` registers a loader), and answer normalisation per task kind
(``answers``)."""

from loopwright.loops.tasks.sources import (
    CODE_TASKS,
    TASK_SOURCES,
    TaskFileError,
    TaskRow,
    TaskSource,
    builtin_arithmetic,
    builtin_code,
    load_gsm8k,
    load_humaneval,
    load_math,
    load_native,
    load_tasks,
    read_jsonl,
    task_source,
    task_source_names,
)
from loopwright.loops.tasks.task import (
    BLIND_METADATA,
    TEST_STYLES,
    Task,
    TaskKind,
    TestStyle,
    doctest_asserts,
    visible_tests,
)

__all__ = [
    "BLIND_METADATA",
    "CODE_TASKS",
    "TASK_SOURCES",
    "TEST_STYLES",
    "Task",
    "TaskFileError",
    "TaskKind",
    "TaskRow",
    "TaskSource",
    "TestStyle",
    "builtin_arithmetic",
    "builtin_code",
    "doctest_asserts",
    "load_gsm8k",
    "load_humaneval",
    "load_math",
    "load_native",
    "load_tasks",
    "read_jsonl",
    "task_source",
    "task_source_names",
    "visible_tests",
]
