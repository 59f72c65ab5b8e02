"""The two transports of a live target, chosen once when it is attached (see `live`): `ProcRoot` (this host's
/proc: files through /proc/PID/root, processes from /proc, signals sent directly) and `DockerApi` (archives,
`top`, kill through the engine). Each method raises EnvironmentProblem when the engine or the container fails;
`ProcRoot` raises LocalViewLost when the local view stops working, and the target switches to the API."""

from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from ..errors import EnvironmentProblem, NginxOutput
from ..lazy import lazy_import
from ..nginxtext import Process, Processes, parse_docker_time, parse_top, staged_name
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

    def read_binary(self, path: str, last: int | None = None) -> bytes | None:
        """The file at the absolute `path` in the container (its `last` bytes only, read from its end), read
        without following any symbolic link (an absolute link would be resolved against this host's root, not
        the container's); None when a link is on the way or it cannot be read."""
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
                if last is not None:
                    fh.seek(max(0, fh.seek(0, os.SEEK_END) - last))
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
