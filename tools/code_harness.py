"""The harness: a small program run in the sandbox around the candidate, and the reading of
its result lines into a ``CodeTestResult`` (see :mod:`loopwright.tools.code_tests`).
"""

from __future__ import annotations

import json
import secrets

from loopwright.sandboxes import Sandbox, SandboxLimits
from loopwright.tools.code_results import (
    CodeTestResult,
    TestOutcome,
    killed_message,
    one_line,
    stderr_tail,
    summary,
)

_SPEC_FILE = "spec.json"


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


def run_harness(
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
            err = killed_message(result, limits) if not result.ok else "exited during this test"
        elif code_rec is None:
            err = "no result: " + (
                killed_message(result, limits)
                if not result.ok
                else "the program exited before the tests ran"
            )
        else:
            err = "not run"
        outcomes.append(TestOutcome(index=i, name=name, passed=False, error=one_line(err)))

    if code_rec is not None and code_rec.get("ok") is False:
        feedback = "the solution failed to load: " + _where(code_rec)
    elif feedback is None and (stopped_at is not None or code_rec is None):
        reason = killed_message(result, limits) if not result.ok else "exited early"
        if code_rec is None:
            feedback = f"{reason} while loading the solution"
            if result.ok or result.exit_code not in (None, 0):
                tail = stderr_tail(result.stderr)
                feedback += f" ({tail})" if tail else ""
        else:
            assert stopped_at is not None
            feedback = f"{reason} in {names[stopped_at]}: {one_line(tests[stopped_at], 200)}"

    passed_n = sum(o.passed for o in outcomes)
    all_ok = passed_n == len(names) and done and result.ok and len(names) > 0
    if all_ok:
        feedback = f"all {len(names)} tests passed"
    elif feedback is None:
        feedback = (
            "no tests to run"
            if not names
            else f"the run did not finish normally ({killed_message(result, limits)})"
        )
    return CodeTestResult(
        passed=all_ok,
        tests_total=len(names),
        tests_passed=passed_n,
        outcomes=outcomes,
        feedback=feedback,
        timed_out=result.timed_out,
        exec=summary([result]),
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
