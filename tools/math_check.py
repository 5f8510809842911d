"""Math-answer checking: equivalence of a whole response with a reference, by ``math-verify``.

``math-verify`` parses the *whole* response with its own extraction (LaTeX, ``\\boxed{}``,
"the answer is", expressions), so fractions, tuples, sets, intervals, matrices, several boxed
answers and ``x = ...`` assignments keep their structure. A GSM8K ``#### N`` line is handed
to it on its own. ``extract_answer`` (below) is a fast, dependency-free guess at the final
answer for display and vote keys; the verdict never depends on it except where noted.

``math-verify`` (and the sympy it drives) can hang on pathological input, and it raises when
its own signal-based timeouts are used outside the main thread. So every parse+verify runs in
one persistent worker *process* (spawn context, started lazily, reused) with the timeouts of
``math-verify`` switched off and our own wall-clock timeout around the call: on timeout the
worker is killed and replaced, and the verdict is ``passed=False, timed_out=True``.

Policies:

- ``"strict"``: ``math-verify`` decides.
- ``"lenient"``: when math-verify says no, additionally accept an answer given by an explicit
  marker (``\\boxed{}``, ``#### N``, "the answer is") that equals the reference after
  stripping units, percent signs and ``\\text{}`` (``"18 dollars"`` vs ``"18"``, ``"Evelyn"``
  vs ``"\\text{Evelyn}"``).

A response that is nothing but a plain number (``"42"``, ``"The answer is 42."``, a lone
``\\boxed{42}``) against a plain-number reference is compared exactly as fractions, without
touching the worker: math-verify gives the same verdict there.

The checker is thread-safe (one lock around the worker) and can be used from asyncio via
``await asyncio.to_thread(checker.check, response, reference)``.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Policy = Literal["strict", "lenient"]

VERSION = "math-2"

DEFAULT_TIMEOUT = 5.0
"""Seconds allowed for one parse+verify in the worker."""

STARTUP_TIMEOUT = 120.0
"""Seconds allowed for the worker to start and import math-verify (not counted in the timeout)."""

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*(.+?)(?:\.(?=\s|$)|\n|$)", re.IGNORECASE | re.DOTALL)
_LAST_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_LONE_NUMBER = re.compile(
    r"^\s*(?:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*:?\s*)?\**\s*"
    r"(?P<n>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*\**\s*\.?\s*$",
    re.IGNORECASE,
)
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    result: str | None = None
    for m in _BOXED.finditer(text):
        depth = 1
        i = m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            result = text[m.end() : i - 1]
    return result


def _clean(s: str) -> str:
    s = s.strip().replace("\\$", "").replace("$", "").strip()
    s = s.strip("*").strip()  # markdown bold around "the answer is **5**"
    s = s.rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def extract_answer(text: str) -> str | None:
    """The final answer in ``text``, or None.

    Order: last ``\\boxed{...}`` (balanced braces), GSM8K ``#### N``, "the answer is X" (to
    the end of the sentence), else the last number. ``$`` signs and a trailing period are
    stripped, and thousands commas are removed from plain numbers.
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed) or None
    for pat in (_HASHES, _ANSWER_IS):
        found = pat.findall(text)
        if found:
            cleaned = _clean(found[-1])
            if cleaned:
                return cleaned
    numbers = _LAST_NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def marked_answer(text: str) -> str | None:
    """The answer after an explicit marker (last ``\\boxed{}``, ``#### N``, "the answer is"),
    or None: unlike ``extract_answer`` no last-number guess."""
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _clean(boxed) or None
    for pat in (_HASHES, _ANSWER_IS):
        found = pat.findall(text)
        if found and _clean(found[-1]):
            return _clean(found[-1])
    return None


_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def _words(s: str) -> str:
    """A text answer as lower-case words (``\\text{}`` unwrapped, punctuation dropped)."""
    s = _TEXT_WRAP.sub(r"\1", s.replace("$", ""))
    return " ".join(re.sub(r"[^\w\s.-]", " ", s).lower().split()).strip(". ")


def _same_lenient(answer: str, reference: str) -> bool:
    """Equal up to units, percent signs and ``\\text{}``: numbers exactly, text by words."""
    a, b = _lenient_fraction(answer), _lenient_fraction(reference)
    if a is not None and b is not None:
        return a == b
    if a is None and b is None:
        wa, wb = _words(answer), _words(reference)
        return bool(wa) and wa == wb and not any(c.isdigit() for c in wa)
    return False


def _plain_fraction(s: str) -> Fraction | None:
    """``s`` as an exact Fraction when it is a plain number (``3``, ``-0.5``, ``3/4``, ``1,000``)."""
    s = s.strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


_UNIT_JUNK = re.compile(r"\\(?:text|mbox|mathrm|textbf)\s*\{[^{}]*\}|\\%|%|\\,|\\ |\\!|\\;")
_LEADING_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")


def _lenient_fraction(s: str) -> Fraction | None:
    """The leading number of ``s`` after stripping units, percent signs and currency, or None."""
    s = _UNIT_JUNK.sub(" ", s.replace("\\$", "").replace("$", "")).strip()
    m = _LEADING_NUMBER.match(s)
    if not m or not m.group(0) or not any(c.isdigit() for c in m.group(0)):
        return None
    rest = s[m.end() :].strip()
    # Only words (units) may follow the number: "18 dollars" yes, "18x + 1" no.
    if rest and not re.fullmatch(r"[A-Za-z][A-Za-z .]*", rest):
        return None
    return _plain_fraction(m.group(0))


# ---------------------------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------------------------


def _as_math(s: str) -> str:
    """Wrap ``s`` in ``$..$`` so math-verify's LaTeX extraction sees it, unless already delimited."""
    return s if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s else f"${s}$"


def verify_pair(extracted: str, reference: str) -> bool:
    """math-verify equivalence of two bare answers (each wrapped as LaTeX math)."""
    return verify_response(_as_math(extracted), reference, policy="strict")[0]


def verify_response(
    response: str, reference: str, policy: Policy = "strict"
) -> tuple[bool, str | None]:
    """(equivalent?, the answer math-verify read) for a whole response against a reference.

    Runs in the worker process with math-verify's own timeouts disabled; call it directly
    only where a hang is acceptable.
    """
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    gold = parse(_as_math(reference), parsing_timeout=None)  # type: ignore[arg-type]
    hashes = _HASHES.findall(response)
    text = _as_math(_clean(hashes[-1])) if hashes else response  # GSM8K's final-answer line
    pred = parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    got = str(pred[-1]) if pred else None
    ok = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    if not ok and policy == "lenient":
        marked = marked_answer(response)
        if marked is not None and _same_lenient(marked, reference):
            return True, marked
    return ok, got


def _worker_main(conn: Connection) -> None:
    """Worker loop: import math-verify, say ready, then answer ``(extracted, reference)`` jobs."""
    import logging

    logging.disable(logging.WARNING)  # "Timeout is disabled ..." warnings on every call
    import math_verify  # noqa: F401  (pay the import before reporting ready)

    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("ok", verify_response(*job)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    """One spawned process running ``_worker_main``, with a pipe to it."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.conn: Connection = parent
        self.proc: BaseProcess = ctx.Process(
            target=_worker_main, args=(child,), daemon=True, name="loopwright-math-check"
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(STARTUP_TIMEOUT):
            self.kill()
            raise RuntimeError("math-check worker did not start in time")
        try:
            tag, _ = self.conn.recv()
        except (EOFError, OSError):
            tag = "died"
        if tag != "ready":
            self.kill()
            raise RuntimeError("math-check worker failed to start")

    def call(self, job: tuple[Any, ...], timeout: float) -> tuple[str, Any]:
        """``("ok", result)``, ``("error", msg)`` or ``("timeout", None)``; kills itself on
        timeout. ``job`` is ``verify_response``'s arguments."""
        self.conn.send(job)
        if not self.conn.poll(timeout):
            self.kill()
            return ("timeout", None)
        try:
            result: tuple[str, Any] = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            return ("error", f"worker died: {exc}")
        return result

    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# Checker
# ---------------------------------------------------------------------------------------------


class MathVerdict(BaseModel):
    """Outcome of checking a response's final answer against a reference."""

    model_config = ConfigDict(frozen=True)

    passed: bool = Field(
        description="True when the extracted answer is equivalent to the reference."
    )
    extracted: str | None = Field(description="The answer found in the response, if any.")
    reference: str = Field(description="The reference answer compared against.")
    feedback: str = Field(description="One line a refiner can use.")
    policy: Policy = Field(description="'strict' (math-verify only) or 'lenient'.")
    timed_out: bool = Field(default=False, description="True when the equivalence check timed out.")


def _one_line(s: str, limit: int = 200) -> str:
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _message(ok: bool, got: str) -> str:
    if ok:
        return "the final answer is correct"
    return f"the final answer {got} does not match the expected answer"


class MathChecker:
    """Decide whether a response's final answer matches a reference (see module docstring)."""

    def __init__(self, policy: Policy = "strict", timeout: float = DEFAULT_TIMEOUT) -> None:
        if policy not in ("strict", "lenient"):
            raise ValueError(f"unknown policy {policy!r}; use 'strict' or 'lenient'")
        self.policy: Policy = policy
        self.timeout = timeout
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    def close(self) -> None:
        """Stop the worker process (a later check starts a new one)."""
        with self._lock:
            if self._worker is not None:
                self._worker.kill()
                self._worker = None

    def _verdict(
        self, passed: bool, extracted: str | None, reference: str, feedback: str, timed_out=False
    ) -> MathVerdict:
        return MathVerdict(
            passed=passed,
            extracted=extracted,
            reference=reference,
            feedback=_one_line(feedback),
            policy=self.policy,
            timed_out=timed_out,
        )

    def check_quick(self, response: str, reference: str) -> MathVerdict | None:
        """The verdict when it needs no worker, else None: an empty response, or a response
        that is only a plain number against a plain-number reference (math-verify agrees).

        Never blocks: safe to call on an event loop.
        """
        if not response.strip():
            return self._verdict(False, None, reference, "no final answer found")
        m = _LONE_NUMBER.match(response)
        a = _plain_fraction(m["n"]) if m else None
        b = _plain_fraction(_clean(reference))
        if a is None or b is None or m is None:
            return None
        got = _clean(m["n"])
        return self._verdict(a == b, got, reference, _message(a == b, got))

    def check(self, response: str, reference: str) -> MathVerdict:
        """Check ``response`` (the whole text) against ``reference``."""
        quick = self.check_quick(response, reference)
        if quick is not None:
            return quick
        guess = extract_answer(response)
        tag, value = self._call(response, reference)
        if tag == "timeout":
            shown = guess or "the answer"
            return self._verdict(False, guess, reference, f"could not verify {shown} in time", True)
        if tag == "error":
            return self._verdict(False, guess, reference, f"could not verify the answer: {value}")
        ok, got = value
        if got is None and not ok:
            return self._verdict(False, guess, reference, "no final answer found")
        shown = got if got is not None else (guess or "?")
        return self._verdict(bool(ok), shown, reference, _message(bool(ok), shown))

    def _call(self, response: str, reference: str) -> tuple[str, Any]:
        with self._lock:
            if self._worker is None or not self._worker.alive():
                try:
                    self._worker = _Worker()
                except RuntimeError as exc:
                    self._worker = None
                    return ("error", str(exc))
            result = self._worker.call((response, reference, self.policy), self.timeout)
            if result[0] == "timeout" or not self._worker.alive():
                self._worker.kill()
                self._worker = None  # recreated lazily on the next call
            return result
