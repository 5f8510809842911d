"""Candidate programs that try to forge their own reward, through every test style.

Each program below is wrong (or does not know the answers) and attacks the harness instead:
it speaks for the harness on its output channel, exits or kills before the tests finish,
returns objects whose dunders agree with anything, hangs, or reads the tests. Every one must
be graded failed, through the public runners and the real bubblewrap sandbox (warm and cold
paths). Correct programs, with every kind of plain value, still pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from loopwright.loops.tasks import doctest_asserts
from loopwright.sandboxes import BwrapSandbox, Sandbox, SandboxLimits
from loopwright.tools.code_tests import CodeTestResult, run_asserts, run_humaneval, run_io

LIMITS = SandboxLimits(timeout_s=20)
SHORT = SandboxLimits(timeout_s=2)


def _bwrap(warm: bool, workers: int = 2) -> Iterator[Sandbox]:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")
    sb = BwrapSandbox(warm=warm, warm_workers=workers)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    yield from _bwrap(warm=True)


@pytest.fixture(scope="module", params=["warm", "cold"])
def any_sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    yield from _bwrap(warm=request.param == "warm")


# --- the problem: f(x) = x * x, with answers nobody would guess -----------------------------

SECRET = {2: 48151623, 3: 4242424242, 10: 31415926}
ASSERTS = [f"assert f({x}) == {y}" for x, y in SECRET.items()]
CHECK = "def check(candidate):\n" + "".join(
    f"    assert candidate({x}) == {y}\n" for x, y in SECRET.items()
)
PROMPT = 'def f(x):\n    """The secret of x.\n' + "".join(
    f"    >>> f({x})\n    {y}\n" for x, y in SECRET.items()
)
PROMPT += '    """\n'
IO_CASES = [(f"{x}\n", f"{y}\n") for x, y in SECRET.items()]


def function_program(attack: str, where: str, body: str = "    return -1\n") -> str:
    attack = textwrap.dedent(attack)
    if where == "load":
        return f"{attack}\ndef f(x):\n{body}\n_attack()\n"
    return f"{attack}\ndef f(x):\n    _attack()\n{body}"


def io_program(attack: str) -> str:
    return f"{textwrap.dedent(attack)}\nx = int(input())\n_attack()\nprint(-1)\n"


def assert_all_failed(r: CodeTestResult) -> None:
    assert not r.passed, r.feedback
    assert r.tests_passed == 0, (r.feedback, r.outcomes)
    assert r.score == 0.0
    assert all(not o.passed for o in r.outcomes)


def run_function_styles(
    sb: Sandbox, code: str, limits: SandboxLimits = LIMITS, *, may_time_out: bool = False
) -> None:
    """Asserts (MBPP), docstring examples (as the visible-tests verifier builds them) and
    HumanEval's check(candidate): each graded failed (and, unless the attack stops the
    harness, failed before the time limit: the defence, not the clock, decided)."""
    shown = doctest_asserts(PROMPT, "f")
    assert len(shown) == 3
    results = [
        run_asserts(code, ASSERTS, sb, limits),
        run_asserts(code, shown, sb, limits),
        run_humaneval(code, CHECK, "f", sb, limits),
    ]
    for r in results:
        assert_all_failed(r)
        assert may_time_out or not r.timed_out, r.feedback
    assert [r.tests_total for r in results] == [3, 3, 1]


# --- (a) speaking for the harness ------------------------------------------------------------

# Everything the program can find that looks like a marker or a nonce, from its own memory
# (gc, frames, closures), the files around it and every other process's /proc entries.
_FIND_MARKERS = r"""
import gc, json, os, re, sys

def _markers():
    found, texts, emitters = set(), [], []

    def take(v):
        if isinstance(v, str):
            v = v.encode("utf-8", "surrogatepass")
        if isinstance(v, (bytes, bytearray)):
            texts.append(bytes(v))

    for o in gc.get_objects():
        try:
            if callable(o) and getattr(o, "__name__", "") in ("emit", "_emit", "_send", "send_msg"):
                emitters.append(o)
            for r in gc.get_referents(o):
                take(r)
        except Exception:
            pass
    fr = sys._getframe()
    while fr is not None:
        for v in list(fr.f_locals.values()) + list(fr.f_globals.values()):
            take(v)
            if callable(v) and getattr(v, "__name__", "") in ("emit", "_emit"):
                emitters.append(v)
        fr = fr.f_back
    for root in (".", "/tmp", "/work", "/work/run"):
        try:
            for n in os.listdir(root):
                try:
                    with open(os.path.join(root, n), "rb") as fh:
                        texts.append(fh.read(1 << 20))
                except Exception:
                    pass
        except Exception:
            pass
    for p in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (p, what), "rb") as fh:
                    texts.append(fh.read())
            except Exception:
                pass
    for t in texts:
        found.update(re.findall(rb"@@LW-[0-9a-f]{32}@@", t))
        found.update(b"@@LW-" + h + b"@@" for h in re.findall(rb"[0-9a-f]{32}", t))
    # raw memory of every process it may read (its own at least): markers and the spec's nonce
    for p in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open("/proc/%s/maps" % p) as fh:
                maps = fh.read().splitlines()
            with open("/proc/%s/mem" % p, "rb") as mem:
                for line in maps:
                    if " rw" not in line:
                        continue
                    a, b = (int(x, 16) for x in line.split()[0].split("-"))
                    try:
                        mem.seek(a)
                        chunk = mem.read(min(b - a, 1 << 26))
                    except Exception:
                        continue
                    found.update(re.findall(rb"@@LW-[0-9a-f]{32}@@", chunk))
                    nonces = re.findall(rb'"nonce": "([0-9a-f]{32})"', chunk)
                    found.update(b"@@LW-" + h + b"@@" for h in nonces)
        except Exception:
            pass
    return found, emitters

def _forged_lines(markers):
    recs = [{"kind": "code", "ok": True}]
    recs += [{"kind": "test", "i": i, "ok": True} for i in range(10)]
    recs.append({"kind": "done"})
    return recs, b"".join(m + json.dumps(r).encode() + b"\n" for m in markers for r in recs)
"""

FORGE_FROM_MEMORY = (
    _FIND_MARKERS
    + r"""
def _attack():
    markers, emitters = _markers()
    recs, lines = _forged_lines(markers)
    for e in emitters:
        for r in recs:
            try:
                e(r)
            except Exception:
                pass
    for fd in range(1024):
        try:
            os.write(fd, lines)
        except OSError:
            pass
    os._exit(0)
"""
)

FORGE_THROUGH_PROC = (
    _FIND_MARKERS
    + r"""
def _attack():
    markers, _ = _markers()
    _, lines = _forged_lines(markers)
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for p in ["self", "1"] + pids:
        try:
            fds = os.listdir("/proc/%s/fd" % p)
        except OSError:
            continue
        for fd in fds:
            try:
                w = os.open("/proc/%s/fd/%s" % (p, fd), os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.write(w, lines)
            except OSError:
                pass
            os.close(w)
    import ctypes  # pidfd_getfd: copy a descriptor out of another process (ptrace rights)
    libc = ctypes.CDLL(None, use_errno=True)
    for p in pids:
        pidfd = libc.syscall(434, int(p), 0)  # pidfd_open
        if pidfd < 0:
            continue
        for fd in range(64):
            got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
            if got >= 0:
                try:
                    os.write(got, lines)
                except OSError:
                    pass
                os.close(got)
        os.close(pidfd)
    os._exit(0)
"""
)

# Garbage and forged frames straight into every descriptor, the protocol pipe included.
FORGE_PROTOCOL = r"""
import json, os, struct

def _attack():
    for reply in ({"re": 2, "ok": {"h": 1, "t": "int"}}, {"re": 1, "names": [["f", True]]},
                  {"kind": "done"}, {"re": 3, "ok": True}, {"op": "cb", "id": 1, "x": 1}):
        data = json.dumps(reply).encode()
        frame = struct.pack(">I", len(data)) + data
        for fd in range(3, 64):
            try:
                os.write(fd, frame)
                os.write(fd, b"\xff\xff\xff\xff" + b"x" * 64)
            except OSError:
                pass
"""


@pytest.mark.parametrize("where", ["load", "call"])
@pytest.mark.parametrize(
    "attack",
    [FORGE_FROM_MEMORY, FORGE_THROUGH_PROC, FORGE_PROTOCOL],
    ids=["memory", "proc", "protocol"],
)
def test_speaking_for_the_harness_fails(any_sandbox: Sandbox, attack: str, where: str) -> None:
    run_function_styles(any_sandbox, function_program(attack, where))


@pytest.mark.parametrize("attack", [FORGE_FROM_MEMORY, FORGE_THROUGH_PROC], ids=["memory", "proc"])
def test_speaking_for_the_sandbox_fails_on_stdin_stdout(any_sandbox: Sandbox, attack: str) -> None:
    """stdin/stdout cases are compared on the host; the program owns only its own output."""
    r = run_io(io_program(attack), IO_CASES, any_sandbox, SHORT, stop_on_failure=True)
    assert_all_failed(r)


def test_a_forged_warm_reply_fails_on_stdin_stdout(sandbox: Sandbox) -> None:
    """A length-prefixed reply that would tell the host 'exit 0, printed the answer', written
    to every descriptor of every process the program can open."""
    attack = r"""
import base64, json, os, struct

def _attack():
    for y in (48151623, 4242424242, 31415926):
        out = base64.b64encode(b"%d\n" % y).decode()
        reply = {"exit_code": 0, "killed_by": None, "truncated": False, "duration_s": 0.01,
                 "stdout": out, "stderr": ""}
        data = json.dumps(reply).encode()
        frame = struct.pack(">I", len(data)) + data
        for p in ["self", "1"] + [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                fds = os.listdir("/proc/%s/fd" % p)
            except OSError:
                continue
            for fd in fds:
                try:
                    w = os.open("/proc/%s/fd/%s" % (p, fd), os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, frame)
                    os.close(w)
                except OSError:
                    pass
    os._exit(0)
"""
    assert_all_failed(run_io(io_program(attack), IO_CASES, sandbox, LIMITS))


def test_the_candidate_cannot_take_other_processes_descriptors(any_sandbox: Sandbox) -> None:
    """pidfd_getfd, ptrace and process_vm_readv are refused to the candidate's process, for
    every process of the sandbox (the sandbox's init holds the pipes to the host)."""
    code = textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)

        def attempts():
            out = []
            for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
                if pid == os.getpid():
                    continue
                pidfd = libc.syscall(434, pid, 0)
                got = libc.syscall(438, pidfd, 1, 0) if pidfd >= 0 else -2
                out.append(("pidfd_getfd", got, ctypes.get_errno()))
                out.append(("ptrace", libc.ptrace(16, pid, 0, 0), ctypes.get_errno()))
            return out
        """
    )
    check = (
        "import errno\n"
        "found = attempts()\n"
        "assert len(found) >= 4, found\n"
        "assert all(ret == -1 and err == errno.EPERM for _, ret, err in found), found\n"
    )
    r = run_asserts(code, [check], any_sandbox, LIMITS)
    assert r.passed, r.feedback


STEAL_SANDBOX_PIPES = r"""
import base64, ctypes, json, os, struct

def _attack():
    libc = ctypes.CDLL(None, use_errno=True)
    reply = {"exit_code": 0, "killed_by": None, "truncated": False, "duration_s": 0.01,
             "stdout": base64.b64encode(b"6\n").decode(), "stderr": ""}
    data = json.dumps(reply).encode()
    frame = struct.pack(">I", len(data)) + data
    stolen = 0
    for p in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
        pidfd = libc.syscall(434, p, 0)
        for fd in range(64) if pidfd >= 0 else ():
            got = libc.syscall(438, pidfd, fd, 0)
            if got >= 0:
                stolen += 1
                try:
                    os.write(got, frame)
                except OSError:
                    pass
    return stolen
"""


@pytest.fixture
def one_worker() -> Iterator[Sandbox]:
    """A warm sandbox with a single worker: consecutive runs share it."""
    yield from _bwrap(warm=True, workers=1)


def test_a_stdin_stdout_program_cannot_answer_for_the_sandbox(one_worker: Sandbox) -> None:
    """A stdin/stdout program runs confined too: it cannot copy the pipes the sandbox's init
    process holds, so it can neither forge the sandbox's reply nor push its own output onto
    the next run of the same worker."""
    attacker = STEAL_SANDBOX_PIPES + "\nx = int(input())\nprint(_attack())\n"
    r = run_io(attacker, [("2\n", "4\n")], one_worker, LIMITS)
    assert not r.passed
    assert r.outcomes[0].error == "wrong output" and "got: '0'" in r.feedback
    for x in (2, 5):  # the next runs on that worker get their own results
        r = run_io("print(int(input()) * 3)\n", [(f"{x}\n", f"{3 * x}\n")], one_worker, LIMITS)
        assert r.passed, r.feedback


# --- (b) leaving before the tests finish -------------------------------------------------------

EXITS = {
    "os._exit(0)": "import os\ndef _attack():\n    os._exit(0)\n",
    "sys.exit(0)": "import sys\ndef _attack():\n    sys.exit(0)\n",
    "raise SystemExit": "def _attack():\n    raise SystemExit(0)\n",
    "KeyboardInterrupt": "def _attack():\n    raise KeyboardInterrupt\n",
    "kill parent": "import os, signal\ndef _attack():\n    os.kill(os.getppid(), signal.SIGKILL)\n",
    "stop parent": "import os, signal\ndef _attack():\n    os.kill(os.getppid(), signal.SIGSTOP)\n",
    "interrupt parent": (
        "import os, signal, time\ndef _attack():\n"
        "    os.kill(os.getppid(), signal.SIGINT)\n    time.sleep(0.2)\n"
    ),
    "kill everything": "import os, signal\ndef _attack():\n    os.kill(-1, signal.SIGKILL)\n",
    "close protocol": (
        "import os\ndef _attack():\n    for fd in range(3, 64):\n"
        "        try:\n            os.close(fd)\n        except OSError:\n            pass\n"
    ),
    "segfault": "import ctypes\ndef _attack():\n    ctypes.string_at(0)\n",
}


@pytest.mark.parametrize("where", ["load", "call"])
@pytest.mark.parametrize("attack", list(EXITS.values()), ids=list(EXITS))
def test_leaving_early_fails(sandbox: Sandbox, attack: str, where: str) -> None:
    stops = attack == EXITS["stop parent"]
    run_function_styles(sandbox, function_program(attack, where), SHORT, may_time_out=stops)


@pytest.mark.parametrize("attack", list(EXITS.values()), ids=list(EXITS))
def test_leaving_early_fails_on_stdin_stdout(sandbox: Sandbox, attack: str) -> None:
    r = run_io(io_program(attack), IO_CASES, sandbox, SHORT, stop_on_failure=True)
    assert_all_failed(r)


def test_exit_after_some_tests_fails_the_rest(sandbox: Sandbox) -> None:
    code = "import os\ndef sq(x):\n    if x == 3:\n        os._exit(0)\n    return x * x\n"
    tests = ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(4) == 16"]
    r = run_asserts(code, tests, sandbox, LIMITS)
    assert not r.passed
    assert [o.passed for o in r.outcomes] == [True, False, False]
    assert r.outcomes[1].error == "the solution's process exited with code 0"
    assert r.outcomes[2].error is not None and r.outcomes[2].error.startswith("not run")
    assert "exited with code 0" in r.feedback and "assert sq(3) == 9" in r.feedback


def test_a_test_that_swallows_the_exit_still_fails(sandbox: Sandbox) -> None:
    code = "import os\ndef f(x):\n    os._exit(0)\n"
    check = "def check(candidate):\n    try:\n        candidate(1)\n    except BaseException:\n        pass\n"
    r = run_humaneval(code, check, "f", sandbox, LIMITS)
    assert not r.passed and r.tests_passed == 0
    assert "exited with code 0" in r.feedback


# --- (c) values that agree with anything -----------------------------------------------------

# Each trick returns something that passes every check below in an ordinary Python process.
TRICKS = {
    "always equal": """
        class _V:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return hash(25)
            def __bool__(self): return False
            def __sub__(self, other): return 0
            def __rsub__(self, other): return 0
            def __abs__(self): return 0
            def __lt__(self, other): return True
            def __len__(self): return 0
        def _value(x): return _V()
    """,
    "truthy comparison": """
        class _T:
            def __bool__(self): return True
        class _V:
            def __eq__(self, other): return _T()
            def __ne__(self, other): return []
            def __hash__(self): return hash(25)
            def __bool__(self): return False
            def __sub__(self, other): return 0
        def _value(x): return _V()
    """,
    "int subclass": """
        class _I(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return hash(25)
            def __bool__(self): return False
            def __sub__(self, other): return 0
            def __rsub__(self, other): return 0
        def _value(x): return _I(-1)
    """,
    "str subclass": """
        class _S(str):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return hash(25)
            def __bool__(self): return False
            def __sub__(self, other): return 0
        def _value(x): return _S("nope")
    """,
    "list subclass": """
        class _L(list):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return hash(25)
            def __bool__(self): return False
            def __sub__(self, other): return 0
        def _value(x): return _L([1, 2])
    """,
    "stop iteration": """
        def _value(x): raise StopIteration
    """,
    "lying class": """
        class _V:
            __class__ = property(lambda self: int)
            def __eq__(self, other): return True
            def __hash__(self): return hash(25)
            def __bool__(self): return False
        def _value(x): return _V()
    """,
}

# The same checks in each style; every one fails for an honest wrong answer (-1).
CHECKS = [
    "assert f(5) == 25",
    "assert not (f(5) != 25)",
    "assert f(5) in (25,)",
    "assert {f(5)} == {25}",
    "assert [f(5), f(6)] == [25, 36]",
    "assert not f(0) or f(0) == 0 and False",
    "assert abs(f(5) - 25) < 1e-9",
    "assert f(5) - 25 == 0",
    "assert all(map(lambda x: f(x) == x * x, [5, 6]))",
    "assert isinstance(f(5), int) and f(5) == 25",
    "assert f(5) == 25 and f(6) == 36 and f(7) == 49",
]


@pytest.mark.parametrize("trick", list(TRICKS.values()), ids=list(TRICKS))
def test_values_that_agree_with_anything_fail(sandbox: Sandbox, trick: str) -> None:
    code = textwrap.dedent(trick) + "\ndef f(x):\n    return _value(x)\n"
    r = run_asserts(code, CHECKS, sandbox, LIMITS)
    assert_all_failed(r)
    for check in CHECKS:
        body = "def check(candidate):\n    " + check.replace("f(", "candidate(") + "\n"
        assert_all_failed(run_humaneval(code, body, "f", sandbox, LIMITS))


def test_a_universal_value_would_pass_in_plain_python() -> None:
    """The checks above are the ones these tricks defeat outside the harness."""
    for name, trick in TRICKS.items():
        ns: dict[str, object] = {}
        exec(textwrap.dedent(trick) + "\ndef f(x):\n    return _value(x)\n", ns)
        beaten = 0
        for check in CHECKS:
            try:
                exec(check, ns)
            except (AssertionError, TypeError, StopIteration, RuntimeError):
                continue
            beaten += 1
        assert beaten >= 1, name


PATCHES = {
    "math.isclose": (
        "import math\nmath.isclose = lambda *a, **k: True\n",
        "assert math.isclose(f(5), 25)",
    ),
    "fake math module": (
        "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n",
        "assert math.isclose(f(5), 25)",
    ),
    "from-import isclose": (
        "from math import isclose\nisclose = lambda *a, **k: True\n",
        "assert isclose(f(5), 25)",
    ),
    "builtins.sorted": (
        "import builtins\nbuiltins.sorted = lambda *a, **k: [25, 36]\n",
        "assert sorted([f(6), f(5)]) == [25, 36]",
    ),
    "builtins.abs": (
        "import builtins\nbuiltins.abs = lambda x: 0\n",
        "assert abs(f(5) - 25) < 1e-9",
    ),
    "builtins.all": (
        "import builtins\nbuiltins.all = lambda *a: True\nbuiltins.any = lambda *a: True\n",
        "assert all(f(x) == x * x for x in [5, 6])",
    ),
    "def abs": ("def abs(x):\n    return 0\n", "assert abs(f(5) - 25) < 1e-9"),
    "def all": ("def all(xs):\n    return True\n", "assert all(f(x) == x * x for x in [5, 6])"),
    "def sorted": (
        "def sorted(xs):\n    return [25, 36]\n",
        "assert sorted([f(6), f(5)]) == [25, 36]",
    ),
    "def isinstance": (
        "def isinstance(*a):\n    return True\ndef len(x):\n    return 3\n",
        "assert isinstance(f(5), list) and len(f(5)) == 3",
    ),
    "globals()": (
        "globals()['abs'] = lambda x: 0\n",
        "assert abs(f(5) - 25) < 1e-9",
    ),
}


@pytest.mark.parametrize("patch,check", list(PATCHES.values()), ids=list(PATCHES))
def test_patching_what_the_tests_use_fails(sandbox: Sandbox, patch: str, check: str) -> None:
    """Builtins and standard-library modules the tests use are the harness's own."""
    code = patch + "def f(x):\n    return -1\n"
    assert_all_failed(run_asserts(code, [check], sandbox, LIMITS))
    body = "def check(candidate):\n    " + check.replace("f(", "candidate(") + "\n"
    assert_all_failed(run_humaneval(code, body, "f", sandbox, LIMITS))


def test_the_function_under_test_may_be_named_like_a_builtin(sandbox: Sandbox) -> None:
    code = "def sum(xs):\n    return 42\n"
    r = run_asserts(code, ["assert sum([1]) == 42"], sandbox, LIMITS, entry_point="sum")
    assert r.passed, r.feedback
    r = run_humaneval(
        code, "def check(candidate):\n    assert candidate([1]) == 42\n", "sum", sandbox
    )
    assert r.passed, r.feedback
    # not named as the function under test, it does not replace the builtin
    r = run_asserts(code, ["assert sum([1]) == 42"], sandbox, LIMITS)
    assert not r.passed and "got 1" in r.feedback


# --- (d) hanging -------------------------------------------------------------------------------

HANGS = {
    "busy loop": "def _attack():\n    while True:\n        pass\n",
    "sleep": "import time\ndef _attack():\n    time.sleep(3600)\n",
    "blocked read": "import os\ndef _attack():\n    os.read(os.pipe()[0], 1)\n",
    "fork and wait": "import os, time\ndef _attack():\n    os.fork()\n    time.sleep(3600)\n",
}


@pytest.mark.parametrize(
    "attack,where",
    [(a, "call") for a in HANGS.values()] + [(HANGS["busy loop"], "load")],
    ids=[f"{name}-call" for name in HANGS] + ["busy loop-load"],
)
def test_hanging_fails(sandbox: Sandbox, attack: str, where: str) -> None:
    code = function_program(attack, where)
    r = run_asserts(code, ASSERTS, sandbox, SHORT)
    assert_all_failed(r)
    assert r.timed_out and "timed out after 2s" in r.feedback
    assert_all_failed(run_humaneval(code, CHECK, "f", sandbox, SHORT))


def test_hanging_in_repr_of_a_wrong_value_fails(sandbox: Sandbox) -> None:
    code = (
        "class _V:\n    def __repr__(self):\n        while True:\n            pass\n"
        "def f(x):\n    return _V()\n"
    )
    assert_all_failed(run_asserts(code, ASSERTS, sandbox, SHORT))


@pytest.mark.parametrize("attack", list(HANGS.values()), ids=list(HANGS))
def test_hanging_fails_on_stdin_stdout(sandbox: Sandbox, attack: str) -> None:
    r = run_io(io_program(attack), IO_CASES, sandbox, SHORT, stop_on_failure=True)
    assert_all_failed(r)
    assert r.timed_out


# --- (e) reading the tests ---------------------------------------------------------------------

# The program looks for "f(X) == Y" (or candidate(X) == Y) anywhere it can read and returns Y.
READ_TESTS = r"""
import gc, os, re, sys

def _mem_texts():
    out = []
    for o in gc.get_objects():
        try:
            out.extend(r for r in gc.get_referents(o) if isinstance(r, str))
        except Exception:
            pass
    fr = sys._getframe()
    while fr is not None:
        out.extend(str(v) for v in list(fr.f_locals.values()))
        fr = fr.f_back
    return out

def _texts():
    out = _mem_texts()
    for root in (".", "/tmp", "/work", "/work/run"):
        try:
            for n in os.listdir(root):
                try:
                    with open(os.path.join(root, n), encoding="utf-8", errors="replace") as fh:
                        out.append(fh.read())
                except Exception:
                    pass
        except Exception:
            pass
    for p in [p for p in os.listdir("/proc") if p.isdigit()]:
        for what in ("cmdline", "environ", "mem"):
            try:
                with open("/proc/%s/%s" % (p, what), "rb") as fh:
                    out.append(fh.read(1 << 20).decode("latin-1"))
            except Exception:
                pass
    return out

_TEXT = []

def _lookup(x):
    if not _TEXT:
        _TEXT.append("\n".join(_texts()))
    m = re.search(r"(?:f|candidate)\(%d\)\)? == \(?(\d+)" % x, _TEXT[0])
    return int(m.group(1)) if m else -1

def f(x):
    return _lookup(x)
"""


def test_reading_the_tests_fails(any_sandbox: Sandbox) -> None:
    run_function_styles(any_sandbox, READ_TESTS)
    # in one process with its tests (as before this harness), the same program finds them all:
    # a fresh interpreter, so no other test's strings come first
    program = (
        f"TESTS = {ASSERTS!r}\n{READ_TESTS}\n_texts = _mem_texts\n"
        f"print([f(x) for x in {list(SECRET)!r}])\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == repr(list(SECRET.values()))


PAIR = r"\b%d(?:\\n|\n)?['\"]?\s*[,:]\s*['\"]?(\d{6,})"  # "2\n", "48151623\n" and the like


def test_the_expected_output_is_not_in_the_sandbox(sandbox: Sandbox) -> None:
    """The cases' outputs never enter the sandbox: nothing there pairs an input with one."""
    for held in (repr(IO_CASES), json.dumps(IO_CASES), json.dumps(dict(IO_CASES))):
        found = re.search(PAIR % 2, held)
        assert found is not None and found.group(1) == "48151623", held
    code = READ_TESTS + (
        f"\nx = int(input())\nm = re.search({PAIR!r} % x, '\\n'.join(_texts()))\n"
        "print(m.group(1) if m else -1)\n"
    )
    assert_all_failed(run_io(code, IO_CASES, sandbox, LIMITS))


# --- correct programs still pass -------------------------------------------------------------

RICH = """
import math
from collections import Counter, OrderedDict, deque, namedtuple
from fractions import Fraction
from decimal import Decimal
from enum import IntEnum

Point = namedtuple("Point", "x y")

class Color(IntEnum):
    RED = 1

def values():
    return ((1, 2), {1, 2}, {"a": [1, 2.5, None]}, float("nan"), None, [[1, [2, [3]]]],
            b"x\\x00", 3 + 4j, 10 ** 40, -(10 ** 30), frozenset({1}), "caf\\u00e9 \\ud83d",
            bytearray(b"q"), float("inf"), -0.0, True)

def stdlib_values():
    return (Counter("aab"), deque([1, 2], maxlen=3), Fraction(1, 3), OrderedDict(a=1),
            Decimal("1.10"), Point(1, 2), Color.RED)

def apply(xs, key):
    return sorted(xs, key=key)

def twice(fn, x):
    return fn(fn(x))

def squares(n):
    for i in range(n):
        yield i * i

class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
        return self
    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()
    def __len__(self):
        return len(self.items)
    def __repr__(self):
        return "Stack(%r)" % self.items

def area(r):
    return math.pi * r * r

def f(x):
    return x * x
"""

RICH_ASSERTS = [
    "assert values()[:3] == ((1, 2), {1, 2}, {'a': [1, 2.5, None]})",
    "assert math.isnan(values()[3]) and values()[4] is None",
    "assert values()[5] == [[1, [2, [3]]]] and values()[6] == b'x\\x00'",
    "assert values()[7] == 3 + 4j and values()[8] == 10 ** 40 and values()[9] == -(10 ** 30)",
    "assert values()[10] == frozenset({1}) and values()[11] == 'caf\\u00e9 \\ud83d'",
    "assert values()[12] == bytearray(b'q') and values()[13] == float('inf')",
    "assert math.copysign(1, values()[14]) == -1 and values()[15] is True",
    "assert [type(v).__name__ for v in values()[:3]] == ['tuple', 'set', 'dict']",
    "from collections import Counter, OrderedDict, deque\nfrom fractions import Fraction\n"
    "from decimal import Decimal\n"
    "assert stdlib_values() == (Counter('aab'), deque([1, 2], maxlen=3), Fraction(1, 3), "
    "OrderedDict(a=1), Decimal('1.10'), (1, 2), 1)",
    "assert apply(['bb', 'a', 'ccc'], key=len) == ['a', 'bb', 'ccc']",
    "assert apply(['bb', 'a', 'ccc'], key=lambda s: -len(s)) == ['ccc', 'bb', 'a']",
    "assert twice(lambda v: v + [0], []) == [0, 0]",
    "assert list(squares(4)) == [0, 1, 4, 9] and 9 in squares(4)",
    "s = Stack()\ns.push(1).push(2)\nassert len(s) == 2 and repr(s) == 'Stack([1, 2])'\n"
    "assert s.pop() == 2 and s.pop() == 1",
    "try:\n    Stack().pop()\nexcept IndexError as e:\n    assert 'empty' in str(e)\nelse:\n"
    "    assert False",
    "assert math.isclose(area(1), 3.14159, rel_tol=1e-3)",
    "assert f(5) == 25 and {f(2): 'four'} == {4: 'four'}",
]


def test_correct_programs_pass_every_style(any_sandbox: Sandbox) -> None:
    r = run_asserts(RICH, RICH_ASSERTS, any_sandbox, LIMITS)
    assert r.passed, (r.feedback, [o for o in r.outcomes if not o.passed])
    assert r.tests_passed == len(RICH_ASSERTS)

    check = "def check(candidate):\n" + "".join(
        "    " + line + "\n" for t in RICH_ASSERTS for line in t.splitlines()
    ).replace("assert f(", "assert candidate(")
    r = run_humaneval(RICH, check, "f", any_sandbox, LIMITS)
    assert r.passed, r.feedback

    right = "def f(x):\n" + "".join(
        f"    if x == {x}:\n        return {y}\n" for x, y in SECRET.items()
    )
    shown = doctest_asserts(PROMPT, "f")
    r = run_asserts(right, shown, any_sandbox, LIMITS)
    assert r.passed and r.tests_passed == 3, r.feedback
    r = run_humaneval(right, CHECK, "f", any_sandbox, LIMITS)
    assert r.passed, r.feedback

    table = ", ".join(f"{x}: {y}" for x, y in SECRET.items())
    io = f"x = int(input())\nprint({{{table}}}[x])\n"
    r = run_io(io, IO_CASES, any_sandbox, LIMITS)
    assert r.passed and r.tests_passed == 3, r.feedback


def test_feedback_still_shows_the_failing_line_and_value(sandbox: Sandbox) -> None:
    code = "class Box:\n    pass\ndef f(x):\n    return [x, {'k': (x,)}] if x else Box()\n"
    r = run_asserts(code, ["assert f(2) == [2, {'k': (3,)}]", "assert f(0) == 0"], sandbox)
    assert [o.passed for o in r.outcomes] == [False, False]
    assert r.feedback == (
        "test 0 failed at test line 1: assert f(2) == [2, {'k': (3,)}] -- got [2, {'k': (2,)}]"
    )
    r = run_asserts(code, ["assert f(0) == 0"], sandbox)
    assert "got <__solution__.Box object at" in r.feedback or "got <Box object" in r.feedback
    # a stateful call is not repeated to build the feedback
    stack = (
        "class S:\n    def __init__(self):\n        self.n = 0\n    def next(self):\n"
        "        self.n += 1\n        return self.n\n"
    )
    r = run_asserts(stack, ["s = S()\nassert s.next() == 5"], sandbox)
    assert "got 1" in r.feedback


def test_values_that_cannot_cross_fail_with_a_clear_error(sandbox: Sandbox) -> None:
    code = (
        "class Box:\n    pass\ndef f(x):\n    return Box()\ndef nested():\n"
        "    v = []\n    for _ in range(200):\n        v = [v]\n    return v\n"
    )
    r = run_asserts(code, ["assert f(1)", "assert nested() is not None"], sandbox)
    assert [o.passed for o in r.outcomes] == [False, False]
    assert r.outcomes[0].error is not None and "no truth value" in r.outcomes[0].error
    assert r.outcomes[1].error is not None and "nested more than" in r.outcomes[1].error
