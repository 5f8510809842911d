"""The bwrap fast path: long-lived sandboxed interpreters that fork a fresh child per program.

Starting bwrap and a Python interpreter costs ~40 ms per program; verifying thousands of
candidates should not. Each worker is one bwrap sandbox (its own slot uid, cgroups and
tmpfs ``/work``) running ``_warm_server.py`` under the sandbox's Python. Per program the
server forks a child that takes the run's rlimits in a new session and runs the source
in-process; afterwards it SIGKILLs everything else in the sandbox and wipes ``/work``, so no
process, file or ``/tmp`` entry carries over to the next program.

The host keeps its own watchdog: a worker that does not answer within the run's timeout
plus a grace period (a program stopped or killed its server) is torn down and replaced, and
that run is reported as timed out or killed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
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
_WORKER_PROCESSES = 3  # bwrap, its PID-namespace init and the server, all of the slot uid
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
                lambda: sandbox.launch(argv, limits, uid, nproc_extra=_WORKER_PROCESSES)
            )
            # stderr carries only bwrap's and the server's own failures (programs get their
            # own pipes), so it cannot fill up; it is read when a worker fails to start
            assert self.proc.stderr is not None
            self._stack.callback(self._stop)
            self._read_errors_from = self.proc.stderr
            ready = self._receive(time.monotonic() + _START_TIMEOUT_S)
        except _WorkerDied as e:
            detail = self._stderr_tail() or str(e)
            self.close()
            raise SandboxUnavailable(f"the warm bwrap worker did not start ({detail})") from None
        except BaseException:
            self.close()
            raise
        self.server_pid_in_sandbox = int(ready.get("ready", 0))

    def pids(self) -> list[int]:
        """Host PIDs of this worker's own processes: bwrap, its PID-namespace init, the server.

        Programs' leftovers are children of that init too, so the server is told apart by its
        PID inside the namespace (``NSpid``), never by ancestry alone.
        """
        found = [self.proc.pid]
        init = _children(self.proc.pid)
        found += init
        for pid in (c for i in init for c in _children(i)):
            if _ns_pid(pid) == self.server_pid_in_sandbox:
                found.append(pid)
        return found

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

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        if self.proc.poll() is not None:
            raise _NotSent("worker exited")
        data = json.dumps(obj).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise _NotSent(f"request pipe closed: {e}") from None

    def _read(self, n: int, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            poller = select.poll()  # not select(): this process may hold fds above 1024
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(left * 1000):
                continue
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise _WorkerDied("the warm server exited")
            buf += chunk
        return buf

    def _receive(self, deadline: float) -> dict[str, Any]:
        (n,) = struct.unpack(">I", self._read(4, deadline))
        if n > 1 << 31:
            raise _WorkerDied("garbled reply")
        try:
            reply = json.loads(self._read(n, deadline))
        except ValueError:
            raise _WorkerDied("garbled reply") from None
        if not isinstance(reply, dict):
            raise _WorkerDied("garbled reply")
        return reply

    def run(
        self,
        argv: list[str],
        files: Mapping[str, str | bytes] | None,
        stdin: str | bytes | None,
        limits: SandboxLimits,
    ) -> dict[str, Any]:
        """Send one program; the server's reply. Raises _WorkerDied / TimeoutError."""
        cgroups.prepare(self.uid, limits, _WORKER_PROCESSES)
        encoded = {
            safe_relpath(rel): base64.b64encode(c.encode() if isinstance(c, str) else c).decode()
            for rel, c in (files or {}).items()
        }
        raw_stdin = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        self._send(
            {
                "mode": "python",
                "argv": argv,
                "files": encoded,
                "stdin": base64.b64encode(raw_stdin).decode(),
                "limits": {
                    "timeout_s": limits.timeout_s,
                    "memory_mb": limits.memory_mb,
                    "cpu_s": limits.effective_cpu_s,
                    "max_file_mb": limits.max_file_mb,
                    "max_output_bytes": limits.max_output_bytes,
                    # the child counts itself, the server, bwrap and bwrap's init
                    "nproc": limits.max_processes + _WORKER_PROCESSES,
                },
            }
        )
        return self._receive(time.monotonic() + limits.timeout_s + _GRACE_S)


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
                note = (
                    "sandbox: the program stopped its sandbox from answering"
                    if timed_out
                    else "sandbox: the program killed its sandbox"
                )
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
        if "error" in reply:
            self._give_back(worker)
            raise ValueError(f"sandbox could not set up the run: {reply['error']}")
        result = make_result(
            reply["exit_code"],
            reply["killed_by"],
            base64.b64decode(reply["stdout"]),
            base64.b64decode(reply["stderr"]),
            float(reply["duration_s"]),
            bool(reply["truncated"]),
        )
        result = cgroups.explain(worker.uid, result)
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
