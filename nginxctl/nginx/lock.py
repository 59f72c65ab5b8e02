"""The change lock and the watch lock of a target: a created, never started container with a fixed name."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_import

if TYPE_CHECKING:
    import docker
    import docker.errors
    import docker.types
    import requests
    import requests.exceptions
    from docker.models.containers import Container
else:
    docker = lazy_import("docker")
    requests = lazy_import("requests")

from ..bounded import together
from ..errors import LockBusy
from ..history import FORMAT
from ..host import process_alive, process_identity
from .engine import Progress, engine_call, quiet
from .live import LiveNginx

LOCK_STALE_SECONDS = 900


@dataclass
class TargetLock:
    """An engine-wide lock on one target: a created (never started) container with a fixed name.

    Docker refuses a second container of the same name, so two nginxctl runs, even on different
    machines talking to one engine, cannot both hold it. A lock left by a killed process is taken
    over when that process is gone (seen from the same machine and PID namespace), when it is held under
    our own `owner`, or (not a watch lock) when it is older than LOCK_STALE_SECONDS.
    Raises LockBusy (exit 3) naming the holder, EnvironmentProblem.
    """

    client: docker.DockerClient
    live: LiveNginx
    wait: float = 30.0
    progress: Progress = quiet
    purpose: str = "apply"
    kind: str = "lock"  # "watch": the lock a controller holds for its life, beside the change lock
    release_in_background: bool = False
    owner: str | None = None  # --lock-owner: a restarted or recreated controller takes its own lock back
    _container: Container | None = None

    @property
    def name(self) -> str:
        # by the target's name, not its id: a container recreated under the same name is the same target
        return f"nginxctl-{self.kind}-{hashlib.sha256(self.live.name.encode()).hexdigest()[:12]}"

    def __enter__(self) -> TargetLock:
        releasing = _RELEASING.pop(self.name, None)
        if releasing is not None:
            releasing[1].join()
        deadline = time.monotonic() + self.wait
        labels = {"nginxctl.role": "lock", "nginxctl.format": str(FORMAT), "nginxctl.host": socket.gethostname(),
                  **{f"nginxctl.{key}": value for key, value in process_identity().items()},
                  "nginxctl.time": str(int(time.time())), "nginxctl.target": self.live.name,
                  "nginxctl.purpose": self.purpose, **({"nginxctl.owner": self.owner} if self.owner else {})}
        while True:
            with engine_call(f"cannot take the lock on {self.live.name}"):
                try:
                    self._container = self.client.containers.create(
                        self.live.image, name=self.name, labels=labels, network_mode="none",
                        entrypoint=["/nonexistent-lock"], command=[])
                    return self
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                holder = self._holder()
            if holder is None:
                continue
            if self._stale(holder):
                self.progress(f"taking over a stale lock on {self.live.name} ({describe_holder(holder.labels)})")
                self._remove(holder)
                continue
            if time.monotonic() >= deadline:
                if self.kind == "watch":
                    raise LockBusy(f"another nginxctl watch already controls {self.live.name} "
                                   f"({describe_holder(holder.labels)}); stop it first, one controller per target")
                raise LockBusy(f"another nginxctl is changing {self.live.name} ({describe_holder(holder.labels)}); "
                               "try again when it has finished")
            self.progress(f"waiting for the lock on {self.live.name} ({describe_holder(holder.labels)})")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())) or 0.05)

    @classmethod
    def holder_of(cls, client: docker.DockerClient, live: LiveNginx, kind: str = "watch") -> dict[str, str] | None:
        """The labels of the live holder of this target's `kind` lock (None: nobody holds it, or the holder is
        gone). Raises EnvironmentProblem."""
        lock = cls(client, live, kind=kind)
        with engine_call(f"cannot read the {kind} lock of {live.name}"):
            holder = lock._holder()
        return None if holder is None or lock._stale(holder) else dict(holder.labels)

    def _holder(self) -> Container | None:
        try:
            return self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return None

    def _stale(self, holder: Container) -> bool:
        labels = holder.labels
        if int(time.time()) - int(labels.get("nginxctl.time", "0")) > LOCK_STALE_SECONDS \
                and labels.get("nginxctl.purpose") != "watch":
            return True
        me = process_identity()
        theirs = {key: labels.get(f"nginxctl.{key}", "") for key in me}
        if not theirs["boot"] and labels.get("nginxctl.host") == socket.gethostname():
            theirs.update(boot=me["boot"], pidns=me["pidns"])  # a lock from before identities: host name and PID
        if theirs == me:
            # ours, yet we are taking it: a create whose answer was lost (the engine went away mid-call) left
            # it; nothing in this process holds it
            return True
        alive = process_alive(theirs)
        if alive is not None:
            return not alive
        # Out of our sight (another PID namespace or machine). Held under our own --lock-owner, it is this
        # controller before a restart or a recreate of its container: ours to take back.
        return bool(self.owner) and labels.get("nginxctl.owner") == self.owner

    @staticmethod
    def _remove(holder: Container) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            holder.remove(force=True)

    def __exit__(self, *exc: Any) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            if not self.release_in_background:
                self._remove(container)
                return
            # The controller's next change is a quiet period away: release off the critical path. The next
            # take waits for it, and so does the controller when it stops (`release_all`, bounded).
            thread = threading.Thread(target=self._remove, args=(container,), daemon=True, name="nginxctl-lock-release")
            _RELEASING[self.name] = (self.live.name, thread)
            thread.start()


_RELEASING: dict[str, tuple[str, threading.Thread]] = {}   # lock -> (target, its release)


def release_all(locks: Sequence[TargetLock], wait: float) -> list[str]:
    """Release `locks`, and wait for the releases still going on in the background, all together and for `wait`
    seconds at most: a slow engine must not keep a stopping controller alive (its calls may take a minute).
    Returns the names of the targets whose lock was still being removed then: left to the engine; the next
    nginxctl takes such a lock over (its holder is gone)."""
    return together([(lock.live.name, functools.partial(lock.__exit__, None, None, None)) for lock in locks], wait,
                    list(_RELEASING.values()))


def describe_holder(labels: dict[str, str]) -> str:
    age = int(time.time()) - int(labels.get("nginxctl.time", "0") or 0)
    what = labels.get("nginxctl.purpose", "apply")
    owner = f", owner {labels['nginxctl.owner']}" if labels.get("nginxctl.owner") else ""
    return f"{what} by pid {labels.get('nginxctl.pid')} on {labels.get('nginxctl.host')}{owner}, for {age}s"
