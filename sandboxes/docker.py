"""``docker`` backend: one hardened, long-lived container per worker and one ``exec`` per run.

The only module that imports the ``docker`` SDK. Configured after DESIGN.md ("Docker"):

* containers run ``--network none --read-only --cap-drop ALL --security-opt
  no-new-privileges --user 65534:65534`` with ``--pids-limit``, ``--memory`` (= memswap) and
  a size- and inode-capped tmpfs at ``/tmp``; the run's work dir is ``/tmp/work``, so files
  the program writes in its work dir and in ``/tmp`` share ``max_disk_mb``;
* no host environment reaches the container; PID 1 is a tiny reaper that the program cannot
  kill (a PID namespace's init ignores SIGKILL from inside);
* a container's cgroup limits are fixed when it starts, so the pool is keyed by the limits'
  *shape* (memory, processes, disk); a run with another shape gets its own container;
* each run is one ``exec`` of ``_WRAPPER`` (below): it reads the files and the program's stdin
  from the exec's stdin, applies rlimits (AS, CPU, FSIZE, CORE; processes are capped by the
  pids cgroup, as RLIMIT_NPROC would count uid 65534 across every container), runs the
  program, then kills every process of the run uid and wipes ``/tmp`` and ``/dev/shm``;
* the SDK's exec has no timeout, so we drive the hijacked socket ourselves: stream output under
  the byte cap and the wall-clock deadline, then abandon the socket and signal PID 1 to kill
  everything (no ``exec`` needed: a fork bomb may have filled the pids cgroup). A container
  that does not come clean is replaced.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from loopwright.sandboxes.base import (
    ExecResult,
    KilledBy,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
)

DEFAULT_IMAGE = "loopwright-sandbox:bookworm"
IMAGE_ENV = "LOOPWRIGHT_DOCKER_IMAGE"
BUILD_HINT = "run `loopwright sandbox build-image`, or set LOOPWRIGHT_DOCKER_IMAGE to a Python image you have"
_SDK_HINT = "the docker backend needs the docker SDK: `pip install 'docker>=7,<8'`"
_USER = "65534:65534"
_PATH = "/usr/local/bin:/usr/bin:/bin"
LABEL = "org.loopwright.sandbox"  # on every container we start: how leftovers are found
_OWN_PIDS = 2  # the reaper (PID 1) and the per-run wrapper share the pids cgroup
_MEMORY_HEADROOM_MB = 48  # reaper + wrapper; the tmpfs is charged to the cgroup on top
_CLEANUP_TIMEOUT_S = 5.0

# PID 1. With SIGCHLD ignored the kernel reaps orphans for us, so a program's double-forked
# leftovers never pile up as zombies in the pids cgroup. It obeys only signals from outside the
# container (si_pid 0): SIGTERM (``docker stop``) ends it; SIGUSR1 (``docker kill -s USR1``, an
# API call that needs no fork inside) makes it kill every other process - how we stop a run
# that timed out, flooded its output or killed its wrapper, even when a fork bomb has filled
# the pids cgroup so that no ``exec`` could start. Programs cannot kill it: a PID namespace's
# init ignores SIGKILL from inside, and the rest are blocked.
_REAPER = """
import os, signal
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python's own handler would let it be killed
wanted = {signal.SIGTERM, signal.SIGUSR1}
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
while True:
    info = signal.sigwaitinfo(wanted)
    if info.si_pid != 0:
        continue
    if info.si_signo == signal.SIGTERM:
        os._exit(0)
    for _ in range(3):
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
"""

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


def _sdk() -> Any:
    """The docker SDK, imported on first use so that ``import loopwright.sandboxes`` stays light
    and works without it."""
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable(_SDK_HINT) from None
    return docker


def _api_errors() -> tuple[type[Exception], ...]:
    """What a call to the daemon can raise: the SDK's errors and a dropped connection."""
    import requests

    return (_sdk().errors.DockerException, requests.RequestException, OSError)


def docker_client(docker_host: str | None = None) -> Any:
    """A connected SDK client for ``docker_host`` (default: ``DOCKER_HOST`` or the local socket)."""
    docker = _sdk()
    where = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except _api_errors() as e:
        raise SandboxUnavailable(
            f"no Docker daemon reachable at {where} ({type(e).__name__}): start dockerd "
            "(`apt-get install docker.io`) or point DOCKER_HOST at one"
        ) from None
    return client


def import_rootfs(tar_path: str, tag: str, changes: list[str], docker_host: str | None) -> str:
    """``docker import`` of a root-filesystem tarball as ``tag``; returns the image id."""
    client = docker_client(docker_host)
    try:
        repository, _, version = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
        client.api.import_image(src=tar_path, repository=repository, tag=version, changes=changes)
        return str(client.images.get(tag).id)
    finally:
        client.close()


def _has_image(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
    except _sdk().errors.ImageNotFound:
        return False
    return True


class _Shape(NamedTuple):
    """The limits baked into a container at start (cgroups and tmpfs cannot change per exec)."""

    memory_mb: int
    max_processes: int
    max_disk_mb: int


def _decode_exit(rc: int) -> int:
    # the wrapper reports "killed by signal N" as 128+N; map it to Popen's -N convention.
    return -(rc - 128) if 128 < rc < 128 + signal.NSIG else rc


def _check_path(rel: str) -> str:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts or path == PurePosixPath("."):
        raise ValueError(f"sandbox file path must stay inside the work dir: {rel!r}")
    return str(path)


class DockerSandbox(Sandbox):
    """Docker sandbox: no network, read-only root, capped tmpfs, no capabilities, uid 65534."""

    name = "docker"

    def __init__(
        self,
        image: str | None = None,
        *,
        docker_host: str | None = None,
        cpus: float = 1.0,
        max_idle: int = 4,
    ) -> None:
        """``image``: any image with ``python3`` on PATH (default ``$LOOPWRIGHT_DOCKER_IMAGE``
        or ``loopwright-sandbox:bookworm``). ``cpus`` caps each container; ``max_idle``
        containers are kept warm between runs."""
        self.image = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
        self.docker_host = docker_host
        self._client = docker_client(docker_host)
        self._api = self._client.api
        if not _has_image(self._client, self.image):
            raise SandboxUnavailable(f"docker image {self.image!r} not found: {BUILD_HINT}")
        self._nano_cpus = int(cpus * 1e9)
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[tuple[_Shape, str]] = []
        self._all: set[str] = set()
        self._closed = False
        self._remove_stale()
        # at exit or garbage collection, whichever comes first: no container outlives us
        self._finalizer = weakref.finalize(self, _remove_all, self._api, self._all)
        probe = self.run(["python3", "-I", "-B", "-c", "import sys, json; print(sys.executable)"])
        if not probe.ok:
            self.close()
            detail = (probe.stderr.strip().splitlines() or [f"exit {probe.exit_code}"])[-1]
            raise SandboxUnavailable(
                f"image {self.image!r} cannot run python3 ({detail}): {BUILD_HINT}"
            )
        self._python = probe.stdout.strip()

    @classmethod
    def check(cls) -> str | None:
        """Why this backend cannot run here (SDK, daemon, image), or None when it can."""
        try:
            client = docker_client()
        except SandboxUnavailable as e:
            return str(e)
        try:
            image = os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
            if not _has_image(client, image):
                return f"docker image {image!r} not found: {BUILD_HINT}"
        finally:
            client.close()
        return None

    def python_argv(self) -> list[str]:
        return [self._python, "-I", "-B"]

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every container this sandbox started (stop -> kill -> rm)."""
        with self._lock:
            self._closed = True
            self._idle = []
        self._finalizer()
        self._client.close()

    # -- containers ---------------------------------------------------------------------

    def _remove_stale(self) -> None:
        """Containers left by crashed processes on this host: their owner can no longer rm them."""
        host = socket.gethostname()
        for c in self._client.containers.list(all=True, filters={"label": LABEL}):
            labels = c.labels
            pid = int(labels.get(f"{LABEL}.pid", "0"))
            if c.status == "running" and labels.get(f"{LABEL}.host") != host:
                continue
            if c.status == "running" and pid > 0:
                try:
                    os.kill(pid, 0)
                    continue  # its owner is alive
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
            with contextlib.suppress(*_api_errors()):
                c.remove(force=True)

    def _start(self, shape: _Shape) -> str:
        memory = f"{shape.memory_mb + shape.max_disk_mb + _MEMORY_HEADROOM_MB}m"
        inodes = max(1024, shape.max_disk_mb * 256)  # bounds the work of wiping /tmp too
        types = _sdk().types
        container = self._client.containers.create(
            self.image,
            command=["python3", "-I", "-B", "-S", "-c", _REAPER],
            name=f"loopwright-sandbox-{uuid.uuid4().hex[:12]}",
            labels={
                LABEL: "1",
                f"{LABEL}.pid": str(os.getpid()),
                f"{LABEL}.host": socket.gethostname(),
            },
            user=_USER,
            environment={"PATH": _PATH, "LANG": "C.UTF-8"},
            working_dir="/tmp",
            network_mode="none",
            read_only=True,
            tmpfs={
                "/tmp": f"rw,nosuid,nodev,size={shape.max_disk_mb}m,nr_inodes={inodes},mode=1777"
            },
            shm_size="1m",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=shape.max_processes + _OWN_PIDS,
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=self._nano_cpus,
            ulimits=[types.Ulimit(name="core", soft=0, hard=0)],
            log_config=types.LogConfig(type="none"),
            hostname="sandbox",
        )
        with self._lock:
            self._all.add(container.id)
        try:
            container.start()
        except _api_errors():
            self._destroy(container.id)
            raise
        return str(container.id)

    def _destroy(self, cid: str) -> None:
        with self._lock:
            self._all.discard(cid)
        _remove(self._api, cid)

    def _take(self, shape: _Shape) -> str:
        with self._lock:
            if self._closed:
                raise RuntimeError("this DockerSandbox is closed")
            for i, (idle_shape, _) in enumerate(self._idle):
                if idle_shape == shape:
                    return self._idle.pop(i)[1]
        return self._start(shape)

    def _give_back(self, shape: _Shape, cid: str) -> None:
        with self._lock:
            keep = not self._closed
            if keep:
                self._idle.append((shape, cid))
                excess = self._idle[: max(0, len(self._idle) - self._max_idle)]
                del self._idle[: len(excess)]
            else:
                excess = [(shape, cid)]
        for _, old in excess:
            self._destroy(old)

    # -- running ------------------------------------------------------------------------

    def run(
        self,
        argv: list[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: str | bytes | None = None,
        limits: SandboxLimits | None = None,
    ) -> ExecResult:
        limits = limits or SandboxLimits()
        bodies = [
            (_check_path(rel), c.encode() if isinstance(c, str) else bytes(c))
            for rel, c in (files or {}).items()
        ]
        mem, fsize = limits.memory_mb * 2**20, limits.max_file_mb * 2**20
        cpu = limits.effective_cpu_s
        spec = {
            "argv": argv,
            "env": {"PATH": _PATH, "HOME": "/tmp/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp"},
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
        shape = _Shape(limits.memory_mb, limits.max_processes, limits.max_disk_mb)
        payload = b"".join(to_send)
        started = time.monotonic()
        try:
            cid = self._take(shape)
        except _api_errors() as e:
            raise _daemon_failed(e) from None
        healthy = False
        try:
            try:
                ex = _Exec(self._api, cid, payload)
            except _api_errors():  # the container died (e.g. its reaper was OOM-killed)
                self._destroy(cid)
                try:
                    cid = self._start(shape)
                    ex = _Exec(self._api, cid, payload)
                except _api_errors() as e:
                    raise _daemon_failed(e) from None
            ex.pump(started + limits.timeout_s, limits.max_output_bytes)
            duration = time.monotonic() - started
            rc = ex.exit_code() if ex.killed_by is None else None
            # killed by us, or a SIGKILLed wrapper: leftovers may run; clean from outside
            abnormal = rc in (None, 128 + signal.SIGKILL)
            healthy = self._kill_leftovers(cid, ex) if abnormal else True
            return _result(ex, rc, duration)
        finally:
            if healthy:
                self._give_back(shape, cid)
            else:
                self._destroy(cid)

    def _kill_leftovers(self, cid: str, ex: _Exec) -> bool:
        """Have PID 1 kill every run-uid process; True once the run's wrapper is gone."""
        try:
            self._api.kill(cid, signal="SIGUSR1")
            return ex.exit_code(timeout_s=_CLEANUP_TIMEOUT_S) is not None
        except _api_errors():
            return False


def _daemon_failed(e: Exception) -> SandboxUnavailable:
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return SandboxUnavailable(f"the Docker daemon failed to run a sandbox container: {detail}")


def _remove(api: Any, cid: str) -> None:
    """stop (SIGTERM, 1 s) -> kill -> rm, each step allowed to find the container gone."""
    with contextlib.suppress(*_api_errors()):
        api.stop(cid, timeout=1)
    with contextlib.suppress(*_api_errors()):
        api.kill(cid)
    with contextlib.suppress(*_api_errors()):
        api.remove_container(cid, force=True)


def _remove_all(api: Any, cids: set[str]) -> None:
    for cid in list(cids):
        _remove(api, cid)
    cids.clear()


def _header(spec: dict[str, Any]) -> bytes:
    data = repr(spec).encode()
    return b"%020d" % len(data) + data


class _Exec:
    """One exec of the wrapper, driven over the hijacked socket with our own deadline."""

    def __init__(self, api: Any, cid: str, payload: bytes) -> None:
        self._api = api
        cmd = ["python3", "-I", "-B", "-S", "-c", _WRAPPER]
        self.exec_id = api.exec_create(cid, cmd, stdin=True, user=_USER, workdir="/tmp")["Id"]
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


def _result(ex: _Exec, rc: int | None, duration: float) -> ExecResult:
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
