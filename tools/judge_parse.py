"""Parsing judge outputs: the score or the preferred answer a judge gave, never guessed at.

An explicitly labelled score wins over stray numbers in the reasoning, an out-of-scale score
is rejected, and what cannot be parsed gives None (with the reason, for scores).
"""

from __future__ import annotations

import re
from typing import Literal

Position = Literal["first", "second", "tie"]

_WORDS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six"])}
_WORDS |= {"seven": 7, "eight": 8, "nine": 9, "ten": 10}
_NUM = r"(?<![\w.])(?P<v>-?\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")\b"
_DIGITS = r"(?<![\w.])(?P<v>-?\d+(?:\.\d+)?)\b"
_NOT_RANGE = r"(?!\s*(?:-|\u2013|to)\s*\d)"  # "on a scale of 1-10" / "1 to 10" is not a score
_DEN = r"(?:\s*(?:/|out\s+of)\s*(?P<d>\d+(?:\.\d+)?|ten|five))?"
_LABEL = r"\b(?:final\s+|overall\s+|total\s+)?(?:score|rating|grade)"
_SCORE_TIERS: list[list[re.Pattern[str]]] = [
    [re.compile(r'"(?:score|rating|grade)"\s*:\s*"?' + _NUM + _DEN, re.I)],  # JSON
    [re.compile(r"\[\[\s*" + _NUM + _DEN + r"\s*\]\]", re.I)],  # [[7]]
    [  # "Score: 7/10", "Rating (1-10): 8", "Score out of 10: 8", "Final score = 6"
        re.compile(_LABEL + r"[^:=\n]{0,25}?[:=]\s*[\[(]*\s*" + _NUM + _NOT_RANGE + _DEN, re.I)
    ],
    [  # "the score is 8/10", "a rating of 7"
        re.compile(
            _LABEL
            + r"\s+(?:is|of|would\s+be|will\s+be|should\s+be)\s+(?:an?\s+)?"
            + _NUM
            + _NOT_RANGE
            + _DEN,
            re.I,
        )
    ],
    [  # weak hints: "I'd give it a 7", "7 out of 10", "7/10"
        re.compile(
            r"\b(?:give|gives|rate|rates|assign|award)\s+(?:it|this(?:\s+\w+)?|the\s+\w+)?\s*(?:an?\s+)?"
            + _DIGITS
            + _NOT_RANGE
            + _DEN,
            re.I,
        ),
        re.compile(_NUM + r"\s*(?:/|out\s+of)\s*(?P<d>\d+(?:\.\d+)?|ten|five)\b", re.I),
    ],
]
_LONE_SCORE = re.compile(r"^[\s\[(*]*" + _NUM + _DEN + r"[\s\])*.!]*$", re.I)

_PREF_TIERS: list[list[re.Pattern[str]]] = [
    [
        re.compile(
            r'"(?:winner|verdict|better|preferred|choice)"\s*:\s*"\s*(?:answer\s+)?(?P<p>A|B|C|tie)\s*"',
            re.I,
        )
    ],
    [re.compile(r"\[\[\s*(?:answer\s+)?(?P<p>A|B|C|tie)\s*\]\]", re.I)],
    [  # "Verdict: A", "Winner: Answer B", "Final verdict: tie"
        re.compile(
            r"(?i:\b(?:final\s+)?(?:verdict|winner|decision|choice|preference|better\s+answer)\s*[:=]"
            r"\s*[\[(\"']*\s*(?:answer\s+|response\s+)?)(?P<p>A|B|(?i:tie))\b"
        )
    ],
    [  # "Answer B is better", "I prefer A", "it's a tie"
        re.compile(
            r"(?i:\b(?:answer|response|assistant)\s+)(?P<p>A|B)(?i:\s+(?:is|was)\s+(?:clearly\s+)?"
            r"(?:better|superior|preferred|stronger|more\s+\w+|the\s+(?:better|winner)))"
        ),
        re.compile(r"(?i:\b(?:prefer|choose|pick)\s+(?:answer\s+|response\s+)?)(?P<p>A|B)\b"),
        re.compile(r"(?i:\b(?P<p>tie)\b|\bequally\s+(?:good|bad|correct|helpful))"),
    ],
]
_LONE_PREF = re.compile(r"^[\s\[(*\"']*(?:answer\s+)?(?P<p>A|B|tie)[\s\])*.!\"']*$", re.I)


def _last_match(tiers: list[list[re.Pattern[str]]], text: str) -> re.Match[str] | None:
    """The last match of the most explicit tier that matches at all."""
    for tier in tiers:
        found = [m for pat in tier for m in pat.finditer(text)]
        if found:
            return max(found, key=lambda m: m.start())
    return None


def _number(token: str) -> float:
    word = _WORDS.get(token.lower())
    return float(word if word is not None else token)


def parse_score(text: str, scale: tuple[float, float] = (1, 10)) -> tuple[float | None, str | None]:
    """The score a judge gave, or None with the reason. Never raises.

    Most explicit first: JSON ``"score"``, ``[[N]]``, ``Score: N``, ``the score is N``, then
    weak hints (``give it N``, ``N/10``, ``N out of 10``), then a reply that is only a number.
    Within a tier the last occurrence wins (judges revise). A fraction must be over the
    scale's maximum; a score outside the scale is rejected, never clipped.
    """
    clean = re.sub(r"\*\*|__|`", "", text or "")
    m = _last_match(_SCORE_TIERS, clean)
    if m is None:
        lines = [ln for ln in clean.strip().splitlines() if ln.strip()]
        m = _LONE_SCORE.match(lines[-1]) if lines else None
    if m is None:
        return None, "no score found"
    low, high = scale
    value = _number(m.group("v"))
    den = m.groupdict().get("d")
    if den is not None and _number(den) != high:
        return None, f"score {m.group(0).strip()!r} is not out of {high:g}"
    if not low <= value <= high:
        return None, f"score {value:g} is outside the scale {low:g}..{high:g}"
    return value, None


def parse_preference(text: str) -> Position | None:
    """Which shown answer the judge preferred: ``first`` (A), ``second`` (B), ``tie``, or None."""
    clean = re.sub(r"\*\*|__|`", "", text or "")
    m = _last_match(_PREF_TIERS, clean)
    if m is None:
        lines = [ln for ln in clean.strip().splitlines() if ln.strip()]
        m = _LONE_PREF.match(lines[-1]) if lines else None
    if m is None:
        return None
    label = (m.group("p") or "tie").upper()
    return "first" if label == "A" else "second" if label == "B" else "tie"
