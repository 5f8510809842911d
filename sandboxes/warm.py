"""The bwrap fast path: long-lived sandboxed interpreters that fork a fresh child per program.

Starting bwrap and a Python interpreter costs ~40 ms per program; verifying thousands of
candidates should not. Each worker is one bwrap sandbox (its own slot uid, cgroups and
tmpfs ``/work``) running ``_warm_server.py`` under the sandbox's Python. Per program the
server forks a child that takes the run's rlimits in a new session and runs the source
in-process; afterwards it SIGKILLs everything else in the sandbox and wipes ``/work``, so no
process, file or ``/tmp`` entry carries over to the next program.

The server is the sandbox's PID 1, not dumpable, and the only holder of the pipes to the
host; a child inherits no other run's request or output (see ``_warm_server.py``). Every
request carries a random id that the reply must echo, and a reply is read as a length-framed
header plus raw output, so output can never be taken for protocol.

The host keeps its own watchdog: a worker that does not answer within the run's timeout
plus a grace period, answers for another request, or garbles its reply is torn down and
replaced, and that run is reported as timed out or killed. A worker whose server reports that
a process outlived its cleanup is replaced after its answer.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import queue
import secrets
import select
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loopwright.sandboxes import cgroups
from loopwright.sandboxes.base import (
    ExecResult,
    SandboxLimits,
    SandboxUnavailable,
    make_result,
    safe_relpath,
)

if TYPE_CHECKING:
    from loopwright.sandboxes.bwrap import BwrapSandbox

T = TypeVar("T")
_SERVER = (Path(__file__).parent / "_warm_server.py").read_text(encoding="utf-8")
_GRACE_S = 5.0  # server-side cleanup after the deadline, before we give up on a worker
_START_TIMEOUT_S = 20.0
_WORKER_PROCESSES = 2  # bwrap and the server (the namespace's PID 1), both of the slot uid
_ID = 16  # bytes of request id that open every frame, both ways
_READY = bytes(_ID)  # the id of the server's first message
_MAX_HEADER = 1 << 20
# The worker's own rlimits are ceilings each run's child lowers; they must not be below any
# run's request, so they are effectively unlimited (the run's limits apply to its child).
_CEILING = SandboxLimits(
    timeout_s=1e9, memory_mb=1 << 24, max_processes=1 << 15, max_file_mb=1 << 20, cpu_s=10**9
)


def _status_field(pid: int, key: str) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return line.split()[1:]
    return []


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _status_field(int(entry.name), "PPid") == [str(pid)]:
            out.append(int(entry.name))
    return out


def _ns_pid(pid: int) -> int | None:
    ids = _status_field(pid, "NSpid")
    return int(ids[-1]) if ids else None


class _WorkerDied(Exception):
    pass


class _NotSent(_WorkerDied):
    """The worker was gone before the program reached it: not the program's doing."""


class _Untrusted(_WorkerDied):
    """The reply was not for this request, or did not add up: the worker is not trusted."""


class _Launcher:
    """One long-lived thread that starts every worker.

    bwrap's ``--die-with-parent`` is PR_SET_PDEATHSIG, which fires when the *thread* that
    forked it exits, not the process: a worker started from a pool thread would die with that
    thread. Started from here, workers live until the process does.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="loopwright-sandbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

    def call(self, fn: Callable[[], T]) -> T:
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    @property
    def usable(self) -> bool:
        return self._pid == os.getpid() and self._thread.is_alive()


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def _launch(fn: Callable[[], T]) -> T:
    global _launcher
    with _launcher_lock:
        if _launcher is None or not _launcher.usable:  # none yet, or we are a forked child
            _launcher = _Launcher()
        launcher = _launcher
    return launcher.call(fn)


class _Worker:
    """One sandbox + warm server, holding one slot uid for its whole life."""

    def __init__(self, sandbox: BwrapSandbox, disk_mb: int) -> None:
        self.disk_mb = disk_mb
        self._stack = contextlib.ExitStack()
        try:
            self.uid = self._stack.enter_context(sandbox._slot_uid())
            limits = _CEILING.model_copy(update={"max_disk_mb": disk_mb})
            argv = [*sandbox.python_argv(), "-c", _SERVER]
            uid = self.uid
            self.proc = _launch(
                lambda: sandbox.launch(
                    argv, limits, uid, nproc_extra=_WORKER_PROCESSES, as_init=True
                )
            )
            # stderr carries only bwrap's and the server's own failures (programs get their
            # own pipes), so it cannot fill up; it is read when a worker fails to start
            assert self.proc.stderr is not None
            self._stack.callback(self._stop)
            self._read_errors_from = self.proc.stderr
            ready, _, _ = self._receive(time.monotonic() + _START_TIMEOUT_S, _READY, 0)
        except _WorkerDied as e:
            detail = self._stderr_tail() or str(e)
            self.close()
            raise SandboxUnavailable(f"the warm bwrap worker did not start ({detail})") from None
        except BaseException:
            self.close()
            raise
        self.server_pid_in_sandbox = int(ready.get("ready", 0))

    def pids(self) -> list[int]:
        """Host PIDs of this worker's own processes: bwrap and the server, its only child,
        told apart by its PID inside the namespace (``NSpid``)."""
        server = [c for c in _children(self.proc.pid) if _ns_pid(c) == self.server_pid_in_sandbox]
        return [self.proc.pid, *server]

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(self._read_errors_from.fileno(), False)
            data = self._read_errors_from.read(4096) or b""
            lines = data.decode("utf-8", "replace").strip().splitlines()
            return lines[-1] if lines else ""
        return ""

    def _stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> None:
        self._stack.close()  # stop the worker, then the slot's uid sweep and unlock

    # -- protocol -----------------------------------------------------------------------

    def _send(self, parts: list[bytes]) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise _NotSent("worker exited")
        try:
            self.proc.stdin.write(struct.pack(">I", sum(map(len, parts))) + b"".join(parts))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise _NotSent(f"request pipe closed: {e}") from None

    def _read(self, n: int, deadline: float) -> memoryview:
        """Exactly ``n`` bytes of the reply pipe, read in place (replies can be megabytes)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = memoryview(bytearray(n))
        got = 0
        poller = select.poll()  # not select(): this process may hold fds above 1024
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not poller.poll(left * 1000):
                continue
            read = os.readv(fd, [buf[got:]])
            if not read:
                raise _WorkerDied("the warm server exited")
            got += read
        return buf

    def _receive(
        self, deadline: float, rid: bytes, max_output: int
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """The reply to request ``rid``: (header, stdout, stderr). A reply that does not echo
        ``rid`` or does not add up comes from a worker we can no longer trust (_Untrusted)."""
        (n,) = struct.unpack(">I", self._read(4, deadline))
        if not _ID + 4 <= n <= _ID + 4 + _MAX_HEADER + max_output:
            raise _Untrusted("garbled reply")
        frame = self._read(n, deadline)
        if not secrets.compare_digest(bytes(frame[:_ID]), rid):
            raise _Untrusted("a reply to another request")
        (size,) = struct.unpack_from(">I", frame, _ID)
        at = _ID + 4 + size
        try:
            header = json.loads(bytes(frame[_ID + 4 : at]))
            n_out, n_err = int(header.get("stdout", 0)), int(header.get("stderr", 0))
        except (ValueError, TypeError, AttributeError):
            raise _Untrusted("garbled reply") from None
        if at + n_out + n_err != n or min(n_out, n_err) < 0:
            raise _Untrusted("garbled reply")
        return header, bytes(frame[at : at + n_out]), bytes(frame[at + n_out :])

    def run(
        self,
        argv: list[str],
        files: Mapping[str, str | bytes] | None,
        stdin: str | bytes | None,
        limits: SandboxLimits,
    ) -> tuple[dict[str, Any], bytes, bytes]:
        """Send one program; the server's reply (header, stdout, stderr). Raises _NotSent,
        _WorkerDied or TimeoutError."""
        cgroups.prepare(self.uid, limits, _WORKER_PROCESSES)
        bodies = [
            (safe_relpath(rel), c.encode() if isinstance(c, str) else bytes(c))
            for rel, c in (files or {}).items()
        ]
        raw_stdin = stdin.encode() if isinstance(stdin, str) else bytes(stdin or b"")
        server_lim = {
            "timeout_s": float(limits.timeout_s),
            "memory_mb": limits.memory_mb,
            "cpu_s": limits.effective_cpu_s,
            "max_file_mb": limits.max_file_mb,
            "max_output_bytes": limits.max_output_bytes,
            # the child counts itself, the server and bwrap
            "nproc": limits.max_processes + _WORKER_PROCESSES,
        }
        # marshal format 4: plain str/int/float/tuple/list/dict, read by any Python 3.4+
        server_part = marshal.dumps((server_lim, len(raw_stdin)), 4)
        child_part = marshal.dumps(
            ("python", [str(a) for a in argv], [(rel, len(body)) for rel, body in bodies]), 4
        )
        rid = secrets.token_bytes(_ID)
        self._send(
            [
                rid,
                struct.pack(">I", len(server_part)),
                server_part,
                struct.pack(">I", len(child_part)),
                child_part,
                *(body for _, body in bodies),
                raw_stdin,
            ]
        )
        deadline = time.monotonic() + limits.timeout_s + _GRACE_S
        return self._receive(deadline, rid, limits.max_output_bytes)


_pools: weakref.WeakSet[WarmPool] = weakref.WeakSet()


def live_worker_pids() -> list[int]:
    """Host PIDs of every idle warm worker in this process (any sandbox instance)."""
    return [pid for pool in list(_pools) for pid in pool.worker_pids()]


class WarmPool:
    """A few warm workers shared by threads; ``run`` blocks until one is free."""

    def __init__(self, sandbox: BwrapSandbox, size: int) -> None:
        self._sandbox = sandbox
        self._size = max(1, size)
        self._idle: list[_Worker] = []
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        _pools.add(self)

    def _take(self, disk_mb: int) -> _Worker | None:
        """An idle worker with this tmpfs size, or None when the caller should start one."""
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("sandbox is closed")
                dead = [w for w in self._idle if w.proc.poll() is not None]
                for w in dead:
                    self._idle.remove(w)
                    threading.Thread(target=w.close, daemon=True).start()
                for i, w in enumerate(self._idle):
                    if w.disk_mb == disk_mb:
                        self._busy += 1
                        return self._idle.pop(i)
                if self._busy + len(self._idle) < self._size:
                    self._busy += 1
                    return None
                if self._idle:  # all idle ones have another disk size: replace one
                    stale = self._idle.pop(0)
                    self._busy += 1
                    threading.Thread(target=stale.close, daemon=True).start()
                    return None
                self._cond.wait()

    def _give_back(self, worker: _Worker | None) -> None:
        with self._cond:
            self._busy -= 1
            if worker is not None and not self._closed:
                self._idle.append(worker)
                worker = None
            self._cond.notify()
        if worker is not None:
            worker.close()

    def run(
        self,
        argv: list[str],
        files: Mapping[str, str | bytes] | None,
        stdin: str | bytes | None,
        limits: SandboxLimits,
    ) -> ExecResult:
        started = time.monotonic()
        for attempt in range(3):
            worker = self._take(limits.max_disk_mb)
            try:
                if worker is None:
                    worker = _Worker(self._sandbox, limits.max_disk_mb)
                reply = worker.run(argv, files, stdin, limits)
                break
            except _NotSent:  # a worker that died idle: use another, blame nobody
                self._discard(worker)
                if attempt == 2:
                    raise SandboxUnavailable("warm bwrap workers keep exiting") from None
            except (TimeoutError, _WorkerDied) as e:
                self._discard(worker)
                timed_out = isinstance(e, TimeoutError)
                if timed_out:
                    note = "sandbox: the sandbox stopped answering"
                elif isinstance(e, _Untrusted):
                    note = f"sandbox: the worker's reply did not match the request ({e})"
                else:
                    note = "sandbox: the sandbox died during the run"
                return make_result(
                    None,
                    "timeout" if timed_out else "signal",
                    b"",
                    note.encode(),
                    time.monotonic() - started,
                    False,
                )
            except BaseException:
                self._discard(worker)
                raise
        assert worker is not None
        header, out, err = reply
        if "error" in header:
            self._discard(worker)
            raise ValueError(f"sandbox could not set up the run: {header['error']}")
        result = make_result(
            header["exit_code"],
            header["killed_by"],
            out,
            err,
            float(header["duration_s"]),
            bool(header["truncated"]),
        )
        result = cgroups.explain(worker.uid, result)
        if header.get("retire", True):  # something outlived the run: start afresh next time
            self._discard(worker)
        else:
            self._give_back(worker)
        return result

    def _discard(self, worker: _Worker | None) -> None:
        if worker is not None:
            worker.close()
        self._give_back(None)

    def worker_pids(self) -> list[int]:
        """Host PIDs of the idle workers' own processes (for tests and diagnostics)."""
        with self._cond:
            return [pid for w in self._idle for pid in w.pids()]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for w in idle:
            w.close()
