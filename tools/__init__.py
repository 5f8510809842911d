"""What a loop node can call to check or look something up. No knowledge of loops.

The judge's and search's public names are re-exported whole from their own ``__all__``
(``loopwright.tools.judge``, ``loopwright.tools.search``): each list is written once. Names
resolve on first use (PEP 562), so importing one module of the package (``tools.errors``,
say) does not import the judge, the search index or the math checker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names as a type checker sees them; at run time, __getattr__
    from loopwright.tools.code_tests import (  # noqa: F401
        CodeTestResult,
        ExecSummary,
        TestOutcome,
        extract_code,
        run_asserts,
        run_humaneval,
        run_io,
    )
    from loopwright.tools.judge import *  # noqa: F403
    from loopwright.tools.judge_report import report as bias_report  # noqa: F401
    from loopwright.tools.math_check import (  # noqa: F401
        MathChecker,
        MathCheckError,
        MathCheckUnavailable,
        MathVerdict,
        extract_answer,
    )
    from loopwright.tools.numeric import NumericVerdict, check_number, extract_number  # noqa: F401
    from loopwright.tools.search import *  # noqa: F403

_OWN: dict[str, tuple[str, str]] = {
    "CodeTestResult": ("code_tests", "CodeTestResult"),
    "ExecSummary": ("code_tests", "ExecSummary"),
    "TestOutcome": ("code_tests", "TestOutcome"),
    "extract_code": ("code_tests", "extract_code"),
    "run_asserts": ("code_tests", "run_asserts"),
    "run_humaneval": ("code_tests", "run_humaneval"),
    "run_io": ("code_tests", "run_io"),
    "bias_report": ("judge_report", "report"),
    "MathChecker": ("math_check", "MathChecker"),
    "MathCheckError": ("math_check", "MathCheckError"),
    "MathCheckUnavailable": ("math_check", "MathCheckUnavailable"),
    "MathVerdict": ("math_check", "MathVerdict"),
    "extract_answer": ("math_check", "extract_answer"),
    "NumericVerdict": ("numeric", "NumericVerdict"),
    "check_number": ("numeric", "check_number"),
    "extract_number": ("numeric", "extract_number"),
}
"""Public name -> (module of this package, its name there)."""
_WHOLE = ("judge", "search")
"""Modules whose whole ``__all__`` is re-exported."""


def _module(name: str) -> Any:
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return [*_OWN, *(n for m in _WHOLE for n in _module(m).__all__)]
    if name in _OWN:
        module, attr = _OWN[name]
        value = getattr(_module(module), attr)
    else:
        for module in _WHOLE:
            mod = _module(module)
            if name in mod.__all__:
                value = getattr(mod, name)
                break
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
