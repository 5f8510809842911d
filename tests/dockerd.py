"""A real, private Docker daemon for the docker sandbox tests (session-scoped fixtures).

The daemon binds only a unix socket in a temp dir (no TCP, no iptables, no bridge), keeps its
exec-root and pidfile there too, and stops - by its own PID - when the session ends (or, via
PR_SET_PDEATHSIG, when pytest dies). Its data root persists (``/var/lib/loopwright-test-docker``
by default, ``LOOPWRIGHT_TEST_DOCKER_ROOT`` to move it) so the offline image is built once per
machine, not once per run. Where no daemon can start, tests skip and say why; in CI, a machine
that has dockerd and root but cannot start it fails instead (a skip there would hide a gap).

Use from a test module: ``from dockerd import docker_sandbox_fixture, dockerd_fixture`` makes
the ``docker_sandbox`` and ``dockerd`` fixtures available there.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from loopwright.sandboxes.base import SandboxUnavailable
from loopwright.sandboxes.docker import DEFAULT_IMAGE, LABEL, DockerSandbox, docker_client
from loopwright.sandboxes.image import build_image

DATA_ROOT = Path(os.environ.get("LOOPWRIGHT_TEST_DOCKER_ROOT", "/var/lib/loopwright-test-docker"))
START_TIMEOUT_S = 60
LOCK_TIMEOUT_S = 600  # another session on this machine may hold the data root
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Dockerd:
    """The daemon this session started."""

    host: str
    """``unix://`` address to pass as ``docker_host``."""
    pid: int
    """dockerd's PID, the one we stop at the end."""
    run_dir: Path
    """Temp dir holding the socket, exec-root, pidfile, config and log."""


def _cannot(reason: str) -> NoReturn:
    if os.environ.get("CI") and _dockerd_binary() and os.geteuid() == 0:
        pytest.fail(f"dockerd is installed but unusable in CI: {reason}")
    pytest.skip(f"no docker daemon for the tests: {reason}")


def _dockerd_binary() -> str | None:
    return shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")


def _lock_data_root() -> int:
    """Exclusive use of DATA_ROOT: two daemons on one data root corrupt each other."""
    DATA_ROOT.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{DATA_ROOT}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    give_up = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > give_up:
                os.close(fd)
                _cannot(f"{DATA_ROOT} stayed locked by another test session")
            time.sleep(1)


def _die_with_pytest() -> Callable[[], None]:
    """A preexec_fn: the daemon gets SIGTERM if pytest dies before it can stop it."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    errors = [line for line in lines if "level=error" in line or "level=fatal" in line]
    return (errors or lines or ["no output"])[-1][-300:]


def _wait_ready(proc: subprocess.Popen[bytes], host: str, log: Path) -> None:
    give_up = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            _cannot(f"dockerd exited with {proc.returncode}: {_log_tail(log)}")
        with contextlib.suppress(SandboxUnavailable):
            docker_client(host).close()
            return
        if time.monotonic() > give_up:
            _stop(proc)
            _cannot(f"dockerd did not answer within {START_TIMEOUT_S}s: {_log_tail(log)}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: only the daemon we started, by its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pids_mentioning(text: str) -> list[int]:
    """Live host processes whose command line contains ``text``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def _kill_with_children(pids: list[int]) -> None:
    """SIGKILL ``pids`` (processes of our daemon, named by our unique exec-root) and their
    children (a shim's container init), children first."""
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) in pids:
                    children.append(int(entry.name))
    for pid in [*children, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def uid_pids(uid: int) -> set[int]:
    """Live (non-zombie) host processes whose real uid is ``uid``."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] != "Z":
                found.add(int(entry.name))
    return found


def container_leftovers(docker_host: str | None) -> list[str]:
    """Processes inside our sandbox containers other than each one's PID 1 (seen from the host)."""
    client = docker_client(docker_host)
    try:
        extra = []
        for c in client.containers.list(filters={"label": LABEL}):
            init = c.attrs["State"]["Pid"]
            top = c.top(ps_args="-o pid,args")
            for row in top["Processes"] or []:
                if int(row[0]) != init:
                    extra.append(f"{c.short_id}: {row[1]}")
        return extra
    finally:
        client.close()


@pytest.fixture(scope="session", name="dockerd")
def dockerd_fixture() -> Iterator[Dockerd]:
    """A daemon on a private unix socket, with the sandbox image present (built if missing)."""
    binary = _dockerd_binary()
    if binary is None:
        _cannot("dockerd not installed (`apt-get install docker.io`, or `make sysdeps`)")
    if os.geteuid() != 0:
        _cannot("starting dockerd needs root")
    if importlib.util.find_spec("docker") is None:
        _cannot("the docker SDK is not installed (`pip install 'docker>=7,<8'`)")
    lock = _lock_data_root()
    nobody_before = uid_pids(65534)
    # /tmp, not $TMPDIR: a unix socket path must stay under 108 bytes
    run_dir = Path(tempfile.mkdtemp(prefix="lw-dockerd-", dir="/tmp"))
    sock, log = run_dir / "docker.sock", run_dir / "dockerd.log"
    (run_dir / "daemon.json").write_text("{}")  # ignore /etc/docker/daemon.json
    host = f"unix://{sock}"
    argv = [
        binary,
        "--iptables=false",
        "--bridge=none",
        "--data-root", str(DATA_ROOT),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(run_dir / "docker.pid"),
        "--config-file", str(run_dir / "daemon.json"),
        "--log-level", "warn",
        "-H", host,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_pytest(),
        )
    try:
        _wait_ready(proc, host, log)
        client = docker_client(host)
        missing = not client.images.list(name=DEFAULT_IMAGE)
        client.close()
        if missing:  # once per machine: it is cached in DATA_ROOT
            t0 = time.monotonic()
            build_image(DEFAULT_IMAGE, docker_host=host, progress=lambda _: None)
            print(f"built {DEFAULT_IMAGE} in {time.monotonic() - t0:.0f}s")
        yield Dockerd(host=host, pid=proc.pid, run_dir=run_dir)
    finally:
        _stop(proc)
        leftovers = pids_mentioning(str(run_dir))  # containerd, shims: all name our exec-root
        leftovers += sorted(uid_pids(65534) - nobody_before)  # anything a container ran
        _kill_with_children(pids_mentioning(str(run_dir)))  # report them, but leave nothing
        shutil.rmtree(run_dir, ignore_errors=True)
        os.close(lock)
        assert leftovers == [], f"processes outlived the test dockerd: {leftovers}"


@pytest.fixture(scope="session", name="docker_sandbox")
def docker_sandbox_fixture(dockerd: Dockerd) -> Iterator[DockerSandbox]:
    """A ``DockerSandbox`` on the test daemon; its containers are removed at session end."""
    sandbox = DockerSandbox(docker_host=dockerd.host)
    try:
        yield sandbox
    finally:
        sandbox.close()
