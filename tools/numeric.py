"""Final-number extraction and comparison: the stand-in math check until the full checker lands.

Extraction order: ``\\boxed{..}``, GSM8K ``#### N``, "the answer is N", then the last number
in the text.
"""

from __future__ import annotations

import re
from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_PATTERNS = [
    re.compile(r"\\boxed\{\s*(" + _NUM + r")\s*\}"),
    re.compile(r"####\s*(" + _NUM + r")"),
    re.compile(r"answer\s*(?:is|:|=)\s*\**\s*(" + _NUM + r")", re.IGNORECASE),
]
_ANY = re.compile(_NUM)

VERSION = "numeric-1"


def extract_number(text: str) -> str | None:
    """The final numeric answer in ``text`` as written (commas and $ removed), or None."""
    if not text:
        return None
    for pat in _PATTERNS:
        found = pat.findall(text)
        if found:
            return _clean(found[-1])
    found = _ANY.findall(text)
    return _clean(found[-1]) if found else None


def _clean(s: str) -> str:
    return s.replace(",", "").replace("$", "").rstrip(".")


def to_fraction(s: str) -> Fraction | None:
    try:
        return Fraction(_clean(s.strip()))
    except (ValueError, ZeroDivisionError):
        return None


class NumericVerdict(BaseModel):
    """Outcome of comparing a response's final number with the reference."""

    model_config = ConfigDict(frozen=True)

    passed: bool = Field(description="True when the extracted number equals the reference.")
    extracted: str | None = Field(description="The number found in the response, if any.")
    reference: str = Field(description="The reference answer compared against.")
    feedback: str = Field(description="One line a refiner can use.")


def check_number(response: str, reference: str) -> NumericVerdict:
    """Compare the final number of ``response`` with ``reference`` exactly (as fractions)."""
    got = extract_number(response)
    want = to_fraction(reference)
    if got is None:
        return NumericVerdict(
            passed=False,
            extracted=None,
            reference=reference,
            feedback="no final numeric answer found",
        )
    value = to_fraction(got)
    ok = value is not None and want is not None and value == want
    return NumericVerdict(
        passed=ok,
        extracted=got,
        reference=reference,
        feedback="the final answer is correct" if ok else f"the final answer {got} is incorrect",
    )
