"""The one module that talks to Docker and to nginx inside containers.

Everything goes through the Docker API: archives to read and write files, exec of the nginx
binary itself, `top` for processes and signals for reloads. No shell runs in any container, so
an image that holds nothing but nginx works. Callers pass the Docker client in (the CLI makes it).
"""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from .errors import EnvironmentProblem, LockBusy, NginxOutput

DEFAULT_IMAGE = "nginx:stable"
LOCAL_IMAGE = "nginxctl/nginx:latest"  # built by scripts/build-nginx-image.sh from Debian packages
BUILD_HINT = "build it offline with scripts/build-nginx-image.sh, or pass --image"
STREAM_MODULE = "ngx_stream_module.so"
PLACEHOLDER_IP = "127.0.0.1"
VALIDATE_TIMEOUT = 60
LOCK_STALE_SECONDS = 900

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def connect(docker_host: str | None = None) -> docker.DockerClient:
    """A client for `docker_host`, else DOCKER_HOST, else the local socket; checked with a ping.

    Raises EnvironmentProblem when the engine cannot be reached.
    """
    where = docker_host or os.environ.get("DOCKER_HOST") or "the local Docker socket"
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(
            f"Docker is not reachable at {where} ({_short(exc)})",
            "start the Docker engine (dockerd) or set DOCKER_HOST / target.docker_host") from None
    return client


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"\(Caused by .*", "", text)
    return text[:200]


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


@dataclass(frozen=True)
class Build:
    """What `nginx -V` says about an image's nginx."""

    version: str
    dynamic_stream: bool
    modules_path: str

    @property
    def stream_module(self) -> str:
        return f"{self.modules_path}/{STREAM_MODULE}"


def parse_build(version_output: str) -> Build:
    version = re.search(r"nginx/([\w.]+)", version_output)
    modules = re.search(r"--modules-path=(\S+)", version_output)
    prefix = re.search(r"--prefix=(\S+)", version_output)
    return Build(version.group(1) if version else "unknown",
                 "--with-stream=dynamic" in version_output,
                 modules.group(1) if modules else f"{prefix.group(1) if prefix else '/etc/nginx'}/modules")


def ensure_image(client: docker.DockerClient, image: str, progress: Progress = _quiet) -> str:
    """Make sure `image` is present (pulling it if needed); return the image to use.

    The default nginx:stable falls back to the locally built nginxctl/nginx image when it cannot be
    pulled (no registry). Raises EnvironmentProblem when no usable image is there.
    """
    try:
        client.images.get(image)
        return image
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise EnvironmentProblem(f"cannot inspect image {image} ({_short(exc)})") from None
    progress(f"pulling {image}")
    try:
        client.images.pull(image)
        return image
    except docker.errors.DockerException as exc:
        pull_error = _short(exc)
    if image == DEFAULT_IMAGE:
        try:
            client.images.get(LOCAL_IMAGE)
            progress(f"{image} cannot be pulled; using the local {LOCAL_IMAGE}")
            return LOCAL_IMAGE
        except docker.errors.ImageNotFound:
            pass
    raise EnvironmentProblem(f"image {image} is not present and cannot be pulled ({pull_error})", BUILD_HINT)


def _run_throwaway(client: docker.DockerClient, image: str, command: list[str], *,
                   files: dict[str, str] | None = None, network: str = "none",
                   hosts: dict[str, str] | None = None, memory: int = 256 * 1024 ** 2) -> NginxOutput:
    """Run `command` in a locked-down container that is always removed; return its exit code and output.

    Files are put in a fresh volume at /etc/nginxctl (the root file system is read-only).
    """
    volume = client.volumes.create(f"nginxctl-validate-{uuid.uuid4().hex[:12]}") if files else None
    container = None
    try:
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
        container = client.containers.create(image, **kwargs)
        if files:
            container.put_archive("/etc/nginxctl", _tar(dict(files)))
        container.start()
        try:
            status = container.wait(timeout=VALIDATE_TIMEOUT)
        except Exception:  # the engine's read timeout: a hung nginx -t
            raise EnvironmentProblem(f"nginx -t did not finish within {VALIDATE_TIMEOUT}s in {image}") from None
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        container.reload()
        if container.attrs.get("State", {}).get("OOMKilled"):
            raise EnvironmentProblem(f"nginx -t ran out of memory in the test container ({memory // 1024 ** 2} "
                                     "MiB)", "large configs need more: this is nginxctl's limit, not nginx's error")
        return NginxOutput(command, int(status.get("StatusCode", 1)), output)
    except docker.errors.ImageNotFound:
        raise EnvironmentProblem(f"image {image} is not present", BUILD_HINT) from None
    except docker.errors.APIError as exc:
        raise EnvironmentProblem(f"Docker could not run the test container ({_short(exc)})") from None
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass
        if volume is not None:
            try:
                volume.remove(force=True)
            except docker.errors.DockerException:
                pass


_BUILD_CACHE: dict[str, Build] = {}


def image_build(client: docker.DockerClient, image: str) -> Build:
    """`nginx -V` of an image, run once per image id. Raises EnvironmentProblem."""
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
    256 MiB plus `shared_memory` (the zones nginx maps) plus ten times the config's size."""
    memory = 256 * 1024 ** 2 + shared_memory + 10 * len(config)
    return _run_throwaway(client, image, ["nginx", "-t", "-c", "/etc/nginxctl/nginx.conf"],
                          files={"nginx.conf": config}, network=network, hosts=hosts, memory=memory)


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    cmd: str
    started: str = ""

    @property
    def shutting_down(self) -> bool:
        return "shutting down" in self.cmd


@dataclass
class Processes:
    master: Process | None
    workers: list[Process] = field(default_factory=list)
    old_workers: list[Process] = field(default_factory=list)

    @property
    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers}


class LiveNginx:
    """An nginx running in a container: read and write its files, run its binary, reload it."""

    def __init__(self, client: docker.DockerClient, container: Container) -> None:
        self.client = client
        self.container = container
        self.name = container.name
        self.binary = self._find_binary()

    @classmethod
    def attach(cls, client: docker.DockerClient, name: str) -> LiveNginx:
        """The running container `name`. Raises EnvironmentProblem when missing or stopped."""
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            raise EnvironmentProblem(f"container {name} does not exist",
                                     "start it (see compose/) or name another with --container") from None
        except docker.errors.DockerException as exc:
            raise EnvironmentProblem(f"cannot inspect container {name} ({_short(exc)})") from None
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

    def exec(self, args: list[str]) -> NginxOutput:
        """Run the nginx binary with `args` in the container."""
        command = [self.binary, *args]
        try:
            result = self.container.exec_run(command, stdout=True, stderr=True, demux=True)
        except docker.errors.DockerException as exc:
            raise EnvironmentProblem(f"cannot exec nginx in {self.name} ({_short(exc)})") from None
        stdout, stderr = (part.decode(errors="replace") if part else "" for part in result.output)
        return NginxOutput(command, int(result.exit_code or 0), stderr + stdout, stdout)

    def build(self) -> Build:
        return parse_build(self.exec(["-V"]).output)

    def read_file(self, path: str) -> bytes | None:
        """The content of a file in the container, or None when it does not exist."""
        try:
            chunks, _ = self.container.get_archive(path)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise EnvironmentProblem(f"cannot read {path} in {self.name} ({_short(exc)})") from None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.next()
            if member is None:
                return None
            fh = tar.extractfile(member)
            return fh.read() if fh else None

    def put_files(self, directory: str, files: Mapping[str, bytes | str]) -> None:
        """Create or replace files under `directory` (subfolders are created)."""
        self._put(directory, _tar(files))

    def install_file(self, path: str, content: bytes | str) -> None:
        """Replace `path` so that a reader sees the old bytes or the new, never a part.

        The content goes to a hidden file beside it first; then one small archive makes `path` a
        hard link to it. A process killed mid-upload leaves only the hidden file half-written.
        """
        directory, _ = os.path.split(path)
        self._put(directory, _tar({staged_name(path): content}))
        self.commit_staged(path)

    def commit_staged(self, path: str) -> None:
        """Make `path` the file staged beside it (see install_file), in one small archive."""
        directory, name = os.path.split(path)
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

    def processes(self) -> Processes:
        """Master, current workers, and old workers still shutting down (from `docker top`)."""
        try:
            top = self.container.top()
        except docker.errors.DockerException as exc:
            raise EnvironmentProblem(f"cannot list processes of {self.name} ({_short(exc)})") from None
        titles = [t.upper() for t in top.get("Titles", [])]
        procs = []
        for row in top.get("Processes") or []:
            item = dict(zip(titles, row, strict=False))
            cmd = item.get("COMMAND") or item.get("CMD") or item.get("ARGS") or row[-1]
            started = item.get("STARTED") or item.get("STIME") or ""
            procs.append(Process(int(item["PID"]), int(item["PPID"]), cmd, started))
        master = next((p for p in procs if "master process" in p.cmd), None)
        result = Processes(master)
        for proc in procs:
            if master and proc.ppid == master.pid and "worker process" in proc.cmd:
                (result.old_workers if proc.shutting_down else result.workers).append(proc)
        return result

    def signal_reload(self, master: Process | None = None) -> None:
        """SIGHUP to the master: by the Docker API when it is the container's main process, else by
        `nginx -s reload`. `master` saves listing the processes again."""
        master = master or self.processes().master
        if master is not None and master.pid == self.container.attrs.get("State", {}).get("Pid"):
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
            since = datetime.fromtimestamp(float(mark) - 0.001, tz=timezone.utc)
            return self.container.logs(stdout=False, stderr=True, since=since).decode(errors="replace")
        content = self.read_file(where) or b""
        return content[int(mark):].decode(errors="replace")

    def sockets(self, pids: list[int]) -> dict[int, list[Socket]] | None:
        """TCP sockets per process, read from /proc on this host; None when the processes are not
        visible here (a remote Docker engine). Each network namespace's table is read once."""
        wanted: dict[int, set[str]] = {}
        tables: dict[str, str] = {}
        try:
            for pid in pids:
                inodes = set()
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
                wanted[pid] = inodes
                netns = os.readlink(f"/proc/{pid}/ns/net")
                if netns not in tables:
                    text = ""
                    for name in ("tcp", "tcp6"):
                        with open(f"/proc/{pid}/net/{name}", encoding="ascii") as fh:
                            text += fh.read()
                    tables[netns] = text
        except OSError:
            return None
        every = set().union(*wanted.values()) if wanted else set()
        table: dict[str, Socket] = {}
        for text in tables.values():
            table.update(parse_proc_net(text, every))
        return {pid: [table[i] for i in inodes if i in table] for pid, inodes in wanted.items()}


@dataclass(frozen=True)
class Socket:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # ESTABLISHED, LISTEN, ...


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def _proc_addr(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        addr = socket.inet_ntop(socket.AF_INET6, words)
        if addr.startswith("::ffff:") and "." in addr:
            addr = addr[7:]
    return addr, int(port, 16)


def parse_proc_net(text: str, inodes: set[str] | None = None) -> dict[str, Socket]:
    """/proc/net/tcp{,6} -> inode: Socket (only `inodes`, when given: the tables hold the whole host)."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) > 9 and cols[9].isdigit() and (inodes is None or cols[9] in inodes):
            out[cols[9]] = Socket(_proc_addr(cols[1]), _proc_addr(cols[2]), _TCP_STATES.get(cols[3], cols[3]))
    return out


def staged_name(path: str) -> str:
    """Where a new version of `path` waits, in the same folder (a hard link cannot cross file systems)."""
    return f".{os.path.basename(path)}.nginxctl-new"


def config_from_dump(dump: str, path: str) -> str | None:
    """The text of `path` inside `nginx -T` output (nginx adds one newline after each file)."""
    marker = f"# configuration file {path}:\n"
    start = dump.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = dump.find("\n# configuration file ", start)
    body = dump[start:] if end < 0 else dump[start:end + 1]
    return body[:-1] if body.endswith("\n\n") or (end < 0 and body.endswith("\n")) else body


@dataclass
class TargetLock:
    """An engine-wide lock on one target: a created (never started) container with a fixed name.

    Docker refuses a second container of the same name, so two nginxctl runs, even on different
    machines talking to one engine, cannot both hold it. A lock left by a killed process is taken
    over when its owner is gone (same host) or it is older than LOCK_STALE_SECONDS.
    """

    client: docker.DockerClient
    live: LiveNginx
    wait: float = 30.0
    progress: Progress = _quiet
    _container: Container | None = None

    @property
    def name(self) -> str:
        return f"nginxctl-lock-{self.live.container.id[:12]}"

    def __enter__(self) -> TargetLock:
        deadline = time.monotonic() + self.wait
        labels = {"nginxctl.role": "lock", "nginxctl.host": socket.gethostname(),
                  "nginxctl.pid": str(os.getpid()), "nginxctl.time": str(int(time.time())),
                  "nginxctl.target": self.live.name}
        while True:
            try:
                self._container = self.client.containers.create(
                    self.live.image, name=self.name, labels=labels, network_mode="none",
                    entrypoint=["/nonexistent-lock"], command=[])
                return self
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise EnvironmentProblem(f"cannot take the lock on {self.live.name} ({_short(exc)})") from None
            holder = self._holder()
            if holder is None:
                continue
            if self._stale(holder):
                self.progress(f"taking over a stale lock on {self.live.name} ({self._describe(holder)})")
                self._remove(holder)
                continue
            if time.monotonic() > deadline:
                raise LockBusy(f"another nginxctl is changing {self.live.name} ({self._describe(holder)}); "
                               "try again when it has finished")
            self.progress(f"waiting for the lock on {self.live.name} ({self._describe(holder)})")
            time.sleep(0.5)

    def _holder(self) -> Container | None:
        try:
            return self.client.containers.get(self.name)
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _describe(holder: Container) -> str:
        labels = holder.labels
        age = int(time.time()) - int(labels.get("nginxctl.time", "0"))
        return f"held by pid {labels.get('nginxctl.pid')} on {labels.get('nginxctl.host')} for {age}s"

    @staticmethod
    def _stale(holder: Container) -> bool:
        labels = holder.labels
        if int(time.time()) - int(labels.get("nginxctl.time", "0")) > LOCK_STALE_SECONDS:
            return True
        if labels.get("nginxctl.host") == socket.gethostname():
            try:
                os.kill(int(labels.get("nginxctl.pid", "0")), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
        return False

    @staticmethod
    def _remove(holder: Container) -> None:
        try:
            holder.remove(force=True)
        except docker.errors.NotFound:
            pass

    def __exit__(self, *exc: Any) -> None:
        if self._container is not None:
            self._remove(self._container)
