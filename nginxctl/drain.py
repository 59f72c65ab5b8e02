"""`drain` and `undrain`: mark a server `down` in the inventory file (comments and layout kept), apply and
reload under the target's lock, then count or wait for the connections still open to it. The inventory is
put back when the change does not take."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import nginx
from .apply import Deployer
from .clock import poll_until
from .desired import render_for
from .edit import set_down
from .errors import (
    DrainCancelled,
    DrainTimeout,
    Interrupted,
    NginxctlError,
    Step,
)
from .files import write_atomic
from .fleet import Member
from .inventory import Inventory, check_capacity, parse_inventory
from .inventory.grammar import parse_server_address
from .inventoryfile import container_name, read_text
from .observe import server_connections
from .owner import check_owner
from .published import Published
from .reports import DrainReport
from .targets import Connect, Opened, Progress, open_target, quiet, with_discovered
from .workflows import reporting

if TYPE_CHECKING:
    import docker


def change_server(path: Path, group: str, server: str, *, down: bool, connect: Connect,
                  container: str | None = None, force: bool = False, lock_wait: float = 30.0,
                  templates: Path | None = None, progress: Progress = quiet) -> tuple[DrainReport, Deployer]:
    """Edit the inventory (`down: true` set or removed), then apply and reload it, under the target's lock.
    The inventory file is put back when the apply does not succeed or is interrupted before it changed
    the target. Raises UsageError, InventoryError, and what apply raises."""

    if container is not None:
        container_name(None, container)
    original = read_text(path)
    parse_inventory(original, str(path))  # a broken inventory is reported as it is, before any edit
    edit = set_down(original, group, server, down, force=force)
    first = parse_inventory(edit.text, str(path))
    client = connect(first.target.docker_host)
    try:
        return _change_server(path, original, edit, first, client, container=container, group=group, down=down,
                              lock_wait=lock_wait, templates=templates, progress=progress)
    except BaseException:
        client.close()
        raise


def _change_server(path: Path, original: str, edit: Any, first: Inventory, client: docker.DockerClient, *,
                   container: str | None,
                   group: str, down: bool, lock_wait: float, templates: Path | None,
                   progress: Progress) -> tuple[DrainReport, Deployer]:

    inv = check_capacity(first, nginx.engine_machine(client))
    inv, notes = with_discovered(inv, lambda host: nginx.connect(host), strict=True)
    for note in notes:
        progress(note)
    deployer = open_target(Opened(inv, path, client), container, progress=progress, lock_wait=lock_wait)

    check_owner([Member(deployer.live.name, deployer)])  # before the inventory is edited
    flag = "`down: true` written" if down else "`down` removed"
    deployer.journal.plan((Step.EDIT, f"{flag} in {path}"), Step.INSTALL, Step.RELOAD)
    rendered = render_for(inv, deployer, templates, path.parent)
    with deployer.locked():
        written = False
        try:
            with reporting(inv, rendered, deployer.journal):
                if edit.changed:
                    write_atomic(path, edit.text, expect=original)
                    written = True
                    deployer.journal.did(Step.EDIT, f"{flag} in {path}")
                outcome = deployer.apply(rendered, reload=True)
        except Interrupted:
            # Interrupted before the target changed: the inventory goes back, so it says what runs.
            if written and not deployer.journal.has_done(Step.INSTALL):
                write_atomic(path, original, expect=edit.text)
                deployer.journal.did(Step.PUT_BACK, f"{path} put back as it was")
                raise deployer.journal.interrupted() from None
            raise
        except NginxctlError:
            if written:
                write_atomic(path, original, expect=edit.text)
                progress(f"{path} restored")
            raise

    # recorded so that `status` says a drained server is down for `drain`, not for the inventory
    Published(deployer.live, deployer.history.base).set_drained(group, edit.address, down)
    report = DrainReport(deployer.live.name, group, edit.address, down, edit.changed, outcome)
    return report, deployer


def drain(path: Path, group: str, server: str, *, connect: Connect, container: str | None = None,
          wait: float | None = None, force: bool = False, lock_wait: float = 30.0, templates: Path | None = None,
          progress: Progress = quiet) -> DrainReport:
    """Mark a server down in the inventory, apply and reload, then count (with `wait`, wait until none
    remain) the connections still open to it. Raises DrainTimeout when `wait` runs out, and what
    `change_server` raises."""
    report, deployer = change_server(path, group, server, down=True, connect=connect, container=container,
                                     force=force, lock_wait=lock_wait, templates=templates, progress=progress)
    with contextlib.closing(deployer.live.client):
        return _wait_drained(report, deployer, wait, progress)


def _wait_drained(report: DrainReport, deployer: Deployer, wait: float | None, progress: Progress) -> DrainReport:

    group = report.group
    address = parse_server_address(report.address)
    if address.kind == "unix":
        report.counted = False
        return report
    assert address.host is not None and address.port is not None
    host, port = address.host, address.port

    def check() -> tuple[bool, dict[int, int] | None]:
        if not _still_down(deployer, report.address):
            raise DrainCancelled(f"stopped waiting: {report.address} is no longer drained on {deployer.live.name} "
                             "(undrained or changed by another command meanwhile)")
        held = server_connections(deployer.live, host, port)
        return held is None or not held, held

    said: list[int] = []

    def waiting(held: dict[int, int] | None) -> None:
        total = sum((held or {}).values())
        if said and said[-1] == total:
            return  # say it when the count changes, not every half second
        said.append(total)
        who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted((held or {}).items()))
        progress(f"waiting: {total} connection(s) to {report.address} ({who})")

    try:
        polled = poll_until(check, wait or 0.0, interval=0.5, on_wait=waiting)
    except KeyboardInterrupt:
        raise Interrupted([f"{report.address} drained in '{group}' (inventory and nginx)"],
                          ["waiting for its connections to close"]) from None
    report.remaining = polled.value
    report.counted = polled.value is not None
    if wait is not None and not polled.done and polled.value:
        raise DrainTimeout(report.address, sum(polled.value.values()), f"{wait:g}s", polled.value)
    return report


def _still_down(deployer: Deployer, address: str) -> bool:
    """Whether the target's config still has `server ADDRESS ... down;` (someone may undrain meanwhile)."""

    text = deployer.deployed() or ""
    return re.search(rf"^\s*server\s+{re.escape(address)}(\s[^;]*)?\sdown;", text, re.M) is not None


def undrain(path: Path, group: str, server: str, *, connect: Connect, container: str | None = None,
            lock_wait: float = 30.0, templates: Path | None = None, progress: Progress = quiet) -> DrainReport:
    """Put a drained server back: remove its `down` in the inventory, apply and reload."""
    report, deployer = change_server(path, group, server, down=False, connect=connect, container=container,
                                     lock_wait=lock_wait, templates=templates, progress=progress)
    deployer.live.client.close()
    return report
