"""The warm interpreter that runs *inside* a bwrap sandbox (the fast path).

Started once per worker as ``python3 -I -B -c <this file>`` by ``sandboxes/warm.py``, as the
sandbox's PID 1; it then serves requests forever. Per request it forks a child that writes the
program's files into a fresh ``/work/run``, drops to the request's rlimits in a new session and
runs the program (Python source in-process, so no interpreter start-up; anything else is
exec'd). The server streams the child's output under a byte cap and a wall-clock deadline, then
SIGKILLs every other process in the sandbox's PID namespace and wipes ``/work``. Nothing
survives a request; when something does (a process that would not die), the server answers
and exits, and the host starts a fresh worker.

What a program must not reach, and why it cannot:

* the request and reply pipes to the host, which only this process holds (the child closes its
  copies before the program starts): the server is not dumpable, so no other process of the
  sandbox uid may ptrace it, read ``/proc/1/mem`` or open ``/proc/1/fd/*``, and the seccomp
  filter bwrap installs refuses ptrace and pidfd_getfd anyway;
* the server's life: as the namespace's init it gets no signal from inside that it does not
  handle, and it handles none (SIGKILL and SIGSTOP are refused from inside too);
* other runs' requests and output through the memory a child inherits at fork: a request is
  read into an anonymous mapping that only that request's child sees (its own request), and
  which is unmapped once the reply is sent; output is gathered in mappings made after the fork
  and unmapped once sent. The server parses nothing of a request but its limits and sizes, so
  no file, argument or input of a run lingers in the server's heap for the next child.

It runs under the sandbox's own Python (the distribution's), not the project's: standard
library only. Protocol on the original fds 0/1, both ways: a 4-byte big-endian length, then
the frame. Request frame: a 16-byte request id, ``>I`` + the server's part (limits, stdin
size), ``>I`` + the child's part (mode, argv, files as ``(path, size)``), the files' bytes,
the stdin bytes; both parts are ``marshal`` format 4 from the host (a fork's first JSON parse
costs ~0.1 ms of copy-on-write faults, marshal a third of that). Reply frame: the request's
id, ``>I`` + JSON (exit status, output sizes, or an error), the stdout bytes, the stderr
bytes.
"""

import atexit
import contextlib
import json
import marshal
import mmap
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
ID = 16  # bytes of request id at the start of every frame
CHUNK = 65536


def _nondumpable():
    """PR_SET_DUMPABLE 0: the checks that guard ptrace, /proc/PID/mem and /proc/PID/fd then
    refuse every other process of our uid. Without it the server must not serve."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0 or libc.prctl(3, 0, 0, 0, 0) != 0:  # SET/GET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _read_into(fd, view):
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            raise EOFError
        got += n


def _write_all(fd, parts):
    """Write every buffer in ``parts``, in order (memoryviews are written without a copy)."""
    parts = [memoryview(p).cast("B") for p in parts if len(p)]
    while parts:
        n = os.writev(fd, parts[:1024])
        while n and n >= len(parts[0]):
            n -= len(parts.pop(0))
        if n:
            parts[0] = parts[0][n:]


def _send(fd, rid, header, *output):
    """One reply frame; ``output``: the stdout then the stderr buffers, in order."""
    data = json.dumps(header).encode()
    size = ID + 4 + len(data) + sum(len(b) for b in output)
    _write_all(fd, [struct.pack(">I", size), rid, struct.pack(">I", len(data)), data, *output])


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


def _reap(reaped):
    """Collect every exited child (programs' orphans are ours: we are the init)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped[pid] = status


def _sweep(reaped):
    """SIGKILL everything in the namespace but us; wait until it is gone. False when some
    process outlived every try. Exit statuses reaped on the way are stored in ``reaped``."""
    for _ in range(500):
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        _reap(reaped)
        if not _others():
            return True
        time.sleep(0.001)
    return False


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


def _unpack_program(req, at, end):
    """Write the request's files (``req[at:end]`` holds the child's part); (mode, argv)."""
    (size,) = struct.unpack_from(">I", req, at)
    mode, argv, files = marshal.loads(req[at + 4 : at + 4 + size])
    at += 4 + size
    with memoryview(req) as view:
        for rel, size in files:
            target = os.path.normpath(os.path.join(RUN, rel))
            if not target.startswith(RUN + "/") or at + size > end:
                raise ValueError(f"bad file in the request: {rel!r}")
            parent = os.path.dirname(target)
            if parent != RUN:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
            try:
                _write_all(fd, [view[at : at + size]])
            finally:
                os.close(fd)
            at += size
    if at != end:
        raise ValueError("garbled request")
    return mode, argv


def _child(req, at, end, lim, fds):
    """The forked child: take the run's files, pipes and limits, drop the request, run."""
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
        mode, argv = _unpack_program(req, at, end)
        req.close()  # the request id and stdin go with it
        os.chdir(RUN)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _set_limits(lim)
        if mode == "python":
            _run_python(argv[0], argv[1:])
        os.execvp(argv[0], argv)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            os.write(2, (f"sandbox: cannot start program: {e}\n").encode())
    os._exit(127)


class _Sink:
    """One output stream, gathered in anonymous mappings of its own (the first 256 KiB, then
    doubling, so that a large output cap reserves nothing up front)."""

    def __init__(self):
        self.maps = []  # [mapping, bytes filled]
        self.used = 0

    def read(self, fd, space):
        """Bytes read from ``fd`` (at most ``space``); with no ``space`` left, one byte read
        and dropped, so that overflow is seen. 0 at EOF."""
        if space <= 0:
            return len(os.read(fd, 1))
        if not self.maps or self.maps[-1][1] == len(self.maps[-1][0]):
            self.maps.append([mmap.mmap(-1, min(space, max(1 << 18, self.used))), 0])
        seg = self.maps[-1]
        with memoryview(seg[0]) as view:
            n = os.readv(fd, [view[seg[1] : seg[1] + min(space, CHUNK)]])
        seg[1] += n
        self.used += n
        return n

    def views(self):
        return [memoryview(m)[:filled] for m, filled in self.maps]

    def close(self):
        for m, _ in self.maps:
            m.close()


def _serve_one(req, n):
    """Run the request held in ``req[:n]``; (reply header, stdout sink, stderr sink, clean)."""
    (size,) = struct.unpack_from(">I", req, ID)
    lim, n_stdin = marshal.loads(req[ID + 4 : ID + 4 + size])
    prog_at = ID + 4 + size
    if not 0 <= n_stdin <= n - prog_at:
        raise ValueError("garbled request")
    _wipe(WORK)
    os.makedirs(RUN, exist_ok=True)
    os.makedirs(TMP, exist_ok=True)

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        _child(req, prog_at, n - n_stdin, lim, (in_r, out_w, err_w))
    for fd in (in_r, out_w, err_w):
        os.close(fd)

    deadline = started + lim["timeout_s"]
    budget = lim["max_output_bytes"]
    sinks = {out_r: _Sink(), err_r: _Sink()}
    readers = [out_r, err_r]
    stdin_at = n - n_stdin
    writers = [in_w] if n_stdin else []
    if not n_stdin:
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
            _reap(reaped)
            if pid in reaped:
                status = reaped[pid]
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
                with memoryview(req) as view:
                    stdin_at += os.write(fd, view[stdin_at : min(n, stdin_at + CHUNK)])
            except OSError:
                stdin_at = n
            if stdin_at >= n:
                writers.remove(fd)
                os.close(fd)
        for fd in r:
            if fd in exited:
                continue
            got = sinks[fd].read(fd, budget)
            if not got:  # EOF: close it now, or every program leaks its two pipes
                readers.remove(fd)
                os.close(fd)
                continue
            if budget <= 0:
                truncated = True
            budget -= got
            if truncated and killed_by is None:
                killed_by = "output"
                _sweep(reaped)
                grace_until = time.monotonic()
    for fd in readers + writers + exited:
        os.close(fd)
    clean = _sweep(reaped)
    if status is None:
        status = reaped.get(pid, signal.SIGKILL)
    duration = time.monotonic() - started
    _wipe(WORK)
    exit_code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    out, err = sinks[out_r], sinks[err_r]
    header = {
        "exit_code": exit_code,
        "killed_by": killed_by,
        "truncated": truncated,
        "duration_s": duration,
        "stdout": out.used,
        "stderr": err.used,
    }
    return header, out, err, clean


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


def _answer(req_fd, resp_fd):
    """Read one request, run it, send the reply; False when the server must stop."""
    try:
        (n,) = struct.unpack(">I", _read_exact(req_fd, 4))
    except EOFError:
        return False
    if n < ID + 4:
        return False
    req = mmap.mmap(-1, n)
    try:
        with memoryview(req) as view:
            _read_into(req_fd, view)
    except EOFError:
        return False
    sinks: list[_Sink] = []
    try:
        header, *sinks, clean = _serve_one(req, n)
    except Exception as e:
        header, clean = {"error": f"{type(e).__name__}: {e}"}, False
        _sweep({})
        _wipe(WORK)
    # a process outlived the sweep, or the server failed: the host must replace this worker
    header["retire"] = not clean
    with memoryview(req) as view:
        outputs = [v for s in sinks for v in s.views()]
        _send(resp_fd, view[:ID], header, *outputs)
        for v in outputs:
            v.release()
    for s in sinks:
        s.close()
    req.close()
    return clean


def main():
    _nondumpable()
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as PID 1, no signal from inside reaches us
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
    _send(resp_fd, bytes(ID), {"ready": os.getpid()})
    while _answer(req_fd, resp_fd):
        pass


main()
