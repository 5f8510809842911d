"""The seccomp filter every sandboxed program runs under.

It refuses ptrace, process_vm_readv/writev and pidfd_getfd, so a sandboxed process can neither
copy another process's descriptors nor read or write its memory, whatever that process's
dumpable flag says. The bwrap backend hands it to bwrap (``--seccomp``), which installs it
just before the sandbox's first program starts, so every process in the sandbox inherits it.

``CONFINE_SOURCE`` is the one definition, as source text: it runs on the host (to build the
filter for bwrap) and inside sandboxes, where a process that must confine its own children
(the code-test harness) prepends it to its program and calls ``confine()``. Standard library
only, and no syntax newer than the sandbox's Python may be.
"""

from __future__ import annotations

import os
from typing import Any

CONFINE_SOURCE = r'''
def seccomp_filter(machine):
    """The filter for ``machine`` (``os.uname().machine``): packed ``struct sock_filter``
    entries; None for an architecture whose syscall numbers we do not know."""
    import struct

    known = {
        "x86_64": (0xC000003E, (101, 310, 311, 438)),
        "aarch64": (0xC00000B7, (117, 270, 271, 438)),
    }.get(machine)
    if known is None:
        return None
    audit_arch, denied = known
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    refuse, allow = 0x00050000 | 1, 0x7FFF0000  # SECCOMP_RET_ERRNO|EPERM, SECCOMP_RET_ALLOW
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, refuse), (ld, 0, 0, 0)]
    if audit_arch == 0xC000003E:  # the x32 ABI's numbers: refused
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, refuse)]
    for nr in denied:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, refuse)]
    prog.append((ret, 0, 0, allow))
    return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)


def confine():
    """Confine this process and its children; False where the platform has no such filter
    (not Linux, or an architecture whose syscall numbers we do not know)."""
    import os as _o

    uname = _o.uname()
    raw = seccomp_filter(uname.machine) if uname.sysname == "Linux" else None
    if raw is None:
        return False
    import ctypes

    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return True
'''

_defined: dict[str, Any] = {}
exec(compile(CONFINE_SOURCE, "<loopwright.sandboxes.seccomp>", "exec"), _defined)


def seccomp_filter() -> bytes | None:
    """The filter for this machine (sandboxes share the host's kernel), or None where there
    is none: not Linux, or an architecture whose syscall numbers we do not know."""
    uname = os.uname()
    if uname.sysname != "Linux":
        return None
    raw: bytes | None = _defined["seccomp_filter"](uname.machine)
    return raw
