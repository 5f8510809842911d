"""Math-answer checking: equivalence of a whole response with a reference, by ``math-verify``.

``math-verify`` parses the *whole* response with its own extraction (LaTeX, ``\\boxed{}``,
"the answer is", expressions), so fractions, tuples, sets, intervals, matrices, several boxed
answers and ``x = ...`` assignments keep their structure. A GSM8K ``#### N`` line is handed
to it on its own. ``extract_answer`` (below) is a fast, dependency-free guess at the final
answer for display and vote keys; the verdict never depends on it except where noted.

``math-verify`` (and the sympy it drives) can hang on pathological input, and it raises when
its own signal-based timeouts are used outside the main thread. So every parse+verify runs in
one persistent worker *process* (started lazily, reused) with the timeouts of ``math-verify``
switched off and our own wall-clock timeout around the call: on timeout the worker is killed
and replaced, and the verdict is ``passed=False, timed_out=True``.

The worker is a plain subprocess running ``loopwright.tools._math_worker`` (frames of JSON on
its stdin and stdout), not ``multiprocessing``: a spawned child re-imports the user's main
script, which re-runs a script that has no ``if __name__ == "__main__":`` guard. So the
checker works the same from a script, a notebook and ``python -c``.

A check that cannot happen is an exception, never a ``passed=False`` verdict:
``MathCheckUnavailable`` when the worker cannot start (the message says why), and
``MathCheckError`` when one response could not be checked (the worker died on it twice, or
math-verify raised). Graders record these as errors, not as wrong answers.

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

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from typing import Any, Literal

from loopwright.tools import _math_worker
from loopwright.tools.errors import UserError
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


class MathCheckError(RuntimeError):
    """A check that could not be carried out: no verdict, not a wrong answer (the worker
    died twice on it, or math-verify raised)."""


class MathCheckUnavailable(MathCheckError, UserError):
    """The worker process cannot start here, so nothing can be checked: one line saying why
    and what to do (a ``UserError``, so a run or ``loopwright grade`` stops with it)."""

    def __init__(self, why: str) -> None:
        super().__init__(
            f"math answers cannot be checked here: {why} (check that this Python has "
            "loopwright's dependencies, e.g. `pip install 'math-verify>=0.9,<0.10'`)"
        )


def _worker_command() -> list[str]:
    """The worker's command line: this interpreter running ``_math_worker.main`` with this
    process's ``sys.path``; ``-P`` keeps the current folder from shadowing the bootstrap's
    own imports."""
    if not sys.executable:
        raise MathCheckUnavailable(
            "its worker process needs sys.executable, which is empty in this Python"
        )
    return [sys.executable, "-P", "-c", _BOOTSTRAP, json.dumps(sys.path), str(os.getpid())]


_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from loopwright.tools._math_worker import main; main()"
)


class _Worker:
    """One worker subprocess (``loopwright.tools._math_worker``) and the pipes to it.

    Raises ``MathCheckUnavailable`` when it does not start and say ready within
    ``startup_timeout`` seconds.
    """

    def __init__(self, startup_timeout: float = STARTUP_TIMEOUT) -> None:
        cmd = _worker_command()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by kill())
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,
                start_new_session=True,  # Ctrl-C in the terminal is the parent's to handle
            )
        except OSError as exc:
            self._stderr.close()
            raise MathCheckUnavailable(
                f"the math checker's worker could not be started ({cmd[0]}: {exc})"
            ) from None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        self._poll = select.poll()
        try:
            hello = self._recv(time.monotonic() + startup_timeout)
        except TimeoutError:
            self.kill()
            raise MathCheckUnavailable(
                f"the math checker's worker did not start within {startup_timeout:.0f} s"
            ) from None
        except (OSError, ValueError) as exc:
            hello = {"error": f"unreadable reply: {exc}"}
        if hello is None or "ready" not in hello:
            said = hello.get("error") if hello is not None else None
            why = str(said) if said else self._exit_reason()
            self.kill()
            raise MathCheckUnavailable(f"the math checker's worker failed to start: {why}")

    def _exit_reason(self) -> str:
        """How the worker ended: exit code and the last line it wrote to stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        code = self.proc.poll()
        tail = ""
        try:
            self._stderr.seek(0)
            lines = self._stderr.read()[-4000:].decode("utf-8", "replace").splitlines()
            tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
        except (OSError, ValueError):
            pass
        said = f"exit code {code}" if code is not None else "closed its output"
        return f"{said}{': ' + tail if tail else ''}"

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        """Block until ``fd`` is ready for ``event`` or raise TimeoutError at ``deadline``."""
        self._poll.register(fd, event)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if self._poll.poll(max(1, int(left * 1000))):
                    return
        finally:
            self._poll.unregister(fd)

    def _send(self, message: dict[str, Any], deadline: float) -> None:
        view = memoryview(_math_worker.encode(message))
        while view:
            self._wait(self._in, select.POLLOUT, deadline)
            try:
                view = view[os.write(self._in, view) :]
            except BlockingIOError:
                continue

    def _read(self, n: int, deadline: float) -> bytes | None:
        parts: list[bytes] = []
        while n:
            self._wait(self._out, select.POLLIN, deadline)
            chunk = os.read(self._out, min(n, 1 << 20))
            if not chunk:
                return None
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _recv(self, deadline: float) -> dict[str, Any] | None:
        """The next frame, or None when the worker closed its end."""
        header = self._read(4, deadline)
        if header is None:
            return None
        body = self._read(_math_worker.decode_length(header), deadline)
        if body is None:
            return None
        message = json.loads(body)
        if not isinstance(message, dict):
            raise ValueError("the worker sent something other than a JSON object")
        return message

    def call(self, job: dict[str, Any], timeout: float) -> tuple[str, Any]:
        """``("ok", (passed, got))``, ``("error", msg)``, ``("died", why)`` or
        ``("timeout", None)``; kills the worker on timeout and when it died."""
        deadline = time.monotonic() + timeout
        try:
            self._send(job, deadline)
            reply = self._recv(deadline)
        except TimeoutError:
            self.kill()
            return ("timeout", None)
        except (OSError, ValueError) as exc:  # a broken pipe, a garbled frame
            self.kill()
            return ("died", f"{type(exc).__name__}: {exc}")
        if reply is None:
            why = self._exit_reason()
            self.kill()
            return ("died", why)
        if "ok" in reply:
            passed, got = reply["ok"]
            return ("ok", (bool(passed), got))
        return ("error", str(reply.get("error")))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Stop the worker (SIGKILL) and release its pipes; safe to call twice."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()


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

    def start(self) -> None:
        """Start the worker now rather than on the first check that needs it; raises
        ``MathCheckUnavailable`` (one line) when it cannot start here."""
        with self._lock:
            if self._worker is None or not self._worker.alive():
                self._worker = None
                self._worker = _Worker()

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
        """Check ``response`` (the whole text) against ``reference``.

        Raises ``MathCheckUnavailable`` when the worker cannot start and ``MathCheckError``
        when this response could not be checked: never a ``passed=False`` verdict for a
        check that did not happen. A check over the timeout is a verdict (``timed_out``).
        """
        quick = self.check_quick(response, reference)
        if quick is not None:
            return quick
        guess = extract_answer(response)
        tag, value = self._call(response, reference)
        if tag == "timeout":
            shown = guess or "the answer"
            return self._verdict(False, guess, reference, f"could not verify {shown} in time", True)
        if tag != "ok":
            raise MathCheckError(f"could not check the answer: {value}")
        ok, got = value
        if got is None and not ok:
            return self._verdict(False, guess, reference, "no final answer found")
        shown = got if got is not None else (guess or "?")
        return self._verdict(bool(ok), shown, reference, _message(bool(ok), shown))

    def _call(self, response: str, reference: str) -> tuple[str, Any]:
        """One job on the worker (started if needed). A worker that dies on the job is
        replaced and the job tried once more; a second death is ``("error", why)``."""
        job = {"response": response, "reference": reference, "policy": self.policy}
        with self._lock:
            for attempt in range(2):
                if self._worker is None or not self._worker.alive():
                    self._worker = None
                    self._worker = _Worker()  # MathCheckUnavailable propagates
                tag, value = self._worker.call(job, self.timeout)
                if tag in ("timeout", "died"):
                    self._worker.kill()
                    self._worker = None  # recreated lazily on the next call
                if tag != "died":
                    return tag, value
                if attempt:
                    return "error", f"the math-check worker died twice on it ({value})"
            raise AssertionError("unreachable")
