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
from loopwright.tools.judge import (
    Judge,
    OrderResult,
    PairwiseJudgement,
    Panel,
    PanelComparison,
    PanelScore,
    PointwiseJudgement,
)
from loopwright.tools.judge_parse import parse_preference, parse_score
from loopwright.tools.judge_report import BiasReport, report, report_by_model
from loopwright.tools.judge_report import report as bias_report
from loopwright.tools.math_check import MathChecker, MathVerdict, extract_answer
from loopwright.tools.numeric import NumericVerdict, check_number, extract_number
from loopwright.tools.reward_model import RewardModel, RewardScore
from loopwright.tools.search import (
    SEARCHERS,
    CorpusError,
    Document,
    IndexConfig,
    LocalIndex,
    MissingAPIKey,
    Searcher,
    SearchError,
    SearchResult,
    evidence,
    format_evidence,
    get_searcher,
)

__all__ = [
    "SEARCHERS",
    "BiasReport",
    "CodeTestResult",
    "CorpusError",
    "Document",
    "ExecSummary",
    "IndexConfig",
    "Judge",
    "LocalIndex",
    "MathChecker",
    "MathVerdict",
    "MissingAPIKey",
    "NumericVerdict",
    "OrderResult",
    "PairwiseJudgement",
    "Panel",
    "PanelComparison",
    "PanelScore",
    "PointwiseJudgement",
    "RewardModel",
    "RewardScore",
    "SearchError",
    "SearchResult",
    "Searcher",
    "TestOutcome",
    "bias_report",
    "check_number",
    "evidence",
    "extract_answer",
    "extract_code",
    "extract_number",
    "format_evidence",
    "get_searcher",
    "parse_preference",
    "parse_score",
    "report",
    "report_by_model",
    "run_asserts",
    "run_humaneval",
    "run_io",
]
