"""The Docker discovery source in-process, with a fake engine at the Docker API seam (docker-py's own
`DockerClient` and models above it): a container removed between the listing and its inspection."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
from nginxctl.controller.model import Event
from nginxctl.controller.sources import DockerSource

LABELS = {"nginxctl.group": "pool", "nginxctl.port": "7001"}


class Stream:
    """A Docker event stream: `events`, then open until closed."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from self.events
        self.closed.wait(30)

    def close(self) -> None:
        self.closed.set()


class VanishingEngine:
    """The engine's API while a labelled container is created and removed at once: the listing names it,
    inspecting it answers 404 (it is gone). `kept` runs on and answers."""

    def __init__(self) -> None:
        self.stream = Stream([{"Type": "container", "Action": "start",
                               "Actor": {"ID": "gone", "Attributes": {**LABELS, "name": "gone"}}}])

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        return [{"Id": "gone"}, {"Id": "kept"}]

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        if container_id == "gone":
            raise docker.errors.NotFound(f"No such container: {container_id}")
        return {"Id": "kept", "Name": "/kept", "Config": {"Labels": LABELS}, "HostConfig": {"NetworkMode": "host"},
                "NetworkSettings": {}}

    def events(self, **_: Any) -> Stream:
        return self.stream

    def close(self) -> None:
        pass


def fake_client(engine: VanishingEngine) -> docker.DockerClient:
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")  # never dialled
    client.api = engine  # type: ignore[assignment]
    return client


def test_a_container_removed_before_it_is_inspected_is_left_out_and_the_source_is_not_stale():
    engine = VanishingEngine()
    published: queue.Queue[Event] = queue.Queue()
    source = DockerSource(lambda: fake_client(engine), published.put, None, local_engine=True)
    source.start()
    try:
        # the first listing, then the one after the container's `start` event
        snapshots = [published.get(timeout=10).snapshot for _ in range(2)]
    finally:
        source.stop()
    assert [s is not None and (s.stale, s.error) for s in snapshots] == [(False, None), (False, None)]
    assert all(s is not None and [(c.origin, c.fields["address"]) for c in s.candidates] == [("kept", "127.0.0.1:7001")]
               for s in snapshots)
    assert published.empty()  # no stale snapshot after either
