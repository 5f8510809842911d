"""Code-tests verifier: run a candidate program against tests inside a sandbox.

Three test styles, one typed result (``CodeTestResult``):

* ``run_humaneval`` — HumanEval: ``code + test + check(entry_point)``; one test unit.
* ``run_asserts`` — MBPP: each ``assert`` line is its own test, all in ONE sandbox run.
* ``run_io`` — APPS: stdin/stdout cases, one sandbox run per case.

The first two run a small harness (``main.py``) that reads a per-run spec (the code, the
tests and a random nonce), deletes it, points fds 1 and 2 at ``/dev/null`` and only then
exec's the candidate. Results go to a private dup of the original stdout, one JSON line per
test, each prefixed with a marker holding the nonce. The candidate never sees the nonce in
its files, so printing fake result lines does not make a test pass; a run that exits 0
without the harness's own "done" line counts as failed (``os._exit(0)`` is not a pass).

``extract_code`` pulls the program out of a model response (fenced blocks, a bare ``def``,
or a body-only completion of the prompt).
"""

from __future__ import annotations

import ast
import json
import re
import secrets

from loopwright.sandboxes import ExecResult, Sandbox, SandboxLimits, get_sandbox
from pydantic import BaseModel, ConfigDict, Field

VERSION = "code-tests-1"

_MAX_FIELD = 300  # characters kept of reprs, inputs and outputs in feedback
_SPEC_FILE = "spec.json"

# --- extraction -------------------------------------------------------------------------

_PY_LANGS = {"", "python", "py", "python3", "py3"}
_FENCE = re.compile(r"^\s*```+\s*([\w.+-]*)")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) for every fenced block; an unclosed final fence runs to the end."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if lang is None:
            if m:
                lang, body = m.group(1).lower(), []
        elif m and line.strip().strip("`") == "":
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    if lang is not None and body:
        blocks.append((lang, "\n".join(body) + "\n"))
    return blocks


def _defines(code: str, entry_point: str) -> bool:
    return (
        re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None
    )


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _trim_to_parsable(code: str) -> str:
    """Drop trailing prose: the longest prefix, cut at a top-level line, that parses."""
    if _parses(code):
        return code
    lines = code.splitlines(keepends=True)
    for cut in range(len(lines) - 1, 0, -1):
        if lines[cut].strip() and not lines[cut][0].isspace():
            candidate = "".join(lines[:cut])
            if _parses(candidate):
                return candidate
    return code


def _looks_like_body(text: str) -> bool:
    """Indented body lines continuing a prompt: first code line indented, no top-level def."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return bool(first) and first[0] in " \t" and re.search(r"^def\s", text, re.M) is None


def _join_prompt(prompt: str, body: str) -> str:
    sep = "" if prompt.endswith("\n") or body.startswith("\n") else "\n"
    return prompt + sep + body


def extract_code(text: str, prompt: str | None = None, entry_point: str | None = None) -> str:
    """The program in a model response.

    Order: the last fenced python (or bare) block defining ``entry_point`` (when given), else
    the last python/bare fenced block, else the last fenced block of any language; without
    fences, from the line ``def entry_point(`` on (keeping imports above it, dropping
    trailing prose); a body-only completion (indented lines, no ``def``) is appended to
    ``prompt``; otherwise the text as is.
    """
    blocks = _fenced_blocks(text)
    py_blocks = [body for lang, body in blocks if lang in _PY_LANGS]
    code: str | None = None
    if entry_point:
        defining = [b for b in py_blocks if _defines(b, entry_point)]
        if defining:
            code = defining[-1]
    if code is None and py_blocks:
        code = py_blocks[-1]
    if code is None and blocks:
        code = blocks[-1][1]
    if code is not None:
        if prompt is not None and _looks_like_body(code):
            return _join_prompt(prompt, code)
        return code
    if entry_point:
        m = re.search(rf"^[ \t]*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", text, re.M)
        if m:
            before = text[: m.start()].splitlines()
            imports = [ln for ln in before if re.match(r"^(?:import|from)\s+\w", ln)]
            tail = _trim_to_parsable(text[m.start() :])
            return "\n".join(imports) + ("\n" if imports else "") + tail
    if prompt is not None and _looks_like_body(text):
        return _join_prompt(prompt, text)
    return text


# --- results ----------------------------------------------------------------------------


class TestOutcome(BaseModel):
    """One test unit's result."""

    __test__ = False  # not a pytest class

    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    passed: bool
    error: str | None = None
    """One line: why it failed (exception, assertion, timeout, mismatch)."""


class ExecSummary(BaseModel):
    """What the sandbox reported, summed over the runs behind one result."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None
    """Exit code of the last run (None when it was killed)."""
    duration_s: float
    """Wall-clock seconds over all runs."""
    runs: int = 1
    killed_by: str | None = None


class CodeTestResult(BaseModel):
    """The verdict of running a program against its tests."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    tests_total: int
    tests_passed: int
    outcomes: list[TestOutcome] = Field(default_factory=list)
    feedback: str
    """Short text for a refiner: the first failure, or "all N tests passed"."""
    timed_out: bool = False
    exec: ExecSummary

    @property
    def score(self) -> float:
        """Fraction of tests passed (0.0 when there are none)."""
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


def _short(s: str, n: int = _MAX_FIELD) -> str:
    s = s if len(s) <= n else s[: n - 3] + "..."
    return s


def _one_line(s: str, n: int = _MAX_FIELD) -> str:
    return _short(" ".join(s.split()), n)


def _summary(results: list[ExecResult]) -> ExecSummary:
    last = results[-1]
    killed = next((r.killed_by for r in results if r.killed_by), None)
    return ExecSummary(
        exit_code=last.exit_code,
        duration_s=round(sum(r.duration_s for r in results), 4),
        runs=len(results),
        killed_by=killed,
    )


def _killed_message(r: ExecResult, limits: SandboxLimits) -> str:
    if r.timed_out:
        return f"timed out after {limits.timeout_s:g}s"
    if r.killed_by == "memory":
        return f"ran out of memory (limit {limits.memory_mb} MiB)"
    if r.killed_by == "output":
        return f"too much output (limit {limits.max_output_bytes} bytes)"
    if r.killed_by == "cpu":
        return f"CPU time limit exceeded ({limits.effective_cpu_s}s)"
    if r.exit_code is not None and r.exit_code < 0:
        return f"killed by signal {-r.exit_code}"
    return f"exited with code {r.exit_code}"


# --- harness (runs inside the sandbox) --------------------------------------------------

_HARNESS = r"""
import ast, json, linecache, os, sys, traceback

def _main():
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    os.unlink("spec.json")
    marker = ("@@LW-" + spec["nonce"] + "@@").encode()
    dumps, write = json.dumps, os.write
    sys.stdout.flush(); sys.stderr.flush()
    out = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1); os.dup2(null, 2)

    def emit(obj):
        write(out, marker + dumps(obj).encode() + b"\n")

    def register(name, src):
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)

    def short(s, n=300):
        s = " ".join(str(s).split())
        return s if len(s) <= n else s[: n - 3] + "..."

    def describe(exc, test_name, test_src):
        info = {"error": short(traceback.format_exception_only(type(exc), exc)[-1].strip())}
        tb, sol_tb, test_tb = exc.__traceback__, None, None
        while tb is not None:
            fn = tb.tb_frame.f_code.co_filename
            if fn == "<solution>":
                sol_tb = tb
            elif fn == test_name:
                test_tb = tb
            tb = tb.tb_next
        if isinstance(exc, SyntaxError) and exc.filename == "<solution>" and exc.lineno:
            info["solution_line"] = exc.lineno
            info["solution_src"] = short((exc.text or "").strip())
        if sol_tb is not None:
            info["solution_line"] = sol_tb.tb_lineno
            info["solution_src"] = short(linecache.getline("<solution>", sol_tb.tb_lineno).strip())
        if test_tb is not None:
            line = test_tb.tb_lineno
            info["test_line"] = line
            node = None
            try:
                for n in ast.walk(ast.parse(test_src)):
                    if isinstance(n, ast.Assert) and n.lineno <= line <= (n.end_lineno or n.lineno):
                        node = n
            except SyntaxError:
                pass
            if node is not None:
                info["test_src"] = short(ast.get_source_segment(test_src, node) or "", 400)
                if (isinstance(exc, AssertionError) and isinstance(node.test, ast.Compare)
                        and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
                    frame = test_tb.tb_frame
                    try:
                        got = eval(compile(ast.Expression(node.test.left), test_name, "eval"),
                                   frame.f_globals, dict(frame.f_locals))
                        info["got"] = short(repr(got))
                    except BaseException as e2:
                        info["got"] = "<re-evaluation raised " + type(e2).__name__ + ">"
            else:
                info["test_src"] = short(linecache.getline(test_name, line).strip())
        return info

    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    code = spec["code"]
    register("<solution>", code)
    try:
        exec(compile(code, "<solution>", "exec"), ns)
    except BaseException as e:
        emit({"kind": "code", "ok": False, **describe(e, "<none>", "")})
        emit({"kind": "done"})
        return
    emit({"kind": "code", "ok": True})
    for i, test in enumerate(spec["tests"]):
        name = "<test %d>" % i
        register(name, test)
        try:
            exec(compile(test, name, "exec"), ns)
        except BaseException as e:
            emit({"kind": "test", "i": i, "ok": False, **describe(e, name, test)})
        else:
            emit({"kind": "test", "i": i, "ok": True})
    emit({"kind": "done"})

_main()
"""


def _run_harness(
    code: str,
    tests: list[str],
    names: list[str],
    sandbox: Sandbox,
    limits: SandboxLimits,
) -> CodeTestResult:
    nonce = secrets.token_hex(16)
    spec = json.dumps({"nonce": nonce, "code": code, "tests": tests})
    result = sandbox.run_python(_HARNESS, files={_SPEC_FILE: spec}, limits=limits)

    marker = f"@@LW-{nonce}@@"
    code_rec: dict[str, object] | None = None
    per_test: dict[int, dict[str, object]] = {}
    done = False
    for line in result.stdout.splitlines():
        if not line.startswith(marker):
            continue
        try:
            rec = json.loads(line[len(marker) :])
        except json.JSONDecodeError:
            continue
        kind = rec.get("kind")
        if kind == "code" and code_rec is None:
            code_rec = rec
        elif kind == "test" and isinstance(rec.get("i"), int):
            per_test.setdefault(rec["i"], rec)
        elif kind == "done":
            done = True

    outcomes: list[TestOutcome] = []
    feedback: str | None = None
    stopped_at: int | None = None  # first test without a result (killed or exited there)
    for i, name in enumerate(names):
        rec = per_test.get(i)
        if rec is not None and rec.get("ok") is True:
            outcomes.append(TestOutcome(index=i, name=name, passed=True))
            continue
        if rec is not None:
            err = str(rec.get("error", "failed"))
            outcomes.append(TestOutcome(index=i, name=name, passed=False, error=err))
            if feedback is None:
                feedback = _test_feedback(rec, name)
            continue
        # no result for this test
        if code_rec is not None and code_rec.get("ok") is False:
            err = "solution failed to load: " + str(code_rec.get("error", ""))
        elif stopped_at is None and code_rec is not None:
            stopped_at = i
            err = _killed_message(result, limits) if not result.ok else "exited during this test"
        elif code_rec is None:
            err = "no result: " + (
                _killed_message(result, limits)
                if not result.ok
                else "the program exited before the tests ran"
            )
        else:
            err = "not run"
        outcomes.append(TestOutcome(index=i, name=name, passed=False, error=_one_line(err)))

    if code_rec is not None and code_rec.get("ok") is False:
        feedback = "the solution failed to load: " + _where(code_rec)
    elif feedback is None and (stopped_at is not None or code_rec is None):
        reason = _killed_message(result, limits) if not result.ok else "exited early"
        if code_rec is None:
            feedback = f"{reason} while loading the solution"
            if result.ok or result.exit_code not in (None, 0):
                tail = _stderr_tail(result.stderr)
                feedback += f" ({tail})" if tail else ""
        else:
            assert stopped_at is not None
            feedback = f"{reason} in {names[stopped_at]}: {_one_line(tests[stopped_at], 200)}"

    passed_n = sum(o.passed for o in outcomes)
    all_ok = passed_n == len(names) and done and result.ok and len(names) > 0
    if all_ok:
        feedback = f"all {len(names)} tests passed"
    elif feedback is None:
        feedback = (
            "no tests to run"
            if not names
            else f"the run did not finish normally ({_killed_message(result, limits)})"
        )
    return CodeTestResult(
        passed=all_ok,
        tests_total=len(names),
        tests_passed=passed_n,
        outcomes=outcomes,
        feedback=feedback,
        timed_out=result.timed_out,
        exec=_summary([result]),
    )


def _where(rec: dict[str, object]) -> str:
    err = str(rec.get("error", "error"))
    if "solution_line" in rec:
        err += f" (solution line {rec['solution_line']}: {rec.get('solution_src', '')})"
    return err


def _test_feedback(rec: dict[str, object], name: str) -> str:
    err = str(rec.get("error", "failed"))
    src = rec.get("test_src")
    line = rec.get("test_line")
    if err.startswith("AssertionError") and src:
        msg = f"{name} failed at test line {line}: {src}"
        if "got" in rec:
            msg += f" -- got {rec['got']}"
        if err != "AssertionError":
            msg += f" ({err})"
        return msg
    msg = _where(rec)
    if src:
        msg += f" -- in {name} line {line}: {src}"
    return msg


def _stderr_tail(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return _one_line(lines[-1]) if lines else ""


def _prepare(
    sandbox: Sandbox | None, limits: SandboxLimits | None
) -> tuple[Sandbox, SandboxLimits]:
    return sandbox if sandbox is not None else get_sandbox(), limits or SandboxLimits()


# --- public runners ---------------------------------------------------------------------


def run_humaneval(
    code: str,
    test: str,
    entry_point: str,
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
) -> CodeTestResult:
    """HumanEval: ``code``, then ``test`` (defines ``check``), then ``check(entry_point)``.

    One test unit; it passes when ``check`` returns and the program exits 0.
    """
    sb, lim = _prepare(sandbox, limits)
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be an identifier: {entry_point!r}")
    program = f"{test}\n\ncheck({entry_point})\n"
    return _run_harness(code, [program], [f"check({entry_point})"], sb, lim)


def run_asserts(
    code: str,
    asserts: list[str],
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
) -> CodeTestResult:
    """MBPP: run each assert statement as its own test after exec'ing ``code`` once.

    All asserts share one sandbox run (and so ``limits.timeout_s``); a test still
    running when time runs out is reported as timed out, the ones after it as not run.
    """
    sb, lim = _prepare(sandbox, limits)
    names = [f"test {i}" for i in range(len(asserts))]
    return _run_harness(code, list(asserts), names, sb, lim)


def _normalise(out: str) -> list[str]:
    return [" ".join(line.split()) for line in out.strip().splitlines()]


def run_io(
    code: str,
    cases: list[tuple[str, str]],
    sandbox: Sandbox | None = None,
    limits: SandboxLimits | None = None,
    *,
    stop_on_failure: bool = False,
) -> CodeTestResult:
    """APPS: run ``code`` once per (stdin, expected stdout) case; compare whitespace-normalised.

    Each case gets its own sandbox run and its own ``limits``. With ``stop_on_failure``
    the cases after the first failure are reported as not run.
    """
    sb, lim = _prepare(sandbox, limits)
    outcomes: list[TestOutcome] = []
    results: list[ExecResult] = []
    feedback: str | None = None
    timed_out = False
    for i, (stdin, expected) in enumerate(cases):
        name = f"case {i}"
        if stop_on_failure and feedback is not None:
            outcomes.append(TestOutcome(index=i, name=name, passed=False, error="not run"))
            continue
        r = sb.run_python(code, stdin=stdin, limits=lim)
        results.append(r)
        timed_out = timed_out or r.timed_out
        err: str | None = None
        if not r.ok:
            err = _killed_message(r, lim)
            if r.killed_by is None and r.exit_code not in (None, 0):
                tail = _stderr_tail(r.stderr)
                line = _last_main_line(r.stderr)
                err = (tail or err) + (f" (line {line})" if line else "")
        elif _normalise(r.stdout) != _normalise(expected):
            err = "wrong output"
        outcomes.append(TestOutcome(index=i, name=name, passed=err is None, error=err))
        if err is not None and feedback is None:
            feedback = (
                f"{name} failed: {err}\n"
                f"input: {_short(stdin.strip())!r}\n"
                f"expected: {_short(expected.strip())!r}\n"
                f"got: {_short(r.stdout.strip())!r}"
            )
    passed_n = sum(o.passed for o in outcomes)
    ok = bool(cases) and passed_n == len(cases)
    if ok:
        feedback = f"all {len(cases)} cases passed"
    return CodeTestResult(
        passed=ok,
        tests_total=len(cases),
        tests_passed=passed_n,
        outcomes=outcomes,
        feedback=feedback or "no cases to run",
        timed_out=timed_out,
        exec=_summary(results) if results else ExecSummary(exit_code=None, duration_s=0.0, runs=0),
    )


def _last_main_line(stderr: str) -> int | None:
    found = re.findall(r'File "(?:[^"]*/)?main\.py", line (\d+)', stderr)
    return int(found[-1]) if found else None


__all__ = [
    "VERSION",
    "CodeTestResult",
    "ExecSummary",
    "TestOutcome",
    "extract_code",
    "run_asserts",
    "run_humaneval",
    "run_io",
]
