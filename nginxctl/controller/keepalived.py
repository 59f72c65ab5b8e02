"""`watch` running the keepalived companions of a fleet with `ha:` (the virtual IP).

Level-triggered, as for nginx: each pass reads what every member's companion (`<target>-keepalived`) holds, and
`decide` compares it with the keepalived.conf rendered from the inventory. A member is behind when its
keepalived.conf differs (an `ha:` edit: no nginx config changes for it) or when its companion cannot serve it: the
target restarted or was recreated, so keepalived runs in a network namespace nobody uses (it holds nothing), or
the companion stopped. The pass then rolls the nginx config with each member's keepalived.conf through `rollout`
(one history entry with both; `ensure_companion` recreates a stale companion, SIGHUPs one whose file changed, and
leaves the others alone). A changed keepalived.conf is checked with `keepalived --config-test` first, once per text.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .. import nginx
from ..desired import keepalived_configs
from ..errors import KeepalivedRejected
from ..fleet import FleetOutcome, Member
from ..history import sha
from ..inventory import Inventory
from .log import DecisionLog, Logged


class Companions:
    """The keepalived beside each member one watch reaches (`ha:`): read, rendered, checked, said."""

    def __init__(self, log: DecisionLog, templates: Path | None, base: Path) -> None:
        self.log = log
        self.templates = templates
        self.base = base
        self.members: list[Member] = []      # the members of the last read that run keepalived
        self.stale: dict[str, str] = {}      # member -> why its companion cannot serve it (said once)
        self.tested: set[str] = set()        # keepalived.confs `keepalived --config-test` accepted
        self.held: dict[str, str | None] = {}   # what each companion held at the last read

    def installed(self, members: list[Member], inv: Inventory) -> dict[str, str | None]:
        """What each member's companion holds: its keepalived.conf, None when there is none or it cannot serve the
        member (said once, as `keepalived` lines). {} without `ha:`. Raises EnvironmentProblem."""
        names = {t.name for t in inv.targets} if inv.ha is not None else set()
        self.members = [m for m in members if m.name in names]
        held: dict[str, str | None] = {}
        for m in self.members:
            assert inv.ha is not None
            m.deployer.keepalived_image = inv.ha.image   # a companion made by this watch runs ha.image
            text, why = m.deployer.keepalived_state()
            held[m.name] = None if why else text
            if not why:
                self.stale.pop(m.name, None)
            elif self.stale.get(m.name) != why:
                self.stale[m.name] = why
                self.log(Logged.KEEPALIVED, f"{m.name}: its keepalived companion cannot serve it ({why}): this pass "
                         "makes it again", target=m.name, state="stale", why=why, level="warning")
        self.held = held
        return held

    def render(self, inv: Inventory) -> dict[str, str]:
        """The keepalived.conf each member read last should hold (pure: the pass's inventory and templates).
        Raises TemplateError."""
        if inv.ha is None or not self.members:
            return {}
        chosen = [t for t in inv.targets if t.name in {m.name for m in self.members}]
        return keepalived_configs(inv, chosen, self.templates, self.base)

    def checked(self, behind: list[Member], desired: Mapping[str, str], inv: Inventory) -> dict[str, str]:
        """`desired` for the members behind, each keepalived.conf that changes checked by `keepalived
        --config-test` first (once per text). Raises KeepalivedRejected, EnvironmentProblem (no image)."""
        for m in behind:
            text = desired.get(m.name)
            if text is None or inv.ha is None or text == self.held.get(m.name) or sha(text) in self.tested:
                continue
            result = nginx.test_keepalived_config(m.deployer.live.client, inv.ha.image, text, inv.ha.interface)
            if result.exit_code != 0:
                raise KeepalivedRejected(m.name, result)
            self.tested.add(sha(text))
        return {m.name: desired[m.name] for m in behind if m.name in desired}

    def said(self, result: FleetOutcome) -> None:
        """A `keepalived` line per companion a rollout created, recreated or reloaded."""
        for name, outcome in result.outcomes:
            change = outcome.companion
            if change is None or change.action == "unchanged":
                continue
            self.stale.pop(name, None)
            self.log(Logged.KEEPALIVED, str(change), target=name, companion=change.name, action=change.action,
                     why=change.why or None)
