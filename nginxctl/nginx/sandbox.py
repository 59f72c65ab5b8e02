"""The throwaway `nginx -t` sandbox: a locked-down container of an image, always removed (validate, nginx -V)."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

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

from ..errors import EnvironmentProblem, NginxOutput
from ..nginxtext import Build, parse_build
from .engine import BUILD_HINT, engine_call, tar_archive

VALIDATE_TIMEOUT = 60


NGINX_CAPS = ("NET_BIND_SERVICE", "SETUID", "SETGID")


def _run_throwaway(client: docker.DockerClient, image: str, command: list[str], *,
                   files: dict[str, str] | None = None, network: str = "none",
                   hosts: dict[str, str] | None = None, memory: int = 256 * 1024 ** 2,
                   caps: tuple[str, ...] = NGINX_CAPS, what: str = "nginx -t", hint: str = BUILD_HINT) -> NginxOutput:
    """Run `command` in a locked-down container that is always removed; return its exit code and output.

    Files are put in a fresh volume at /etc/nginxctl (the root file system is read-only).
    Raises EnvironmentProblem.
    """
    volume = None
    container = None
    try:
        with engine_call("Docker could not run the test container"):
            if files:
                volume = client.volumes.create(f"nginxctl-validate-{uuid.uuid4().hex[:12]}")
            kwargs: dict[str, Any] = dict(
                read_only=True, tmpfs={"/run": "size=1m", "/tmp": "size=16m", "/var/log/nginx": "size=4m",
                                       "/var/lib/nginx": "size=16m", "/var/cache/nginx": "size=16m"},
                cap_drop=["ALL"], cap_add=list(caps),
                security_opt=["no-new-privileges"], mem_limit=memory, pids_limit=64, network_mode=network,
                labels={"nginxctl.role": "validate"}, entrypoint=[command[0]], command=command[1:],
                extra_hosts=hosts or None)
            if network == "none":
                # nginx -t binds every listen: let it bind addresses this sandbox lacks.
                kwargs["sysctls"] = {"net.ipv4.ip_nonlocal_bind": "1", "net.ipv6.ip_nonlocal_bind": "1"}
            if volume is not None:
                kwargs["mounts"] = [docker.types.Mount("/etc/nginxctl", volume.name, type="volume")]
            try:
                container = client.containers.create(image, **kwargs)
            except docker.errors.ImageNotFound:
                raise EnvironmentProblem(f"image {image} is not present", hint) from None
            if files:
                container.put_archive("/etc/nginxctl", tar_archive(dict(files)))
            container.start()
            try:
                status = container.wait(timeout=VALIDATE_TIMEOUT)
            except requests.exceptions.ReadTimeout:
                raise EnvironmentProblem(f"{what} did not finish within {VALIDATE_TIMEOUT}s in {image}") from None
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            container.reload()
        if container.attrs.get("State", {}).get("OOMKilled"):
            raise EnvironmentProblem(f"{what} ran out of memory in the test container ({memory // 1024 ** 2} "
                                     "MiB)", "large configs need more: this is nginxctl's limit, not nginx's error")
        return NginxOutput(command, int(status.get("StatusCode", 1)), output)
    finally:
        for thing in (container, volume):
            if thing is not None:
                with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                    thing.remove(force=True)


_BUILD_CACHE: dict[str, Build] = {}


def image_build(client: docker.DockerClient, image: str) -> Build:
    """`nginx -V` of an image, run once per image id. Raises EnvironmentProblem."""
    with engine_call(f"cannot inspect image {image}"):
        try:
            image_id = client.images.get(image).id
        except docker.errors.ImageNotFound:
            raise EnvironmentProblem(f"image {image} is not present", BUILD_HINT) from None
    if image_id not in _BUILD_CACHE:
        result = _run_throwaway(client, image, ["nginx", "-V"])
        if result.exit_code != 0:
            raise EnvironmentProblem(f"`nginx -V` failed in image {image}: {result.output.strip()[:200]}",
                                     "is it an nginx image?")
        _BUILD_CACHE[image_id] = parse_build(result.output)
    return _BUILD_CACHE[image_id]


def test_config(client: docker.DockerClient, image: str, config: str, *, network: str = "none",
                hosts: dict[str, str] | None = None, shared_memory: int = 0) -> NginxOutput:
    """`nginx -t` of `config` in a throwaway, locked-down container of `image`. The memory limit is
    256 MiB plus `shared_memory` (the zones nginx maps) plus ten times the config's size.
    Raises EnvironmentProblem."""
    memory = 256 * 1024 ** 2 + shared_memory + 10 * len(config)
    return _run_throwaway(client, image, ["nginx", "-t", "-c", "/etc/nginxctl/nginx.conf"],
                          files={"nginx.conf": config}, network=network, hosts=hosts, memory=memory)


