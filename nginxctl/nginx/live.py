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

import io
import logging
import os
import signal
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from ..errors import EnvironmentProblem, NginxOutput
from ..history import Master
from ..lazy import lazy_import
from ..nginxtext import (
    Build,
    Process,
    Processes,
    compiled_version,
    parse_build,
    parse_docker_time,
    parse_top,
    staged_name,
)
from .engine import engine_call, short, tar_archive

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

BIND_MOUNT_HINT = ("a single bind-mounted file cannot be replaced: mount its directory instead (see README, "
                   "'Bind mounts')")


@dataclass(frozen=True)
class FileInfo:
    content: bytes
    mtime: datetime | None


class Transport(Protocol):
    """How a target's files, processes and reload signal are reached."""

    name: str

    def stat_file(self, path: str) -> FileInfo | None: ...

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None: ...

    def install_file(self, path: str, content: bytes | str) -> None: ...

    def commit_staged(self, path: str) -> None: ...

    def processes(self) -> Processes: ...

    def signal_reload(self, master: Process) -> None: ...


class LocalViewLost(Exception):
    """The local view (/proc/PID/root) cannot do what was asked: use the Docker API from now on."""


class DockerApi:
    """The target through the Docker API alone."""

    name = "docker-api"

    def __init__(self, container: Container, exec_nginx: NginxExec) -> None:
        self.container = container
        self.target = container.name
        self.exec_nginx = exec_nginx

    def _missing(self) -> EnvironmentProblem:
        return EnvironmentProblem(f"container {self.target} no longer exists")

    def stat_file(self, path: str) -> FileInfo | None:
        with engine_call(f"cannot read {path} in {self.target}"):
            try:
                chunks, stat = self.container.get_archive(path)
                data = b"".join(chunks)
            except docker.errors.NotFound as exc:
                if "no such container" in str(exc).lower():
                    raise self._missing() from None
                return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member is not None else None
            if extracted is None:
                return None
            when = parse_docker_time(str(stat.get("mtime", ""))) if isinstance(stat, dict) else None
            return FileInfo(extracted.read(), when)

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None:
        self._put(directory, tar_archive(files))

    def install_file(self, path: str, content: bytes | str) -> None:
        # the content goes to a hidden file beside it first; one small archive then makes `path` a hard link
        # to it: a process killed mid-upload leaves only the hidden file half-written
        directory, _ = os.path.split(path)
        self._put(directory, tar_archive({staged_name(path): content}))
        self.commit_staged(path)

    def commit_staged(self, path: str) -> None:
        directory, name = os.path.split(path)
        self._put(directory, tar_archive({}, links={name: staged_name(path)}))

    def _put(self, directory: str, archive: bytes) -> None:
        try:
            self.container.put_archive(directory, archive)
        except docker.errors.APIError as exc:
            text = short(exc)
            hint = BIND_MOUNT_HINT if "busy" in text or "read-only" in text else ""
            raise EnvironmentProblem(f"cannot write into {directory} in {self.target} ({text})", hint) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EnvironmentProblem(f"cannot write into {directory} in {self.target} ({short(exc)})") from None

    def processes(self) -> Processes:
        with engine_call(f"cannot list processes of {self.target}"):
            try:
                top = self.container.top()
            except docker.errors.NotFound:
                raise self._missing() from None
        return parse_top(top)

    def signal_reload(self, master: Process) -> None:
        if master.pid == self.container.attrs.get("State", {}).get("Pid"):
            with engine_call(f"cannot signal nginx in {self.target}"):
                self.container.kill(signal="HUP")
            return
        result = self.exec_nginx(["-s", "reload"])
        if result.exit_code != 0:
            raise EnvironmentProblem(f"nginx -s reload failed in {self.target}: {result.output.strip()}")


class ProcRoot:
    """The target through this host's /proc: its main process's root, its master's children, signals."""

    name = "proc-root"

    def __init__(self, root: str, target: str, api: DockerApi, main_pid: int | None = None) -> None:
        self.root = root
        self.target = target
        self.api = api   # `top` once, to find the master among the container's processes
        self.master_pid: int | None = None
        self._main_pid = main_pid   # the container's main process at attach: most often nginx's master

    def _alive(self) -> None:
        if not os.path.exists(f"{self.root}/"):
            raise EnvironmentProblem(f"container {self.target} no longer runs (its main process is gone)")

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        """Run a write; EBUSY/EROFS are the user's mounts (exit 3, say which); other failures lose the local view."""
        try:
            action()
        except OSError as exc:
            if exc.errno in (16, 30):  # EBUSY, EROFS: a bind-mounted file or a read-only mount
                raise EnvironmentProblem(f"cannot write {what} in {self.target} ({exc.strerror})",
                                         BIND_MOUNT_HINT) from None
            self._alive()
            raise LocalViewLost(f"writing {what} through {self.root}: {exc.strerror}") from None

    def stat_file(self, path: str) -> FileInfo | None:
        try:
            with open(self.root + path, "rb") as local:
                mtime = os.fstat(local.fileno()).st_mtime
                return FileInfo(local.read(), datetime.fromtimestamp(mtime, tz=timezone.utc))
        except (FileNotFoundError, NotADirectoryError):
            self._alive()
            return None
        except IsADirectoryError:
            return None
        except OSError as exc:
            self._alive()
            raise LocalViewLost(f"reading {path} through {self.root}: {exc.strerror}") from None

    def _write(self, path: str, content: bytes | str) -> None:
        """A temp file beside `path`, then a rename: a reader sees the old bytes or the new."""
        data = content.encode() if isinstance(content, str) else content
        full = self.root + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        tmp = f"{os.path.dirname(full)}/.{os.path.basename(full)}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, full)

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None:
        self._alive()

        def write_all() -> None:
            for name, content in files.items():
                self._write(f"{directory.rstrip('/')}/{name}", content)

        self._guard(directory, write_all)

    def install_file(self, path: str, content: bytes | str) -> None:
        self._alive()
        self._guard(path, lambda: self._write(path, content))

    def commit_staged(self, path: str) -> None:
        self._alive()
        directory = os.path.dirname(path)
        staged = f"{directory}/{staged_name(path)}"
        self._guard(path, lambda: os.replace(f"{self.root}{staged}", f"{self.root}{path}"))

    def processes(self) -> Processes:
        if self.master_pid is None and self._main_pid is not None:
            # the first listing: when the container's main process is nginx's master, no `top` is needed
            # (only at the first, right after the inspect that named it: a pid is reused once it is gone)
            pid, self._main_pid = self._main_pid, None
            local = local_processes(pid)
            if local is not None:
                self.master_pid = pid
                return local
        if self.master_pid is not None:
            local = local_processes(self.master_pid)
            if local is not None:
                return local
        procs = self.api.processes()
        self.master_pid = procs.master.pid if procs.master else None
        return procs

    def signal_reload(self, master: Process) -> None:
        try:
            os.kill(master.pid, signal.SIGHUP)
        except OSError as exc:
            raise LocalViewLost(f"signalling nginx's master {master.pid}: {exc.strerror}") from None

    def read_binary(self, path: str) -> bytes | None:
        """The file at the absolute `path` in the container, read without following any symbolic link (an
        absolute link would be resolved against this host's root, not the container's); None when a link
        is on the way or it cannot be read."""
        if not path.startswith("/"):
            return None
        parts = [p for p in path.split("/") if p]
        try:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            for part in parts[:-1]:
                step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = step
            file = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            with open(file, "rb") as fh:
                return fh.read()
        except (OSError, IndexError):
            return None
        finally:
            os.close(fd)


class NginxExec(Protocol):
    def __call__(self, args: list[str]) -> NginxOutput: ...


def local_root(container: Container) -> str | None:
    """/proc/PID/root of the container's main process, when it is this host's process (its command line is
    the container's own command); None otherwise."""
    state = container.attrs.get("State", {})
    pid = state.get("Pid")
    config = container.attrs.get("Config", {})
    expected = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    if not pid or not expected:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = [part.decode(errors="replace") for part in fh.read().split(b"\0") if part]
        root = f"/proc/{pid}/root"
        os.stat(f"{root}/")
    except OSError:
        return None
    # nginx rewrites its argv ("nginx: master process ..."): compare what it keeps, the binary's name
    first = cmdline[0] if cmdline else ""
    if cmdline != expected and not (first.startswith("nginx: master process")
                                    and os.path.basename(expected[0]) == "nginx"):
        return None
    return root


def local_processes(master: int) -> Processes | None:
    """The master's children from /proc (None when the master is gone: ask Docker again)."""
    def title(pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return None

    try:
        with open(f"/proc/{master}/task/{master}/children", encoding="ascii") as fh:
            children = [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return None
    cmd = title(master)
    if cmd is None or "master process" not in cmd:
        return None
    rows = [["PID", "PPID", "CMD"], [str(master), "0", cmd]]
    for pid in children:
        child = title(pid)
        if child is not None:
            rows.append([str(pid), str(master), child])
    return parse_top({"Titles": rows[0], "Processes": rows[1:]})


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
    def on_host_network(self) -> bool:
        return self.container.attrs.get("HostConfig", {}).get("NetworkMode") == "host"

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

    def log_since(self, cursor: tuple[str, float | int]) -> str:
        where, mark = cursor
        if where == "stderr":
            # A float, not a datetime: the SDK truncates a datetime to whole seconds, which would
            # bring back up to a second of lines logged before the cursor.
            with engine_call(f"cannot read the logs of {self.name}"):
                raw = self.container.logs(stdout=False, stderr=True, since=max(float(mark) - 0.001, 0.001))
            return bytes(raw).decode(errors="replace")
        content = self.read_file(where) or b""
        return content[int(mark):].decode(errors="replace")

    def hosts_file(self) -> str:
        """The container's /etc/hosts (what nginx resolves names with first), or '' when absent."""
        return (self.read_file("/etc/hosts") or b"").decode(errors="replace")
