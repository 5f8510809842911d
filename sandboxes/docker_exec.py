"""One run in a ``docker`` sandbox container: the wrapper exec'd per run, the spec it reads
from stdin, and the hijacked exec socket driven under our own deadline and output cap.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from loopwright.sandboxes.base import ExecResult, KilledBy, SandboxLimits, SandboxUnavailable

USER = "65534:65534"
PATH = "/usr/local/bin:/usr/bin:/bin"

# Runs inside the container as the run uid. stdin: the spec's length (20 ASCII digits), the
# spec (a Python literal: cheaper to start than importing json), the files, then the
# program's stdin. Exit status: the program's, or 128+N when signal N killed it.
_WRAPPER = r"""
import os, resource, signal
D = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
def wipe(top):
    # fd-relative and iterative: 0o000 dirs, deep trees and long paths cannot stop it
    stack = [[os.open(top, D), -1, "", None]]
    while stack:
        fd, parent, name, subdirs = frame = stack[-1]
        if subdirs is None:
            subdirs = frame[3] = []
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            os.chmod(e.name, 0o700, dir_fd=fd)
                            subdirs.append(e.name)
                        else:
                            os.unlink(e.name, dir_fd=fd)
                    except OSError:
                        pass
        if subdirs:
            sub = subdirs.pop()
            try:
                stack.append([os.open(sub, D, dir_fd=fd), fd, sub, None])
            except OSError:
                pass
            continue
        stack.pop()
        if parent >= 0:
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass
        os.close(fd)
def clean():
    for _ in range(3):  # kill(-1) spares PID 1 and us; it is atomic against forks
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    for top in ("/tmp", "/dev/shm"):
        try:
            wipe(top)
        except OSError:
            pass
def read(n):
    parts = []
    while n:
        b = os.read(0, min(n, 1 << 20))
        if not b:
            os._exit(125)
        parts.append(b)
        n -= len(b)
    return b"".join(parts)
def oom_kills():
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            for line in open(path):
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
    return -1
clean()
spec = eval(read(int(read(20))).decode(), {"__builtins__": {}})
work = "/tmp/work"
os.mkdir(work, 0o700)
for rel, size in spec["files"]:
    path = os.path.join(work, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(read(size))
ooms = oom_kills()
pid = os.fork()
if pid == 0:
    try:
        os.chdir(work)
        for s in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; exec would keep it
            signal.signal(s, signal.SIG_DFL)
        for res, value in spec["rlimits"]:
            resource.setrlimit(getattr(resource, res), tuple(value))
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as e:
        os.write(2, ("loopwright: cannot run %r: %s\n" % (spec["argv"][0], e)).encode())
    os._exit(127)
status = os.waitpid(pid, 0)[1]
clean()
code = os.waitstatus_to_exitcode(status)
if code == -signal.SIGKILL and oom_kills() > ooms >= 0:
    os.write(2, b"MemoryError: killed by the sandbox's memory limit (OOM killer)\n")
os._exit(128 - code if code < 0 else code)
"""


def _decode_exit(rc: int) -> int:
    # the wrapper reports "killed by signal N" as 128+N; map it to Popen's -N convention.
    return -(rc - 128) if 128 < rc < 128 + signal.NSIG else rc


def _check_path(rel: str) -> str:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or path == PurePosixPath("."):
        raise ValueError(f"sandbox file path must stay inside the work dir: {rel!r}")
    return str(path)


def run_payload(
    argv: list[str],
    files: Mapping[str, str | bytes] | None,
    stdin: str | bytes | None,
    limits: SandboxLimits,
) -> bytes:
    """What the wrapper reads from the exec's stdin: the spec, the files, the program's stdin."""
    bodies = [
        (_check_path(rel), c.encode() if isinstance(c, str) else bytes(c))
        for rel, c in (files or {}).items()
    ]
    mem, fsize = limits.memory_mb * 2**20, limits.max_file_mb * 2**20
    cpu = limits.effective_cpu_s
    spec = {
        "argv": argv,
        "env": {"PATH": PATH, "HOME": "/tmp/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp"},
        "files": [[rel, len(body)] for rel, body in bodies],
        "rlimits": [
            ["RLIMIT_AS", [mem, mem]],
            ["RLIMIT_CPU", [cpu, cpu + 1]],  # soft: SIGXCPU (killed_by="cpu"); hard: KILL
            ["RLIMIT_FSIZE", [fsize, fsize]],
            ["RLIMIT_CORE", [0, 0]],
        ],
    }
    to_send = [_header(spec), *(body for _, body in bodies)]
    to_send.append(stdin.encode() if isinstance(stdin, str) else (stdin or b""))
    return b"".join(to_send)


def _header(spec: dict[str, Any]) -> bytes:
    data = repr(spec).encode()
    return b"%020d" % len(data) + data


class Exec:
    """One exec of the wrapper, driven over the hijacked socket with our own deadline."""

    def __init__(self, api: Any, cid: str, payload: bytes) -> None:
        self._api = api
        cmd = ["python3", "-I", "-B", "-S", "-c", _WRAPPER]
        self.exec_id = api.exec_create(cid, cmd, stdin=True, user=USER, workdir="/tmp")["Id"]
        response = api._post_json(  # exec_start(socket=True), keeping the response to drain it
            api._url("/exec/{0}/start", self.exec_id),
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            data={"Tty": False, "Detach": False},
            stream=True,
        )
        api._raise_for_status(response)
        fp = response.raw._fp.fp
        self._response = response
        self._sock: socket.socket = getattr(fp.raw, "_sock", fp.raw)
        if not isinstance(self._sock, socket.socket):
            raise SandboxUnavailable("the docker backend needs a unix:// or tcp:// DOCKER_HOST")
        self._sock.setblocking(False)
        # bytes the HTTP parser buffered past the upgrade headers belong to the stream
        self._pending = b""
        with contextlib.suppress(OSError, ValueError):
            buffered = fp.peek()
            self._pending = fp.read1(len(buffered)) if buffered else b""
        self._payload = memoryview(payload)
        self.chunks: dict[int, list[bytes]] = {1: [], 2: []}
        self.truncated = False
        self.killed_by: KilledBy | None = None

    def pump(self, deadline: float, budget: int) -> None:
        """Send the payload, demultiplex stdout/stderr until EOF, the deadline or the cap."""
        sel = selectors.DefaultSelector()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._payload else 0)
        sel.register(self._sock, events)
        if not self._payload:
            self._sock.shutdown(socket.SHUT_WR)
        buf = bytearray(self._pending)
        eof = False
        try:
            while not eof:
                now = time.monotonic()
                if now >= deadline:
                    self.killed_by = "timeout"
                    break
                for _, mask in sel.select(timeout=min(deadline - now, 0.5)):
                    if mask & selectors.EVENT_WRITE and self._payload:
                        with contextlib.suppress(BlockingIOError):
                            try:
                                sent = self._sock.send(self._payload[:65536])
                            except (BrokenPipeError, ConnectionResetError):
                                sent = len(self._payload)  # the program stopped reading
                            self._payload = self._payload[sent:]
                        if not self._payload:
                            sel.modify(self._sock, selectors.EVENT_READ)
                            with contextlib.suppress(OSError):
                                self._sock.shutdown(socket.SHUT_WR)  # the program sees EOF
                    if mask & selectors.EVENT_READ:
                        try:
                            data = self._sock.recv(65536)
                        except BlockingIOError:
                            continue
                        except ConnectionResetError:
                            data = b""
                        eof = not data
                        buf += data
                budget = self._demux(buf, budget)
                if budget < 0:
                    self.truncated, self.killed_by = True, "output"
                    break
        finally:
            sel.close()
            self._sock.close()
            self._response.close()

    def _demux(self, buf: bytearray, budget: int) -> int:
        """Move whole frames (8-byte header: stream, 0, 0, 0, big-endian size) out of ``buf``."""
        while len(buf) >= 8:
            stream, size = struct.unpack(">BxxxL", buf[:8])
            if len(buf) < 8 + size:
                break
            data = bytes(buf[8 : 8 + size])
            del buf[: 8 + size]
            if stream not in (1, 2):
                continue
            if len(data) > budget:
                self.chunks[stream].append(data[: max(budget, 0)])
                return -1
            budget -= len(data)
            self.chunks[stream].append(data)
        return budget

    def exit_code(self, timeout_s: float = 2.0) -> int | None:
        """The wrapper's exit status once the daemon has recorded it (EOF can come first)."""
        give_up = time.monotonic() + timeout_s
        while True:
            info = self._api.exec_inspect(self.exec_id)
            if not info["Running"] and info["ExitCode"] is not None:
                return int(info["ExitCode"])
            if time.monotonic() > give_up:
                return None
            time.sleep(0.005)


def exec_result(ex: Exec, rc: int | None, duration: float) -> ExecResult:
    stderr = b"".join(ex.chunks[2]).decode("utf-8", "replace")
    killed_by = ex.killed_by
    exit_code = None if rc is None or killed_by is not None else _decode_exit(rc)
    if killed_by is None and exit_code is None:
        killed_by = "signal"  # the wrapper vanished without a status
    elif exit_code is not None and exit_code != 0:
        memory = stderr.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError")
        if memory:
            killed_by = "memory"  # RLIMIT_AS -> MemoryError, or the cgroup's OOM kill
        elif exit_code == -signal.SIGXCPU:
            killed_by = "cpu"
        elif exit_code < 0:
            killed_by = "signal"
    return ExecResult(
        exit_code=exit_code,
        stdout=b"".join(ex.chunks[1]).decode("utf-8", "replace"),
        stderr=stderr,
        timed_out=killed_by == "timeout",
        killed_by=killed_by,
        duration_s=duration,
        truncated=ex.truncated,
    )
