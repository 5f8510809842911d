"""What a loop node can call to check or look something up. No knowledge of loops."""

from loopwright.tools.code_tests import (
    CodeTestResult,
    ExecSummary,
    TestOutcome,
    extract_code,
    run_asserts,
    run_humaneval,
    run_io,
)
from loopwright.tools.math_check import MathChecker, MathVerdict, extract_answer
from loopwright.tools.numeric import NumericVerdict, check_number, extract_number

__all__ = [
    "CodeTestResult",
    "ExecSummary",
    "MathChecker",
    "MathVerdict",
    "NumericVerdict",
    "TestOutcome",
    "check_number",
    "extract_answer",
    "extract_code",
    "extract_number",
    "run_asserts",
    "run_humaneval",
    "run_io",
]
