"""What a loop node can call to check or look something up. No knowledge of loops.

The judge's and search's public names are re-exported whole from their own ``__all__``
(``loopwright.tools.judge``, ``loopwright.tools.search``): each list is written once.
"""

from loopwright.tools import judge, search
from loopwright.tools.code_tests import (
    CodeTestResult,
    ExecSummary,
    TestOutcome,
    extract_code,
    run_asserts,
    run_humaneval,
    run_io,
)
from loopwright.tools.judge import *  # noqa: F403
from loopwright.tools.judge_report import report as bias_report
from loopwright.tools.math_check import (
    MathChecker,
    MathCheckError,
    MathCheckUnavailable,
    MathVerdict,
    extract_answer,
)
from loopwright.tools.numeric import NumericVerdict, check_number, extract_number
from loopwright.tools.search import *  # noqa: F403

__all__ = [
    "CodeTestResult",
    "ExecSummary",
    "MathCheckError",
    "MathCheckUnavailable",
    "MathChecker",
    "MathVerdict",
    "NumericVerdict",
    "TestOutcome",
    "bias_report",
    "check_number",
    "extract_answer",
    "extract_code",
    "extract_number",
    "run_asserts",
    "run_humaneval",
    "run_io",
]
__all__ += judge.__all__
__all__ += search.__all__
