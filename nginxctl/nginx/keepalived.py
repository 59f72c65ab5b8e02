"""keepalived beside nginx (`ha:`): checking a rendered keepalived.conf with the keepalived image.

The image (scripts/build-keepalived-image.sh, from Debian's keepalived package, no registry) holds keepalived
and busybox: busybox runs the health check nginxctl renders, and here creates the stand-in interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NginxOutput
from .sandbox import _run_throwaway

if TYPE_CHECKING:
    import docker

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
