"""The sources of `nginxctl watch`: each watches one thing and publishes events into the loop's queue.

  InventoryFile  the inventory file (inotify via watchdog; editors that save by rename included)
  DockerSource   containers labelled `nginxctl.group`, driven by Docker events (and the target's own events)
  EtcdSource     keys under each group's prefix, by etcd's watch API from the last seen revision

A discovery source publishes a whole `Snapshot` of what it sees now, never a diff. A source that
cannot reach its backend publishes its last snapshot marked stale (an etcd outage must not empty a
pool), retries with backoff, and publishes a fresh one when it is back. Sources never write config and
never touch the target.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..lazy import lazy_import
from .model import Candidate, Event, EventKind, Publish, Snapshot, backoff

if TYPE_CHECKING:
    import docker
    import docker.errors
    import requests
    import requests.exceptions
else:
    docker = lazy_import("docker")
    requests = lazy_import("requests")

GROUP_LABEL = "nginxctl.group"
PROBE_EVERY = 5.0   # an etcd watch that has been silent this long is probed (a hung etcd answers nothing)


class InventoryFile:
    """Watches the inventory file's folder and publishes an `inventory` event when the file changes,
    is replaced by a rename (how editors save), or appears."""

    def __init__(self, path: str, publish: Publish) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        self.path = os.path.abspath(path)
        target = self.path

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = {os.path.abspath(str(event.src_path)),
                         os.path.abspath(str(getattr(event, "dest_path", "") or event.src_path))}
                if target in paths:
                    publish(Event(EventKind.INVENTORY, detail=event.event_type))

        self.observer = Observer()
        self.observer.schedule(Handler(), os.path.dirname(self.path), recursive=False)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(5)


def label_fields(labels: dict[str, str], address_host: str | None) -> dict[str, Any]:
    """A container's `nginxctl.*` labels -> server fields (values as the inventory would hold them:
    ASCII digit strings become integers, true/false booleans; the grammar judges them later)."""
    port = labels.get("nginxctl.port")
    host = labels.get("nginxctl.address") or address_host
    fields: dict[str, Any] = {"address": f"{host}:{port}" if host and port is not None else None}
    if port is None:
        fields["address"] = None
    for name in ("weight", "max_fails", "fail_timeout", "max_conns", "backup"):
        value = labels.get(f"nginxctl.{name}")
        if value is None:
            continue
        if value.isascii() and value.isdigit() and name != "fail_timeout":
            fields[name] = int(value)
        elif value.lower() in ("true", "false"):
            fields[name] = value.lower() == "true"
        else:
            fields[name] = value
    return fields


class DockerSource:
    """Containers labelled `nginxctl.group`, while they run; Docker events trigger a fresh listing.
    Events about the target container (`target`) are published as `target` events."""

    def __init__(self, connect: Callable[[], docker.DockerClient], publish: Publish, target: set[str] | None,
                 local_engine: bool) -> None:
        self.connect = connect
        self.publish = publish
        self.target = target
        self.local_engine = local_engine
        self.stopping = threading.Event()
        self.last = Snapshot("docker", known=False)
        self.thread = threading.Thread(target=self._run, name="nginxctl-docker-source", daemon=True)
        self._events: Any = None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        events = self._events
        if events is not None:
            try:
                events.close()
            except Exception:  # noqa: BLE001 (closing a stream that may already be broken)
                pass
        self.thread.join(5)

    def snapshot(self, client: docker.DockerClient) -> Snapshot:
        candidates = []
        # ignore_removed: a container listed and gone (404) when inspected was created and removed at once; it
        # is not in the snapshot, and it is no sign of an unreachable engine
        for c in client.containers.list(filters={"label": GROUP_LABEL, "status": "running"}, ignore_removed=True):
            labels = c.labels or {}
            settings = c.attrs.get("NetworkSettings", {})
            mode = c.attrs.get("HostConfig", {}).get("NetworkMode", "")
            ip = None
            if mode == "host":
                ip = "127.0.0.1" if self.local_engine else None
            else:
                ip = next((n.get("IPAddress") for n in (settings.get("Networks") or {}).values()
                           if n.get("IPAddress")), None) or settings.get("IPAddress") or None
            candidates.append(Candidate("docker", labels[GROUP_LABEL], c.name, label_fields(labels, ip)))
        return Snapshot("docker", tuple(sorted(candidates, key=lambda x: x.origin)))

    def _run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            client = None
            try:
                client = self.connect()
                since = time.time()
                self.last = self.snapshot(client)
                self.publish(Event(EventKind.SNAPSHOT, self.last))
                if attempt:
                    self.publish(Event(EventKind.TARGET, detail="docker engine back"))
                attempt = 0
                self._events = client.events(decode=True, since=since, filters={"type": "container"})
                for event in self._events:
                    if self.stopping.is_set():
                        return
                    attrs = event.get("Actor", {}).get("Attributes", {})
                    action = str(event.get("Action") or event.get("status") or "")
                    if GROUP_LABEL in attrs and action.split(":")[0] in (
                            "start", "die", "stop", "kill", "destroy", "pause", "unpause", "restart", "rename",
                            "update"):
                        self.last = self.snapshot(client)
                        self.publish(Event(EventKind.SNAPSHOT, self.last))
                    if self.target and attrs.get("name") in self.target:
                        if action in ("start", "restart", "die"):
                            self.publish(Event(EventKind.TARGET, detail=f"target container {action}"))
                        elif action == "extract-to-dir":  # `docker cp` into it: look at what it runs now
                            self.publish(Event(EventKind.RESYNC, detail="files copied into the target container"))
                if self.stopping.is_set():
                    return
                raise ConnectionError("the Docker event stream ended")
            except Exception as exc:  # noqa: BLE001 (the engine gone, a broken stream, anything: keep the last)
                if self.stopping.is_set():
                    return
                self.last = replace(self.last, stale=True, error=f"Docker: {str(exc).splitlines()[0][:200]}")
                self.publish(Event(EventKind.SNAPSHOT, self.last))
                self.stopping.wait(backoff(attempt))
                attempt += 1
            finally:
                if client is not None:
                    client.close()


def etcd_fields(value: bytes) -> dict[str, Any]:
    """An etcd value -> server fields: `HOST:PORT`, or a JSON object of server keys."""
    text = value.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            return {"address": None, "_error": f"not valid JSON ({exc})"}
        return data if isinstance(data, dict) else {"address": None, "_error": "not a JSON object"}
    return {"address": text}


class EtcdSource:
    """Keys under each group's prefix. One range read gives the keys and a revision; one watch per
    prefix streams changes from the next revision. On any failure the last snapshot is kept (stale)
    and the whole thing starts over with backoff: a fresh read, then a watch from its revision."""

    def __init__(self, endpoints: list[str], prefixes: dict[str, str], publish: Publish, timeout: float = 5.0) -> None:
        self.endpoints = endpoints
        self.prefixes = prefixes      # group -> key prefix
        self.publish = publish
        self.timeout = timeout
        self.stopping = threading.Event()
        self.keys: dict[str, tuple[str, bytes]] = {}   # key -> (group, value)
        self.last = Snapshot("etcd", known=False)
        self.revision = 0
        self._lock = threading.Lock()
        self._responses: list[requests.Response] = []
        self.threads: list[threading.Thread] = []
        self.changed = queue.Queue[tuple[str, str, bytes | None, int]]()

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name="nginxctl-etcd-source", daemon=True)
        self.threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._close_streams()
        self.changed.put(("", "", None, -1))
        for thread in self.threads:
            thread.join(5)

    def _close_streams(self) -> None:
        """End the watch streams: shut their sockets down, which wakes the threads blocked reading them
        (closing the response instead would wait for the reader's lock)."""
        with self._lock:
            for resp in self._responses:
                sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
                if sock is None:
                    sock = getattr(getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None),
                                   "_sock", None)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._responses.clear()

    def client_for(self, endpoint: str) -> Any:
        import etcd3gw

        host_port = endpoint.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        protocol = "https" if endpoint.startswith("https://") else "http"
        return etcd3gw.Etcd3Client(host=host or "127.0.0.1", port=int(port or 2379), protocol=protocol,
                                   timeout=self.timeout)

    def read(self, client: Any) -> int:
        """Read every prefix; returns the revision the read saw."""
        from etcd3gw.utils import _decode, _encode, _increment_last_byte

        keys: dict[str, tuple[str, bytes]] = {}
        revision = 0
        for group, prefix in self.prefixes.items():
            result = client.post(client.get_url("/kv/range"),
                                 json={"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix))})
            revision = max(revision, int(result.get("header", {}).get("revision", 0)))
            for kv in result.get("kvs", []):
                keys[_decode(kv["key"]).decode()] = (group, _decode(kv.get("value", "")))
        self.keys = keys
        return revision

    def snapshot(self) -> Snapshot:
        candidates = [Candidate("etcd", group, key, etcd_fields(value))
                      for key, (group, value) in sorted(self.keys.items())]
        return Snapshot("etcd", tuple(candidates))

    def _watch(self, client: Any, group: str, prefix: str, start: int) -> None:
        """Stream one prefix's changes into `self.changed`; returns (or raises) when the stream ends."""
        from etcd3gw.utils import _decode, _encode, _increment_last_byte

        request = {"create_request": {"key": _encode(prefix), "range_end": _encode(_increment_last_byte(prefix)),
                                      "start_revision": start, "progress_notify": True}}
        resp = client.session.post(client.get_url("/watch"), json=request, stream=True, timeout=(self.timeout, None))
        with self._lock:
            self._responses.append(resp)
        if self.stopping.is_set():   # stopped while the request was on its way: _close_streams missed this one
            self._close_streams()
            return
        if resp.status_code != 200:
            raise ConnectionError(f"etcd watch refused: HTTP {resp.status_code}")
        for line in _lines(resp):
            chunk = json.loads(line)
            if "error" in chunk:
                raise ConnectionError(f"etcd watch error: {chunk['error']}")
            result = chunk.get("result", {})
            if result.get("canceled") or result.get("compact_revision"):
                raise ConnectionError(f"etcd watch canceled ({result.get('cancel_reason') or 'compacted'})")
            revision = int(result.get("header", {}).get("revision", 0))
            for event in result.get("events", []):
                kv = event.get("kv", {})
                key = _decode(kv["key"]).decode()
                value = None if event.get("type") == "DELETE" else _decode(kv.get("value", ""))
                self.changed.put((group, key, value, int(kv.get("mod_revision", revision))))
        raise ConnectionError("the etcd watch stream ended")

    def _run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            errors: queue.Queue[str] = queue.Queue()
            watchers: list[threading.Thread] = []
            try:
                client = self.client_for(self.endpoints[attempt % len(self.endpoints)])
                self.revision = self.read(client)
                self.last = self.snapshot()
                self.publish(Event(EventKind.SNAPSHOT, self.last))
                attempt = 0
                for group, prefix in self.prefixes.items():
                    thread = threading.Thread(target=self._watch_thread, args=(client, group, prefix, errors),
                                              name=f"nginxctl-etcd-watch-{group}", daemon=True)
                    watchers.append(thread)
                    thread.start()
                while not self.stopping.is_set():
                    try:
                        group, key, value, revision = self.changed.get(timeout=PROBE_EVERY)
                    except queue.Empty:
                        # a hung etcd (stopped, partitioned) keeps the streams open and silent: ask it
                        client.status()
                        continue
                    if revision < 0:
                        break
                    if value is None:
                        self.keys.pop(key, None)
                    else:
                        self.keys[key] = (group, value)
                    self.revision = max(self.revision, revision)
                    if self.changed.empty():  # a burst of events is one snapshot
                        self.last = self.snapshot()
                        self.publish(Event(EventKind.SNAPSHOT, self.last))
                if self.stopping.is_set():
                    return
                raise ConnectionError(errors.get() if not errors.empty() else "the etcd watch ended")
            except Exception as exc:  # noqa: BLE001 (etcd down, refused, or a broken stream: keep the last)
                if self.stopping.is_set():
                    return
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                self.last = replace(self.last, stale=True, error=f"etcd: {reason}")
                self.publish(Event(EventKind.SNAPSHOT, self.last))
                self._close_streams()
                for thread in watchers:
                    thread.join(1)
                self._drain()
                self.stopping.wait(backoff(attempt))
                attempt += 1

    def _watch_thread(self, client: Any, group: str, prefix: str, errors: queue.Queue[str]) -> None:
        try:
            self._watch(client, group, prefix, self.revision + 1)
        except Exception as exc:  # noqa: BLE001 (any failure means: start over)
            errors.put(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            self.changed.put(("", "", None, -1))

    def _drain(self) -> None:
        while not self.changed.empty():
            try:
                self.changed.get_nowait()
            except queue.Empty:
                return


def _lines(resp: requests.Response) -> Iterator[str]:
    """The JSON lines of a streaming gateway response."""
    buffer = b""
    for chunk in resp.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode("utf-8")
    if buffer.strip():
        yield buffer.decode("utf-8")


def snapshots_now(inv: Any, connect: Callable[[], docker.DockerClient] | None) -> tuple[dict[str, Snapshot], list[str]]:
    """One snapshot of each source the inventory's groups discover from, for the one-shot commands
    (render, validate, apply, diff, status). A source that cannot be reached is left out, with a note."""
    snapshots: dict[str, Snapshot] = {}
    notes: list[str] = []
    wanted = {g.discover for g in inv.upstreams if g.discover}
    if "docker" in wanted:
        try:
            if connect is None:
                raise ConnectionError("no Docker engine to ask")
            client = connect()
            try:
                snapshots["docker"] = DockerSource(connect, lambda _: None, None, local_engine=True).snapshot(client)
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 (any failure: render without, and say so)
            notes.append(f"discover: docker: not reachable ({str(exc).splitlines()[0][:120]}); discovering groups "
                         "rendered with their static servers only")
    if "etcd" in wanted:
        prefixes = {g.name: g.discover_prefix for g in inv.upstreams if g.discover_prefix}
        source = EtcdSource(list(inv.discovery_etcd_endpoints), prefixes, lambda _: None)
        error = None
        for endpoint in inv.discovery_etcd_endpoints:
            try:
                source.read(source.client_for(endpoint))
                snapshots["etcd"] = source.snapshot()
                break
            except Exception as exc:  # noqa: BLE001 (try the next endpoint)
                error = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        if "etcd" not in snapshots:
            notes.append(f"discover: etcd: not reachable ({error}); discovering groups rendered with their "
                         "static servers only")
    for source_name, snapshot in sorted(snapshots.items()):
        # The engine (or etcd) may be shared: backends of another load balancer's groups are not counted.
        groups = sorted(g.name for g in inv.upstreams if g.discover == source_name)
        seen = sum(1 for c in snapshot.candidates if c.group in groups)
        notes.append(f"discover: {source_name}: {seen} backend(s) seen now for {', '.join(groups)} (a snapshot: "
                     "`nginxctl watch` follows changes)")
    return snapshots, notes
