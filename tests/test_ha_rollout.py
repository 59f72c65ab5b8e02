"""A fleet with `ha:` changed in order, in-process (no Docker, no sleep): the rollout order (`standby_first`), the
watch changing the standby first and the holder of the virtual IP last, and the watch keeping the reachable members
in step (health decisions included) while one member is away, catching it up when it is back; keepalived.conf
unchanged by an inventory change that is not in `ha:` (so keepalived is not reloaded for it).

The watch runs with the fakes of tests/test_controller.py at the Deployer seam; which target holds the virtual IP
is given (the real reader, `nginx.vip`, is exercised on a real network in tests/test_ha_order.py)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from nginxctl import nginx
from nginxctl.apply import Outcome
from nginxctl.controller import attach
from nginxctl.controller.decide import Action, PassInput, Plan, decide
from nginxctl.controller.model import Event, EventKind
from nginxctl.errors import ApplyFailure, EnvironmentProblem, FleetFailure, NginxOutput
from nginxctl.fleet import Member, rollout, standby_first
from nginxctl.history import sha
from nginxctl.inventory import parse_inventory
from nginxctl.nginx import CompanionChange
from nginxctl.render import render_keepalived, template_env
from nginxctl.vipview import has_address as has
from nginxctl.vipview import parse_ip_addr as addresses

from test_controller import FakeDeployer, Harness

HA_FLEET = """ha: {vip: 10.254.7.100/24, virtual_router_id: 51}
targets:
  - {name: lb1, container: lb1}
  - {name: lb2, container: lb2}
upstreams:
  pool:
    listen: 7000
    servers: [127.0.0.1:7001, 127.0.0.1:7002]
    health_check: {interval: 5s}
"""


def members(*names: str) -> list[Member]:
    return [Member(n, FakeDeployer(n, [])) for n in names]  # type: ignore[arg-type]


# -- the order --------------------------------------------------------------------------------------------------


def test_the_standbys_go_first_and_the_holder_last():
    order, why = standby_first(members("lb1", "lb2", "lb3"), ["lb1"], "10.254.7.100")
    assert [m.name for m in order] == ["lb2", "lb3", "lb1"]
    assert why == ("ha: lb1 holds the virtual IP 10.254.7.100: changing lb2, lb3 first (the canary is a standby), "
                   "lb1 last")
    order, _ = standby_first(members("lb1", "lb2", "lb3"), ["lb3"], "10.254.7.100")
    assert [m.name for m in order] == ["lb1", "lb2", "lb3"]


def test_no_holder_seen_keeps_the_inventory_order_and_says_so():
    order, why = standby_first(members("lb1", "lb2"), [], "10.254.7.100")
    assert [m.name for m in order] == ["lb1", "lb2"]
    assert "no target is seen holding the virtual IP 10.254.7.100" in why and "inventory order" in why


def test_only_the_holder_changed():
    order, why = standby_first(members("lb2"), ["lb2"], "10.254.7.100")
    assert [m.name for m in order] == ["lb2"] and "no standby is changed" in why


def test_ip_addr_output_is_read_as_addresses():
    text = ("2: eth0    inet 10.254.0.11/16 scope global eth0\\       valid_lft forever preferred_lft forever\n"
            "2: eth0    inet 10.254.7.100/16 scope global secondary eth0\\       valid_lft forever\n"
            "2: eth0    inet6 2001:db8:0::64/64 scope global \\       valid_lft forever\n")
    found = addresses(text)
    assert found == ["10.254.0.11", "10.254.7.100", "2001:db8:0::64"]
    assert has(found, "10.254.7.100") and has(found, "2001:db8::64") and not has(found, "10.254.7.10")


def test_keepalived_conf_changes_with_ha_only():
    """Its first line names the `ha:` section's digest, not the inventory's: a change elsewhere leaves the file
    byte for byte, so `apply` does not reload keepalived for it."""
    env = template_env()
    base = parse_inventory(HA_FLEET, "inventory.yaml")
    other = parse_inventory(HA_FLEET.replace("listen: 7000", "listen: 7000\n    proxy_timeout: 5m"), "inventory.yaml")
    advert = parse_inventory(HA_FLEET.replace("virtual_router_id: 51", "virtual_router_id: 51, advert_interval: 2s"),
                             "inventory.yaml")
    assert base.digest != other.digest
    for i in range(2):
        assert render_keepalived(base, base.targets[i], env) == render_keepalived(other, other.targets[i], env)
        assert render_keepalived(base, base.targets[i], env) != render_keepalived(advert, advert.targets[i], env)


class KeepalivedTarget(FakeDeployer):
    """A target with a keepalived companion: what it runs, and every apply with the keepalived.conf it got."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        super().__init__(name, calls)
        self.running = self.file = "nginx old\n"
        self.beside: str | None = "keepalived old\n"
        self.given: list[tuple[str, str | None]] = []

    def keepalived_conf(self) -> str | None:
        return self.beside

    def apply(self, rendered: str, *, reload: bool, dry_run: bool = False, keepalived: str | None = None) -> Outcome:
        self.given.append((rendered, keepalived))
        outcome = super().apply(rendered, reload=reload, dry_run=dry_run)
        if keepalived is not None:
            outcome.companion = CompanionChange(f"{self.live.name}-keepalived",
                                                "unchanged" if keepalived == self.beside else "reloaded")
            self.beside = keepalived
        return outcome


def test_a_failure_puts_back_the_keepalived_conf_with_the_config():
    calls: list[tuple[str, str]] = []
    lb2, lb1 = KeepalivedTarget("lb2", calls), KeepalivedTarget("lb1", calls)
    lb1.fail = ApplyFailure("bind() failed", [], "lb1")
    fleet = [Member("lb2", lb2), Member("lb1", lb1)]  # type: ignore[arg-type]
    with pytest.raises(FleetFailure) as caught:
        rollout(fleet, {"lb2": "nginx new\n", "lb1": "nginx new\n"}, reload=True, dry_run=False,
                progress=lambda _: None, keepalived={"lb2": "keepalived new\n", "lb1": "keepalived new\n"})
    assert caught.value.exit_code == 4
    assert lb2.given == [("nginx new\n", "keepalived new\n"), ("nginx old\n", "keepalived old\n")]
    assert (lb2.running, lb2.beside) == ("nginx old\n", "keepalived old\n")   # both back, verified
    assert (lb1.running, lb1.beside) == ("nginx old\n", "keepalived old\n")   # the holder never changed


# -- the watch --------------------------------------------------------------------------------------------------


class Checks:
    """A health checker that says which servers fail (the real one probes them on a thread)."""

    def __init__(self, failing: Iterable[tuple[str, str]] = ()) -> None:
        self.failing = frozenset(failing)
        self.targets: dict[Any, Any] = {("pool", "127.0.0.1:7001"): None}

    def down(self) -> frozenset[tuple[str, str]]:
        return self.failing

    def health(self) -> dict[Any, Any]:
        return {}

    def set_targets(self, targets: list[Any]) -> None:
        self.targets = {(t.group, t.address): t for t in targets}


class HAHarness(Harness):
    """Two targets with `ha:`: reached through `attach.reach` (open_fleet faked: `away` names the ones that cannot
    be reached), lb1 holding the virtual IP unless `holding` says otherwise."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = HA_FLEET) -> None:
        super().__init__(tmp_path, text, names=("lb1", "lb2"))
        self.away: set[str] = set()
        self.holding = ["lb1"]
        by_name = {t.live.name: t for t in self.targets}

        def open_fleet(targets: list[Any], connect: Any, make: Any, names: list[str],
                       away: dict[str, str] | None = None) -> list[Member]:
            reached = []
            for name in names:
                if name in self.away:
                    if away is None:
                        raise EnvironmentProblem(f"target {name} is not reachable: container {name} is exited")
                    away[name] = f"container {name} is exited, not running"
                    continue
                reached.append(Member(name, by_name[name]))  # type: ignore[arg-type]
            return reached

        monkeypatch.setattr(attach, "open_fleet", open_fleet)
        self.tested: list[str] = []   # `keepalived --config-test` runs (a text with "REFUSE-ME" is refused)

        def config_test(client: Any, image: str, config: str, interface: str) -> NginxOutput:
            self.tested.append(config)
            return NginxOutput(["keepalived", "--config-test"], 1 if "REFUSE-ME" in config else 0,
                               "bad config" if "REFUSE-ME" in config else "")

        monkeypatch.setattr(nginx, "test_keepalived_config", config_test)
        self.ctl.ha.hold = lambda members, owner: []  # type: ignore[method-assign]
        self.ctl.ha.holders = lambda members, ha: [m.name for m in members if m.name in self.holding]
        self.ctl.health.checker = Checks()  # type: ignore[assignment]
        self.ctl.attached = list(self.ctl.members or [])

    def applied(self) -> list[str]:
        return [name for kind, name in self.calls if kind == "apply"]

    def edit(self, old: str, new: str) -> None:
        self.path.write_text(self.path.read_text().replace(old, new))


def test_the_watch_changes_the_standby_first_and_the_holder_last(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    h.ctl._reconcile("start")
    assert h.applied() == ["lb2", "lb1"]
    assert h.events("apply")[-1]["targets"] == ["lb2", "lb1"]
    assert h.events("order")[-1]["message"].startswith("lb1 holds the virtual IP 10.254.7.100: changing lb2 first")
    h.holding = ["lb2"]   # the address moved
    h.calls.clear()
    h.edit("listen: 7000", "listen: 7000\n    proxy_timeout: 5m")
    h.ctl._reconcile("change")
    assert h.applied() == ["lb1", "lb2"] and h.events("reload")[-1]["result"] == "ok"
    assert len(h.events("order")) == 2   # said when it changed


def test_one_member_away_does_not_hold_back_the_holder_which_is_kept_in_step(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    lb1, lb2 = h.targets
    h.ctl._reconcile("start")
    before = lb2.running
    # lb2 stopped for maintenance: its container dies, the watch attaches again
    h.away = {"lb2"}
    h.ctl._handle(Event(EventKind.TARGET, detail="target container die"))
    h.ctl.health.checker = Checks({("pool", "127.0.0.1:7002")})   # and a health take-out meanwhile
    h.calls.clear()
    h.ctl._reconcile("change")
    [said] = h.events("member")
    assert said["target"] == "lb2" and said["state"] == "unreachable" and said["holder"] == ["lb1"]
    assert said["message"] == ("lb2 is not reachable (container lb2 is exited, not running): the watch keeps lb1 (it "
                               "holds the virtual IP 10.254.7.100) in step without it, health decisions included; lb2 "
                               "gets the desired config when it is back")
    reload = h.events("reload")[-1]
    assert reload["result"] == "ok" and reload["health_down"] == ["pool/127.0.0.1:7002"]
    assert h.applied() == ["lb1"] and lb2.running == before
    assert lb1.running is not None and "127.0.0.1:7002 down" in lb1.running
    # an edit while lb2 is away goes to lb1 too; lb2's absence is said once
    h.edit("servers: [127.0.0.1:7001, 127.0.0.1:7002]", "servers: [127.0.0.1:7001, 127.0.0.1:7002, 127.0.0.1:7003]")
    h.ctl._reconcile("change")
    assert "127.0.0.1:7003" in lb1.running and h.applied() == ["lb1", "lb1"] and len(h.events("member")) == 1
    assert h.metric("nginxctl_reloads_total", result="error") == 0
    # lb2 back: it is behind, and gets the desired config at once, without being called drifted
    h.away = set()
    h.ctl._handle(Event(EventKind.TARGET, detail="target container start"))
    h.ctl._reconcile("change")
    back = h.events("member")[-1]
    assert back["target"] == "lb2" and back["state"] == "back"
    assert h.applied()[-1] == "lb2" and lb2.running == lb1.running
    assert not [e for e in h.events("drift") if e["target"] == "lb2"]
    assert h.ctl.ha.away == {} and h.events("reload")[-1]["result"] == "ok"
    done = list(h.calls)
    h.ctl._reconcile("resync")   # both run the desired config: nothing more to do
    assert h.calls == done and h.events("reload")[-1]["result"] == "ok"


def test_a_member_away_at_every_attempt_is_looked_for_again_at_each_pass(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    h.away = {"lb2"}
    h.ctl.members = None
    h.ctl._reconcile("start")
    assert h.applied() == ["lb1"] and [e["target"] for e in h.events("member")] == ["lb2"]
    h.away = set()   # started again, no Docker event seen (another engine): the resync finds it
    h.ctl._reconcile("resync")
    assert h.applied() == ["lb1", "lb2"] and h.events("member")[-1]["state"] == "back"


def test_without_ha_one_unreachable_target_still_holds_back_all(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch, HA_FLEET.replace("ha: {vip: 10.254.7.100/24, virtual_router_id: 51}\n", ""))
    h.ctl._reconcile("start")
    h.away = {"lb2"}
    h.ctl.members = None
    h.calls.clear()
    h.edit("listen: 7000", "listen: 7000\n    proxy_timeout: 5m")
    h.ctl._reconcile("change")
    assert h.applied() == [] and h.events("reload")[-1]["result"] == "error"
    assert "lb2 is not reachable" in h.events("reload")[-1]["message"] and not h.events("member")


# -- the watch runs keepalived ----------------------------------------------------------------------------------


def test_decide_applies_an_ha_only_change_and_is_in_sync_when_the_companions_hold_the_desired_conf():
    """The nginx config does not change for an `ha:` edit: the installed keepalived.conf decides."""
    inv = parse_inventory(HA_FLEET, "inventory.yaml")
    conf = {"lb1": "nginx\n", "lb2": "nginx\n"}
    wanted = {"lb1": "advert_int 2 (lb1)\n", "lb2": "advert_int 2 (lb2)\n"}
    base: dict[str, Any] = dict(trigger="change", inventory=inv, snapshots={}, down=frozenset(), isolated={},
                                loaded={name: sha(text) for name, text in conf.items()})

    def run(held: dict[str, str | None], wants: dict[str, str] = wanted, **kw: Any) -> Plan:
        return decide(PassInput(**base, keepalived=held, **kw), lambda _: dict(conf), lambda _: dict(wants))

    plan = run({"lb1": "advert_int 1 (lb1)\n", "lb2": wanted["lb2"]})
    assert plan.action is Action.APPLY and plan.behind == ("lb1",) and plan.reload and not plan.drift
    assert plan.keepalived == wanted and plan.rendered == conf
    assert "the keepalived.conf beside lb1 differs from the desired one" in plan.reason
    assert run(dict(wanted)).action is Action.IN_SYNC
    # a companion that cannot serve its target (it restarted) reads as holding none: behind
    assert run({"lb1": wanted["lb1"], "lb2": None}).behind == ("lb2",)
    # a refused keepalived.conf is remembered with the nginx config: held, until ha: changes again
    assert plan.attempt != plan.desired
    refused = run({"lb1": None, "lb2": None}, failed=plan.attempt, failed_for_good=True)
    assert refused.action is Action.HOLD
    edited = run({"lb1": None, "lb2": None}, {n: t + "# edited\n" for n, t in wanted.items()}, failed=plan.attempt,
                 failed_for_good=True)
    assert edited.action is Action.APPLY and edited.behind == ("lb1", "lb2")


def test_the_watch_gives_an_ha_edit_to_the_companions_with_the_config(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    lb1, lb2 = h.targets
    h.ctl._reconcile("start")
    assert [e["action"] for e in h.events("keepalived")] == ["created", "created"]
    assert "advert_int 1" in (lb1.beside or "") and "advert_int 1" in (lb2.beside or "")
    h.calls.clear()
    h.edit("virtual_router_id: 51}", "virtual_router_id: 51, advert_interval: 2s}")
    h.ctl._reconcile("change")
    assert h.events("apply")[-1]["targets"] == ["lb2", "lb1"]
    assert h.calls == [("precheck", "lb2"), ("precheck", "lb1"), ("apply", "lb2"), ("keepalived", "lb2"),
                       ("apply", "lb1"), ("keepalived", "lb1")]
    assert "advert_int 2" in (lb1.beside or "") and "advert_int 2" in (lb2.beside or "")
    said = [(e["target"], e["action"]) for e in h.events("keepalived")[2:]]
    assert said == [("lb2", "reloaded"), ("lb1", "reloaded")] and h.events("reload")[-1]["result"] == "ok"
    assert len(h.tested) == 4   # each keepalived.conf checked once before it goes in
    h.calls.clear()
    h.ctl._reconcile("resync")
    assert h.calls == []


def test_a_keepalived_conf_alone_behind_goes_in_without_reloading_nginx(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    lb1, lb2 = h.targets
    h.ctl._reconcile("start")
    desired, reloads, said = lb1.beside, (lb1.reloads, lb2.reloads), len(h.events("reload"))
    lb1.beside = "vrrp_instance edited by hand\n"   # or a template change that only keepalived.conf shows
    h.calls.clear()
    h.ctl._reconcile("resync")
    applying = h.events("apply")[-1]
    assert "the keepalived.conf beside lb1 differs from the desired one" in applying["message"]
    assert h.applied() == ["lb1"] and lb1.beside == desired and h.events("keepalived")[-1]["action"] == "reloaded"
    assert (lb1.reloads, lb2.reloads) == reloads and len(h.events("reload")) == said   # nginx not reloaded
    h.calls.clear()
    h.ctl._reconcile("resync")
    assert h.calls == []


def test_the_watch_makes_a_restarted_targets_companion_again(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    lb1, lb2 = h.targets
    h.ctl._reconcile("start")
    h.calls.clear()
    # lb2 restarted: its nginx loaded its config again, its companion is left in the namespace it had
    lb2.stale = "the target restarted after it (a new network namespace)"
    h.ctl._handle(Event(EventKind.TARGET, detail="target container start"))
    h.ctl._reconcile("change")
    stale, made = h.events("keepalived")[-2:]
    assert stale["target"] == "lb2" and stale["state"] == "stale" and stale["level"] == "warning"
    assert stale["message"] == ("lb2: its keepalived companion cannot serve it (the target restarted after it (a new "
                                "network namespace)): this pass makes it again")
    assert made == {**made, "target": "lb2", "action": "recreated", "companion": "lb2-keepalived",
                    "message": "lb2-keepalived: keepalived recreated (the target restarted after it (a new network "
                               "namespace))"}
    assert h.applied() == ["lb2"] and ("keepalived", "lb1") not in h.calls and lb2.stale == ""
    assert lb2.reloads == 1 and not h.events("drift")   # nginx untouched: it runs the desired config
    assert len(h.tested) == 2   # the same keepalived.conf: not tested again
    h.calls.clear()
    h.ctl._reconcile("resync")
    assert h.calls == []


def test_a_keepalived_conf_keepalived_refuses_changes_nothing_and_waits_for_the_next_edit(tmp_path, monkeypatch):
    h = HAHarness(tmp_path, monkeypatch)
    lb1, lb2 = h.targets
    h.ctl._reconcile("start")
    before = (lb1.beside, lb2.beside)
    shipped = h.ctl.companions.render
    h.ctl.companions.render = lambda inv: {n: t + "# REFUSE-ME\n" for n, t in shipped(inv).items()}  # type: ignore
    h.calls.clear()
    h.ctl._reconcile("change")
    refused = h.events("reload")[-1]
    assert refused["result"] == "rejected" and "keepalived rejected its keepalived.conf" in refused["message"]
    assert h.applied() == [] and (lb1.beside, lb2.beside) == before
    h.ctl._reconcile("resync")   # held: the same inputs are not tried again
    assert h.applied() == [] and h.events()[-1]["event"] != "apply"
    h.ctl.companions.render = shipped  # type: ignore[method-assign]
    h.edit("virtual_router_id: 51}", "virtual_router_id: 51, advert_interval: 2s}")
    h.ctl._reconcile("change")
    assert h.applied() == ["lb2", "lb1"] and "advert_int 2" in (lb1.beside or "")
