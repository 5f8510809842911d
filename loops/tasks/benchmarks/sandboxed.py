"""Work on downloaded data that runs code, done only inside the sandbox.

Two jobs: decoding LiveCodeBench's compressed private tests (base64 of zlib of a *pickle*:
unpickling runs whatever the data says, so it happens in the sandbox and only JSON comes
back), and running a canonical solution over evalplus' extra inputs to get their expected
outputs (HumanEval+ and MBPP+ release files, which ship inputs only). What comes back is
text the host parses as JSON or as Python *literals* (``ast.literal_eval``), never as code.
"""

from __future__ import annotations

import ast
import json
import secrets
from collections.abc import Sequence
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.sandboxes import (
    BACKENDS,
    DEFAULT_BACKEND,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    get_sandbox,
)

ISOLATED = ("bwrap", "docker")
"""Backends that may run downloaded code for a loader (``process`` isolates nothing)."""

_DECODE = r"""
import base64, json, pickle, sys, zlib
out = []
for blob in json.loads(sys.stdin.read()):
    try:
        value = pickle.loads(zlib.decompress(base64.b64decode(blob.encode("utf-8"))))
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        out.append({"ok": value if isinstance(value, str) else json.dumps(value)})
    except BaseException as exc:
        out.append({"error": (type(exc).__name__ + ": " + str(exc))[:200]})
sys.stdout.write("\n" + NONCE + json.dumps(out) + "\n")
"""

_OUTPUTS = r"""
import contextlib, copy, io, json, signal, sys
spec = json.loads(sys.stdin.read())
def _alarm(signum, frame):
    raise TimeoutError("input took too long")
signal.signal(signal.SIGALRM, _alarm)
sink = io.StringIO()
out = []
try:
    ns = {"__name__": "__solution__"}
    with contextlib.redirect_stdout(sink):
        exec(compile(spec["code"], "solution.py", "exec"), ns)
    fn = ns[spec["entry_point"]]
except BaseException as exc:
    sys.stdout.write("\n" + NONCE + json.dumps({"error": (type(exc).__name__ + ": " + str(exc))[:300]}) + "\n")
    raise SystemExit(0)
for args in spec["inputs"]:
    try:
        signal.setitimer(signal.ITIMER_REAL, spec["per_input_s"])
        with contextlib.redirect_stdout(sink):
            value = fn(*copy.deepcopy(args))
        signal.setitimer(signal.ITIMER_REAL, 0)
        out.append(repr(value))
    except BaseException:
        signal.setitimer(signal.ITIMER_REAL, 0)
        out.append(None)
    sink.seek(0)
    sink.truncate()
sys.stdout.write("\n" + NONCE + json.dumps({"outputs": out}) + "\n")
"""


def open_sandbox(backend: str, why: str) -> Sandbox:
    """An isolated sandbox for a loader's work, or one line saying what to do."""
    if backend not in ISOLATED:
        choices = ", ".join(ISOLATED)
        raise UserError(
            f"{why} runs downloaded code, so it needs an isolating sandbox ({choices}), not "
            f"{backend!r}"
        )
    if backend not in BACKENDS:  # pragma: no cover - both isolating backends are shipped
        raise UserError(f"unknown sandbox backend {backend!r}")
    try:
        return get_sandbox(backend)
    except SandboxUnavailable as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UserError(
            f"{why} runs downloaded code only inside the {backend} sandbox, which cannot run "
            f"here ({reason}): install bubblewrap (`apt-get install bubblewrap`) or use a copy "
            "without compressed tests"
        ) from None


def _result_line(stdout: str, nonce: str) -> Any:
    """The JSON the sandboxed program wrote after ``nonce`` on its last such line, or None."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            try:
                return json.loads(line[len(nonce) :])
            except (json.JSONDecodeError, RecursionError):
                return None
    return None


def decode_compressed(
    blobs: Sequence[str], backend: str = DEFAULT_BACKEND
) -> list[str | Exception]:
    """Each base64(zlib(pickle(json))) blob decoded in the sandbox: its JSON text, or why it
    could not be decoded (an exception object, per blob)."""
    if not blobs:
        return []
    sandbox = open_sandbox(backend, "decoding LiveCodeBench's compressed private tests")
    out: list[str | Exception] = []
    batch: list[str] = []
    size = 0
    for blob in blobs:
        if batch and size + len(blob) > 16 << 20:
            out.extend(_decode_batch(sandbox, batch))
            batch, size = [], 0
        batch.append(blob)
        size += len(blob)
    out.extend(_decode_batch(sandbox, batch))
    return out


def _decode_batch(sandbox: Sandbox, blobs: list[str]) -> list[str | Exception]:
    nonce = "lw-" + secrets.token_hex(16) + ":"
    code = f"NONCE = {nonce!r}\n" + _DECODE
    limits = SandboxLimits(
        timeout_s=300, memory_mb=8192, max_output_bytes=1 << 31, cpu_s=300,
    )  # fmt: skip
    r = sandbox.run_python(code, stdin=json.dumps(blobs), limits=limits)
    got = _result_line(r.stdout, nonce)
    if not isinstance(got, list) or len(got) != len(blobs):
        why = r.killed_by or (r.stderr.strip().splitlines() or ["no result"])[-1][:200]
        raise UserError(f"decoding compressed private tests in the sandbox failed ({why})")
    out: list[str | Exception] = []
    for item in got:
        if isinstance(item, dict) and isinstance(item.get("ok"), str):
            out.append(item["ok"])
        else:
            err = item.get("error") if isinstance(item, dict) else None
            out.append(ValueError(str(err or "the payload decodes to no JSON text")))
    return out


def expected_outputs(
    code: str,
    entry_point: str,
    inputs: Sequence[Any],
    backend: str = DEFAULT_BACKEND,
    *,
    timeout_s: float = 120.0,
    per_input_s: float = 5.0,
) -> list[Any | None]:
    """What ``entry_point`` of ``code`` (a canonical solution) returns on each of ``inputs``
    (argument lists), run in the sandbox: each value read back as a Python literal on the
    host; ``NO_VALUE`` where the call failed or its result is no literal (such inputs are
    left out of the tests)."""
    sandbox = open_sandbox(backend, "computing expected outputs from the canonical solution")
    nonce = "lw-" + secrets.token_hex(16) + ":"
    spec = {
        "code": code,
        "entry_point": entry_point,
        "inputs": list(inputs),
        "per_input_s": per_input_s,
    }
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=2048, max_output_bytes=1 << 28)
    r = sandbox.run_python(f"NONCE = {nonce!r}\n" + _OUTPUTS, stdin=json.dumps(spec), limits=limits)
    got = _result_line(r.stdout, nonce)
    if isinstance(got, dict) and "error" in got:
        raise UserError(f"the canonical solution of {entry_point} does not run: {got['error']}")
    reprs = got.get("outputs") if isinstance(got, dict) else None
    if not isinstance(reprs, list) or len(reprs) != len(inputs):
        why = r.killed_by or (r.stderr.strip().splitlines() or ["no result"])[-1][:200]
        raise UserError(
            f"running the canonical solution of {entry_point} in the sandbox failed ({why})"
        )
    return [_literal(x) for x in reprs]


class _NoValue:
    """Marks an output that could not be read back (distinct from a real ``None``)."""


NO_VALUE = _NoValue()


def _literal(text: Any) -> Any:
    if not isinstance(text, str) or len(text) > 1 << 22:
        return NO_VALUE
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NO_VALUE
