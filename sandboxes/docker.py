"""``docker`` backend: one hardened, long-lived container per worker and one ``exec`` per run.

This module keeps the pool of containers; the SDK and the daemon calls are in
:mod:`~loopwright.sandboxes.docker_api`, one run's exec in :mod:`~loopwright.sandboxes.docker_exec`.
Configured after DESIGN.md ("Docker"):

* containers run ``--network none --read-only --cap-drop ALL --security-opt
  no-new-privileges --user 65534:65534`` with ``--pids-limit``, ``--memory`` (= memswap) and
  a size- and inode-capped tmpfs at ``/tmp``; the run's work dir is ``/tmp/work``, so files
  the program writes in its work dir and in ``/tmp`` share ``max_disk_mb``;
* no host environment reaches the container; PID 1 is a tiny reaper that the program cannot
  kill (a PID namespace's init ignores SIGKILL from inside);
* a container's cgroup limits are fixed when it starts, so the pool is keyed by the limits'
  *shape* (memory, processes, disk); a run with another shape gets its own container;
* each run is one ``exec`` of the wrapper (``docker_exec._WRAPPER``): it reads the files and
  the program's stdin from the exec's stdin, applies rlimits (AS, CPU, FSIZE, CORE; processes
  are capped by the pids cgroup, as RLIMIT_NPROC would count uid 65534 across every
  container), runs the program, then kills every process of the run uid and wipes ``/tmp`` and ``/dev/shm``;
* the SDK's exec has no timeout, so we drive the hijacked socket ourselves: stream output under
  the byte cap and the wall-clock deadline, then abandon the socket and signal PID 1 to kill
  everything (no ``exec`` needed: a fork bomb may have filled the pids cgroup). A container
  that does not come clean is replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import NamedTuple

from loopwright.sandboxes.base import ExecResult, Sandbox, SandboxLimits, SandboxUnavailable
from loopwright.sandboxes.docker_api import (
    BUILD_HINT,
    DEFAULT_IMAGE,
    IMAGE_ENV,
    api_errors,
    daemon_failed,
    docker_client,
    has_image,
    import_rootfs,
    remove,
    remove_all,
    sdk,
)
from loopwright.sandboxes.docker_exec import PATH, USER, Exec, exec_result, run_payload

__all__ = [
    "BUILD_HINT",
    "DEFAULT_IMAGE",
    "IMAGE_ENV",
    "LABEL",
    "DockerSandbox",
    "docker_client",
    "import_rootfs",
]

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


class _Shape(NamedTuple):
    """The limits baked into a container at start (cgroups and tmpfs cannot change per exec)."""

    memory_mb: int
    max_processes: int
    max_disk_mb: int


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
        if not has_image(self._client, self.image):
            raise SandboxUnavailable(f"docker image {self.image!r} not found: {BUILD_HINT}")
        self._nano_cpus = int(cpus * 1e9)
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[tuple[_Shape, str]] = []
        self._all: set[str] = set()
        self._closed = False
        self._remove_stale()
        # at exit or garbage collection, whichever comes first: no container outlives us
        self._finalizer = weakref.finalize(self, remove_all, self._api, self._all)
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
            if not has_image(client, image):
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
            with contextlib.suppress(*api_errors()):
                c.remove(force=True)

    def _start(self, shape: _Shape) -> str:
        memory = f"{shape.memory_mb + shape.max_disk_mb + _MEMORY_HEADROOM_MB}m"
        inodes = max(1024, shape.max_disk_mb * 256)  # bounds the work of wiping /tmp too
        types = sdk().types
        container = self._client.containers.create(
            self.image,
            command=["python3", "-I", "-B", "-S", "-c", _REAPER],
            name=f"loopwright-sandbox-{uuid.uuid4().hex[:12]}",
            labels={
                LABEL: "1",
                f"{LABEL}.pid": str(os.getpid()),
                f"{LABEL}.host": socket.gethostname(),
            },
            user=USER,
            environment={"PATH": PATH, "LANG": "C.UTF-8"},
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
        except api_errors():
            self._destroy(container.id)
            raise
        return str(container.id)

    def _destroy(self, cid: str) -> None:
        with self._lock:
            self._all.discard(cid)
        remove(self._api, cid)

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
        payload = run_payload(argv, files, stdin, limits)
        shape = _Shape(limits.memory_mb, limits.max_processes, limits.max_disk_mb)
        started = time.monotonic()
        try:
            cid = self._take(shape)
        except api_errors() as e:
            raise daemon_failed(e) from None
        healthy = False
        try:
            try:
                ex = Exec(self._api, cid, payload)
            except api_errors():  # the container died (e.g. its reaper was OOM-killed)
                self._destroy(cid)
                try:
                    cid = self._start(shape)
                    ex = Exec(self._api, cid, payload)
                except api_errors() as e:
                    raise daemon_failed(e) from None
            ex.pump(started + limits.timeout_s, limits.max_output_bytes)
            duration = time.monotonic() - started
            rc = ex.exit_code() if ex.killed_by is None else None
            # killed by us, or a SIGKILLed wrapper: leftovers may run; clean from outside
            abnormal = rc in (None, 128 + signal.SIGKILL)
            healthy = self._kill_leftovers(cid, ex) if abnormal else True
            return exec_result(ex, rc, duration)
        finally:
            if healthy:
                self._give_back(shape, cid)
            else:
                self._destroy(cid)

    def _kill_leftovers(self, cid: str, ex: Exec) -> bool:
        """Have PID 1 kill every run-uid process; True once the run's wrapper is gone."""
        try:
            self._api.kill(cid, signal="SIGUSR1")
            return ex.exit_code(timeout_s=_CLEANUP_TIMEOUT_S) is not None
        except api_errors():
            return False
