"""The one package that talks to Docker, and to nginx inside containers.

  engine   connecting to the Docker engine, its machine and images; `engine_call` turns any failure of it
           into an EnvironmentProblem (exit 3), never a traceback
  sandbox  the throwaway, locked-down container that runs `nginx -t` and `nginx -V` of an image
  live     a running nginx target: its files, processes, binary and reload, through one of two transports
           (this host's /proc, or the Docker API) chosen when it is attached
  lock     the change lock and the watch lock of a target
  keepalived  `keepalived --config-test` of a target's keepalived.conf (`ha:`), in the sandbox; the companion
           that runs it beside the target
  vip      who holds the virtual IP (each target's namespace) and what each keepalived says (`ha:`); the
           holders a rollout changes last

No shell runs in any nginx container: an image that holds nothing but nginx works (the keepalived image is
nginxctl's own and carries busybox for the health check). Callers pass the Docker client
in (the CLI makes it). What nginx prints is parsed in `nginxtext` (pure). The Docker SDK itself is loaded on
first use (see `lazy`): importing this package costs nothing until a command talks to Docker.
"""

from .engine import (
    BUILD_HINT,
    DEFAULT_IMAGE,
    LOCAL_IMAGE,
    PLACEHOLDER_IP,
    Progress,
    connect,
    engine_machine,
    ensure_image,
    image_present,
)
from .keepalived import (
    KEEPALIVED_HINT,
    CompanionChange,
    companion_config,
    companion_state,
    ensure_companion,
    test_keepalived_config,
)
from .live import LiveNginx
from .lock import LOCK_STALE_SECONDS, TargetLock, describe_holder, release_all
from .sandbox import VALIDATE_TIMEOUT, image_build, test_config
from .transport import FileInfo

__all__ = ["BUILD_HINT", "DEFAULT_IMAGE", "LOCAL_IMAGE", "LOCK_STALE_SECONDS", "PLACEHOLDER_IP", "VALIDATE_TIMEOUT",
           "FileInfo", "LiveNginx", "Progress", "TargetLock", "connect", "describe_holder", "engine_machine",
           "ensure_image", "image_build", "image_present", "release_all", "test_config", "KEEPALIVED_HINT",
           "test_keepalived_config",
           "CompanionChange", "companion_config", "companion_state",
           "ensure_companion"]
