"""The docker SDK, and the daemon calls the ``docker`` backend and the image builder make.

The only module that imports the ``docker`` SDK (on first use, so ``import
loopwright.sandboxes`` stays light and works without it).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from loopwright.sandboxes.base import SandboxUnavailable

DEFAULT_IMAGE = "loopwright-sandbox:bookworm"
IMAGE_ENV = "LOOPWRIGHT_DOCKER_IMAGE"
BUILD_HINT = "run `loopwright sandbox build-image`, or set LOOPWRIGHT_DOCKER_IMAGE to a Python image you have"
_SDK_HINT = "the docker backend needs the docker SDK: `pip install 'docker>=7,<8'`"


def sdk() -> Any:
    """The docker SDK, imported on first use so that ``import loopwright.sandboxes`` stays light
    and works without it."""
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable(_SDK_HINT) from None
    return docker


def api_errors() -> tuple[type[Exception], ...]:
    """What a call to the daemon can raise: the SDK's errors and a dropped connection."""
    import requests

    return (sdk().errors.DockerException, requests.RequestException, OSError)


def docker_client(docker_host: str | None = None) -> Any:
    """A connected SDK client for ``docker_host`` (default: ``DOCKER_HOST`` or the local socket)."""
    docker = sdk()
    where = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except api_errors() as e:
        raise SandboxUnavailable(
            f"no Docker daemon reachable at {where} ({type(e).__name__}): start dockerd "
            "(`apt-get install docker.io`) or point DOCKER_HOST at one"
        ) from None
    return client


def import_rootfs(tar_path: str, tag: str, changes: list[str], docker_host: str | None) -> str:
    """``docker import`` of a root-filesystem tarball as ``tag``; returns the image id."""
    client = docker_client(docker_host)
    try:
        repository, _, version = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
        client.api.import_image(src=tar_path, repository=repository, tag=version, changes=changes)
        return str(client.images.get(tag).id)
    finally:
        client.close()


def has_image(client: Any, image: str) -> bool:
    try:
        client.images.get(image)
    except sdk().errors.ImageNotFound:
        return False
    return True


def daemon_failed(e: Exception) -> SandboxUnavailable:
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return SandboxUnavailable(f"the Docker daemon failed to run a sandbox container: {detail}")


def remove(api: Any, cid: str) -> None:
    """stop (SIGTERM, 1 s) -> kill -> rm, each step allowed to find the container gone."""
    with contextlib.suppress(*api_errors()):
        api.stop(cid, timeout=1)
    with contextlib.suppress(*api_errors()):
        api.kill(cid)
    with contextlib.suppress(*api_errors()):
        api.remove_container(cid, force=True)


def remove_all(api: Any, cids: set[str]) -> None:
    for cid in list(cids):
        remove(api, cid)
    cids.clear()
