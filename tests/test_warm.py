"""The bwrap fast path: warm sandboxed interpreters must be as clean per program as cold ones.

What a warm worker could leak between programs -- files, ``/tmp``, processes, module state --
and what a program could do to its worker -- kill it, stop it -- is checked here, on the host
where it matters. The attack suite in test_sandbox.py runs over the warm path as well.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from loopwright.sandboxes import BwrapSandbox, SandboxLimits


@pytest.fixture
def warm() -> Iterator[BwrapSandbox]:
    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap unavailable in CI: {reason}")
        pytest.skip(f"bwrap unavailable: {reason}")
    sb = BwrapSandbox(warm_workers=1)  # one worker: every program lands in the same sandbox
    yield sb
    sb.close()


def py(sb: BwrapSandbox, code: str, **kw: object):  # type: ignore[no-untyped-def]
    return sb.run_python(textwrap.dedent(code), **kw)  # type: ignore[arg-type]


def test_programs_reuse_one_worker(warm: BwrapSandbox) -> None:
    pids = {py(warm, "import os; print(os.getppid())").stdout for _ in range(3)}
    assert len(pids) == 1  # same server forks every program
    assert len(warm.worker_pids()) == 2  # bwrap and the server: nothing else


@pytest.mark.slow
def test_a_worker_serves_thousands_of_programs_without_leaking_descriptors(
    warm: BwrapSandbox,
) -> None:
    """Each program's pipes are closed after it: a worker that leaked two per program ran
    out of select()-able descriptors after ~500 programs (a code sweep's grading failed)."""
    for i in range(600):
        r = py(warm, f"print({i})")
        assert r.ok and r.stdout.strip() == str(i), (i, r.stderr[-300:])
    assert len(warm.worker_pids()) == 2  # the same worker served them all


def test_files_and_tmp_do_not_carry_over(warm: BwrapSandbox) -> None:
    r = py(
        warm,
        """
        import os
        open('/tmp/left', 'w').write('x'); open('left.txt', 'w').write('x')
        os.makedirs('deep/er'); open('deep/er/f', 'w').write('x')
        print(sorted(os.listdir('.')))
        """,
        files={"pkg/data.txt": "d"},
    )
    assert r.ok, r.stderr
    assert "left.txt" in r.stdout and "pkg" in r.stdout
    r = py(warm, "import os; print(sorted(os.listdir('.')), os.listdir('/tmp'))")
    assert r.stdout == "['main.py'] []\n", r.stdout


def test_module_state_does_not_carry_over(warm: BwrapSandbox) -> None:
    assert py(warm, "import json; json.dumps = None; print('patched')").ok
    r = py(warm, "import json, sys; print(json.dumps([1]), 'helper' in sys.modules)")
    assert r.stdout == "[1] False\n"
    assert py(warm, "import builtins; builtins.len = lambda x: 0").ok
    assert py(warm, "print(len([1, 2]))").stdout == "2\n"


def test_processes_do_not_carry_over(warm: BwrapSandbox) -> None:
    r = py(
        warm,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        print('spawned')
        """,
    )
    assert r.stdout == "spawned\n"
    r = py(warm, "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    pids = eval(r.stdout)
    assert pids == [1, pids[1]], pids  # the server (PID 1) and this program
    assert len(warm.worker_pids()) == 2


def test_program_cannot_signal_its_server(warm: BwrapSandbox) -> None:
    """The server is the namespace's init: no signal from inside reaches it, SIGKILL and
    SIGSTOP included, so the run goes on and the same worker serves the next one."""
    assert py(warm, "pass").ok
    before = warm.worker_pids()
    r = py(
        warm,
        """
        import os, signal, time
        assert os.getppid() == 1
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGSTOP, signal.SIGKILL):
            os.kill(1, s)
        try:
            os.kill(-1, signal.SIGKILL)  # everyone but the caller and init: nobody
        except ProcessLookupError:
            pass
        time.sleep(0.2)
        print('alive')
        """,
        limits=SandboxLimits(timeout_s=20),
    )
    assert (r.exit_code, r.stdout) == (0, "alive\n"), r
    assert warm.worker_pids() == before
    assert py(warm, "print('next')").stdout == "next\n"
    assert warm.worker_pids() == before


def test_a_worker_killed_mid_run_fails_only_that_run(warm: BwrapSandbox) -> None:
    """Were the server to die (the host's OOM killer, say), that run fails and a fresh
    worker serves the next one."""
    assert py(warm, "pass").ok
    before = warm.worker_pids()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(py, warm, "import time; time.sleep(30)")
        _wait_for_program(before[-1])
        os.kill(before[-1], signal.SIGKILL)
        r = pending.result()
    assert r.exit_code is None and r.killed_by == "signal"
    for pid in before:  # the dead worker's processes are gone from the host
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert py(warm, "print('next')").stdout == "next\n"
    assert set(warm.worker_pids()).isdisjoint(before)


def test_a_worker_stopped_mid_run_times_out_and_is_replaced(warm: BwrapSandbox) -> None:
    assert py(warm, "pass").ok
    before = warm.worker_pids()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            py, warm, "import time; time.sleep(30)", limits=SandboxLimits(timeout_s=1)
        )
        _wait_for_program(before[-1])
        os.kill(before[-1], signal.SIGSTOP)
        r = pending.result()
    assert r.killed_by == "timeout" and r.exit_code is None
    assert py(warm, "print('next')").stdout == "next\n"
    assert set(warm.worker_pids()).isdisjoint(before)


def _wait_for_program(server: int) -> None:
    """Until the server has a child: the program is running."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(_ppid(int(p)) == server for p in os.listdir("/proc") if p.isdigit()):
            return
        time.sleep(0.01)
    raise AssertionError("the program never started")


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_limits_apply_per_program_not_per_worker(warm: BwrapSandbox) -> None:
    small = SandboxLimits(memory_mb=64)
    r = py(warm, "x = bytearray(200 * 1024 * 1024)", limits=small)
    assert r.killed_by == "memory"
    r = py(
        warm, "x = bytearray(200 * 1024 * 1024); print('ok')", limits=SandboxLimits(memory_mb=512)
    )
    assert r.stdout == "ok\n", r.stderr


def test_large_output_and_input_cross_intact(warm: BwrapSandbox) -> None:
    """Megabytes each way, stdout and stderr interleaved: every byte back in its stream, and
    the cap counts both streams together."""
    blob = os.urandom(1 << 20).hex()  # 2 MiB of text
    code = """
        import sys
        data = sys.stdin.read()
        for i in range(0, len(data), 50_000):
            sys.stdout.write(data[i : i + 50_000]); sys.stdout.flush()
            sys.stderr.write(data[i : i + 50_000][::-1]); sys.stderr.flush()
        """
    r = py(
        warm,
        code,
        stdin=blob,
        files={"big.bin": os.urandom(3 << 20)},
        limits=SandboxLimits(max_output_bytes=5 << 20, timeout_s=30),
    )
    assert r.ok and not r.truncated, r.stderr[-300:]
    assert r.stdout == blob
    assert r.stderr == "".join(blob[i : i + 50_000][::-1] for i in range(0, len(blob), 50_000))
    r = py(warm, code, stdin=blob, limits=SandboxLimits(max_output_bytes=3 << 20, timeout_s=30))
    assert r.truncated and r.killed_by == "output"
    assert len(r.stdout) + len(r.stderr) == 3 << 20
    assert blob.startswith(r.stdout)


def test_disk_cap_holds_across_tmp_and_workdir(warm: BwrapSandbox) -> None:
    limits = SandboxLimits(max_disk_mb=8, max_file_mb=6)
    r = py(
        warm,
        """
        import errno
        written = 0
        for path in ['/tmp/a', 'b', '/tmp/c']:
            try:
                with open(path, 'wb') as f:
                    for _ in range(6):
                        f.write(b'x' * 1024 * 1024); f.flush(); written += 1
            except OSError as e:
                print('stopped', errno.errorcode.get(e.errno))
                break
        print('written', written)
        """,
        limits=limits,
    )
    assert "stopped ENOSPC" in r.stdout, (r.stdout, r.stderr)
    written = int(r.stdout.split("written ")[1])
    assert written <= 8


def test_concurrent_programs_are_isolated_from_each_other() -> None:
    sb = BwrapSandbox(warm_workers=2)
    try:
        code = "import os, time; open('/tmp/me', 'w').write(str(os.getpid())); time.sleep(0.3); print(open('/tmp/me').read() == str(os.getpid()))"
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: sb.run_python(code).stdout, range(8)))
        assert outs == ["True\n"] * 8
    finally:
        sb.close()


def test_close_leaves_nothing_running() -> None:
    sb = BwrapSandbox(warm_workers=2)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: sb.run_python("print(1)"), range(4)))
    pids = sb.worker_pids()
    assert pids
    sb.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_non_script_argv_takes_the_cold_path(warm: BwrapSandbox) -> None:
    r = warm.run([*warm.python_argv(), "-c", "print('cold')"])
    assert r.stdout == "cold\n"
    r = warm.run(["/bin/sh", "-c", "echo $0"])
    assert r.stdout == "/bin/sh\n"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def test_sigterm_is_not_needed_to_stop_a_worker(warm: BwrapSandbox) -> None:
    # the server ignores nothing special: SIGTERM from inside only ends the program
    r = py(warm, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert r.exit_code == -signal.SIGTERM and r.killed_by == "signal"
    assert py(warm, "print('alive')").stdout == "alive\n"


def test_concurrent_starts_survive_libraries_that_police_fork() -> None:
    """Recent filelock (via datasets) refuses an os.fork while another thread is forking;
    slot cleanup must not fork from Python, or concurrent sandbox starts crash."""
    pytest.importorskip("datasets")  # registers filelock's fork audit hook in this process
    sb = BwrapSandbox(warm_workers=2)
    try:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: sb.run_python("print(1)").stdout, range(16)))
        assert outs == ["1\n"] * 16
    finally:
        sb.close()
