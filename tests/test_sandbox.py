"""Sandbox conformance suite: the same hostile programs against every backend on this machine.

Every attack is judged on the HOST side (files that must not exist, a socket that must see
no connection, processes that must not survive), never by trusting the sandbox's report.
Isolation tests run only on isolating backends; ``process`` gets the limit tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopwright.sandboxes import (
    BACKENDS,
    BwrapSandbox,
    ExecResult,
    ProcessSandbox,
    Sandbox,
    SandboxLimits,
    get_sandbox,
)

ISOLATING = ["bwrap"]
SLOT_UIDS = range(60000, 60000 + 64)  # BwrapSandbox defaults, used when tests run as root


def _make(name: str) -> Sandbox:
    if name == "bwrap":
        reason = BwrapSandbox.check()
        if reason is not None:
            if os.environ.get("CI"):  # CI installs bubblewrap: a skip there would hide a gap
                pytest.fail(f"bwrap unavailable in CI: {reason}")
            pytest.skip(f"bwrap unavailable: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the process backend's loud warning has its own test
        return get_sandbox(name)


@pytest.fixture(params=sorted(BACKENDS))
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """Every backend: for behaviour and limits."""
    return _make(request.param)


@pytest.fixture(params=ISOLATING)
def isolated(request: pytest.FixtureRequest) -> Sandbox:
    """Only backends that claim isolation: for the attacks."""
    return _make(request.param)


def run(sb: Sandbox, code: str, **kw: object) -> ExecResult:
    return sb.run_python(textwrap.dedent(code), **kw)  # type: ignore[arg-type]


def _host_pids_matching(token: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(entry.name))
    return found


def _live_slot_uid_pids() -> list[int]:
    """Non-zombie processes owned by any sandbox slot uid (meaningful only as root)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        uid = state = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("State:"):
                state = line.split()[1]
        if uid in SLOT_UIDS and state != "Z":
            pids.append(int(entry.name))
    return pids


def _assert_nothing_survives(token: str | None = None) -> None:
    time.sleep(0.2)
    if token is not None:
        assert _host_pids_matching(token) == []
    if os.geteuid() == 0:
        assert _live_slot_uid_pids() == []


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


def test_file_paths_must_stay_in_workdir(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="inside the work dir"):
        sandbox.run_python("pass", files={"../escape.txt": "x"})


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="bwrap, process"):
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
    token = uuid.uuid4().hex
    code = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        while True: time.sleep(0.1)  # {token}
    """
    t0 = time.monotonic()
    r = sandbox.run_python(textwrap.dedent(code), limits=SandboxLimits(timeout_s=1))
    assert time.monotonic() - t0 < 3
    assert r.timed_out and r.stdout == "ready\n"
    _assert_nothing_survives()


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
    assert "OPENAI_API_KEY" not in r.stdout


# --- isolation (isolating backends only) ---------------------------------------------------


def test_fork_bomb_is_contained(isolated: Sandbox) -> None:
    code = """
        import os
        while True:
            try: os.fork()
            except OSError: pass
    """
    t0 = time.monotonic()
    r = run(isolated, code, limits=SandboxLimits(timeout_s=2, max_processes=32))
    assert time.monotonic() - t0 < 2 + 2 and r.timed_out
    assert subprocess.run(["true"]).returncode == 0
    _assert_nothing_survives()


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
    _assert_nothing_survives()


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
    assert "root:" not in r.stdout  # no /etc at all


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


def test_background_process_does_not_outlive_the_run(isolated: Sandbox) -> None:
    token = uuid.uuid4().hex
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
    _assert_nothing_survives(token)


def test_no_capabilities_and_not_root(isolated: Sandbox) -> None:
    code = """
        import os
        status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())
        print(status['CapEff'].strip(), status['CapBnd'].strip(), os.getuid())
    """
    r = run(isolated, code)
    cap_eff, cap_bnd, uid = r.stdout.split()
    assert int(cap_eff, 16) == 0 and int(cap_bnd, 16) == 0
    if os.geteuid() == 0:
        assert int(uid) in SLOT_UIDS


def test_concurrent_runs_use_separate_slots(isolated: Sandbox) -> None:
    results: list[ExecResult] = []

    def one() -> None:
        results.append(run(isolated, "import os, time; time.sleep(0.5); print(os.getuid())"))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results)
    if os.geteuid() == 0:
        assert len({r.stdout for r in results}) == 4


@pytest.fixture(autouse=True)
def _no_leftover_workdirs() -> Iterator[None]:
    before = set(Path("/tmp").glob("loopwright-*-*"))
    yield
    leftover = {p for p in Path("/tmp").glob("loopwright-bwrap-*") if p not in before}
    leftover |= {p for p in Path("/tmp").glob("loopwright-proc-*") if p not in before}
    assert leftover == set()
