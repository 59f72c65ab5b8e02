"""A running nginx in a container: read and write its files, list its processes, run its binary, reload it.

Two transports do the work, chosen once when the target is attached:

- `ProcRoot`: nginxctl runs on the engine's host and sees the container's main process in its /proc: files
  are read and written through /proc/PID/root (a temp file, then a rename), processes are the master's
  children in /proc, the reload signal is sent directly. No Docker round trip (an archive costs ~45 ms).
- `DockerApi`: everything through the Docker API (archives, `top`, kill), for a remote engine or a
  nginxctl without the host's PID namespace.

When the local view stops working (a permission the process lacks, a mount it cannot write), the target
switches to the Docker API once, and says so in the log; it never switches back. `exec` of the nginx
binary always goes through the API (a container's binary is never run on this host); what `nginx -V` says
is read from the binary itself when it is local. Every method raises EnvironmentProblem when the engine or
the container fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import EnvironmentProblem, NginxOutput
from ..history import Master
from ..lazy import lazy_import
from ..nginxtext import (
    Build,
    Process,
    Processes,
    compiled_version,
    parse_build,
)
from .engine import engine_call
from .transport import DockerApi, FileInfo, LocalViewLost, ProcRoot, Transport, local_root

if TYPE_CHECKING:
    import docker
    import docker.errors
    import requests
    import requests.exceptions
    from docker.models.containers import Container
else:
    docker = lazy_import("docker")
    requests = lazy_import("requests")

log = logging.getLogger(__name__)


class LiveNginx:
    """An nginx running in a container (see the module docstring for how it is reached)."""

    def __init__(self, client: docker.DockerClient, container: Container, *, local: bool = True) -> None:
        self.client = client
        self.container = container
        self.name = container.name
        self.binary = self._find_binary()
        self._build: Build | None = None
        self.api = DockerApi(container, self.exec)
        root = local_root(container) if local else None
        self.transport: Transport = ProcRoot(root, self.name, self.api, self.main_pid) if root else self.api

    @property
    def root(self) -> str | None:
        """/proc/PID/root while the target is reached locally; None through the Docker API."""
        return self.transport.root if isinstance(self.transport, ProcRoot) else None

    def _use_api(self, why: LocalViewLost) -> None:
        log.warning("%s: the local view stopped working (%s): using the Docker API from now on", self.name, why)
        self.transport = self.api

    @classmethod
    def attach(cls, client: docker.DockerClient, name: str) -> LiveNginx:
        """The running container `name`. Raises EnvironmentProblem when missing or stopped."""
        with engine_call(f"cannot inspect container {name}"):
            try:
                container = client.containers.get(name)
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {name} does not exist",
                                         "start it (see compose/) or name another with --container") from None
        if container.status != "running":
            fix = f"docker unpause {name}" if container.status == "paused" else f"docker start {name}"
            raise EnvironmentProblem(f"container {name} is {container.status}, not running", f"start it: {fix}")
        return cls(client, container)

    def _find_binary(self) -> str:
        config = self.container.attrs.get("Config", {})
        for part in (config.get("Entrypoint") or []) + (config.get("Cmd") or []):
            if part.rsplit("/", 1)[-1] == "nginx" and part.startswith("/"):
                return str(part)
        return "nginx"

    @property
    def image(self) -> str:
        return str(self.container.attrs["Image"])

    @property
    def network_mode(self) -> str:
        return f"container:{self.container.id}"

    @property
    def started_at(self) -> str:
        return str(self.container.attrs.get("State", {}).get("StartedAt", ""))

    @property
    def main_pid(self) -> int | None:
        """The container's main process as this host sees it (None: not running)."""
        pid = self.container.attrs.get("State", {}).get("Pid")
        return int(pid) if pid else None

    def refresh(self) -> None:
        """Read the container's state again (a restart changes its start time and main pid)."""
        with engine_call(f"cannot inspect container {self.name}"):
            try:
                self.container.reload()
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {self.name} no longer exists") from None

    def exec(self, args: list[str]) -> NginxOutput:
        """Run the nginx binary with `args` in the container."""
        command = [self.binary, *args]
        with engine_call(f"cannot exec nginx in {self.name}"):
            try:
                result = self.container.exec_run(command, stdout=True, stderr=True, demux=True)
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {self.name} no longer exists") from None
        stdout, stderr = (part.decode(errors="replace") if part else "" for part in result.output)
        return NginxOutput(command, int(result.exit_code or 0), stderr + stdout, stdout)

    def build(self) -> Build:
        """`nginx -V` of the running nginx, once per attach (the binary does not change under it). Locally,
        read from the binary (`compiled_version`: no exec, ~50 ms less); else, or when the binary does not
        show it, by running it."""
        if self._build is None:
            transport = self.transport
            binary = transport.read_binary(self.binary) if isinstance(transport, ProcRoot) else None
            text = compiled_version(binary) if binary is not None else None
            self._build = parse_build(text if text is not None else self.exec(["-V"]).output)
        return self._build

    def stat_file(self, path: str) -> FileInfo | None:
        """A file's content and modification time, or None when it does not exist."""
        try:
            return self.transport.stat_file(path)
        except LocalViewLost as why:
            self._use_api(why)
            return self.transport.stat_file(path)

    def read_file(self, path: str) -> bytes | None:
        """The content of a file in the container, or None when it does not exist."""
        info = self.stat_file(path)
        return info.content if info else None

    def read_tail(self, path: str, size: int) -> tuple[bytes, bool]:
        """The last `size` bytes of a file in the container (b"" when it does not exist) and whether it is longer:
        read from its end through /proc/PID/root (a log of gigabytes costs nothing, no link followed), else whole
        through the Docker API (a link there is the link, not this host's file it would name)."""
        transport = self.transport
        data = transport.read_binary(path, last=size + 1) if isinstance(transport, ProcRoot) else None
        if data is None:
            info = self.api.stat_file(path)
            data = info.content if info else b""
        return data[-size:], len(data) > size

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None:
        """Create or replace files under `directory` (subfolders are created)."""
        try:
            self.transport.put_files(directory, files)
        except LocalViewLost as why:
            self._use_api(why)
            self.transport.put_files(directory, files)

    def install_file(self, path: str, content: bytes | str) -> None:
        """Replace `path` so that a reader sees the old bytes or the new, never a part."""
        try:
            self.transport.install_file(path, content)
        except LocalViewLost as why:
            self._use_api(why)
            self.transport.install_file(path, content)

    def commit_staged(self, path: str) -> None:
        """Make `path` the file staged beside it (see install_file)."""
        try:
            self.transport.commit_staged(path)
        except LocalViewLost as why:
            self._use_api(why)
            self.transport.commit_staged(path)

    def processes(self) -> Processes:
        """Master, current workers, and old workers still shutting down."""
        return self.transport.processes()

    def master(self, processes: Processes | None = None) -> Master | None:
        """The running master's identity (pid and the container's start time), for `history.loaded_now`."""
        procs = processes or self.processes()
        return Master(procs.master.pid, self.started_at) if procs.master else None

    def signal_reload(self, master: Process | None = None) -> None:
        """SIGHUP to the master. `master` saves listing the processes again."""
        master = master or self.processes().master
        if master is None:
            raise EnvironmentProblem(f"no nginx master process runs in {self.name}")
        try:
            self.transport.signal_reload(master)
        except LocalViewLost as why:
            self._use_api(why)
            self.transport.signal_reload(master)

    def log_cursor(self, error_log: str) -> tuple[str, float | int]:
        """A position in the error log to read from later: a time for stderr, a size for a file."""
        if error_log == "stderr":
            return ("stderr", time.time())
        content = self.read_file(error_log)
        return (error_log, len(content) if content else 0)

    def log_since(self, cursor: tuple[str, float | int], tail: int | None = None, timestamps: bool = False) -> str:
        """What nginx logged since `cursor`; `tail`: at most that many of the last lines of stderr (the engine
        reads a container's log from its end then, not its start); `timestamps`: each stderr line led by the
        engine's UTC time of it."""
        where, mark = cursor
        if where == "stderr":
            # A float, not a datetime: the SDK truncates a datetime to whole seconds, which would
            # bring back up to a second of lines logged before the cursor.
            with engine_call(f"cannot read the logs of {self.name}"):
                raw = self.container.logs(stdout=False, stderr=True, since=max(float(mark) - 0.001, 0.001),
                                          tail=tail if tail is not None else "all", timestamps=timestamps)
            return bytes(raw).decode(errors="replace")
        content = self.read_file(where) or b""
        return content[int(mark):].decode(errors="replace")

    def hosts_file(self) -> str:
        """The container's /etc/hosts (what nginx resolves names with first), or '' when absent."""
        return (self.read_file("/etc/hosts") or b"").decode(errors="replace")
