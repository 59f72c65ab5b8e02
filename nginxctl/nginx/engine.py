"""The Docker engine: connecting to it, its machine, its images; every failure of it is an EnvironmentProblem.

Every Docker call in this package is wrapped by `engine_call`, so a failing engine is exit 3, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from ..lazy import lazy_import

if TYPE_CHECKING:
    import docker
    import docker.errors
    import docker.types
    import requests
    import requests.exceptions
else:
    docker = lazy_import("docker")
    requests = lazy_import("requests")

from ..capacity import Machine
from ..errors import EnvironmentProblem

DEFAULT_IMAGE = "nginx:stable"
LOCAL_IMAGE = "nginxctl/nginx:latest"  # built by scripts/build-nginx-image.sh from Debian packages
BUILD_HINT = "build it offline with scripts/build-nginx-image.sh, pull it yourself, or pass --image (--pull)"
PLACEHOLDER_IP = "127.0.0.1"

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None


def short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"\(Caused by .*", "", text)
    return text[:200]


@contextlib.contextmanager
def engine_call(what: str, hint: str = "") -> Iterator[None]:
    """Turn any failure of the Docker engine or the connection to it into an EnvironmentProblem."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EnvironmentProblem(f"{what} ({short(exc)})", hint) from None


def connect(docker_host: str | None = None) -> docker.DockerClient:
    """A client for `docker_host`, else DOCKER_HOST, else the local socket; checked with a ping.

    Raises EnvironmentProblem when the engine cannot be reached.
    """
    where = docker_host or os.environ.get("DOCKER_HOST") or "the local Docker socket"
    hint = "start the Docker engine (dockerd) or set DOCKER_HOST / target.docker_host"
    url = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if url.startswith("unix://"):
        # docker-py leaks the socket of a failed unix connect; find out with one we close ourselves
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(url[len("unix://"):])
            except OSError as exc:
                raise EnvironmentProblem(f"Docker is not reachable at {where} ({exc.strerror})", hint) from None
    client = None
    try:
        with engine_call(f"Docker is not reachable at {where}", hint):
            client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
            client.ping()
    except EnvironmentProblem:
        if client is not None:
            client.close()
        raise
    assert client is not None
    return client


def engine_machine(client: docker.DockerClient) -> Machine:
    """The CPUs and memory of the machine the Docker engine runs containers on. Raises EnvironmentProblem."""
    with engine_call("cannot read the Docker engine's info"):
        info = client.info()
    return Machine(cpus=int(info.get("NCPU") or 1), memory_bytes=int(info.get("MemTotal") or 0))


def tar_archive(members: Mapping[str, bytes | str], links: dict[str, str] | None = None,
                mtime: float | None = None) -> bytes:
    """A tar archive of `name: content` files and `name: target` hard links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in members.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime or time.time()
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.LNKTYPE, target, mtime or time.time()
            tar.addfile(info)
    return buf.getvalue()


def image_present(client: docker.DockerClient, image: str) -> bool:
    with engine_call(f"cannot inspect image {image}"):
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False


def ensure_image(client: docker.DockerClient, image: str, *, pull: bool = False, progress: Progress = quiet) -> str:
    """Make sure `image` is present; pull it only when asked (`pull`): never a surprise download.

    Raises EnvironmentProblem when it is not there (or cannot be pulled).
    """
    if image_present(client, image):
        return image
    if not pull:
        raise EnvironmentProblem(f"image {image} is not present on the Docker engine", BUILD_HINT)
    progress(f"pulling {image}")
    with engine_call(f"image {image} is not present and cannot be pulled", BUILD_HINT):
        client.images.pull(image)
    return image


