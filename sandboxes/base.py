"""The sandbox interface: limits in, an ``ExecResult`` out, one abstract method per backend.

A non-zero exit, a timeout or a killed program is *data* (an ``ExecResult``); only
"this backend cannot run on this machine" raises (``SandboxUnavailable``).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import selectors
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KilledBy = Literal["timeout", "memory", "output", "cpu", "signal"]

INSTALL_HINT = (
    "install bubblewrap (`apt-get install bubblewrap`), or opt into the unisolated "
    "backend with get_sandbox('process')"
)


class SandboxUnavailable(RuntimeError):
    """This backend cannot run on this machine (the message says what to install)."""


class SandboxLimits(BaseModel):
    """Resource limits for one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit; the whole process group is SIGKILLed when it passes."""
    memory_mb: int = Field(512, gt=0)
    """Address-space limit (RLIMIT_AS) per process, in MiB."""
    max_processes: int = Field(64, gt=0)
    """Process/thread limit (RLIMIT_NPROC) for the sandbox's uid."""
    max_output_bytes: int = Field(1_000_000, gt=0)
    """Cap on stdout+stderr together; the run is killed once it is exceeded."""
    max_file_mb: int = Field(16, gt=0)
    """Largest file the program may write (RLIMIT_FSIZE), in MiB."""
    max_disk_mb: int = Field(64, gt=0)
    """Total size of everything the program may write in its work dir and /tmp, in MiB."""
    cpu_s: int | None = Field(None, gt=0)
    """CPU-seconds limit (RLIMIT_CPU) per process; None derives it from ``timeout_s``."""

    @property
    def effective_cpu_s(self) -> int:
        """``cpu_s``, or one second past the wall-clock timeout so the timeout fires first."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


class ExecResult(BaseModel):
    """What happened when a program ran in a sandbox."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None
    """Exit status; negative = killed by that signal; None when we killed it (timeout/output)."""
    stdout: str
    """Captured standard output (UTF-8, undecodable bytes replaced), possibly truncated."""
    stderr: str
    """Captured standard error, possibly truncated."""
    timed_out: bool = False
    """True when the wall-clock limit was hit."""
    killed_by: KilledBy | None = None
    """Why the program did not exit on its own, when we can tell."""
    duration_s: float
    """Wall-clock seconds from start to the end of collection."""
    truncated: bool = False
    """True when output beyond ``max_output_bytes`` was dropped."""

    @property
    def ok(self) -> bool:
        """Exited 0 on its own."""
        return self.exit_code == 0 and self.killed_by is None


class Sandbox(ABC):
    """An execution backend. Subclasses implement ``run``; ``run_python`` is built on it."""

    name: str = "abstract"

    @classmethod
    def check(cls) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        return None

    @abstractmethod
    def run(
        self,
        argv: list[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        """Run ``argv`` in a fresh work dir holding ``files`` (relative paths) and collect it."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing between runs
        """Release long-lived resources (warm workers, containers); idempotent."""

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def python_argv(self) -> list[str]:
        """The argv prefix that starts this backend's isolated Python interpreter."""

    def run_python(
        self,
        code: str,
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        """Run ``code`` as ``main.py`` with this backend's Python (``-I -B``)."""
        all_files: dict[str, str | bytes] = dict(files or {})
        all_files["main.py"] = code
        return self.run(
            [*self.python_argv(), "main.py"], files=all_files, stdin=stdin, limits=limits
        )


# --- helpers shared by the backends -------------------------------------------------------


def safe_relpath(rel: str) -> str:
    """``rel`` normalised, or ValueError when it would land outside the work dir."""
    norm = os.path.normpath(rel)
    if os.path.isabs(rel) or norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"sandbox file path must stay inside the work dir: {rel!r}")
    return norm


def write_files(workdir: Path, files: Mapping[str, str | bytes] | None) -> None:
    """Write ``files`` under ``workdir``, refusing paths that would land outside it."""
    root = workdir.resolve()
    for rel, content in (files or {}).items():
        target = (root / rel).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ValueError(f"sandbox file path must stay inside the work dir: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)


def own_process_count() -> int:
    """Processes of our uid: RLIMIT_NPROC counts them too, so non-root runs add this."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError):
                count += entry.stat().st_uid == uid
    return count


def rlimit_setter(limits: SandboxLimits, nproc: int) -> Callable[[], None]:
    """A preexec_fn that applies ``limits`` in the child before exec (only syscalls inside)."""
    mem = limits.memory_mb * 1024 * 1024
    cpu = limits.effective_cpu_s
    fsize = limits.max_file_mb * 1024 * 1024

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        # soft limit sends SIGXCPU (reported as killed_by="cpu"); the hard one SIGKILLs.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def child_setup(
    limits: SandboxLimits, nproc: int, cgroup_procs: list[str], uid: int | None
) -> Callable[[], None]:
    """A preexec_fn: join the slot's cgroups, apply rlimits, then (as root) become ``uid``.

    The cgroups are joined while still root (their files are root's) and before bwrap forks,
    so every process of the run is inside them. Only plain syscalls run here.
    """
    set_limits = rlimit_setter(limits, nproc)

    def apply() -> None:
        pid = str(os.getpid()).encode()
        for path in cgroup_procs:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        set_limits()
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return apply


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def collect(
    proc: subprocess.Popen[bytes],
    stdin: str | bytes | None,
    limits: SandboxLimits,
    started: float,
    decode_exit: Callable[[int], int] = lambda rc: rc,
) -> ExecResult:
    """Feed stdin, stream stdout/stderr under the byte cap and the deadline, reap ``proc``.

    ``proc`` must lead its own process group (``start_new_session=True``): on timeout, on
    output overflow and after the main process exits, the whole group is SIGKILLed so
    stragglers that kept the pipes open cannot stall us.
    """
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    deadline = started + limits.timeout_s
    budget = limits.max_output_bytes
    out_fd, err_fd, in_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    chunks: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    to_send = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    killed_by: KilledBy | None = None
    truncated = False

    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f.fileno(), selectors.EVENT_READ)
    if to_send:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()

    grace_until: float | None = None  # set once the main process has exited
    while sel.get_map():
        now = time.monotonic()
        if now >= deadline and killed_by is None and grace_until is None:
            killed_by = "timeout"
            _kill_group(proc.pid)
            grace_until = now + 0.5
        if grace_until is not None and now >= grace_until:
            break
        if grace_until is None and proc.poll() is not None:
            _kill_group(proc.pid)  # stragglers in the group must not hold the pipes open
            grace_until = now + 0.5
        limit = (grace_until if grace_until is not None else deadline) - now
        for key, _ in sel.select(timeout=max(0.0, min(limit, 0.05))):
            fd = int(key.fd)
            if fd == in_fd:
                try:
                    sent = os.write(fd, to_send[:65536])
                    to_send = to_send[sent:]
                except (BrokenPipeError, BlockingIOError, OSError):
                    to_send = b""
                if not to_send:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(fd)
                continue
            if len(data) > budget:
                data, truncated = data[:budget], True
            budget -= len(data)
            chunks[fd].append(data)
            if truncated and killed_by is None:
                killed_by = "output"
                _kill_group(proc.pid)
                grace_until = time.monotonic()  # stop reading now
    sel.close()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    if proc.returncode is None:  # once reaped, the pgid may already be gone
        _kill_group(proc.pid)
    rc = proc.wait()

    return make_result(
        decode_exit(rc),
        killed_by,
        b"".join(chunks[out_fd]),
        b"".join(chunks[err_fd]),
        time.monotonic() - started,
        truncated,
    )


def make_result(
    exit_code: int | None,
    killed_by: KilledBy | None,
    stdout: bytes,
    stderr_bytes: bytes,
    duration: float,
    truncated: bool,
) -> ExecResult:
    """One ``ExecResult`` from raw facts; says which limit ended the run when we can tell."""
    stderr = stderr_bytes.decode("utf-8", "replace")
    if killed_by is not None:
        exit_code = None
    elif exit_code is not None and exit_code < 0:
        killed_by = "cpu" if -exit_code in (signal.SIGXCPU,) else "signal"
    elif exit_code != 0 and stderr.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError"):
        killed_by = "memory"  # RLIMIT_AS makes Python raise MemoryError rather than die
    return ExecResult(
        exit_code=exit_code,
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr,
        timed_out=killed_by == "timeout",
        killed_by=killed_by,
        duration_s=duration,
        truncated=truncated,
    )
