"""Built-in benchmark specs: task sources that know each benchmark's copies and conventions.

``--tasks NAME`` loads the benchmark's hub copy (``datasets``; its cache when offline);
``--tasks NAME:PATH`` a local copy in any of its known schemas: a ``.parquet``, ``.jsonl``
(``.gz``), ``.json`` or ``.csv`` file, a ``save_to_disk`` folder, a folder of parquet files,
or a folder of ``.jsonl`` files. Each returns a ``TaskSet`` (the tasks and their
``SourceInfo``). docs/tasks.md ("Benchmark specs") lists them, their hub ids, and which
reference harness each prompt and answer extraction follows.

=================  =============================================================
gsm8k              GSM8K (openai/gsm8k)
math, math500      MATH (EleutherAI/hendrycks_math), MATH-500 (HuggingFaceH4/MATH-500)
aime24, aime25     AIME 2024 / 2025, any of their copies' spellings
gpqa-diamond       GPQA-Diamond (alias gpqa): options permuted per question by ``seed``
humaneval(+)       HumanEval, HumanEval+ (evalplus)
mbpp, mbpp-sanitized, mbpp+   MBPP full / sanitized, MBPP+ (evalplus)
livecodebench      LiveCodeBench code generation (compressed tests decoded in the sandbox)
apps               APPS (codeparrot/apps)
=================  =============================================================
"""

from loopwright.loops.tasks.benchmarks.contests import load_apps, load_livecodebench
from loopwright.loops.tasks.benchmarks.gpqa import load_gpqa_diamond, permutation
from loopwright.loops.tasks.benchmarks.maths import (
    load_aime24,
    load_aime25,
    load_gsm8k,
    load_math,
    load_math500,
)
from loopwright.loops.tasks.benchmarks.programs import (
    load_humaneval,
    load_humaneval_plus,
    load_mbpp,
    load_mbpp_plus,
    load_mbpp_sanitized,
)

BENCHMARKS = ("gsm8k", "math", "math500", "aime24", "aime25", "gpqa-diamond", "gpqa",
              "humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+", "livecodebench",
              "apps")  # fmt: skip
"""The benchmark specs this package registers."""

__all__ = [
    "BENCHMARKS",
    "load_aime24",
    "load_aime25",
    "load_apps",
    "load_gpqa_diamond",
    "load_gsm8k",
    "load_humaneval",
    "load_humaneval_plus",
    "load_livecodebench",
    "load_math",
    "load_math500",
    "load_mbpp",
    "load_mbpp_plus",
    "load_mbpp_sanitized",
    "permutation",
]
