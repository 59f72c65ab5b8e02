"""A target on this host is read through /proc (nginx.live's ProcRoot): its processes without `docker top`, what
`nginx -V` says without running it, its files without following links out of the container's root."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nginxctl.nginx import LiveNginx
from nginxctl.nginx.transport import ProcRoot

from helpers import wait_for


def refused(*_: Any, **__: Any) -> Any:
    raise AssertionError("the Docker engine was asked")


@pytest.mark.integration
def test_a_local_target_s_processes_and_build_are_read_without_asking_the_engine(lb, docker_client, monkeypatch):
    through_api = LiveNginx(docker_client, docker_client.containers.get(lb.name), local=False)
    wait_for(lambda: through_api.processes().workers, 10, "nginx starts its workers")
    live = LiveNginx.attach(docker_client, lb.name)
    assert live.root is not None
    monkeypatch.setattr(live, "exec", refused)              # no `nginx -V` run in the container
    monkeypatch.setattr(live.api, "processes", refused)     # no `docker top`
    procs, build = live.processes(), live.build()
    theirs = through_api.processes()
    assert procs.master is not None and theirs.master is not None
    assert (procs.master.pid, procs.worker_pids) == (theirs.master.pid, theirs.worker_pids)
    assert build == through_api.build()   # what `nginx -V`, run in the container, says
    assert build.version != "unknown" and build.modules_path.startswith("/")


def test_the_binary_is_read_in_the_container_s_root_never_through_a_link(tmp_path: Path):
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "nginx").write_bytes(b"nginx binary")
    (root / "etc").symlink_to("/etc")                       # absolute: followed from here, this host's /etc
    (root / "usr" / "sbin" / "nginx-link").symlink_to("nginx")
    (root / "passwd-link").symlink_to("/etc/passwd")
    view = ProcRoot(str(root), "target", api=None)          # type: ignore[arg-type]
    assert view.read_binary("/usr/sbin/nginx") == b"nginx binary"
    assert Path("/etc/passwd").is_file()
    assert view.read_binary("/etc/passwd") is None          # through a link: this host's file, not the container's
    assert view.read_binary("/passwd-link") is None
    assert view.read_binary("/usr/sbin/nginx-link") is None
    assert view.read_binary("nginx") is None                # found on PATH by exec, not here
    assert view.read_binary("/usr/sbin/missing") is None
