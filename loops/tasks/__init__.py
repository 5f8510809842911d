"""Tasks: the record a loop is given (``task``), the loaders behind ``--tasks SPEC``
(``sources``), and answer normalisation per task kind (``answers``)."""

from loopwright.loops.tasks.sources import (
    CODE_TASKS,
    TaskFileError,
    builtin_arithmetic,
    builtin_code,
    load_gsm8k,
    load_humaneval,
    load_math,
    load_native,
    load_tasks,
    read_jsonl,
)
from loopwright.loops.tasks.task import (
    TEST_STYLES,
    Task,
    TaskKind,
    TestStyle,
    doctest_asserts,
    visible_tests,
)

__all__ = [
    "CODE_TASKS",
    "TEST_STYLES",
    "Task",
    "TaskFileError",
    "TaskKind",
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
    "visible_tests",
]
