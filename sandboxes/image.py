"""Build the ``docker`` backend's image offline: debootstrap a minimal Debian, ``docker import``.

Images cannot be pulled on machines that reach only the package registries (DESIGN.md,
"Docker"), but the apt mirror they already use is enough to bootstrap a root filesystem with
a Python in it. The result has no package manager state, docs or caches: only what the
sandboxed programs need (``python3`` and its standard library).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from loopwright.sandboxes.base import SandboxUnavailable
from loopwright.sandboxes.docker_api import DEFAULT_IMAGE, docker_client, import_rootfs

FALLBACK_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3",)
"""On top of ``minbase``: pulls python3-minimal and libpython3.X-stdlib (json, sqlite3, ...)."""
_TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info")
_IMAGE_CHANGES = ["ENV PATH=/usr/local/bin:/usr/bin:/bin", "ENV LANG=C.UTF-8"]


def _one_line_entries(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of ``deb`` lines in the classic sources.list format."""
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options]
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], [words[2]], words[3:]


def _deb822_entries(text: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of each ``Types: deb`` stanza in a ``.sources`` file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
            for uri in fields.get("uris", []):
                yield uri, fields.get("suites", []), fields.get("components", [])


def apt_mirror(suite: str = "bookworm", etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt already uses for ``suite``'s ``main``."""
    sources: list[tuple[str, list[str], list[str]]] = []
    for path in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            sources += _one_line_entries(path.read_text(errors="replace"))
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        sources += _deb822_entries(path.read_text(errors="replace"))
    for uri, suites, components in sources:
        if suite in suites and "main" in components:
            return uri
    return FALLBACK_MIRROR


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys in the target and can leave them after a failure."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for point in sorted(points, key=len, reverse=True):
        if point == str(root) or point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    suite: str = "bookworm",
    mirror: str | None = None,
    progress: Callable[[str], object] = print,
    docker_host: str | None = None,
) -> str:
    """Build ``tag`` from ``suite`` via debootstrap and ``docker import``; returns the image id.

    ``mirror`` defaults to the one in /etc/apt/sources.list(.d); ``docker_host`` to
    ``DOCKER_HOST`` or the local socket. Needs root (debootstrap) and takes a minute or two.
    """
    if os.geteuid() != 0:
        raise SandboxUnavailable("building the sandbox image runs debootstrap, which needs root")
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise SandboxUnavailable("debootstrap not found: `apt-get install debootstrap`")
    docker_client(docker_host)  # fail before the slow part when no daemon is reachable
    mirror = mirror or apt_mirror(suite)
    tmp = Path(tempfile.mkdtemp(prefix="loopwright-image-", dir="/var/tmp"))
    root, log = tmp / "rootfs", tmp / "debootstrap.log"
    try:
        progress(f"debootstrap {suite} (minbase + {', '.join(PACKAGES)}) from {mirror} ...")
        argv = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        with log.open("wb") as out:
            done = subprocess.run(
                [*argv, suite, str(root), mirror],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] or ["no output"]
            raise RuntimeError(f"debootstrap failed (exit {done.returncode}): {' | '.join(tail)}")
        for rel in _TRIM:
            shutil.rmtree(root / rel, ignore_errors=True)
        (root / "tmp").chmod(0o1777)
        tarball = tmp / "rootfs.tar"
        progress(f"importing into docker as {tag} ...")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
            check=True,
            capture_output=True,
        )
        image_id = import_rootfs(str(tarball), tag, _IMAGE_CHANGES, docker_host)
        progress(f"built {tag} ({image_id[:19]})")
        return image_id
    finally:
        _unmount_below(root)
        shutil.rmtree(tmp, ignore_errors=True)
