"""keepalived beside nginx (`ha:`): checking a rendered keepalived.conf with the keepalived image.

The image (scripts/build-keepalived-image.sh, from Debian's keepalived package, no registry) holds keepalived
and busybox: busybox runs the health check nginxctl renders, and here creates the stand-in interface.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import NginxOutput
from ..lazy import lazy_import
from .engine import engine_call, tar_archive
from .sandbox import _run_throwaway

if TYPE_CHECKING:
    import docker
    import docker.errors
    from docker.models.containers import Container
else:
    docker = lazy_import("docker")

KEEPALIVED_HINT = ("build it offline with scripts/build-keepalived-image.sh (scripts/setup.sh does), or set "
                   "ha.image to a keepalived image that has /bin/busybox")

# `keepalived --config-test` refuses a config whose interface does not exist, and the sandbox has no network:
# make the interface in the sandbox's own namespace first (a bridge: this kernel may lack the dummy driver), the
# way `nginx -t` there may bind addresses it lacks. NET_ADMIN counts only in that empty namespace.
_CONFIG_TEST = ('/bin/busybox ip link add "$1" type bridge || exit 97; '
                'exec /usr/sbin/keepalived --config-test --use-file /etc/nginxctl/keepalived.conf')


def test_keepalived_config(client: docker.DockerClient, image: str, config: str, interface: str) -> NginxOutput:
    """`keepalived --config-test` of `config` in a throwaway, locked-down container of `image` with no network
    but a stand-in `interface`. Exit 97: the stand-in could not be made (the output says why).
    Raises EnvironmentProblem (no engine, no image: KEEPALIVED_HINT)."""
    return _run_throwaway(client, image, ["/bin/busybox", "sh", "-c", _CONFIG_TEST, "sh", interface],
                          files={"keepalived.conf": config}, caps=("NET_ADMIN",),
                          what="keepalived --config-test", hint=KEEPALIVED_HINT)


# -- the companion: keepalived in the target's network namespace ---------------------------------------------

# Addresses and routes, VRRP's raw socket, multicast; and SETUID/SETGID: keepalived sets the script user's
# groups and ids (root to root) before it runs each check, and without them no check ever runs.
COMPANION_CAPS = ("NET_ADMIN", "NET_BROADCAST", "NET_RAW", "SETUID", "SETGID")
CONF_DIR = "/etc/keepalived"


@dataclass(frozen=True)
class CompanionChange:
    """What `ensure_companion` did: created, recreated (and why), reloaded (SIGHUP: the config changed) or
    unchanged."""

    name: str
    action: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.name}: keepalived {self.action}" + (f" ({self.why})" if self.why else "")


def companion_name(target: str) -> str:
    return f"{target}-keepalived"


def _started(container: Container) -> str:
    return str(container.attrs.get("State", {}).get("StartedAt", ""))


def companion_stale(companion: Container, target: Container) -> str:
    """Why `companion` cannot serve `target` as it runs now ("" when it can): keepalived in a namespace the
    target left holds an address nobody reaches."""
    if companion.attrs.get("HostConfig", {}).get("NetworkMode") != f"container:{target.id}":
        return "the target container was recreated"
    if companion.status != "running":
        return f"it was {companion.status}"
    if _started(companion) < _started(target):  # RFC 3339 in UTC from one engine: text order is time order
        return "the target restarted after it (a new network namespace)"
    return ""


def _read_config(companion: Container) -> str | None:
    try:
        stream, _ = companion.get_archive(f"{CONF_DIR}/keepalived.conf")
    except docker.errors.NotFound:
        return None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile("keepalived.conf")
        return member.read().decode(errors="replace") if member else None


def companion_config(client: docker.DockerClient, target: str) -> str | None:
    """The keepalived.conf in `target`'s companion (None: no companion, or no config in it). Raises
    EnvironmentProblem."""
    with engine_call(f"cannot read keepalived.conf beside {target}", KEEPALIVED_HINT):
        try:
            companion = client.containers.get(companion_name(target))
        except docker.errors.NotFound:
            return None
        return _read_config(companion)


def companion_state(client: docker.DockerClient, target: Container) -> tuple[str | None, str]:
    """The keepalived.conf in `target`'s companion (None: no companion, or no config in it), and why that companion
    cannot serve the target as it runs now ("" when it can, or when there is none: see `companion_stale`). Raises
    EnvironmentProblem."""
    with engine_call(f"cannot read keepalived beside {target.name}", KEEPALIVED_HINT):
        try:
            companion = client.containers.get(companion_name(target.name))
        except docker.errors.NotFound:
            return None, ""
        target.reload()   # its StartedAt now: a restart since the attach is seen
        return _read_config(companion), companion_stale(companion, target)


PID_DIR = "/run/keepalived"
PID_FILES = (f"--pid={PID_DIR}/keepalived.pid", f"--vrrp_pid={PID_DIR}/vrrp.pid",
             f"--checkers_pid={PID_DIR}/checkers.pid")


def ensure_companion(client: docker.DockerClient, target: Container, image: str, config: str) -> CompanionChange:
    """Run keepalived with `config` beside `target` (`<target>-keepalived`, network_mode container:<target>, only
    the COMPANION_CAPS): create it, recreate it when the target was restarted or recreated,
    else reload it (SIGHUP) only when its config changed. Raises EnvironmentProblem."""
    name = companion_name(target.name)
    with engine_call(f"cannot run keepalived beside {target.name}", KEEPALIVED_HINT):
        target.reload()
        try:
            existing: Container | None = client.containers.get(name)
        except docker.errors.NotFound:
            existing = None
        why = ""
        if existing is not None:
            why = companion_stale(existing, target)
            if not why:
                if _read_config(existing) == config:
                    return CompanionChange(name, "unchanged")
                existing.put_archive(CONF_DIR, tar_archive({"keepalived.conf": config}))
                existing.kill(signal="HUP")
                return CompanionChange(name, "reloaded")
            existing.remove(force=True)
        companion = client.containers.create(
            image, ["--use-file", f"{CONF_DIR}/keepalived.conf", *PID_FILES], name=name,
            network_mode=f"container:{target.id}",
            cap_drop=["ALL"], cap_add=list(COMPANION_CAPS), security_opt=["no-new-privileges"], pids_limit=64,
            # the pid files on a tmpfs: a keepalived killed (not stopped) leaves them, and one started again over
            # them exits at once ("daemon is already running"); the state file stays in /run, where the Docker API
            # can read it (an archive cannot read a tmpfs). Back after a Docker restart unless stopped by hand.
            tmpfs={PID_DIR: "rw,nosuid,nodev,mode=755"}, restart_policy={"Name": "unless-stopped"},
            labels={"nginxctl.role": "keepalived", "nginxctl.target": target.name})
        companion.put_archive(CONF_DIR, tar_archive({"keepalived.conf": config}))
        companion.start()
    return CompanionChange(name, "recreated" if existing is not None else "created", why)
