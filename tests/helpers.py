"""Real servers and clients for the tests: TCP/UDP echo servers that say who they are, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

IMAGE = os.environ.get("NGINXCTL_TEST_IMAGE", "nginxctl/nginx:bare")
TIMEOUT = 5.0


_GIVEN: set[int] = set()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free now on 127.0.0.1, below the kernel's ephemeral range (32768+): no outgoing connection of
    another process can take it before the test binds it, and none handed out before in this run."""
    pick = random.Random()
    for _ in range(500):
        port = pick.randint(20000, 32000)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000 on 127.0.0.1")


class _TCPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        conn = self.request
        server.register(conn)
        try:
            conn.sendall(server.name.encode() + b"\n")
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                conn.sendall(data)
        except OSError:
            return
        finally:
            server.unregister(conn)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256   # a fleet of clients connecting at once (socketserver's default backlog is 5)

    def __init__(self, port: int, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.conns: set[socket.socket] = set()
        self.changed = threading.Condition()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _TCPHandler)

    def register(self, conn: socket.socket) -> None:
        with self.changed:
            self.conns.add(conn)
            self.changed.notify_all()

    def unregister(self, conn: socket.socket) -> None:
        with self.changed:
            self.conns.discard(conn)
            self.changed.notify_all()


class _UDPHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(self.server.name.encode() + b":" + data, self.client_address)  # type: ignore[attr-defined]


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        super().__init__(("127.0.0.1", port), _UDPHandler)


@dataclass
class Backend:
    """An echo server on host:port (127.0.0.1 unless said) that sends its name first (TCP) or before the
    echo (UDP); a TCP one may listen on another loopback address, e.g. 127.0.0.2, or on ::1."""

    name: str
    port: int
    udp: bool = False
    host: str = "127.0.0.1"

    def start(self) -> Backend:
        self.server: socketserver.BaseServer = (_UDPServer(self.port, self.name) if self.udp
                                                else _TCPServer(self.port, self.name, self.host))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def wait_connections(self, count: int, timeout: float = TIMEOUT) -> bool:
        """Block until exactly `count` connections are open to this backend (TCP)."""
        server: Any = self.server
        with server.changed:
            return bool(server.changed.wait_for(lambda: len(server.conns) == count, timeout))

    def stop(self) -> None:
        """Stop listening and close every open connection (a killed backend)."""
        self.server.shutdown()
        self.server.server_close()
        for conn in list(getattr(self.server, "conns", ())):
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self.thread.join(TIMEOUT)


def who(port: int, source: str | None = None) -> str:
    """Connect through the load balancer and return the name the backend says."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                  source_address=(source, 0) if source else None) as s:
        return read_line(s)


def read_line(s: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


class Held:
    """A long-lived connection through the load balancer; `.name` is the backend it landed on."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.name = read_line(self.sock)

    def echo(self, payload: bytes = b"ping\n") -> bytes:
        self.sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def udp_who(port: int, payload: bytes = b"q") -> str:
    """One datagram from a fresh socket (a new UDP session); the name in the reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(payload, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
        return data.decode().split(":", 1)[0]


def write_inventory(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the nginxctl CLI as a user would, in a subprocess."""
    # Outside the source tree by default, so `-m nginxctl` runs the installed package.
    return subprocess.run([sys.executable, "-m", "nginxctl", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or "/", timeout=180)


class Etcd:
    """A real etcd (Debian's etcd-server) on 127.0.0.1, in a temp data dir; `stop()`/`start()` keep its data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Etcd:
        import shutil

        binary = shutil.which("etcd") or "/usr/bin/etcd"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.log = open(self.data_dir.parent / f"etcd-{self.port}.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [binary, "--name", "nginxctl-test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"nginxctl-test={peer}", "--log-level", "error"],
            stdout=self.log, stderr=self.log)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        import json as _json
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                    if _json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not healthy within {timeout}s; see {self.log.name}")
            threading.Event().wait(0.1)  # polling a readiness endpoint, not synchronising on time

    def client(self) -> Any:
        import etcd3gw

        return etcd3gw.Etcd3Client(host="127.0.0.1", port=self.port, timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


class Pong(socketserver.ThreadingTCPServer):
    """Answers PONG to PING; `hang` accepts and never answers; `shutdown()` refuses connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str = "P") -> None:
        self.hang = threading.Event()
        self.name = name
        self.release = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(handler) -> None:  # noqa: N805 (the server's own handler)
                conn = handler.request
                if self.hang.is_set():
                    self.release.wait(30)  # a hung event loop: accepted, never answered
                    return
                data = b""
                try:
                    conn.sendall(self.name.encode() + b"\n")
                    while True:
                        chunk = conn.recv(64)
                        if not chunk:
                            return
                        data += chunk
                        if b"PING" in data:
                            conn.sendall(b"PONG\r\n")
                            data = b""
                except OSError:
                    return

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class Watch:
    """`nginxctl watch` in a subprocess; its JSON decision log read line by line."""

    def __init__(self, inventory: Path, *args: str) -> None:
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nginxctl", "watch", "-i", str(inventory), "--log-format", "json",
             "--metrics", f"127.0.0.1:{self.metrics_port}", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/")
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.all: list[dict[str, Any]] = []    # every event so far, in order (for index-based waits)
        self.changed = threading.Event()       # set at every new event
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {"event": "raw", "message": line.rstrip()}
                self.all.append(event)
                self.lines.put(event)
                self.changed.set()
        except (ValueError, OSError):
            pass  # the test closed the pipe (it stopped the watch): nothing more to read
        self.lines.put({"event": "exited"})
        self.changed.set()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """The next log event matching `predicate` (earlier ones are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout}s; seen: {self.seen[-15:]}") from None
            self.seen.append(event)
            if predicate(event):
                return event
            if event["event"] == "exited":
                raise AssertionError(f"watch exited ({self.proc.wait()}); seen: {self.seen[-15:]}")

    def reload(self, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait(lambda e: e["event"] == "reload" and e.get("result") == "ok", timeout)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            # stuck: its threads' stacks (SIGUSR1) and its last lines say where
            start, deadline = len(self.all), time.monotonic() + 5
            self.proc.send_signal(signal.SIGUSR1)
            while time.monotonic() < deadline:  # the dump has come and nothing more for 0.5 s
                self.changed.clear()
                if not self.changed.wait(0.5) and any("most recent call first" in str(e) for e in self.all[start:]):
                    break
            tail = "\n".join(str(e.get("message", e)) for e in self.all[-60:])
            raise AssertionError(f"the watch did not stop within 30s of signal {sig}; last lines:\n{tail}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


BACKEND_CONF = """load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
error_log stderr notice;
pid /tmp/backend.pid;
events {{ worker_connections 64; }}
stream {{ server {{ listen 127.0.0.1:{port}; return "{reply}\\n"; }} }}
"""


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a process a test started: SIGTERM, then SIGKILL if it lingers past `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(predicate: Any, timeout: float, what: Any) -> None:
    """Poll `predicate` (a check on real state) until it holds, failing with `what` (a text, or a function
    giving one) after `timeout` seconds; never a bare sleep."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what() if callable(what) else what
        threading.Event().wait(0.2)


class Devices:
    """`count` long-lived clients through the load balancer on `port`, like a device fleet: each reads the name
    of the backend it landed on, and when its connection closes it records how (an orderly EOF or a reset)
    and reconnects after a short random delay. One thread and a selector; `close()` ends them all.

    `sources`: client addresses in 127.0.0.0/8 to bind (client i uses sources[i % len]), for hash keys.
    `heartbeat`: each connected client sends a line this often (seconds; None: the clients stay idle)."""

    def __init__(self, port: int, count: int, sources: list[str] | None = None,
                 delay: tuple[float, float] = (0.01, 0.05), heartbeat: float | None = None) -> None:
        import random
        import selectors

        self.port = port
        self.sources = sources
        self.delay = delay
        self.rng = random.Random(count)
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.names: dict[int, str | None] = {}
        self.socks: dict[int, socket.socket] = {}
        self.buffers: dict[int, bytes] = {}
        self.due: list[tuple[float, int]] = []
        self.eofs = 0          # established connections closed with a FIN
        self.resets = 0        # established connections reset
        self.failed = 0        # connections that closed before the backend said its name (no backend reached)
        self.connects = 0
        self.heartbeat = heartbeat
        self.beat_at = time.monotonic()
        self.stopping = threading.Event()
        for i in range(count):
            self._connect(i)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self, i: int) -> None:
        import selectors

        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.sources:
            s.bind((self.sources[i % len(self.sources)], 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))
        self.socks[i] = s
        self.buffers[i] = b""
        with self.lock:
            self.names[i] = None
            self.connects += 1
        self.sel.register(s, selectors.EVENT_READ, i)

    def _closed(self, i: int, how: str) -> None:
        s = self.socks.pop(i)
        self.sel.unregister(s)
        s.close()
        with self.lock:
            if self.names.get(i) is None:
                self.failed += 1
            elif how == "eof":
                self.eofs += 1
            else:
                self.resets += 1
            self.names[i] = None
        self.due.append((time.monotonic() + self.rng.uniform(*self.delay), i))

    def _run(self) -> None:
        while not self.stopping.is_set():
            now = time.monotonic()
            for item in [d for d in self.due if d[0] <= now]:
                self.due.remove(item)
                try:
                    self._connect(item[1])
                except OSError:
                    self.due.append((now + self.delay[1], item[1]))
            if self.heartbeat is not None and now >= self.beat_at:
                self.beat_at = now + self.heartbeat
                for i, s in list(self.socks.items()):
                    if self.names.get(i) is not None:
                        try:
                            s.send(b"hb\n")
                        except OSError:
                            pass   # its close is read below
            for key, _ in self.sel.select(timeout=0.01):
                i = key.data
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except (ConnectionResetError, ConnectionAbortedError):
                    self._closed(i, "reset")
                    continue
                except OSError:
                    self._closed(i, "failed")
                    continue
                if not data:
                    self._closed(i, "eof")
                    continue
                self.buffers[i] += data
                if self.names.get(i) is None and b"\n" in self.buffers[i]:
                    with self.lock:
                        self.names[i] = self.buffers[i].split(b"\n", 1)[0].decode()

    def counts(self) -> dict[str, int]:
        """Connected clients per backend name."""
        from collections import Counter

        with self.lock:
            return dict(Counter(n for n in self.names.values() if n is not None))

    def connected(self) -> int:
        with self.lock:
            return sum(1 for n in self.names.values() if n is not None)

    def wait(self, predicate: Callable[[Devices], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, f"{what}: {self.counts()} eofs={self.eofs} resets={self.resets} " \
                                                f"failed={self.failed}"
            threading.Event().wait(0.05)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for s in list(self.socks.values()):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        self.socks.clear()
        self.sel.close()
