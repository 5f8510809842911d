"""cgroup ``pids``/``memory`` limits per sandbox slot, where the cgroup tree is writable.

rlimits bound each process; a cgroup bounds the slot as a whole (all of a program's
processes together, tmpfs pages included), and tells us afterwards whether the memory limit
was what killed it. Used only as root, where every slot uid belongs to one sandbox at a time:
one cgroup per slot, created once, limits rewritten per run. Where the tree is read-only
(unprivileged, or a container without delegation) everything here is a no-op and the
rlimits still hold; ``status()`` says which.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from loopwright.sandboxes.base import ExecResult, SandboxLimits

_V1 = Path("/sys/fs/cgroup")
_PARENT = "loopwright"
_HEADROOM_MB = 64  # bwrap, its init and the warm interpreter live in the slot cgroup too
_PROCESS_OVERHEAD = 3


_dirs: dict[int, list[Path]] = {}


def _slot_dirs(uid: int) -> list[Path]:
    """The slot's cgroup dirs, created on first use and remembered (runs are a hot path)."""
    if uid not in _dirs:
        _dirs[uid] = _make_slot_dirs(uid)
    return _dirs[uid]


def _make_slot_dirs(uid: int) -> list[Path]:
    """The slot's cgroup dirs (v1 pids and memory, or one v2 dir), created if possible."""
    dirs: list[Path] = []
    v1 = [_V1 / c for c in ("pids", "memory") if (_V1 / c / "cgroup.procs").exists()]
    if v1:
        candidates = [c / _PARENT / f"slot-{uid}" for c in v1]
    elif (_V1 / "cgroup.controllers").exists():  # v2: needs pids+memory delegated to us
        parent = _V1 / _PARENT
        with contextlib.suppress(OSError):
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+pids +memory")
        candidates = [parent / f"slot-{uid}"]
    else:
        return []
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d / "cgroup.procs", os.W_OK):
            dirs.append(d)
    return dirs


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def prepare(uid: int, limits: SandboxLimits, processes_extra: int = _PROCESS_OVERHEAD) -> list[str]:
    """Set the slot's limits for the next run; the ``cgroup.procs`` files a child must join."""
    if os.geteuid() != 0:
        return []
    memory = (limits.memory_mb + limits.max_disk_mb + _HEADROOM_MB) * 1024 * 1024
    procs: list[str] = []
    for d in _slot_dirs(uid):
        if (d / "pids.max").exists():
            _write(d / "pids.max", str(limits.max_processes + processes_extra))
        if (d / "memory.limit_in_bytes").exists():  # v1
            _write(d / "memory.failcnt", "0")
            _write(d / "memory.memsw.limit_in_bytes", "-1")  # raise first: memsw >= mem
            _write(d / "memory.limit_in_bytes", str(memory))
            _write(d / "memory.memsw.limit_in_bytes", str(memory))
        if (d / "memory.max").exists():  # v2
            _write(d / "memory.max", str(memory))
            _write(d / "memory.swap.max", "0")
        procs.append(str(d / "cgroup.procs"))
    return procs


def _oom_events(uid: int) -> int:
    for d in _slot_dirs(uid):
        with contextlib.suppress(OSError, ValueError):
            if (d / "memory.failcnt").exists():
                return int((d / "memory.failcnt").read_text())
            if (d / "memory.events").exists():
                for line in (d / "memory.events").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
    return 0


def explain(uid: int, result: ExecResult) -> ExecResult:
    """Relabel a SIGKILL as ``killed_by="memory"`` when the slot's memory cgroup hit its limit."""
    if os.geteuid() != 0 or result.killed_by not in ("signal", None):
        return result
    if result.exit_code == -signal.SIGKILL and _oom_events(uid) > 0:
        return result.model_copy(update={"killed_by": "memory"})
    return result


def status() -> str:
    """One line: which cgroup limits this machine lets the sandbox use."""
    if os.geteuid() != 0:
        return "cgroup limits: off (not root; rlimits only)"
    dirs = _make_slot_dirs(0xFFFF_FFFE)  # a probe slot, removed again
    names = sorted({d.parent.parent.name if d.parent.parent != _V1 else "v2" for d in dirs})
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()
    if not dirs:
        return "cgroup limits: off (cgroup tree not writable here; rlimits only)"
    return f"cgroup limits: on ({', '.join(names)})"
