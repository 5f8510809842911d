"""Isolated execution backends behind one small interface (``Sandbox.run`` / ``run_python``).

``bwrap`` (default) isolates with bubblewrap namespaces, rlimits and a per-slot uid;
``docker`` runs each program in a hardened long-lived container (needs a daemon and the image
from ``loopwright sandbox build-image``; the SDK is imported only when it is used);
``process`` is a plain subprocess with limits only (no isolation; explicit opt-in).
"""

from __future__ import annotations

from loopwright.sandboxes.base import (
    ExecResult,
    KilledBy,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
)
from loopwright.sandboxes.bwrap import BwrapSandbox
from loopwright.sandboxes.docker import DockerSandbox
from loopwright.sandboxes.process import ProcessSandbox

BACKENDS: dict[str, type[Sandbox]] = {
    "bwrap": BwrapSandbox,
    "docker": DockerSandbox,
    "process": ProcessSandbox,
}
"""Backend name -> class. ``bwrap`` is the default."""

DEFAULT_BACKEND = "bwrap"


def get_sandbox(name: str = DEFAULT_BACKEND) -> Sandbox:
    """A ready sandbox of backend ``name``; raises ``SandboxUnavailable`` if it cannot run here."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        valid = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown sandbox backend {name!r}; valid names: {valid}") from None
    return cls()


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "BwrapSandbox",
    "ExecResult",
    "KilledBy",
    "ProcessSandbox",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "get_sandbox",
]
