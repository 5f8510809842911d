"""The warm interpreter that runs *inside* a bwrap sandbox (the fast path).

Started once per worker as ``python3 -I -B -c <this file>`` by ``sandboxes/warm.py``; it then
serves requests forever. Per request it writes the program's files into a fresh ``/work/run``,
forks a child that drops to the request's rlimits in a new session and runs the program
(Python source in-process, so no interpreter start-up; anything else is exec'd), streams the
child's output under a byte cap and a wall-clock deadline, then SIGKILLs every process in the
sandbox's PID namespace but itself and init and wipes ``/work``. Nothing survives a request.

It runs under the sandbox's own Python (the distribution's), not the project's: standard
library only. Protocol on the original fds 0/1: a 4-byte big-endian length, then JSON.
"""

import atexit
import base64
import contextlib
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types

WORK = "/work"
RUN = WORK + "/run"
TMP = WORK + "/tmp"  # /tmp is a symlink here, so one tmpfs size cap covers both


def _nondumpable() -> None:
    # Same-uid children could otherwise ptrace us or open /proc/<us>/fd and forge replies.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _send(fd, obj):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _wipe(path):
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            p = os.path.join(root, name)
            try:
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
            except OSError:
                pass


def _others():
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _sweep(reaped):
    """SIGKILL everything in the namespace except init and us; wait until it is gone.

    Exit statuses of our own children reaped on the way are stored in ``reaped``.
    """
    for _ in range(500):
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped[pid] = status
        if not _others():
            return
        time.sleep(0.001)


def _set_limits(lim):
    mem = lim["memory_mb"] * 1024 * 1024
    cpu = lim["cpu_s"]
    fsize = lim["max_file_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_python(script, args):
    """Run ``script`` as ``__main__`` in this (forked) interpreter; never returns."""
    path = os.path.join(RUN, script)
    code = 0
    try:
        with open(path, "rb") as f:
            source = f.read()
        sys.argv = [script, *args]
        sys.path[0:0] = [RUN]
        module = types.ModuleType("__main__")
        module.__file__ = path
        module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = module
        exec(compile(source, path, "exec"), module.__dict__)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            with contextlib.suppress(Exception):
                print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        code = 1
        try:
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != path:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb or e.__traceback__)
        except BaseException:
            pass
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def _child(req, fds):
    in_r, out_w, err_w = fds
    try:
        os.setsid()
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in os.listdir("/proc/self/fd"):  # closerange over 64k fds costs ~5 ms
            if int(fd) > 2:
                with contextlib.suppress(OSError):
                    os.close(int(fd))
        os.chdir(RUN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _set_limits(req["limits"])
        argv = req["argv"]
        if req["mode"] == "python":
            _run_python(argv[0], argv[1:])
        os.execvp(argv[0], argv)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(2, (f"sandbox: cannot start program: {e}\n").encode())
    os._exit(127)


def _serve_one(req):
    lim = req["limits"]
    _wipe(WORK)
    os.makedirs(RUN, exist_ok=True)
    os.makedirs(TMP, exist_ok=True)
    for rel, b64 in req["files"].items():
        target = os.path.normpath(os.path.join(RUN, rel))
        if not target.startswith(RUN + "/"):
            raise ValueError(f"file path outside the work dir: {rel!r}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(base64.b64decode(b64))
    to_send = base64.b64decode(req["stdin"])

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        _child(req, (in_r, out_w, err_w))
    for fd in (in_r, out_w, err_w):
        os.close(fd)

    deadline = started + lim["timeout_s"]
    budget = lim["max_output_bytes"]
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    readers = [out_r, err_r]
    writers = [in_w] if to_send else []
    if not to_send:
        os.close(in_w)
    else:
        os.set_blocking(in_w, False)
    try:  # readable once the child exits, so select wakes for it too
        exited = [os.pidfd_open(pid)]
    except (AttributeError, OSError):
        exited = []
    killed_by = None
    truncated = False
    status = None
    reaped: dict[int, int] = {}
    grace_until = None
    while True:
        now = time.monotonic()
        if status is None:
            if pid in reaped:
                status = reaped[pid]
            else:
                try:
                    done, st = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, st = pid, reaped.get(pid, signal.SIGKILL)
                if done:
                    status = st
            if status is not None:
                for fd in exited:
                    os.close(fd)
                exited = []
                if grace_until is None:
                    _sweep(reaped)  # stragglers must not hold the pipes open
                    grace_until = now + 0.2
        if now >= deadline and killed_by is None and status is None:
            killed_by = "timeout"
            _sweep(reaped)
            grace_until = now + 0.2
            continue
        if status is not None and not readers and not writers:
            break
        if grace_until is not None and now >= grace_until:
            break
        limit = (grace_until if grace_until is not None else deadline) - now
        r, w = _wait(readers + exited, writers, max(0.0, min(limit, 0.05)))
        for fd in w:
            try:
                sent = os.write(fd, to_send[:65536])
                to_send = to_send[sent:]
            except OSError:
                to_send = b""
            if not to_send:
                writers.remove(fd)
                os.close(fd)
        for fd in r:
            if fd in exited:
                continue
            data = os.read(fd, 65536)
            if not data:  # EOF: close it now, or every program leaks its two pipes
                readers.remove(fd)
                os.close(fd)
                continue
            if len(data) > budget:
                data, truncated = data[:budget], True
            budget -= len(data)
            chunks[fd].append(data)
            if truncated and killed_by is None:
                killed_by = "output"
                _sweep(reaped)
                grace_until = time.monotonic()
    for fd in readers + writers + exited:
        os.close(fd)
    _sweep(reaped)
    if status is None:
        status = reaped.get(pid, signal.SIGKILL)
    duration = time.monotonic() - started
    _wipe(WORK)
    exit_code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return {
        "exit_code": exit_code,
        "killed_by": killed_by,
        "truncated": truncated,
        "duration_s": duration,
        "stdout": base64.b64encode(b"".join(chunks[out_r])).decode(),
        "stderr": base64.b64encode(b"".join(chunks[err_r])).decode(),
    }


def _wait(readers, writers, timeout):
    """(readable, writable) fds within ``timeout`` seconds. poll(), not select(): select()
    cannot watch descriptors numbered above FD_SETSIZE (1024)."""
    p = select.poll()
    for fd in readers:
        p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    for fd in writers:
        p.register(fd, select.POLLOUT | select.POLLHUP | select.POLLERR)
    r: list = []
    w: list = []
    for fd, _ in p.poll(timeout * 1000):
        (w if fd in writers else r).append(fd)
    return r, w


def main():
    _nondumpable()
    # Warm what every child would otherwise initialise itself: the compiler, and the import
    # machinery the code-test harness uses.
    exec(compile("def _f(a):\n    return [i for i in a]\n_f([1])\n", "<warm>", "exec"), {})
    import gc

    gc.freeze()  # the server's objects are never collected, so children do not copy them
    req_fd, resp_fd = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    for fd in (req_fd, resp_fd):
        os.set_inheritable(fd, False)
    _send(resp_fd, {"ready": os.getpid()})
    while True:
        try:
            (n,) = struct.unpack(">I", _read_exact(req_fd, 4))
            req = json.loads(_read_exact(req_fd, n))
        except EOFError:
            return
        try:
            reply = _serve_one(req)
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        _send(resp_fd, reply)


main()
