"""``bwrap`` backend (default): bubblewrap namespaces + rlimits + a dedicated uid per slot.

Configured after the pitfalls measured in DESIGN.md ("Sandbox"):

* started as root, bwrap keeps capabilities inside and ``--uid`` is cosmetic, so we drop to
  a real non-root uid (``base_uid + slot``, one per concurrent run) *before* exec'ing bwrap,
  and pass ``--cap-drop ALL`` as well;
* only ``/usr``, the ``/lib*``/``/bin``/``/sbin`` links and the interpreter prefix are
  visible (read-only); ``/tmp`` is a private tmpfs; the work dir is bound at ``/work``;
* bwrap limits neither forks nor memory: RLIMIT_AS/NPROC/CPU/FSIZE/CORE are set in the child
  before exec; NPROC is meaningful because each slot uid runs one sandbox at a time;
* the wall-clock timeout SIGKILLs the whole process group (``--die-with-parent`` then tears
  down the PID namespace), and as root every leftover process of the slot uid is killed;
* nothing in the sandbox holds what a program must not reach. bwrap's PID-namespace init is
  an ordinary, dumpable process of the slot uid (bwrap makes it so): a warm worker therefore
  has none (``--as-pid-1``: the warm server, not dumpable, is PID 1 and the only holder of
  the pipes to the host); a cold run keeps it (the program then behaves as it would anywhere
  else), where it holds only that run's own stdio, and the stack buffer through which bwrap
  copied the run's files is overwritten before the program starts (``_SCRUB``). Every
  process runs under the seccomp filter of ``sandboxes/seccomp.py`` (no ptrace,
  process_vm_readv/writev or pidfd_getfd).

Interpreter: this project's Python may live where the slot uid cannot read it (pyenv under
``/root``, mode 0700). Then the distribution's ``/usr/bin/python3`` is used instead; sandboxed
code only needs *a* Python, not our venv.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

from loopwright.sandboxes import cgroups
from loopwright.sandboxes.base import (
    INSTALL_HINT,
    ExecResult,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    child_setup,
    collect,
    own_process_count,
    write_files,
)
from loopwright.sandboxes.seccomp import seccomp_filter
from loopwright.sandboxes.warm import WarmPool

_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_ROOT_ENTRIES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_BWRAP_OWN_PROCESSES = 2  # bwrap's outer process and its PID-namespace init
# bwrap copies each ``--file`` through one 8 KiB stack buffer in what becomes the sandbox's
# init, so the tail of the last file would stay readable there (/proc/1/mem): a last copy of
# as many zero bytes overwrites it.
_SCRUB = 8192
_NOT_CHECKED = "not checked"
_check_cache: dict[type, str | None] = {}
_SECCOMP = seccomp_filter()
_seccomp_works: dict[type, bool] = {}  # False where bwrap cannot install a filter here


_KILL = shutil.which("kill", path="/usr/bin:/bin")


def _readable_by_others(path: Path) -> bool:
    """Whether a uid with no special rights can traverse to and read ``path``."""
    path = path.resolve()
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IROTH)


def _pick_interpreter(dropping_uid: bool) -> tuple[str, list[str]]:
    """(python path inside the sandbox, extra read-only bind dirs)."""
    prefix = Path(sys.base_prefix).resolve()
    candidate = prefix / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if candidate.exists() and (not dropping_uid or _readable_by_others(candidate)):
        under_usr = prefix == Path("/usr") or Path("/usr") in prefix.parents
        return str(candidate), [] if under_usr else [str(prefix)]
    system = Path("/usr/bin/python3")
    if system.exists():
        return str(system), []
    raise SandboxUnavailable(
        f"no Python the sandbox uid can read ({candidate} is private and /usr/bin/python3 is "
        "missing): `apt-get install python3-minimal`"
    )


def _pipe_holding(data: bytes, fds: contextlib.ExitStack) -> int:
    """The read end of a pipe that holds ``data`` (up to 64 KiB) and then EOF; closed by
    ``fds``. bwrap reads such descriptors to their end."""
    r, w = os.pipe()
    fds.callback(os.close, r)
    with open(w, "wb") as f:
        f.write(data)
    return r


def _decode_bwrap_exit(rc: int) -> int:
    # bwrap reports a child killed by signal N as 128+N; map it to Popen's -N convention.
    # (A program that calls exit(128+N) itself is indistinguishable.)
    if 128 < rc < 128 + signal.NSIG:
        return -(rc - 128)
    return rc


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of the slot uid, from a child that has become that uid.

    ``kill(-1, SIGKILL)`` walks the task list under the kernel's tasklist lock, so a fork
    bomb cannot outrun it; it spares the caller itself and init. Only used as root, where
    the slot uid belongs to us alone.

    The child is ``kill -KILL -1`` exec'd by ``subprocess`` with ``user``/``group`` set in C:
    no Python runs between fork and exec and no at-fork hooks fire, so it is safe from any
    thread, even with libraries loaded whose fork hooks refuse concurrent ``os.fork`` (recent
    ``filelock``, pulled in by ``datasets``). Without a ``kill`` binary, a raw fork does it.
    """
    if _KILL is not None:
        for _ in range(2):
            subprocess.run(
                [_KILL, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                check=False,
            )  # fmt: skip
        return
    pid = os.fork()
    if pid == 0:  # only raw syscalls here: we are a fork of a possibly threaded process
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(3):
                os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


class BwrapSandbox(Sandbox):
    """Bubblewrap sandbox: no network, private /tmp and /work, read-only /usr, limited uid."""

    name = "bwrap"

    def __init__(
        self,
        *,
        base_uid: int = 60000,
        max_slots: int = 64,
        bwrap: str | None = None,
        warm: bool = True,
        warm_workers: int | None = None,
    ) -> None:
        """``base_uid``..``base_uid+max_slots-1`` are the slot uids used when running as root.

        ``warm``: ``run_python`` goes to a long-lived sandboxed interpreter that forks a
        fresh, limited child per program (the fast path); False starts bwrap per program.
        ``warm_workers``: how many warm sandboxes run at once (default: cores, at least 2;
        env ``LOOPWRIGHT_SANDBOX_WORKERS``).
        """
        self.warm = warm
        self._pool: WarmPool | None = None
        self._bwrap = bwrap or shutil.which("bwrap")
        if self._bwrap is None:
            raise SandboxUnavailable(f"bwrap not found on PATH: {INSTALL_HINT}")
        self._as_root = os.geteuid() == 0
        self._base_uid = base_uid
        self._max_slots = max_slots
        self._python, self._extra_binds = _pick_interpreter(self._as_root)
        self._lock_dir = Path("/run/loopwright-sandbox" if self._as_root else tempfile.gettempdir())
        self._seccomp = _SECCOMP if _seccomp_works.get(type(self), True) else None
        if _check_cache.get(type(self), _NOT_CHECKED) == _NOT_CHECKED:
            _check_cache[type(self)] = self._self_test()
        reason = _check_cache[type(self)]
        if reason is not None:
            raise SandboxUnavailable(reason)
        if warm:
            size = (
                warm_workers
                or int(os.environ.get("LOOPWRIGHT_SANDBOX_WORKERS", "0"))
                or max(2, os.cpu_count() or 1)
            )
            self._pool = WarmPool(self, size)
            weakref.finalize(self, self._pool.close)

    def close(self) -> None:
        """Stop the warm workers (they also die with this process)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def worker_pids(self) -> list[int]:
        """Host PIDs of idle warm workers: the only processes allowed to outlive a run."""
        return self._pool.worker_pids() if self._pool is not None else []

    @classmethod
    def check(cls) -> str | None:
        """Run ``true`` in a real sandbox once per process; the reason it failed, or None."""
        try:
            cls()
        except SandboxUnavailable as e:
            return str(e)
        return None

    def _self_test(self) -> str | None:
        limits = SandboxLimits(timeout_s=10)
        result = self.run(["/usr/bin/true"], limits=limits)
        if result.exit_code != 0 and self._seccomp is not None:
            # a kernel without seccomp filters: the sandbox still holds, one layer thinner
            self._seccomp = None
            result = self.run(["/usr/bin/true"], limits=limits)
            if result.exit_code == 0:
                _seccomp_works[type(self)] = False
        if result.exit_code != 0:
            detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return f"bwrap cannot create a sandbox here ({detail}): {INSTALL_HINT}"
        # the warm server and the code-test harness need Python's standard library, which
        # python3-minimal alone lacks
        probe = [self._python, "-I", "-B", "-c", "import ctypes, json, mmap, resource, select"]
        result = self.run(probe, limits=limits)
        if result.exit_code != 0:
            detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return (
                f"the sandbox's Python ({self._python}) cannot import its standard library "
                f"({detail}): `apt-get install python3`"
            )
        return None

    def python_argv(self) -> list[str]:
        return [self._python, "-I", "-B"]

    # -- slots ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _slot_uid(self) -> Iterator[int]:
        """Exclusive use of one slot uid, across threads and processes (flock)."""
        if not self._as_root:
            yield os.getuid()
            return
        self._lock_dir.mkdir(mode=0o700, exist_ok=True)
        if self._lock_dir.is_symlink() or self._lock_dir.stat().st_uid != 0:
            raise RuntimeError(f"refusing to use {self._lock_dir}: not a root-owned directory")
        while True:
            for slot in range(self._max_slots):
                fd = os.open(self._lock_dir / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                uid = self._base_uid + slot
                try:
                    _kill_uid(uid)  # a crashed earlier holder may have left processes
                    yield uid
                finally:
                    _kill_uid(uid)
                    os.close(fd)  # releases the flock
                return
            time.sleep(0.01)

    # -- running ----------------------------------------------------------------------

    def bwrap_argv(
        self,
        argv: list[str],
        limits: SandboxLimits,
        file_fds: Mapping[str, int] | None = None,
        *,
        seccomp_fd: int | None = None,
        scrub_fd: int | None = None,
        as_init: bool = False,
    ) -> list[str]:
        """bwrap's argv around ``argv``: ``/work`` is a tmpfs capped at ``max_disk_mb``; the
        program runs in ``/work/run`` and ``/tmp`` points to ``/work/tmp``, so one cap bounds
        everything it can write. ``file_fds`` (path under the run dir -> readable fd) are
        copied in before ``argv`` starts, then ``scrub_fd`` (``_SCRUB`` zero bytes) to a file
        that ``/dev`` then hides. ``seccomp_fd`` is read for the seccomp filter. ``as_init``:
        ``argv`` is the namespace's PID 1 (no bwrap init; ``argv`` must reap its orphans)."""
        assert self._bwrap is not None
        args = [
            self._bwrap,
            "--unshare-all",  # user, ipc, pid, net (loopback only), uts, cgroup
            "--die-with-parent",
            "--new-session",  # no TIOCSTI into our terminal
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv", "PATH", _SANDBOX_PATH,
            "--setenv", "HOME", "/work/run",
            "--setenv", "LANG", "C.UTF-8",
        ]  # fmt: skip
        if as_init:
            args.append("--as-pid-1")
        for entry in _ROOT_ENTRIES:
            if os.path.islink(entry):
                args += ["--symlink", os.readlink(entry), entry]
            elif os.path.isdir(entry):
                args += ["--ro-bind", entry, entry]
        for extra in self._extra_binds:
            args += ["--ro-bind", extra, extra]
        args += [
            "--size", str(limits.max_disk_mb * 1024 * 1024),
            "--tmpfs", "/work",
            "--dir", "/work/tmp",
            "--dir", "/work/run",
            "--symlink", "/work/tmp", "/tmp",
        ]  # fmt: skip
        made = {"/work", "/work/tmp", "/work/run"}
        for rel, fd in (file_fds or {}).items():
            dest = f"/work/run/{rel}"
            for parent in reversed(Path(dest).parents):
                if str(parent) not in made and str(parent) != "/":
                    args += ["--dir", str(parent)]
                    made.add(str(parent))
            args += ["--file", str(fd), dest]
        if scrub_fd is not None:
            args += ["--file", str(scrub_fd), "/dev/.scrub"]
        args += ["--proc", "/proc", "--dev", "/dev"]  # after the files: hides /dev/.scrub
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        args += ["--chdir", "/work/run", "--", *argv]
        return args

    def launch(
        self,
        argv: list[str],
        limits: SandboxLimits,
        uid: int,
        *,
        nproc_extra: int = _BWRAP_OWN_PROCESSES,
        file_fds: Mapping[str, int] | None = None,
        as_init: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start bwrap around ``argv`` as slot ``uid``, inside the slot's cgroups, with rlimits."""
        if self._as_root:
            nproc = limits.max_processes + nproc_extra
            procs_files = cgroups.prepare(uid, limits, nproc_extra)
        else:
            # our uid's existing processes count against RLIMIT_NPROC too
            nproc = own_process_count() + limits.max_processes + nproc_extra
            procs_files = []
        with contextlib.ExitStack() as fds:
            seccomp_fd = scrub_fd = None
            if self._seccomp is not None:
                seccomp_fd = _pipe_holding(self._seccomp, fds)
            if file_fds:
                scrub_fd = _pipe_holding(bytes(_SCRUB), fds)
            extra_fds = [fd for fd in (seccomp_fd, scrub_fd) if fd is not None]
            return subprocess.Popen(
                self.bwrap_argv(
                    argv,
                    limits,
                    file_fds,
                    seccomp_fd=seccomp_fd,
                    scrub_fd=scrub_fd,
                    as_init=as_init,
                ),
                cwd="/",
                env={"PATH": _SANDBOX_PATH},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(*(file_fds or {}).values(), *extra_fds),
                preexec_fn=child_setup(limits, nproc, procs_files, uid if self._as_root else None),
            )

    def run(
        self,
        argv: list[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        limits = limits or SandboxLimits()
        prefix = self.python_argv()
        rest = argv[len(prefix) :]
        if (
            self._pool is not None
            and argv[: len(prefix)] == prefix
            and rest
            and rest[0] in (files or {})
            and rest[0].endswith(".py")
        ):  # `python -I -B script.py ...`: the warm fast path; anything else starts bwrap
            return self._pool.run(rest, files, stdin, limits)
        with self._slot_uid() as uid, tempfile.TemporaryDirectory(prefix="loopwright-bwrap-") as d:
            staging = Path(d)
            write_files(staging, files)
            with contextlib.ExitStack() as fds:
                file_fds: dict[str, int] = {}
                for rel in files or {}:
                    fd = os.open(staging / rel, os.O_RDONLY)
                    fds.callback(os.close, fd)
                    file_fds[str(Path(rel))] = fd
                started = time.monotonic()
                proc = self.launch(argv, limits, uid, file_fds=file_fds)
            result = collect(proc, stdin, limits, started, decode_exit=_decode_bwrap_exit)
            return cgroups.explain(uid, result)
