"""The one module that talks to Docker, and to nginx inside containers.

Everything goes through the Docker API: archives to read and write files, exec of the nginx
binary itself, `top` for processes and signals for reloads. No shell runs in any container, so
an image that holds nothing but nginx works. Callers pass the Docker client in (the CLI makes it).
Every Docker call is wrapped by `_engine`, so a failing engine is an EnvironmentProblem (exit 3),
never a traceback. What nginx prints is parsed in `nginxtext` (pure).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import signal
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions
from docker.models.containers import Container

from .capacity import Machine
from .errors import EnvironmentProblem, LockBusy, NginxOutput
from .history import Master
from .host import process_alive, process_identity
from .nginxtext import Build, Process, Processes, parse_build, parse_docker_time, parse_top, staged_name

DEFAULT_IMAGE = "nginx:stable"
LOCAL_IMAGE = "nginxctl/nginx:latest"  # built by scripts/build-nginx-image.sh from Debian packages
BUILD_HINT = "build it offline with scripts/build-nginx-image.sh, pull it yourself, or pass --image (--pull)"
PLACEHOLDER_IP = "127.0.0.1"
VALIDATE_TIMEOUT = 60
LOCK_STALE_SECONDS = 900

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"\(Caused by .*", "", text)
    return text[:200]


@contextlib.contextmanager
def _engine(what: str, hint: str = "") -> Iterator[None]:
    """Turn any failure of the Docker engine or the connection to it into an EnvironmentProblem."""
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EnvironmentProblem(f"{what} ({_short(exc)})", hint) from None


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
        with _engine(f"Docker is not reachable at {where}", hint):
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
    with _engine("cannot read the Docker engine's info"):
        info = client.info()
    return Machine(cpus=int(info.get("NCPU") or 1), memory_bytes=int(info.get("MemTotal") or 0))


def _tar(members: Mapping[str, bytes | str], links: dict[str, str] | None = None, mtime: float | None = None) -> bytes:
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
    with _engine(f"cannot inspect image {image}"):
        try:
            client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False


def ensure_image(client: docker.DockerClient, image: str, *, pull: bool = False, progress: Progress = _quiet) -> str:
    """Make sure `image` is present; pull it only when asked (`pull`): never a surprise download.

    Raises EnvironmentProblem when it is not there (or cannot be pulled).
    """
    if image_present(client, image):
        return image
    if not pull:
        raise EnvironmentProblem(f"image {image} is not present on the Docker engine", BUILD_HINT)
    progress(f"pulling {image}")
    with _engine(f"image {image} is not present and cannot be pulled", BUILD_HINT):
        client.images.pull(image)
    return image


def _run_throwaway(client: docker.DockerClient, image: str, command: list[str], *,
                   files: dict[str, str] | None = None, network: str = "none",
                   hosts: dict[str, str] | None = None, memory: int = 256 * 1024 ** 2) -> NginxOutput:
    """Run `command` in a locked-down container that is always removed; return its exit code and output.

    Files are put in a fresh volume at /etc/nginxctl (the root file system is read-only).
    Raises EnvironmentProblem.
    """
    volume = None
    container = None
    try:
        with _engine("Docker could not run the test container"):
            if files:
                volume = client.volumes.create(f"nginxctl-validate-{uuid.uuid4().hex[:12]}")
            kwargs: dict[str, Any] = dict(
                read_only=True, tmpfs={"/run": "size=1m", "/tmp": "size=16m", "/var/log/nginx": "size=4m",
                                       "/var/lib/nginx": "size=16m", "/var/cache/nginx": "size=16m"},
                cap_drop=["ALL"], cap_add=["NET_BIND_SERVICE", "SETUID", "SETGID"],
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
                raise EnvironmentProblem(f"image {image} is not present", BUILD_HINT) from None
            if files:
                container.put_archive("/etc/nginxctl", _tar(dict(files)))
            container.start()
            try:
                status = container.wait(timeout=VALIDATE_TIMEOUT)
            except requests.exceptions.ReadTimeout:
                raise EnvironmentProblem(f"nginx -t did not finish within {VALIDATE_TIMEOUT}s in {image}") from None
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
            container.reload()
        if container.attrs.get("State", {}).get("OOMKilled"):
            raise EnvironmentProblem(f"nginx -t ran out of memory in the test container ({memory // 1024 ** 2} "
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
    with _engine(f"cannot inspect image {image}"):
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


@dataclass(frozen=True)
class FileInfo:
    content: bytes
    mtime: datetime | None


class LiveNginx:
    """An nginx running in a container: read and write its files, run its binary, reload it.

    When nginxctl runs on the engine's host (the container's main process is visible in this /proc),
    files are read and written through /proc/PID/root, processes are read from /proc and the reload
    signal is sent directly: the same operations, without a Docker round trip each (an archive costs
    ~45 ms). Otherwise (a remote engine, or nginxctl in a container of its own) everything goes
    through the Docker API. Every method raises EnvironmentProblem when the engine or the container fails.
    """

    def __init__(self, client: docker.DockerClient, container: Container, *, local: bool = True) -> None:
        self.client = client
        self.container = container
        self.name = container.name
        self.binary = self._find_binary()
        self._master_pid: int | None = None
        self._build: Build | None = None
        self.root = self._local_root() if local else None

    def _local_root(self) -> str | None:
        """/proc/PID/root of the container's main process, when it is this host's process (its command
        line is the container's own command); None otherwise."""
        state = self.container.attrs.get("State", {})
        pid = state.get("Pid")
        config = self.container.attrs.get("Config", {})
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

    @classmethod
    def attach(cls, client: docker.DockerClient, name: str) -> LiveNginx:
        """The running container `name`. Raises EnvironmentProblem when missing or stopped."""
        with _engine(f"cannot inspect container {name}"):
            try:
                container = client.containers.get(name)
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {name} does not exist",
                                         "start it (see compose/) or name another with --container") from None
        if container.status != "running":
            raise EnvironmentProblem(f"container {name} is {container.status}, not running",
                                     f"start it: docker start {name}")
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

    def refresh(self) -> None:
        """Read the container's state again (a restart changes its start time and main pid)."""
        with _engine(f"cannot inspect container {self.name}"):
            try:
                self.container.reload()
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {self.name} no longer exists") from None

    def exec(self, args: list[str]) -> NginxOutput:
        """Run the nginx binary with `args` in the container."""
        command = [self.binary, *args]
        with _engine(f"cannot exec nginx in {self.name}"):
            try:
                result = self.container.exec_run(command, stdout=True, stderr=True, demux=True)
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {self.name} no longer exists") from None
        stdout, stderr = (part.decode(errors="replace") if part else "" for part in result.output)
        return NginxOutput(command, int(result.exit_code or 0), stderr + stdout, stdout)

    def build(self) -> Build:
        """`nginx -V` of the running nginx, once per attach (the binary does not change under it)."""
        if self._build is None:
            self._build = parse_build(self.exec(["-V"]).output)
        return self._build

    def stat_file(self, path: str) -> FileInfo | None:
        """A file's content and modification time, or None when it does not exist."""
        if self.root is not None:
            try:
                with open(self.root + path, "rb") as local:
                    mtime = os.fstat(local.fileno()).st_mtime
                    return FileInfo(local.read(), datetime.fromtimestamp(mtime, tz=timezone.utc))
            except FileNotFoundError:
                if os.path.exists(f"{self.root}/"):
                    return None
                self._gone()
            except IsADirectoryError:
                return None
            except OSError:
                self.root = None  # fall back to the Docker API
        with _engine(f"cannot read {path} in {self.name}"):
            try:
                chunks, stat = self.container.get_archive(path)
                data = b"".join(chunks)
            except docker.errors.NotFound as exc:
                if "no such container" in str(exc).lower():
                    raise EnvironmentProblem(f"container {self.name} no longer exists") from None
                return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = tar.next()
            extracted = tar.extractfile(member) if member is not None else None
            if extracted is None:
                return None
            when = parse_docker_time(str(stat.get("mtime", ""))) if isinstance(stat, dict) else None
            return FileInfo(extracted.read(), when)

    def read_file(self, path: str) -> bytes | None:
        """The content of a file in the container, or None when it does not exist."""
        info = self.stat_file(path)
        return info.content if info else None

    def _gone(self) -> None:
        raise EnvironmentProblem(f"container {self.name} no longer runs (its main process is gone)")

    def _write_local(self, path: str, content: bytes | str) -> None:
        """Write `path` in the container through /proc/PID/root: a temp file, then a rename."""
        assert self.root is not None
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

    def _local(self, what: str, action: Callable[[], None]) -> bool:
        """Run a local file operation; False (use the Docker API) when the local view is not usable."""
        if self.root is None:
            return False
        if not os.path.exists(f"{self.root}/"):
            self._gone()
        try:
            action()
            return True
        except OSError as exc:
            if exc.errno in (16, 30):  # EBUSY, EROFS: a bind-mounted file or a read-only mount
                raise EnvironmentProblem(
                    f"cannot write {what} in {self.name} ({exc.strerror})",
                    "a single bind-mounted file cannot be replaced: mount its directory instead (see README, "
                    "'Bind mounts')") from None
            self.root = None
            return False

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None:
        """Create or replace files under `directory` (subfolders are created)."""
        def local() -> None:
            for name, content in files.items():
                self._write_local(f"{directory.rstrip('/')}/{name}", content)

        if not self._local(directory, local):
            self._put(directory, _tar(files))

    def install_file(self, path: str, content: bytes | str) -> None:
        """Replace `path` so that a reader sees the old bytes or the new, never a part.

        The content goes to a hidden file beside it first; then one small archive makes `path` a
        hard link to it. A process killed mid-upload leaves only the hidden file half-written.
        """
        directory, _ = os.path.split(path)
        if self._local(path, lambda: self._write_local(path, content)):
            return
        self._put(directory, _tar({staged_name(path): content}))
        self.commit_staged(path)

    def commit_staged(self, path: str) -> None:
        """Make `path` the file staged beside it (see install_file): one rename, or one small archive."""
        directory, name = os.path.split(path)
        staged = f"{directory}/{staged_name(path)}"
        if self._local(path, lambda: os.replace(f"{self.root}{staged}", f"{self.root}{path}")):
            return
        self._put(directory, _tar({}, links={name: staged_name(path)}))

    def _put(self, directory: str, archive: bytes) -> None:
        try:
            self.container.put_archive(directory, archive)
        except docker.errors.APIError as exc:
            text = _short(exc)
            hint = ""
            if "busy" in text or "read-only" in text:
                hint = ("a single bind-mounted file cannot be replaced: mount its directory instead "
                        "(see README, 'Bind mounts')")
            raise EnvironmentProblem(f"cannot write into {directory} in {self.name} ({text})", hint) from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EnvironmentProblem(f"cannot write into {directory} in {self.name} ({_short(exc)})") from None

    def processes(self) -> Processes:
        """Master, current workers, and old workers still shutting down: from /proc when the master is
        visible here (its children and their titles), else from `docker top`."""
        if self.root is not None and self._master_pid is not None:
            local = _local_processes(self._master_pid)
            if local is not None:
                return local
        with _engine(f"cannot list processes of {self.name}"):
            try:
                top = self.container.top()
            except docker.errors.NotFound:
                raise EnvironmentProblem(f"container {self.name} no longer exists") from None
        procs = parse_top(top)
        self._master_pid = procs.master.pid if procs.master else None
        return procs

    def master(self, processes: Processes | None = None) -> Master | None:
        """The running master's identity (pid and the container's start time), for `history.loaded_now`."""
        procs = processes or self.processes()
        return Master(procs.master.pid, self.started_at) if procs.master else None

    def signal_reload(self, master: Process | None = None) -> None:
        """SIGHUP to the master: by the Docker API when it is the container's main process, else by
        `nginx -s reload`. `master` saves listing the processes again."""
        master = master or self.processes().master
        if master is not None and self.root is not None:
            try:
                os.kill(master.pid, signal.SIGHUP)
                return
            except OSError:
                pass
        if master is not None and master.pid == self.container.attrs.get("State", {}).get("Pid"):
            with _engine(f"cannot signal nginx in {self.name}"):
                self.container.kill(signal="HUP")
        else:
            result = self.exec(["-s", "reload"])
            if result.exit_code != 0:
                raise EnvironmentProblem(f"nginx -s reload failed in {self.name}: {result.output.strip()}")

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
            with _engine(f"cannot read the logs of {self.name}"):
                raw = self.container.logs(stdout=False, stderr=True, since=max(float(mark) - 0.001, 0.001))
            return bytes(raw).decode(errors="replace")
        content = self.read_file(where) or b""
        return content[int(mark):].decode(errors="replace")

    def hosts_file(self) -> str:
        """The container's /etc/hosts (what nginx resolves names with first), or '' when absent."""
        return (self.read_file("/etc/hosts") or b"").decode(errors="replace")


def _local_processes(master: int) -> Processes | None:
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
    progress: Progress = _quiet
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
            releasing.join()
        deadline = time.monotonic() + self.wait
        labels = {"nginxctl.role": "lock", "nginxctl.host": socket.gethostname(),
                  **{f"nginxctl.{key}": value for key, value in process_identity().items()},
                  "nginxctl.time": str(int(time.time())), "nginxctl.target": self.live.name,
                  "nginxctl.purpose": self.purpose, **({"nginxctl.owner": self.owner} if self.owner else {})}
        while True:
            with _engine(f"cannot take the lock on {self.live.name}"):
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
        with _engine(f"cannot read the {kind} lock of {live.name}"):
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
            # The controller's next change is a quiet period away: release off the critical path. The
            # thread is not a daemon (the process waits for it), and the next take waits for it too.
            thread = threading.Thread(target=self._remove, args=(container,), name="nginxctl-lock-release")
            _RELEASING[self.name] = thread
            thread.start()


_RELEASING: dict[str, threading.Thread] = {}


def describe_holder(labels: dict[str, str]) -> str:
    age = int(time.time()) - int(labels.get("nginxctl.time", "0") or 0)
    what = labels.get("nginxctl.purpose", "apply")
    owner = f", owner {labels['nginxctl.owner']}" if labels.get("nginxctl.owner") else ""
    return f"{what} by pid {labels.get('nginxctl.pid')} on {labels.get('nginxctl.host')}{owner}, for {age}s"
