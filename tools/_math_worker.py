"""The math checker's worker process, and the frames it speaks on its stdin and stdout.

``loopwright.tools.math_check`` starts this as a plain subprocess::

    python -P -c "<bootstrap: sys.path = the parent's; import this module; main()>" PATH PPID

so nothing of the parent's ``__main__`` runs in it (``multiprocessing``'s spawn re-imports the
user's main script in the child: a script without an ``if __name__ == "__main__":`` guard would
re-run itself there). The parent's ``sys.path`` is handed over, so the worker imports what the
parent would.

A frame is a 4-byte big-endian length followed by that many bytes of JSON (ASCII: a lone
surrogate in a response travels as a ``\\ud83d`` escape and comes back unchanged). The worker
sends ``{"ready": true}`` once math-verify is imported, or ``{"error": "..."}`` when it cannot
be; then it answers each job ``{"response", "reference", "policy"}`` with ``{"ok": [passed,
got]}`` or ``{"error": "..."}``, until its stdin closes. Its stdout is kept for frames only:
anything a library prints goes to stderr. It exits when its parent does.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading
import time
from typing import Any

MAX_FRAME = 256 * 1024 * 1024
"""Largest frame either side accepts (a response is at most a few MB)."""

_HEADER = struct.Struct(">I")


def encode(message: dict[str, Any]) -> bytes:
    """One frame: length header and ASCII JSON."""
    body = json.dumps(message, ensure_ascii=True).encode("ascii")
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def decode_length(header: bytes) -> int:
    """The body length a frame header announces; ValueError when it is over the limit."""
    (n,) = _HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes is over the {MAX_FRAME}-byte limit")
    return int(n)


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``, or None at end of file."""
    parts: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _recv(fd: int) -> dict[str, Any] | None:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, decode_length(header))
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a JSON object")
    return message


def _send(fd: int, message: dict[str, Any]) -> None:
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view) :]


def _exit_with_parent(parent: int) -> None:
    """End this process once its parent is gone (even while a check is still running)."""
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> None:
    """Serve jobs on stdin/stdout until stdin closes (see the module docstring)."""
    args = sys.argv[1:] if argv is None else argv
    parent = int(args[1]) if len(args) > 1 else os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this one stops
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print() must never land inside a frame
    try:
        import logging

        logging.disable(logging.WARNING)  # "Timeout is disabled ..." warnings on every call
        import math_verify  # noqa: F401  (pay the import before reporting ready)
        from loopwright.tools.math_check import verify_response
    except BaseException as exc:  # reported to the parent, which raises
        _send(out, {"error": f"{type(exc).__name__}: {exc}"})
        return
    _send(out, {"ready": True})
    while True:
        try:
            job = _recv(0)
        except (OSError, ValueError) as exc:
            _send(out, {"error": f"bad frame: {exc}"})
            return
        if job is None:
            return
        try:
            passed, got = verify_response(job["response"], job["reference"], job["policy"])
            reply: dict[str, Any] = {"ok": [bool(passed), got]}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _send(out, reply)


if __name__ == "__main__":
    main()
