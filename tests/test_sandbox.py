"""Sandbox conformance suite: the same hostile programs against every backend on this machine.

Every attack is judged on the HOST side (files that must not exist, sockets that must see no
traffic, processes that must not survive, free space that must not shrink), never by trusting
the sandbox's report. Backends: ``bwrap`` (warm fast path), ``bwrap-cold`` (bwrap per
program), ``docker`` (a private dockerd started by tests/dockerd.py) and ``process``; the
isolation tests skip ``process``, which isolates nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerd import (  # the two fixtures are registered by importing them
    DATA_ROOT,
    Dockerd,
    container_leftovers,
    docker_sandbox_fixture,  # noqa: F401
    dockerd_fixture,  # noqa: F401
)
from loopwright.sandboxes import (
    BwrapSandbox,
    ExecResult,
    ProcessSandbox,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    get_sandbox,
)
from loopwright.sandboxes.docker import DockerSandbox, docker_client
from loopwright.sandboxes.image import apt_mirror, build_image
from loopwright.sandboxes.warm import live_worker_pids

ISOLATING = [
    "bwrap",
    "bwrap-cold",
    pytest.param("docker", marks=pytest.mark.docker),
]
ALL = [*ISOLATING, "process"]
SLOT_UIDS = range(60000, 60000 + 64)  # BwrapSandbox defaults, used when tests run as root
DOCKER_UID = 65534


_OPEN: dict[str, Sandbox] = {}
"""The module's sandboxes, one per backend: warm workers and containers are reused across
tests as in real use (and a test that breaks one shows up in the next)."""


@pytest.fixture(scope="module", autouse=True)
def _close_sandboxes_then_check_host(_private_tempdir: Path) -> Iterator[None]:
    """At the end, nothing the sandboxes started may still run on the host."""
    yield
    for sb in _OPEN.values():
        if isinstance(sb, BwrapSandbox):
            sb.close()
    _OPEN.clear()  # the docker one belongs to (and is closed by) its session fixture
    deadline = time.monotonic() + 5
    while set(_live_slot_uid_pids()) - set(live_worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.geteuid() == 0:
        left = set(_live_slot_uid_pids()) - set(live_worker_pids())  # other modules' pools
        assert left == set(), "bwrap processes outlived the suite"
    assert _host_pids_matching("lwtest-") == [], "a test program outlived the suite"


def _make(name: str, request: pytest.FixtureRequest) -> Sandbox:
    if name in _OPEN:
        return _OPEN[name]
    if name == "docker":
        sb: Sandbox = request.getfixturevalue("docker_sandbox")
    elif name.startswith("bwrap"):
        reason = BwrapSandbox.check()
        if reason is not None:
            if os.environ.get("CI"):  # CI installs bubblewrap: a skip there would hide a gap
                pytest.fail(f"bwrap unavailable in CI: {reason}")
            pytest.skip(f"bwrap unavailable: {reason}")
        sb = BwrapSandbox(warm=name == "bwrap")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the process backend's loud warning has its own test
            sb = get_sandbox(name)
    _OPEN[name] = sb
    return sb


@pytest.fixture(params=ALL)
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """Every backend: for behaviour and limits."""
    return _make(request.param, request)


@pytest.fixture(params=ISOLATING)
def isolated(request: pytest.FixtureRequest) -> Sandbox:
    """Only backends that claim isolation: for the attacks."""
    return _make(request.param, request)


def run(sb: Sandbox, code: str, **kw: object) -> ExecResult:
    return sb.run_python(textwrap.dedent(code), **kw)  # type: ignore[arg-type]


def _token() -> str:
    return f"lwtest-{uuid.uuid4().hex}"  # the module teardown looks for this prefix too


def _host_pids_matching(token: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(entry.name))
    return found


def _proc(pid: int) -> tuple[int, int, int, str] | None:
    """(uid, ppid, start time in clock ticks since boot, state) of a live host process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
    return uid, int(stat[1]), int(stat[19]), stat[0]


def _now_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


_SESSION_START = _now_ticks()


def _live_slot_uid_pids(since: int = _SESSION_START) -> list[int]:
    """Live slot-uid processes that are ours: under this pytest process, or orphaned (re-parented
    to PID 1) after ``since``. Other sessions on this machine run bwrap with the same slot
    uids; their processes hang under their own pytest and are not ours to judge."""
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or (info := _proc(int(entry.name))) is None:
            continue
        uid, ppid, started, state = info
        if uid not in SLOT_UIDS or state == "Z":
            continue
        top_start = started  # climb to the first parent that is not a slot uid
        while (parent := _proc(ppid)) is not None and parent[0] in SLOT_UIDS:
            ppid, top_start = parent[1], parent[2]
        ours = ppid == me or _descends_from(ppid, me)
        if ours or (ppid == 1 and top_start >= since):
            found.append(int(entry.name))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        info = _proc(pid)
        if info is None:
            return False
        pid = info[1]
    return False


def _leftovers(sb: Sandbox, token: str | None) -> list[str]:
    left = [f"host pid {p} runs {token}" for p in _host_pids_matching(token)] if token else []
    if os.geteuid() == 0:  # idle warm workers are the only slot-uid processes allowed
        allowed = set(live_worker_pids())  # this module's and other tests' shared sandboxes
        left += [f"slot-uid pid {p}" for p in _live_slot_uid_pids() if p not in allowed]
    if isinstance(sb, DockerSandbox):  # inside the containers, seen from the host
        left += container_leftovers(sb.docker_host)
    return left


def _assert_nothing_survives(sb: Sandbox, token: str | None = None) -> None:
    deadline = time.monotonic() + 3
    while (left := _leftovers(sb, token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


# --- normal behaviour (all backends) ----------------------------------------------------


def test_stdout_stderr_and_exit_code_are_data(sandbox: Sandbox) -> None:
    r = run(sandbox, "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert r.killed_by is None and not r.timed_out and not r.truncated and not r.ok


def test_success(sandbox: Sandbox) -> None:
    r = run(sandbox, "print(6 * 7)")
    assert r.ok and r.stdout == "42\n" and r.duration_s < 5


def test_files_and_stdin_reach_the_program(sandbox: Sandbox) -> None:
    files = {"data.txt": "hello", "sub/blob.bin": b"\x00\x01", "in.txt": "x"}
    code = """
        import sys
        print(open('data.txt').read(), open('sub/blob.bin', 'rb').read(), sys.stdin.read())
        open('out.txt', 'w').write('written')
        print(open('out.txt').read())
    """
    r = run(sandbox, code, files=files, stdin="from stdin")
    assert r.stdout == "hello b'\\x00\\x01' from stdin\nwritten\n", r.stderr


def test_large_stdin(sandbox: Sandbox) -> None:
    r = run(sandbox, "import sys; print(len(sys.stdin.read()))", stdin="a" * 2_000_000)
    assert r.stdout == "2000000\n"


def test_plain_argv(sandbox: Sandbox) -> None:
    r = sandbox.run(["/bin/sh", "-c", "echo hi; exit 4"])
    assert (r.exit_code, r.stdout) == (4, "hi\n")


def test_missing_program_is_data(isolated: Sandbox) -> None:
    r = isolated.run(["/no/such/program"])  # (the process backend raises FileNotFoundError)
    assert not r.ok and r.exit_code not in (0, None)


def test_file_paths_must_stay_in_workdir(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="inside the work dir"):
        sandbox.run_python("pass", files={"../escape.txt": "x"})


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="bwrap, docker, process"):
        get_sandbox("dokcer")


def test_process_backend_warns_loudly() -> None:
    with pytest.warns(UserWarning, match="does NOT isolate"):
        ProcessSandbox()


# --- limits (all backends) --------------------------------------------------------------


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    t0 = time.monotonic()
    r = run(sandbox, "while True: pass", limits=SandboxLimits(timeout_s=1))
    assert time.monotonic() - t0 < 1 + 2
    assert r.timed_out and r.killed_by == "timeout" and r.exit_code is None


def test_sigterm_ignoring_program_is_killed(sandbox: Sandbox) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        while True: time.sleep(0.1)
    """
    t0 = time.monotonic()
    r = sandbox.run_python(textwrap.dedent(code), limits=SandboxLimits(timeout_s=1))
    assert time.monotonic() - t0 < 3
    assert r.timed_out and r.stdout == "ready\n"
    _assert_nothing_survives(sandbox)


def test_cpu_limit(sandbox: Sandbox) -> None:
    r = run(sandbox, "while True: pass", limits=SandboxLimits(timeout_s=8, cpu_s=1))
    assert r.killed_by == "cpu" and not r.timed_out and r.duration_s < 5


def test_memory_bomb_is_killed_not_the_host(sandbox: Sandbox) -> None:
    code = "chunks = []\nwhile True: chunks.append(bytearray(50 * 2**20))"
    r = run(sandbox, code, limits=SandboxLimits(memory_mb=256, timeout_s=10))
    assert not r.ok and r.killed_by == "memory" and not r.timed_out
    assert subprocess.run(["true"]).returncode == 0  # the host still works


def test_hundred_megabytes_of_output_is_capped_fast(sandbox: Sandbox) -> None:
    code = """
        import sys
        block = 'x' * 1_000_000
        for _ in range(100): sys.stdout.write(block); sys.stderr.write('y' * 1000)
    """
    t0 = time.monotonic()
    r = run(sandbox, code, limits=SandboxLimits(max_output_bytes=100_000, timeout_s=20))
    assert time.monotonic() - t0 < 5
    assert r.truncated and r.killed_by == "output" and not r.timed_out
    assert len(r.stdout.encode()) + len(r.stderr.encode()) <= 100_000
    assert run(sandbox, "print('next')").stdout == "next\n"


def test_file_size_limit(sandbox: Sandbox) -> None:
    code = "open('big', 'wb').write(b'x' * (3 * 2**20))"
    r = run(sandbox, code, limits=SandboxLimits(max_file_mb=1))
    assert not r.ok  # SIGXFSZ or OSError(EFBIG)


def test_secret_env_vars_do_not_leak(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    code = """
        import os, glob
        print(dict(os.environ))
        for p in glob.glob('/proc/*/environ'):
            try: print(open(p, 'rb').read())
            except OSError as e: print(p, e)
    """
    r = run(sandbox, code)
    assert secret not in r.stdout + r.stderr
    own_env = r.stdout.splitlines()[0]
    assert own_env.startswith("{") and "OPENAI_API_KEY" not in own_env
    if sandbox.name != "process":
        # An isolating backend sees only its own processes, so no other process's
        # environment (any key name) is readable. The process backend sees the host's
        # /proc, where other programs' environments are outside this test's control.
        assert "OPENAI_API_KEY" not in r.stdout


# --- isolation (isolating backends only) ---------------------------------------------------


def test_fork_bomb_is_contained(isolated: Sandbox) -> None:
    code = """
        import os
        while True:
            try: os.fork()
            except OSError: pass
    """
    r = run(isolated, code, limits=SandboxLimits(timeout_s=2, max_processes=32))
    assert r.timed_out and r.killed_by == "timeout"  # the deadline ended it, not the host
    assert subprocess.run(["true"]).returncode == 0
    _assert_nothing_survives(isolated)
    assert run(isolated, "print('next')").stdout == "next\n"


def test_process_limit_is_enforced(isolated: Sandbox) -> None:
    code = """
        import os, time
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
    """
    r = run(isolated, code, limits=SandboxLimits(timeout_s=5, max_processes=16))
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout) <= 16
    _assert_nothing_survives(isolated)


def test_forked_memory_bomb_is_killed_not_the_host(isolated: Sandbox) -> None:
    code = """
        import os, time
        for _ in range(6):  # each child stays under RLIMIT_AS; together they exceed memory_mb
            if os.fork() == 0:
                b = bytearray(150 * 2**20)
                for i in range(0, len(b), 4096): b[i] = 1
                time.sleep(20); os._exit(0)
        os.wait(); print('a child died')
    """
    r = run(isolated, code, limits=SandboxLimits(memory_mb=256, timeout_s=6))
    assert subprocess.run(["true"]).returncode == 0
    _assert_nothing_survives(isolated)
    assert run(isolated, "print('next')").stdout == "next\n", r


def test_no_network_even_to_host_loopback(isolated: Sandbox) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    seen: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                seen.append(server.accept()[1])

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        code = f"""
            import socket
            for host in ('127.0.0.1', 'localhost', '10.0.2.2', '1.1.1.1'):
                try:
                    socket.create_connection((host, {port}), timeout=1); print('connected', host)
                except OSError as e:
                    print(host, e)
        """
        r = run(isolated, code)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert seen == []
    assert "connected" not in r.stdout


def test_dns_lookup_fails(isolated: Sandbox) -> None:
    """Names do not resolve, and no DNS query reaches a resolver listening on host loopback."""
    listeners = []
    for port in (53, 0):  # 53 catches a sandbox that falls back to the default resolver
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:  # 53 is taken or not ours to bind
            udp.close()
            continue
        udp.setblocking(False)
        listeners.append(udp)
    port = listeners[-1].getsockname()[1]
    query = (
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    )
    code = f"""
        import socket
        for name in ('deb.debian.org', 'pypi.org', 'example.com'):
            try: print('resolved', name, socket.getaddrinfo(name, 443)[0][4])
            except OSError as e: print(name, e)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        try:
            s.sendto({query!r}, ('127.0.0.1', {port})); print('answer', s.recvfrom(512))
        except OSError as e:
            print('udp', e)
    """
    try:
        r = run(isolated, code, limits=SandboxLimits(timeout_s=20))
        time.sleep(0.2)
        received = []
        for udp in listeners:
            with contextlib.suppress(BlockingIOError):
                received.append(udp.recvfrom(512))
    finally:
        for udp in listeners:
            udp.close()
    assert r.exit_code == 0, r.stderr
    assert received == []
    assert "resolved" not in r.stdout and "answer" not in r.stdout


def test_killing_its_parent_and_pid1_harms_nobody(isolated: Sandbox) -> None:
    init_before = Path("/proc/1/stat").read_text().split(")")[1].split()[19]  # start time
    code = """
        import os, signal, time
        for pid in (os.getppid(), 1):
            try: os.kill(pid, signal.SIGKILL); print('sent', pid, flush=True)
            except OSError as e: print(pid, e, flush=True)
        time.sleep(0.3)
        print('still here')
    """
    host_parent = os.getppid()  # whoever started pytest: must not be the one that got killed
    run(isolated, code, limits=SandboxLimits(timeout_s=5))  # its result is the backend's call
    os.kill(host_parent, 0)
    assert Path("/proc/1/stat").read_text().split(")")[1].split()[19] == init_before
    assert subprocess.run(["true"]).returncode == 0
    if isinstance(isolated, DockerSandbox):
        docker_client(isolated.docker_host).close()  # the daemon still answers
    assert run(isolated, "print('next')").stdout == "next\n"
    _assert_nothing_survives(isolated)


def test_filling_the_disk_is_capped(isolated: Sandbox) -> None:
    """Many files until ENOSPC/EFBIG: the run stops at the sandbox's own cap, the bytes went
    into the sandbox's private filesystems (none of the files exists on the host), and the
    next run starts clean. Asserted on the sandbox, not on the host's free space, which any
    other process on the machine changes."""
    disk_mb = 8
    token = _token()
    code = f"""
        import errno, os
        written, stopped = 0, 'never'
        try:  # at most 256 MiB, so a backend without a cap cannot fill the host
            for i in range(256):
                with open(f'{token}-{{i}}' if i % 2 else f'/tmp/{token}-{{i}}', 'wb') as f:
                    f.write(b'x' * 2**20)
                written += 1
        except OSError as e:
            stopped = errno.errorcode.get(e.errno)
        print(written, stopped)
    """
    r = run(isolated, code, limits=SandboxLimits(max_disk_mb=disk_mb, timeout_s=30))
    assert r.ok, (r.exit_code, r.killed_by, r.stderr[-500:])
    written, stopped = r.stdout.split()
    assert stopped in ("ENOSPC", "EFBIG", "EDQUOT") and int(written) <= disk_mb
    project = Path(__file__).resolve().parents[1]
    for where in (Path("/tmp"), Path("/var/tmp"), Path.home(), project, DATA_ROOT):
        with contextlib.suppress(OSError):
            leaked = [p.name for p in where.iterdir() if p.name.startswith(token)]
            assert not leaked, f"sandbox files reached the host in {where}: {leaked[:3]}"
    r = run(isolated, "import os; print(os.listdir('.'), os.listdir('/tmp'))")
    assert token not in r.stdout  # nothing carried over


def test_writes_outside_workdir_do_not_reach_host(isolated: Sandbox, tmp_path: Path) -> None:
    name = f"loopwright-escape-{uuid.uuid4().hex}"
    project = Path(__file__).resolve().parents[1]
    targets = [
        Path("/tmp") / name,
        project / name,
        Path.home() / name,
        tmp_path / name,
        Path("/") / name,
        Path("/usr") / name,
    ]
    code = f"""
        import os
        for t in {[str(t) for t in targets]!r}:
            try:
                os.makedirs(os.path.dirname(t), exist_ok=True)
                open(t, 'w').write('pwned'); print('wrote', t)
            except OSError as e:
                print(t, e)
    """
    r = run(isolated, code)
    assert r.exit_code == 0, r.stderr
    for t in targets:
        assert not t.exists(), f"sandbox wrote {t} on the host"


def test_host_files_are_not_readable(isolated: Sandbox, tmp_path: Path) -> None:
    token = f"secret-{uuid.uuid4().hex}"
    private = tmp_path / "secret.txt"
    private.write_text(token)
    public = Path("/tmp") / f"loopwright-public-{uuid.uuid4().hex}.txt"
    public.write_text(token)
    public.chmod(0o644)
    try:
        code = f"""
            import os
            for p in {[str(private), str(public), "/etc/passwd", "/etc/shadow"]!r}:
                try: print(open(p).read())
                except OSError as e: print(p, e)
            print(os.listdir('/'), os.listdir('/tmp'))
        """
        r = run(isolated, code)
    finally:
        public.unlink()
    assert token not in r.stdout + r.stderr
    if isinstance(isolated, BwrapSandbox):
        assert "root:" not in r.stdout  # no /etc at all (docker has the image's own)
    host_hashes = [
        f.split(":")[1] for f in _read_or_empty("/etc/shadow").splitlines() if f.count(":") > 2
    ]
    assert not [h for h in host_hashes if len(h) > 3 and h in r.stdout]


def _read_or_empty(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def test_host_processes_are_invisible(isolated: Sandbox) -> None:
    code = """
        import os
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
        print(len(pids))
        for p in pids:
            try: print(open(f'/proc/{p}/cmdline', 'rb').read())
            except OSError: pass
    """
    r = run(isolated, code)
    assert r.exit_code == 0, r.stderr
    assert int(r.stdout.splitlines()[0]) < 5
    assert "pytest" not in r.stdout and str(sys.executable) not in r.stdout
    assert "dockerd" not in r.stdout and "containerd" not in r.stdout


def test_background_process_does_not_outlive_the_run(isolated: Sandbox) -> None:
    token = _token()
    code = f"""
        import os, subprocess, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, '-c',
                         'import time; time.sleep(30)  # {token}'])
            os._exit(0)
        time.sleep(0.3)
        print('parent done')
    """
    r = run(isolated, code)
    assert r.stdout == "parent done\n", r.stderr
    _assert_nothing_survives(isolated, token)


def test_no_capabilities_and_not_root(isolated: Sandbox) -> None:
    code = """
        import os
        status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())
        print(status['CapEff'].strip(), status['CapBnd'].strip(), os.getuid())
    """
    r = run(isolated, code)
    cap_eff, cap_bnd, uid = r.stdout.split()
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
    if isinstance(isolated, DockerSandbox):
        assert int(uid) == DOCKER_UID
    elif os.geteuid() == 0:
        assert int(uid) in SLOT_UIDS


def test_concurrent_runs_use_separate_slots(isolated: Sandbox) -> None:
    """Runs that overlap in time never share a uid (bwrap) or a container (docker).

    The warm bwrap path runs as many programs at once as it has workers; the others wait,
    so the invariant is checked on the runs' actual time spans.
    """
    overlapping: list[tuple[list[str], list[str]]] = []
    for hold in (0.5, 2.0, 5.0):  # a busy machine may start them apart: hold them longer
        results: list[ExecResult] = []
        code = (
            f"import os, time; t0 = time.time(); time.sleep({hold}); "
            "print(os.getuid(), os.stat('/tmp').st_dev, t0, time.time())"
        )

        def one(code: str = code, results: list[ExecResult] = results) -> None:
            results.append(run(isolated, code))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.ok for r in results), results
        rows = [r.stdout.split() for r in results]
        overlapping = [
            (a, b)
            for i, a in enumerate(rows)
            for b in rows[i + 1 :]
            if float(a[2]) < float(b[3]) and float(b[2]) < float(a[3])
        ]
        if overlapping:
            break
    assert overlapping, "the four runs should overlap at least pairwise"
    for a, b in overlapping:
        if isinstance(isolated, DockerSandbox):
            assert a[1] != b[1]  # its own container, so its own /tmp
        elif os.geteuid() == 0:
            assert a[0] != b[0]  # its own slot uid


# --- docker backend specifics ------------------------------------------------------------


def test_importing_sandboxes_does_not_load_the_docker_sdk() -> None:
    code = "import sys, loopwright.sandboxes; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"


def test_docker_without_a_daemon_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"unix://{tmp_path}/no.sock"
    with pytest.raises(SandboxUnavailable) as info:
        DockerSandbox(docker_host=nowhere)
    assert "\n" not in str(info.value) and "docker" in str(info.value).lower()
    monkeypatch.setenv("DOCKER_HOST", nowhere)
    reason = DockerSandbox.check()
    assert reason is not None and "\n" not in reason


@pytest.mark.docker
def test_docker_missing_image_says_build_image(dockerd: Dockerd) -> None:
    with pytest.raises(SandboxUnavailable, match="loopwright sandbox build-image"):
        DockerSandbox("loopwright-no-such-image:none", docker_host=dockerd.host)


@pytest.mark.docker
def test_docker_containers_are_hardened(docker_sandbox: DockerSandbox) -> None:
    limits = SandboxLimits(memory_mb=200, max_processes=20, max_disk_mb=10)
    assert docker_sandbox.run_python("pass", limits=limits).ok
    client = docker_client(docker_sandbox.docker_host)
    try:
        containers = client.containers.list(filters={"label": "org.loopwright.sandbox"})
        shaped = [c for c in containers if c.attrs["HostConfig"]["PidsLimit"] == 20 + 2]
        assert shaped, "no container with the run's pids limit"
        for c in shaped:
            hc, cfg = c.attrs["HostConfig"], c.attrs["Config"]
            assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
            assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
            assert hc["Memory"] == hc["MemorySwap"] > 0
            assert "size=10m" in hc["Tmpfs"]["/tmp"]
            assert cfg["User"] == "65534:65534"
            assert not [e for e in cfg["Env"] if e.split("=")[0] not in ("PATH", "LANG")]
    finally:
        client.close()


@pytest.mark.docker
def test_docker_pid1_obeys_only_the_host(docker_sandbox: DockerSandbox) -> None:
    """No signal from inside stops or steers the container's init; the run goes on."""
    client = docker_client(docker_sandbox.docker_host)
    try:
        inits = {c.attrs["State"]["Pid"] for c in client.containers.list()}
        code = """
            import os, signal, time
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):
                os.kill(1, s)
            time.sleep(0.3)
            print('alive')
        """
        r = run(docker_sandbox, code)
        assert (r.exit_code, r.stdout) == (0, "alive\n"), r
        assert {c.attrs["State"]["Pid"] for c in client.containers.list()} == inits
    finally:
        client.close()


@pytest.mark.docker
def test_docker_close_removes_its_containers(dockerd: Dockerd) -> None:
    client = docker_client(dockerd.host)
    try:
        before = {c.id for c in client.containers.list(all=True)}
        sb = DockerSandbox(docker_host=dockerd.host)
        assert sb.run_python("print(1)").ok
        mine = {c.id for c in client.containers.list(all=True)} - before
        assert mine
        sb.close()
        assert not mine & {c.id for c in client.containers.list(all=True)}
    finally:
        client.close()


def test_build_image_fails_fast_with_one_line(tmp_path: Path) -> None:
    """Not root, no debootstrap or no daemon: a one-line reason before the slow part."""
    t0 = time.monotonic()
    with pytest.raises(SandboxUnavailable) as info:
        build_image(docker_host=f"unix://{tmp_path}/no.sock", progress=lambda _: None)
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)
    assert any(w in str(info.value) for w in ("root", "debootstrap", "Docker daemon"))


def test_apt_mirror_is_read_from_the_machines_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# nothing here\n")
    (tmp_path / "sources.list.d" / "other.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] https://example.invalid/apt stable main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert apt_mirror("bookworm", etc=tmp_path) == "http://mirror.invalid/debian"
    assert apt_mirror("stable", etc=tmp_path) == "https://example.invalid/apt"
    assert apt_mirror("trixie", etc=tmp_path) == "http://deb.debian.org/debian"


@pytest.fixture(scope="module", autouse=True)
def _private_tempdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Host-side work dirs go to a temp dir of this module's own, so that leftovers found there
    are ours (other sessions on this machine run sandboxes in /tmp at the same time)."""
    tmp_path_factory.getbasetemp()  # pytest's own temp root stays where it was
    private = Path(tempfile.mkdtemp(prefix="lw-sandbox-tests-"))
    private.chmod(0o755)  # the slot uids must traverse it to reach their work dirs
    saved, tempfile.tempdir = tempfile.tempdir, str(private)
    try:
        yield private
    finally:
        tempfile.tempdir = saved
        leftover = list(private.glob("loopwright-*"))
        shutil.rmtree(private, ignore_errors=True)
        assert leftover == [], "work dirs outlived the suite"


@pytest.fixture(autouse=True)
def _no_leftover_workdirs(_private_tempdir: Path) -> Iterator[None]:
    before = set(_private_tempdir.glob("loopwright-*"))
    yield
    deadline = time.monotonic() + 2  # a killed warm worker's dir goes when it is reaped
    while (leftover := set(_private_tempdir.glob("loopwright-*")) - before) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert leftover == set()
