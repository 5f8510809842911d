"""The harness: two programs run in one sandbox run around the candidate, and the reading of
the harness's result lines into a ``CodeTestResult`` (see :mod:`loopwright.tools.code_tests`).

Inside the sandbox, ``main.py`` is the trusted harness process. It reads the spec (code,
tests, nonce) from its stdin, makes itself non-dumpable (so no other process of the sandbox
uid may ptrace it, read its memory or open its ``/proc/PID/fd``), drops writable folders from
its import path, and only then starts the candidate as a *separate* interpreter that holds
nothing but two pipes to the harness and ``/dev/null``, under a seccomp filter that refuses
ptrace, process_vm_readv/writev and pidfd_getfd (``_CONFINE``). The candidate's process runs
the solution and answers requests: call this, get that attribute, iterate that. Every value
crosses as tagged JSON that decodes only into exact builtin types (or opaque handles that
compare by identity), so the tests, which run in the harness process, compare genuine
``int``/``str``/``list``... values: a crafted ``__eq__``, ``__bool__`` or ``__hash__`` never
runs where the verdict is decided. The harness alone writes result lines (marked with the
nonce) to its own stdout; a run without its closing ``done`` line fails every test it has no
result for.

stdin/stdout programs (:func:`run_program`) run under the same seccomp filter, installed by a
prelude before the program starts. docs/verifiers.md lists what this defends against and what
it does not.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading

from loopwright.sandboxes import (
    BwrapSandbox,
    ExecResult,
    ProcessSandbox,
    Sandbox,
    SandboxLimits,
)

# ``confine()``, installed in every process that runs candidate code (the candidate's
# interpreter under the harness, and a stdin/stdout program itself): seccomp refuses ptrace,
# process_vm_readv/writev and pidfd_getfd, so the process cannot copy another process's
# descriptors or read its memory, on any backend.
from loopwright.sandboxes.seccomp import CONFINE_SOURCE as _CONFINE
from loopwright.tools.code_results import (
    CodeTestResult,
    TestOutcome,
    killed_message,
    one_line,
    stderr_tail,
    summary,
)

# A stdin/stdout program runs as main.py under this prelude: confined first, then exactly
# as ``python main.py`` would run it (its own tracebacks, exit status and output).
_IO_PRELUDE = (
    _CONFINE
    + r"""
try:
    confine()
except OSError as e:
    import sys
    sys.stderr.write("sandbox: cannot confine the program (%s)\n" % e)
    raise SystemExit(126) from None
del confine


def _run_main():
    import os
    import sys
    import types

    path = os.path.abspath("main.py")
    with open(path, "rb") as f:
        source = f.read()
    sys.argv = ["main.py"]
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = module
    return compile(source, path, "exec"), module.__dict__


_code, _globals = _run_main()
del _run_main
exec(_code, _globals)
"""
)

# Shared by both sides: plain values <-> tagged JSON. Lists are JSON arrays, None/bool/str/
# small ints/floats (nan and inf included) are themselves; everything else is a one-key
# object: t tuple, s set, f frozenset, d dict (pairs), b bytes, y bytearray, c complex,
# i big int (hex). Side-specific tags (handles, callbacks, builtin names, a few stdlib
# types) go through the ``other`` functions each side passes in.
_CODEC = r'''
import binascii as _binascii
import os as _os
import struct as _struct

_MAX_DEPTH = 100
_MAX_MSG = 16 << 20
_SMALL = 1 << 53


class CodecError(Exception):
    pass


def encode(v, other, depth=0):
    if depth > _MAX_DEPTH:
        raise CodecError("the value is nested more than %d levels deep" % _MAX_DEPTH)
    t = type(v)
    if v is None or t is bool or t is str or t is float:
        return v
    if t is int:
        return v if -_SMALL < v < _SMALL else {"i": format(v, "x")}
    d = depth + 1
    if t is list:
        return [encode(x, other, d) for x in v]
    if t is tuple:
        return {"t": [encode(x, other, d) for x in v]}
    if t is dict:
        return {"d": [[encode(k, other, d), encode(x, other, d)] for k, x in v.items()]}
    if t is set:
        return {"s": [encode(x, other, d) for x in v]}
    if t is frozenset:
        return {"f": [encode(x, other, d) for x in v]}
    if t is bytes:
        return {"b": _binascii.b2a_base64(v, newline=False).decode("ascii")}
    if t is bytearray:
        return {"y": _binascii.b2a_base64(bytes(v), newline=False).decode("ascii")}
    if t is complex:
        return {"c": [v.real, v.imag]}
    return other(v, depth)


def plain_copy(v):
    """The plain value inside an instance of a subclass of a plain type (bypassing its
    overrides), or ``NotImplemented``."""
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, int):
        return int.__int__(v)
    if isinstance(v, float):
        return float.__float__(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, complex):
        return complex(complex.real.__get__(v), complex.imag.__get__(v))
    if isinstance(v, bytes):
        return bytes(memoryview(v))
    if isinstance(v, bytearray):
        return bytearray(memoryview(v))
    if isinstance(v, list):
        return list(list.__iter__(v))
    if isinstance(v, tuple):
        return tuple(tuple.__iter__(v))
    if isinstance(v, frozenset):
        return frozenset(frozenset.__iter__(v))
    if isinstance(v, set):
        return set(set.__iter__(v))
    if isinstance(v, dict):
        return dict(dict.items(v))
    return NotImplemented


def _items(val, other, depth):
    if type(val) is not list:
        raise CodecError("malformed sequence")
    return [decode(x, other, depth) for x in val]


def _pairs(val, other, depth):
    if type(val) is not list:
        raise CodecError("malformed mapping")
    out = []
    for p in val:
        if type(p) is not list or len(p) != 2:
            raise CodecError("malformed mapping")
        out.append((decode(p[0], other, depth), decode(p[1], other, depth)))
    return out


def _number(x):
    if type(x) not in (int, float):
        raise CodecError("malformed number")
    return x


def decode(x, other, depth=0):
    if depth > _MAX_DEPTH + 1:
        raise CodecError("the value is nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str or t is int or t is float:
        return x
    d = depth + 1
    if t is list:
        return [decode(i, other, d) for i in x]
    if t is not dict or not x:
        raise CodecError("malformed value")
    if len(x) == 1:
        ((tag, val),) = x.items()
        if tag == "t":
            return tuple(_items(val, other, d))
        if tag == "s":
            return set(_items(val, other, d))
        if tag == "f":
            return frozenset(_items(val, other, d))
        if tag == "d":
            return dict(_pairs(val, other, d))
        if tag in ("b", "y"):
            if type(val) is not str:
                raise CodecError("malformed bytes")
            raw = _binascii.a2b_base64(val.encode("ascii"))
            return raw if tag == "b" else bytearray(raw)
        if tag == "c":
            if type(val) is not list or len(val) != 2:
                raise CodecError("malformed complex")
            return complex(_number(val[0]), _number(val[1]))
        if tag == "i":
            if type(val) is not str or len(val) > 300000:
                raise CodecError("malformed integer")
            return int(val, 16)
    return other(x, d)


def send_msg(fd, obj):
    data = dumps(obj)
    if len(data) > _MAX_MSG:
        raise CodecError("the value is too large to pass between processes")
    data = _struct.pack(">I", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[_os.write(fd, view):]
'''

# The candidate's process. argv: the read and write fds of its two pipes. It runs the
# solution in a fresh namespace and serves requests until the harness closes the pipe.
_CHILD_MAIN = r'''
import builtins
import marshal
import sys

try:
    from _json import encode_basestring_ascii as _estr
except ImportError:
    from json.encoder import encode_basestring_ascii as _estr

_R, _W = int(sys.argv[1]), int(sys.argv[2])
sys.argv = ["main.py"]
_objs = {}
_hids = {}
_hostfns = {}
_seq = [0]
_LINES = []
_BY_VALUE = (bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)


def _short(s, n=300):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _handle(v):
    h = _hids.get(id(v))
    if h is None:
        h = len(_objs) + 1
        _objs[h] = v
        _hids[id(v)] = h
    return h


def _typename(v):
    return _short(getattr(type(v), "__qualname__", "object"), 100)


def _std(v, depth):
    t = type(v)
    mod = getattr(t, "__module__", "")
    name = getattr(t, "__name__", "")
    if mod == "collections":
        if name == "deque":
            return {"dq": encode(list(v), _other, depth + 1), "m": v.maxlen}
        if name == "OrderedDict":
            return {"od": encode(dict(v), _other, depth + 1)}
        if name == "Counter":
            return {"ct": encode(dict(v), _other, depth + 1)}
    if mod == "fractions" and name == "Fraction":
        return {"fr": [encode(v.numerator, _other), encode(v.denominator, _other)]}
    if mod == "decimal" and name == "Decimal":
        return {"dec": str(v)}
    if mod == "numpy" and hasattr(v, "item") and not hasattr(v, "__len__"):
        item = v.item()
        if type(item) in _BY_VALUE:
            return encode(item, _other, depth)
    return None


def _other(v, depth):
    t = type(v)
    if t is _HostFn:
        return {"x": v._xid}
    tagged = _std(v, depth)
    if tagged is not None:
        return tagged
    plain = plain_copy(v)  # subclasses of plain types cross as the plain value
    if plain is not NotImplemented:
        return encode(plain, _other, depth)
    if isinstance(v, type) and getattr(builtins, v.__name__, None) is v:
        return {"g": v.__name__}
    if isinstance(v, type(sys)):
        return {"m": _short(v.__name__, 200), "h": _handle(v)}
    return {"h": _handle(v), "t": _typename(v)}


class _HostFn:
    """Something the tests passed in (a lambda, a key function): calling it asks the harness."""

    __slots__ = ("_xid",)

    def __init__(self, xid):
        self._xid = xid

    def __call__(self, *args, **kwargs):
        _seq[0] += 1
        cid = _seq[0]
        send_msg(_W, {"op": "cb", "id": cid, "x": self._xid,
                      "args": encode(list(args), _other),
                      "kw": [[k, encode(v, _other)] for k, v in kwargs.items()]})
        reply = _serve(cid)
        if "err" in reply:
            err = reply["err"]
            cls = getattr(builtins, str(err.get("type")), None)
            msg = str(err.get("msg", ""))
            if isinstance(cls, type) and issubclass(cls, BaseException):
                try:
                    raise cls(msg)
                except TypeError:
                    pass
            raise RuntimeError(msg)
        return decode(reply.get("ok"), _in)

    def __repr__(self):
        return "<function from the tests>"


def _in(x, depth):
    if "h" in x:
        return _objs[x["h"]]
    if "x" in x:
        fn = _hostfns.get(x["x"])
        if fn is None:
            fn = _hostfns[x["x"]] = _HostFn(x["x"])
        return fn
    if "g" in x:
        obj = builtins
        for part in str(x["g"]).split("."):
            obj = getattr(obj, part)
        return obj
    if "dq" in x:
        import collections
        return collections.deque(decode(x["dq"], _in, depth), x.get("m"))
    if "od" in x:
        import collections
        return collections.OrderedDict(decode(x["od"], _in, depth))
    if "ct" in x:
        import collections
        return collections.Counter(decode(x["ct"], _in, depth))
    if "fr" in x:
        import fractions
        return fractions.Fraction(*decode(x["fr"], _in, depth))
    if "dec" in x:
        import decimal
        return decimal.Decimal(x["dec"])
    raise CodecError("unknown value")


def _describe(e):
    import traceback
    try:
        line = traceback.format_exception_only(type(e), e)[-1].strip()
    except BaseException:
        line = type(e).__name__
    info = {"type": type(e).__name__, "error": _short(line)}
    tb, sol = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<solution>":
            sol = tb
        tb = tb.tb_next
    if isinstance(e, SyntaxError) and e.filename == "<solution>" and e.lineno:
        info["solution_line"] = e.lineno
        info["solution_src"] = _short((e.text or "").strip())
    if sol is not None:
        info["solution_line"] = sol.tb_lineno
        n = sol.tb_lineno
        info["solution_src"] = _short(_LINES[n - 1].strip() if 0 < n <= len(_LINES) else "")
    return info


def _load(code):
    _LINES[:] = code.splitlines()
    ns = {"__name__": "__solution__", "__builtins__": builtins}
    exec(compile(code, "<solution>", "exec"), ns)
    names = []
    for k, v in list(ns.items()):
        if type(k) is not str or (k.startswith("__") and k.endswith("__")):
            continue
        try:
            enc = encode(v, _other)
            if len(_dump(enc)) > (1 << 20):
                enc = {"h": _handle(v), "t": _typename(v)}
        except Exception:
            enc = {"h": _handle(v), "t": _typename(v)}
        names.append([k, enc])
    return names


_INF = float("inf")


def _dump(o):
    """JSON text of an ``encode`` result (for the harness's strict reader)."""
    t = type(o)
    if t is str:
        return _estr(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if t is int:
        return int.__repr__(o)
    if t is float:
        if o != o:
            return "NaN"
        if o == _INF or o == -_INF:
            return "Infinity" if o > 0 else "-Infinity"
        return float.__repr__(o)
    if t is list:
        return "[" + ",".join([_dump(x) for x in o]) + "]"
    if t is dict:
        return "{" + ",".join([_estr(k) + ":" + _dump(v) for k, v in o.items()]) + "}"
    raise CodecError("cannot send a %s" % t.__name__)


def dumps(obj):
    return _dump(obj).encode("ascii")


def _recv():
    head = b""
    while len(head) < 4:
        chunk = _os.read(_R, 4 - len(head))
        if not chunk:
            _os._exit(0)  # the harness is done with us
        head += chunk
    (n,) = _struct.unpack(">I", head)
    data = bytearray()
    while len(data) < n:
        chunk = _os.read(_R, min(n - len(data), 1 << 20))
        if not chunk:
            _os._exit(0)
        data += chunk
    return marshal.loads(bytes(data))  # from the harness: trusted


def _dispatch(m):
    rid, op = m.get("id"), m.get("op")
    try:
        if op == "load":
            send_msg(_W, {"re": rid, "names": _load(m["code"])})
            return
        target = _objs[m["h"]]
        if op == "call":
            args = decode(m["args"], _in)
            kwargs = {str(k): decode(v, _in) for k, v in m["kw"]}
            value = target(*args, **kwargs)
        elif op == "getattr":
            value = getattr(target, m["name"])
        elif op == "getitem":
            value = target[decode(m["key"], _in)]
        elif op == "len":
            value = len(target)
        elif op == "iter":
            value = iter(target)
        elif op == "next":
            try:
                value = next(target)
            except StopIteration:
                send_msg(_W, {"re": rid, "stop": True})
                return
        elif op == "repr":
            value = _short(repr(target))
        elif op == "str":
            value = str.__str__(str(target))
        else:
            raise ValueError("unknown request %r" % (op,))
        reply = {"re": rid, "ok": encode(value, _other)}
    except CodecError as e:
        reply = {"re": rid, "err": _cannot_cross(e)}
    except BaseException as e:
        reply = {"re": rid, "err": _describe(e)}
    try:
        send_msg(_W, reply)
    except CodecError as e:
        send_msg(_W, {"re": rid, "err": _cannot_cross(e)})


def _cannot_cross(e):
    msg = "ValueError: the solution's value cannot be passed to the tests: %s" % e
    return {"type": "ValueError", "error": msg}


def _serve(wait=None):
    while True:
        m = _recv()
        if "re" in m:
            if m["re"] == wait:
                return m
            _os._exit(70)
        _dispatch(m)


_serve()
'''

# The trusted side. Runs as main.py; everything it needs is imported before the candidate's
# process exists, and its import path holds no folder the candidate can write.
_HARNESS_MAIN = r'''
import json as _json
import marshal


def dumps(obj):
    return marshal.dumps(obj)  # to the candidate's process: it reads only what we write


import builtins
import importlib
import linecache
import select
import signal
import sys
import time
import traceback

# never imported for the tests: side effects at import (printing, a browser, a terminal
# library that reads ~/.inputrc, which the candidate can write)
_DENY_IMPORT = {"__main__", "this", "antigravity", "__hello__", "__phello__", "idlelib",
                "tkinter", "turtle", "turtledemo", "readline", "rlcompleter", "curses"}
_STOP = object()


class SolutionGone(BaseException):
    """The candidate's process exited, was killed, or broke the protocol."""


class RemoteError(Exception):
    pass


class RemoteBaseError(BaseException):
    pass


class _State:
    proc = None
    rfd = wfd = -1
    poller = None
    seq = 0
    gone = None
    remotes = {}
    exports = {}
    export_ids = {}
    exc_classes = {}


S = _State()


def _short(s, n=300):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _trusted_path():
    """Drop from the import path every folder the candidate could write to."""
    cwd = os.getcwd()

    def trusted(p):
        if not p or not os.path.isabs(p):
            return False
        p = os.path.realpath(p)
        for w in (cwd, "/work", "/tmp", "/var/tmp", "/dev/shm"):
            if p == w or p.startswith(w.rstrip("/") + "/"):
                return False
        return True

    sys.path[:] = [p for p in sys.path if trusted(p)]
    sys.path_importer_cache.clear()


def _harden():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, no /proc/PID/{mem,fd} for others
    if libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_GET_DUMPABLE
        raise RuntimeError("the harness could not make itself non-dumpable")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # no KeyboardInterrupt from outside


# -- talking to the candidate's process ----------------------------------------------------


class _Child:
    """The candidate's interpreter: fds 0-2 on /dev/null, ``keep`` its only other fds."""

    def __init__(self, argv, keep):
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                try:
                    fds = [int(n) for n in os.listdir("/proc/self/fd")]
                except OSError:
                    fds = range(3, 4096)
                for fd in fds:
                    if fd > 2 and fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                for fd in keep:
                    os.set_inheritable(fd, True)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                try:
                    confine()
                except OSError as e:  # refuse to run unconfined; the tests all fail
                    msg = "RuntimeError: the sandbox cannot confine the solution (%s)" % e
                    data = _json.dumps({"re": 1, "err": {"type": "RuntimeError", "error": msg}})
                    os.write(keep[1], _struct.pack(">I", len(data)) + data.encode())
                    os._exit(126)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = (
                    -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                )
        return self.returncode

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= end:
                raise TimeoutError
            time.sleep(0.002)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass


def _gone(why=None):
    proc = S.proc
    if S.gone is None:
        code = None
        if why is None:  # it closed the pipe: most likely it is exiting
            try:
                code = proc.wait(timeout=1)
            except Exception:
                pass
            if code is None:
                why = "the solution's process closed its connection to the tests"
            elif code < 0:
                why = "the solution's process was killed by signal %d" % -code
            else:
                why = "the solution's process exited with code %d" % code
        S.gone = why
    try:
        proc.kill()
        proc.wait(timeout=5)
    except Exception:
        pass
    raise SolutionGone(S.gone)


def _read(n):
    buf = bytearray()
    while len(buf) < n:
        if not S.poller.poll(100):
            if S.proc.poll() is not None:
                _gone()
            continue
        try:
            chunk = os.read(S.rfd, min(n - len(buf), 1 << 20))
        except OSError:
            chunk = b""
        if not chunk:
            _gone()
        buf += chunk
    return bytes(buf)


def _recv():
    (n,) = _struct.unpack(">I", _read(4))
    if n > _MAX_MSG:
        _gone("the solution's process sent an oversized message")
    try:
        m = _json.loads(_read(n))
    except SolutionGone:
        raise
    except Exception:
        _gone("the solution's process sent malformed data")
    if type(m) is not dict:
        _gone("the solution's process sent malformed data")
    return m


def _send(msg):
    try:
        send_msg(S.wfd, msg)
    except CodecError:
        raise
    except OSError:
        _gone()


def _remote(h, t):
    if type(h) is not int or type(t) is not str:
        raise CodecError("malformed handle")
    r = S.remotes.get(h)
    if r is None:
        r = S.remotes[h] = Remote(h, _short(t, 100))
    return r


def _is_stdlib(top):
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return top in names
    try:
        import importlib.util
        import sysconfig

        spec = importlib.util.find_spec(top)
        stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
        origin = getattr(spec, "origin", None) or ""
        return origin in ("built-in", "frozen") or os.path.realpath(origin).startswith(stdlib)
    except BaseException:
        return False


def _genuine_module(name):
    """Our own import of standard-library module ``name``, or None."""
    top = name.split(".")[0]
    if not top.isidentifier() or top in _DENY_IMPORT or not _is_stdlib(top):
        return None
    try:
        return importlib.import_module(name)
    except BaseException:
        return None


def _from_solution(x, depth):
    if "h" in x:
        if "m" in x:
            mod = _genuine_module(x["m"]) if type(x["m"]) is str else None
            return mod if mod is not None else _remote(x["h"], "module")
        return _remote(x["h"], x.get("t", "object"))
    if len(x) == 1 and "x" in x:
        if x["x"] not in S.exports:
            raise CodecError("unknown callback")
        return S.exports[x["x"]]
    if len(x) == 1 and "g" in x:
        obj = getattr(builtins, str(x["g"]), None)
        if not isinstance(obj, type):
            raise CodecError("unknown builtin")
        return obj
    if "dq" in x:
        m = x.get("m")
        if m is not None and (type(m) is not int or m < 0):
            raise CodecError("malformed deque")
        return _stdlib("collections").deque(_items(x["dq"], _from_solution, depth), m)
    if len(x) == 1 and "od" in x:
        return _stdlib("collections").OrderedDict(_as_dict(x["od"], depth))
    if len(x) == 1 and "ct" in x:
        return _stdlib("collections").Counter(_as_dict(x["ct"], depth))
    if len(x) == 1 and "fr" in x:
        p = x["fr"]
        if type(p) is not list or len(p) != 2:
            raise CodecError("malformed fraction")
        num, den = decode(p[0], _from_solution, depth), decode(p[1], _from_solution, depth)
        if type(num) is not int or type(den) is not int or den == 0:
            raise CodecError("malformed fraction")
        return _stdlib("fractions").Fraction(num, den)
    if len(x) == 1 and "dec" in x:
        if type(x["dec"]) is not str or len(x["dec"]) > 10000:
            raise CodecError("malformed decimal")
        return _stdlib("decimal").Decimal(x["dec"])
    raise CodecError("unknown value")


def _as_dict(val, depth):
    d = decode(val, _from_solution, depth)
    if type(d) is not dict:
        raise CodecError("malformed mapping")
    return d


def _from_wire(val):
    try:
        return decode(val, _from_solution)
    except SolutionGone:
        raise
    except Exception:
        _gone("the solution's process sent a malformed value")


def _export(v):
    k = id(v)
    x = S.export_ids.get(k)
    if x is None:
        x = len(S.exports) + 1
        S.exports[x] = v
        S.export_ids[k] = x
    return {"x": x}


def _stdlib(name):
    """A standard-library module, imported on first use (the import path is trusted)."""
    return importlib.import_module(name)


def _loaded_type(module, name):
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _to_solution(v, depth):
    t = type(v)
    if t is Remote:
        return {"h": v._lw_h}
    if t is _loaded_type("collections", "deque"):
        return {"dq": encode(list(v), _to_solution, depth + 1), "m": v.maxlen}
    if t is _loaded_type("collections", "OrderedDict"):
        return {"od": encode(dict(v), _to_solution, depth + 1)}
    if t is _loaded_type("collections", "Counter"):
        return {"ct": encode(dict(v), _to_solution, depth + 1)}
    if t is _loaded_type("fractions", "Fraction"):
        return {"fr": [encode(v.numerator, _to_solution), encode(v.denominator, _to_solution)]}
    if t is _loaded_type("decimal", "Decimal"):
        return {"dec": str(v)}
    if isinstance(v, type) and getattr(builtins, v.__name__, None) is v:
        return {"g": v.__name__}
    if t is type(len) and getattr(builtins, v.__name__, None) is v:
        return {"g": v.__name__}
    plain = plain_copy(v)
    if plain is not NotImplemented:
        return encode(plain, _to_solution, depth)
    return _export(v)


def _raise_remote(err):
    if type(err) is not dict:
        _gone("the solution's process sent malformed data")
    name = err.get("type")
    if type(name) is not str or not name:
        name = "Exception"
    name = _short("".join(c if c.isalnum() or c in "_." else "_" for c in name), 100)
    info = {"error": _short(err.get("error") if type(err.get("error")) is str else name)}
    if type(err.get("solution_line")) is int:
        info["solution_line"] = err["solution_line"]
        src = err.get("solution_src")
        info["solution_src"] = _short(src) if type(src) is str else ""
    exc = None
    base = getattr(builtins, name, None)
    if isinstance(base, type) and issubclass(base, Exception) and not issubclass(
        base, (StopIteration, StopAsyncIteration)
    ):
        try:
            exc = base(info["error"])
        except Exception:
            exc = None
    if exc is None:
        kind = (
            BaseException
            if isinstance(base, type) and issubclass(base, BaseException)
            and not issubclass(base, Exception)
            else Exception
        )
        cls = S.exc_classes.get((name, kind))
        if cls is None:
            parent = RemoteError if kind is Exception else RemoteBaseError
            cls = type(name, (parent,), {"__module__": "builtins"})
            S.exc_classes[(name, kind)] = cls
        exc = cls(info["error"])
    exc._lw_info = info
    raise exc


def _serve_callback(m):
    cid = m.get("id")
    fn = S.exports.get(m.get("x")) if m.get("op") == "cb" else None
    if fn is None or type(m.get("kw")) is not list:
        _gone("the solution's process sent an unknown request")
    args = _from_wire(m.get("args"))
    kwargs = {}
    for p in m["kw"]:
        if type(p) is not list or len(p) != 2 or type(p[0]) is not str:
            _gone("the solution's process sent malformed data")
        kwargs[p[0]] = _from_wire(p[1])
    if type(args) is not list:
        _gone("the solution's process sent malformed data")
    try:
        reply = {"re": cid, "ok": encode(fn(*args, **kwargs), _to_solution)}
    except SolutionGone:
        raise
    except BaseException as e:
        reply = {"re": cid, "err": {"type": type(e).__name__, "msg": _short(str(e))}}
    _send(reply)


def _rpc(op, **fields):
    return _reply(_request(op, **fields))


def _request(op, **fields):
    if S.gone is not None:
        raise SolutionGone(S.gone)
    S.seq += 1
    msg = {"op": op, "id": S.seq}
    msg.update(fields)
    _send(msg)
    return S.seq


def _reply(rid):
    while True:
        m = _recv()
        if "op" in m:
            _serve_callback(m)
            continue
        if m.get("re") != rid:
            _gone("the solution's process answered out of turn")
        return m


def _value(m):
    if "ok" in m:
        return _from_wire(m["ok"])
    if "err" in m:
        _raise_remote(m["err"])
    _gone("the solution's process sent a malformed reply")


class Remote:
    """Something of the solution's that is not plain data: a function, a class, an instance.

    It can be called, indexed, iterated and asked for attributes (each a request to the
    candidate's process); it is equal only to itself and has no truth value or arithmetic.
    """

    __slots__ = ("_lw_h", "_lw_t", "__weakref__")

    def __init__(self, h, t):
        self._lw_h = h
        self._lw_t = t

    def __call__(self, *args, **kwargs):
        a = encode(list(args), _to_solution)
        kw = [[k, encode(v, _to_solution)] for k, v in kwargs.items()]
        return _value(_rpc("call", h=self._lw_h, args=a, kw=kw))

    def __getattr__(self, name):
        if name.startswith("__") and name not in ("__name__", "__qualname__", "__doc__"):
            raise AttributeError(name)
        return _value(_rpc("getattr", h=self._lw_h, name=name))

    def __getitem__(self, key):
        return _value(_rpc("getitem", h=self._lw_h, key=encode(key, _to_solution)))

    def __len__(self):
        n = _value(_rpc("len", h=self._lw_h))
        if type(n) is not int or n < 0:
            raise TypeError("the solution's %s gave an invalid length" % self._lw_t)
        return n

    def __iter__(self):
        it = _value(_rpc("iter", h=self._lw_h))
        if type(it) is not Remote:
            return iter(it)
        return _remote_iter(it._lw_h)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__

    def __bool__(self):
        raise TypeError(
            "a %s object from the solution has no truth value here: the tests compare "
            "plain values (numbers, strings, lists, ...)" % self._lw_t
        )

    def __repr__(self):
        try:
            r = _value(_rpc("repr", h=self._lw_h))
        except BaseException:
            r = None
        return _short(r) if type(r) is str else "<%s object>" % self._lw_t

    def __str__(self):
        s = _value(_rpc("str", h=self._lw_h))
        if type(s) is not str:
            raise TypeError("the solution's %s gave a non-string" % self._lw_t)
        return s


def _remote_iter(h):
    while True:
        m = _rpc("next", h=h)
        if m.get("stop") is True:
            return
        yield _value(m)


# -- the tests --------------------------------------------------------------------------


def _register(name, src):
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)


def _statements(body):
    import ast

    for s in body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield s
        for field in ("body", "orelse", "finalbody", "handlers"):
            sub = getattr(s, field, None)
            if isinstance(sub, list):
                for h in sub:
                    if isinstance(h, ast.ExceptHandler):
                        yield from _statements(h.body)
                yield from _statements([x for x in sub if isinstance(x, ast.stmt)])


def _genuine_imports(code):
    """Names the solution imports from the standard library, bound to our own copies."""
    import ast

    out = {}
    try:
        tree = ast.parse(code)
    except BaseException:
        return out
    for s in _statements(tree.body):
        if isinstance(s, ast.Import):
            for a in s.names:
                mod = _genuine_module(a.name)
                if mod is None:
                    continue
                top = a.name.split(".")[0]
                out[a.asname or top] = mod if a.asname else sys.modules.get(top, mod)
        elif isinstance(s, ast.ImportFrom) and not s.level and s.module:
            mod = _genuine_module(s.module)
            if mod is None:
                continue
            for a in s.names:
                if a.name == "*":
                    public = getattr(mod, "__all__", None)
                    if not isinstance(public, (list, tuple)):
                        public = [n for n in dir(mod) if not n.startswith("_")]
                    for n in public:
                        if type(n) is str and hasattr(mod, n):
                            out[n] = getattr(mod, n)
                elif hasattr(mod, a.name):
                    out[a.asname or a.name] = getattr(mod, a.name)
                else:
                    sub = _genuine_module(s.module + "." + a.name)
                    if sub is not None:
                        out[a.asname or a.name] = sub
    return out


def _module_names_used(tests):
    """Names the tests use as ``name.attr`` that are standard-library modules."""
    import ast

    out = {}
    for src in tests:
        try:
            tree = ast.parse(src)
        except BaseException:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                name = node.value.id
                if name not in out:
                    out[name] = _genuine_module(name)
    return {k: v for k, v in out.items() if v is not None}


def _rewrite(src, name):
    """Compile a test; ``assert L == R`` keeps L in ``_lw_got_`` for the feedback."""
    import ast

    try:
        tree = ast.parse(src, name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
                    and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
                left = node.test.left
                node.test.left = ast.copy_location(
                    ast.NamedExpr(
                        target=ast.copy_location(ast.Name(id="_lw_got_", ctx=ast.Store()), left),
                        value=left,
                    ),
                    left,
                )
        return compile(tree, name, "exec")
    except SyntaxError:
        raise
    except Exception:
        return compile(src, name, "exec")


def _describe(exc, test_name, test_src):
    import ast

    remote = getattr(exc, "_lw_info", None)
    if isinstance(exc, SolutionGone):
        info = {"error": str(exc)}
    elif type(remote) is dict:
        info = dict(remote)
    else:
        try:
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        except BaseException:
            line = type(exc).__name__
        info = {"error": _short(line)}
    if isinstance(exc, SyntaxError) and exc.filename == test_name and exc.lineno:
        info["test_line"] = exc.lineno
        info["test_src"] = _short((exc.text or "").strip())
        return info
    tb, test_tb = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == test_name:
            test_tb = tb
        tb = tb.tb_next
    if test_tb is None:
        return info
    line = test_tb.tb_lineno
    info["test_line"] = line
    node = None
    try:
        for n in ast.walk(ast.parse(test_src)):
            if isinstance(n, ast.Assert) and n.lineno <= line <= (n.end_lineno or n.lineno):
                node = n
    except SyntaxError:
        pass
    if node is None:
        info["test_src"] = _short(linecache.getline(test_name, line).strip())
        return info
    info["test_src"] = _short(ast.get_source_segment(test_src, node) or "", 400)
    if (type(exc) is AssertionError and remote is None and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
        frame = test_tb.tb_frame
        missing = object()
        got = frame.f_locals.get("_lw_got_", missing)
        if got is not missing:
            try:
                info["got"] = _short(repr(got))
            except BaseException as e2:
                info["got"] = "<repr raised " + type(e2).__name__ + ">"
    return info


def _main():
    _trusted_path()
    # the spec comes on stdin: never a file, never through the sandbox's init process
    chunks = []
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    spec = _json.loads(b"".join(chunks))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    marker = ("@@LW-" + spec["nonce"] + "@@").encode()
    code, tests, entry = spec["code"], spec["tests"], spec.get("entry")
    del spec
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.dup(1)  # not inheritable; the candidate's process never holds it
    os.dup2(null, 1)
    os.close(null)

    def emit(obj):
        data = memoryview(marker + _json.dumps(obj).encode("ascii") + b"\n")
        while data:
            data = data[os.write(out, data):]

    try:
        _harden()
        _run(code, tests, entry, emit)
    except BaseException:
        emit({"kind": "error", "error": _short(traceback.format_exc(), 2000)})
        os._exit(1)


def _run(code, tests, entry, emit):
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    child = globals().get("_CHILD_CODE")  # compiled ahead by the host, when it could
    if child is None:
        child = marshal.dumps(compile(_CHILD, "<child>", "exec"))
    argv = [sys.executable, "-I", "-B", "-c", _BOOT, str(req_r), str(rep_w)]
    S.proc = _Child(argv, (req_r, rep_w))
    os.close(req_r)
    os.close(rep_w)
    S.rfd, S.wfd = rep_r, req_w
    try:
        view = memoryview(_struct.pack(">I", len(child)) + child)
        while view:
            view = view[os.write(req_w, view):]
    except OSError:
        pass  # it is gone already: the load request below says so
    S.poller = select.poll()
    S.poller.register(rep_r, select.POLLIN | select.POLLHUP | select.POLLERR)

    ns = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        load = _request("load", code=code)
    except SolutionGone as e:
        emit({"kind": "code", "ok": False, "error": "%s while loading the solution" % e})
        emit({"kind": "done"})
        return
    # while the candidate's interpreter starts: our own reading of the code and the tests
    genuine = _genuine_imports(code)
    used_modules = _module_names_used(tests)
    compiled = []
    for i, test in enumerate(tests):
        name = "<test %d>" % i
        _register(name, test)
        try:
            compiled.append(_rewrite(test, name))
        except BaseException as e:
            compiled.append(e)
    try:
        m = _reply(load)
        if "err" in m:
            try:
                _raise_remote(m["err"])
            except BaseException as e:
                emit({"kind": "code", "ok": False, **_describe(e, "<none>", "")})
                emit({"kind": "done"})
                return
        names = m.get("names")
        if type(names) is not list:
            _gone("the solution's process sent a malformed reply")
        for p in names:
            if (type(p) is not list or len(p) != 2 or type(p[0]) is not str
                    or not p[0].isidentifier()):
                _gone("the solution's process sent a malformed reply")
            value = _from_wire(p[1])
            if p[0].startswith("__") and p[0].endswith("__"):
                continue
            if hasattr(builtins, p[0]) and p[0] != entry:
                continue  # the tests' len, abs, sorted... stay the real ones
            ns[p[0]] = value
    except SolutionGone as e:
        emit({"kind": "code", "ok": False, "error": "%s while loading the solution" % e})
        emit({"kind": "done"})
        return
    ns.update(genuine)
    ns.update(used_modules)
    emit({"kind": "code", "ok": True})

    for i, test in enumerate(tests):
        name = "<test %d>" % i
        if S.gone is not None:
            emit({"kind": "test", "i": i, "ok": False, "error": "not run (%s)" % S.gone})
            continue
        ns.pop("_lw_got_", None)
        try:
            if isinstance(compiled[i], BaseException):
                raise compiled[i]
            exec(compiled[i], ns)
        except BaseException as e:
            emit({"kind": "test", "i": i, "ok": False, **_describe(e, name, test)})
        else:
            if S.gone is not None:  # the test swallowed the error; the test still fails
                emit({"kind": "test", "i": i, "ok": False, "error": S.gone})
            else:
                emit({"kind": "test", "i": i, "ok": True})
    try:
        S.proc.kill()
        S.proc.wait(timeout=5)
    except Exception:
        pass
    emit({"kind": "done"})


_main()
'''


# The candidate's interpreter starts with this: it reads its program (a marshalled code
# object, from the harness) from the request pipe, then serves on the same pipes.
_BOOT = """import marshal, os, sys
def _rd(n, r=int(sys.argv[1])):
    b = b""
    while len(b) < n:
        c = os.read(r, n - len(b))
        if not c:
            os._exit(0)
        b += c
    return b
exec(marshal.loads(_rd(int.from_bytes(_rd(4), "big"))), {"__name__": "__lw_child__"})
"""

_CHILD_SOURCE = _CODEC + _CHILD_MAIN
_HARNESS = (
    "import os\n"
    + _CONFINE
    + _CODEC
    + f"\n_CHILD = {_CHILD_SOURCE!r}\n_BOOT = {_BOOT!r}\n"
    + _HARNESS_MAIN
)

# main.py: runs the harness compiled ahead of time (harness.bin, from the same interpreter)
# when there is one, else compiles harness.py. Compiling ~1,000 lines costs more per run than
# the rest of the harness's own start.
_LOADER = r"""
import marshal
try:
    from _frozen_importlib_external import MAGIC_NUMBER
except ImportError:
    from importlib.util import MAGIC_NUMBER
try:
    with open("harness.bin", "rb") as f:
        blob = f.read()
except OSError:
    blob = b""
if blob[: len(MAGIC_NUMBER)] == MAGIC_NUMBER:
    harness, child = marshal.loads(blob[len(MAGIC_NUMBER) :])
else:
    with open("harness.py", encoding="utf-8") as f:
        harness, child = compile(f.read(), "harness.py", "exec"), None
del blob
exec(harness, {"__name__": "__main__", "__builtins__": __builtins__, "_CHILD_CODE": child})
"""

_COMPILER = r"""
import marshal, sys
from importlib.util import MAGIC_NUMBER
harness, child = sys.stdin.read().split("\0")
code = (compile(harness, "harness.py", "exec"), marshal.dumps(compile(child, "<child>", "exec")))
sys.stdout.buffer.write(MAGIC_NUMBER + marshal.dumps(code))
"""
_compiled: dict[str, bytes | None] = {}
_compiled_lock = threading.Lock()


def _compiled_for(sandbox: Sandbox) -> bytes | None:
    """The harness compiled by the sandbox's own interpreter, once per process.

    Only where that interpreter is a host binary (``bwrap`` binds it read-only from the
    host; ``process`` runs it directly); it compiles our own source, outside any sandbox.
    None elsewhere or when that fails: the sandbox then compiles ``harness.py`` each run.
    """
    if not isinstance(sandbox, (BwrapSandbox, ProcessSandbox)):
        return None
    exe = sandbox.python_argv()[0]
    with _compiled_lock:
        if exe not in _compiled:
            blob = None
            if os.path.isabs(exe) and os.access(exe, os.X_OK):
                try:
                    done = subprocess.run(
                        [exe, "-I", "-B", "-c", _COMPILER],
                        input=(_HARNESS + "\0" + _CHILD_SOURCE).encode(),
                        capture_output=True,
                        timeout=120,
                        check=True,
                    )
                    blob = done.stdout or None
                except (OSError, subprocess.SubprocessError):
                    blob = None
            _compiled[exe] = blob
        return _compiled[exe]


def run_program(code: str, stdin: str, sandbox: Sandbox, limits: SandboxLimits) -> ExecResult:
    """Run ``code`` as ``main.py`` with ``stdin``, confined like the harness's candidate."""
    argv = [*sandbox.python_argv(), "run.py"]
    files: dict[str, str | bytes] = {"run.py": _IO_PRELUDE, "main.py": code}
    return sandbox.run(argv, files=files, stdin=stdin, limits=limits)


def run_harness(
    code: str,
    tests: list[str],
    names: list[str],
    sandbox: Sandbox,
    limits: SandboxLimits,
    entry_point: str | None = None,
) -> CodeTestResult:
    """Run ``tests`` against ``code`` in one sandbox run; one outcome per test.

    ``entry_point``: the function under test; it is the one name of the solution that may
    shadow a builtin in the tests' namespace (``sum``, ``max``...).
    """
    nonce = secrets.token_hex(16)
    spec = json.dumps({"nonce": nonce, "code": code, "tests": tests, "entry": entry_point})
    files: dict[str, str | bytes] = {"harness.py": _HARNESS}
    blob = _compiled_for(sandbox)
    if blob is not None:
        files["harness.bin"] = blob
    result = sandbox.run_python(_LOADER, files=files, stdin=spec, limits=limits)

    marker = f"@@LW-{nonce}@@"
    code_rec: dict[str, object] | None = None
    per_test: dict[int, dict[str, object]] = {}
    harness_error: str | None = None
    done = False
    for line in result.stdout.splitlines():
        if not line.startswith(marker):
            continue
        try:
            rec = json.loads(line[len(marker) :])
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        kind = rec.get("kind")
        if kind == "code" and code_rec is None:
            code_rec = rec
        elif kind == "test" and isinstance(rec.get("i"), int):
            per_test.setdefault(rec["i"], rec)
        elif kind == "error" and harness_error is None:
            harness_error = str(rec.get("error", ""))
        elif kind == "done":
            done = True

    outcomes: list[TestOutcome] = []
    feedback: str | None = None
    stopped_at: int | None = None  # first test without a result (killed or exited there)
    for i, name in enumerate(names):
        rec = per_test.get(i)
        if rec is not None and rec.get("ok") is True:
            outcomes.append(TestOutcome(index=i, name=name, passed=True))
            continue
        if rec is not None:
            err = str(rec.get("error", "failed"))
            outcomes.append(TestOutcome(index=i, name=name, passed=False, error=one_line(err)))
            if feedback is None:
                feedback = _test_feedback(rec, name)
            continue
        # no result for this test
        if code_rec is not None and code_rec.get("ok") is False:
            err = "solution failed to load: " + str(code_rec.get("error", ""))
        elif harness_error is not None:
            err = "not run: the code-test harness failed"
        elif stopped_at is None and code_rec is not None:
            stopped_at = i
            err = killed_message(result, limits) if not result.ok else "exited during this test"
        elif code_rec is None:
            err = "no result: " + (
                killed_message(result, limits)
                if not result.ok
                else "the program exited before the tests ran"
            )
        else:
            err = "not run"
        outcomes.append(TestOutcome(index=i, name=name, passed=False, error=one_line(err)))

    if code_rec is not None and code_rec.get("ok") is False:
        feedback = "the solution failed to load: " + _where(code_rec)
    elif harness_error is not None:
        last = [ln for ln in harness_error.splitlines() if ln.strip()] or ["no detail"]
        feedback = f"the code-test harness failed: {one_line(last[-1])}"
    elif feedback is None and (stopped_at is not None or code_rec is None):
        reason = killed_message(result, limits) if not result.ok else "exited early"
        if code_rec is None:
            feedback = f"{reason} while loading the solution"
            if result.ok or result.exit_code not in (None, 0):
                tail = stderr_tail(result.stderr)
                feedback += f" ({tail})" if tail else ""
        else:
            assert stopped_at is not None
            feedback = f"{reason} in {names[stopped_at]}: {one_line(tests[stopped_at], 200)}"

    passed_n = sum(o.passed for o in outcomes)
    all_ok = (
        passed_n == len(names) and done and harness_error is None and result.ok and len(names) > 0
    )
    if all_ok:
        feedback = f"all {len(names)} tests passed"
    elif feedback is None:
        feedback = (
            "no tests to run"
            if not names
            else f"the run did not finish normally ({killed_message(result, limits)})"
        )
    return CodeTestResult(
        passed=all_ok,
        tests_total=len(names),
        tests_passed=passed_n,
        outcomes=outcomes,
        feedback=feedback,
        timed_out=result.timed_out,
        exec=summary([result]),
    )


def _where(rec: dict[str, object]) -> str:
    err = str(rec.get("error", "error"))
    if "solution_line" in rec:
        err += f" (solution line {rec['solution_line']}: {rec.get('solution_src', '')})"
    return err


def _test_feedback(rec: dict[str, object], name: str) -> str:
    err = str(rec.get("error", "failed"))
    src = rec.get("test_src")
    line = rec.get("test_line")
    if err.startswith("AssertionError") and src:
        msg = f"{name} failed at test line {line}: {src}"
        if "got" in rec:
            msg += f" -- got {rec['got']}"
        if err != "AssertionError":
            msg += f" ({err})"
        return msg
    msg = _where(rec)
    if src:
        msg += f" -- in {name} line {line}: {src}"
    return msg
