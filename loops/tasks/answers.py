"""Answer keys: when two extracted answers count as the same vote.

Light on purpose (no LangGraph, no model client): loops vote with it, reports replay votes
with it, verifiers compare with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from loopwright.traces.metrics import tally

_SPACE = re.compile(r"\s+")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def normalise_answer(kind: str | None, answer: str | None) -> str | None:
    """A voting key: equal keys mean the same answer.

    Math answers come from the math checker's extraction; here numbers are put in one form
    (``"12.0"``, ``"12"``, ``"1,2"`` thousands) and whitespace/``$`` dropped. Code compares
    with whitespace collapsed; text case-insensitively.
    """
    if answer is None:
        return None
    a = answer.strip()
    if kind in (None, "math"):
        a = a.strip("$ ").replace("\\!", "").replace(" ", "")
        plain = a.replace(",", "") if _THOUSANDS.fullmatch(a) else a
        try:
            num = float(plain)
        except ValueError:
            return a
        return str(int(num)) if num.is_integer() else repr(num)
    if kind == "code":
        return _SPACE.sub(" ", a)
    return _SPACE.sub(" ", a).lower()


def vote_keys(
    keys: Sequence[str | None], weights: Sequence[float] | None = None
) -> tuple[str | None, dict[str, float]]:
    """(winning key, score per key): plurality, ties to the key seen first."""
    return tally(keys, weights)
