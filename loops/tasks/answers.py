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
    if kind == "choice":
        return extract_choice(a) or _SPACE.sub(" ", a).upper()
    return _SPACE.sub(" ", a).lower()


_LETTER = r"\(?\*{0,2}\$?([A-Z])\$?\*{0,2}\)?(?![A-Za-z0-9])"
_CHOICE_PATTERNS = (
    # "Answer: C" (simple-evals' pattern, the format the GPQA prompt asks for), "Answer: (C)"
    re.compile(r"(?i:answer)[ \t]*[:\uff1a][ \t]*" + _LETTER),
    # "the answer is (C)", "final answer is C"
    re.compile(r"(?i:answer\s+is)\s*:?\s*" + _LETTER),
    # \boxed{C}, \boxed{\text{C}}, \boxed{(C)}
    re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*\(?([A-Z])\)?\s*\}"),
    # "(C)"
    re.compile(r"\(([A-Z])\)"),
)
_LONE_LETTER = re.compile(r"^\W*(?:(?i:option|choice)\s+)?([A-Z])(?:[).:\]]|\W*$)")


def extract_choice(text: str | None, n_choices: int = 4) -> str | None:
    """The letter a multiple-choice response picks (A, B, ... of ``n_choices``), or None.

    In order, the last of: ``Answer: C`` (what the GPQA prompt asks for), ``the answer is
    (C)``, ``\\boxed{C}``, ``(C)``; else a last line that is the letter alone (``C``,
    ``C)``, ``Option C``). Letters beyond the choices do not count.
    """
    if not text:
        return None
    allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: max(1, min(n_choices, 26))]
    for pattern in _CHOICE_PATTERNS:
        found = [m.group(1) for m in pattern.finditer(text) if m.group(1) in allowed]
        if found:
            return found[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        m = _LONE_LETTER.match(lines[-1].strip())
        if m and m.group(1) in allowed:
            return m.group(1)
    return None


def vote_keys(
    keys: Sequence[str | None], weights: Sequence[float] | None = None
) -> tuple[str | None, dict[str, float]]:
    """(winning key, score per key): plurality, ties to the key seen first."""
    return tally(keys, weights)
