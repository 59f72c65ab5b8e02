"""The controller's decisions, in-process: a fake deployer at the Deployer seam and a fake clock, no Docker, no
sleep. The pure decision (`decide`), the failure table (`classify`), rollout and put-back order, and whole passes
of the Controller: apply, in sync, drift, rejected (located), template errors, deferral, backoff and hold, pending
changes, and a discovered server nginx refuses."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from nginxctl.apply import Outcome
from nginxctl.controller.decide import Action, PassInput, classify, decide
from nginxctl.controller.log import DecisionLog
from nginxctl.controller.loop import Controller, WatchOptions
from nginxctl.controller.metrics import Metrics, Result
from nginxctl.controller.model import Candidate, Event, EventKind, Snapshot
from nginxctl.desired import RenderTarget
from nginxctl.errors import (
    ApplyFailure,
    ConfigRejected,
    EnvironmentProblem,
    GenerationsLingering,
    NginxctlError,
    NginxOutput,
    RestoreFailed,
    TemplateError,
)
from nginxctl.fleet import FleetFailure, Member, rollout
from nginxctl.history import sha
from nginxctl.inventory import parse_inventory
from nginxctl.nginx import CompanionChange
from nginxctl.nginxtext import Processes
from nginxctl.observe import Generation

INVENTORY = """target: {container: lb}
upstreams:
  pool:
    listen: 127.0.0.1:7000
    servers: [127.0.0.1:7001]
    discover: docker
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLive:
    """The target's file store, as `Published` and `History` use it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.files: dict[str, str] = {}
        self.client = None   # the Docker client: only faked calls take it

    def read_file(self, path: str) -> bytes | None:
        text = self.files.get(path)
        return text.encode() if text is not None else None

    def put_files(self, directory: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            self.files[f"{directory}/{name}"] = text

    def processes(self) -> Processes:
        return Processes(None)  # no process to observe: no lingering generation


class FakeHistory:
    base = "/etc/nginx"


class FakeDeployer:
    """A target that runs what it is given, or fails as told; it records every call in `calls`."""

    stream_only = True

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.live = FakeLive(name)
        self.history = FakeHistory()
        self.running: str | None = None
        self.file: str | None = None   # the installed file (docker cp can change it under nginx)
        self.fail: NginxctlError | None = None
        self.calls = calls
        self.reloads = 0
        self.beside: str | None = None   # the keepalived.conf its companion holds (`ha:`)
        self.stale = ""                  # why its companion cannot serve it ("" when it can)

    def observed(self) -> tuple[str | None, str | None, str | None]:
        loaded = (sha(self.running), self.running) if self.running is not None else (None, None)
        return (*loaded, sha(self.file) if self.file is not None else None)

    def deployed(self) -> str | None:
        return self.file

    def known_configs(self) -> list[str]:
        return [t for t in (self.running, self.file) if t is not None]

    def precheck(self, rendered: str) -> None:
        self.calls.append(("precheck", self.live.name))

    def keepalived_conf(self) -> str | None:
        return self.beside

    def keepalived_state(self) -> tuple[str | None, str]:
        return self.beside, self.stale

    def apply(self, rendered: str, *, reload: bool, dry_run: bool = False, keepalived: str | None = None) -> Outcome:
        self.calls.append(("apply", self.live.name))
        if self.fail is not None:
            raise self.fail
        before = self.file
        self.file = rendered
        # with a keepalived.conf (`ha:`), as Deployer: nginx running the config already is not reloaded for it
        reloaded = reload and (keepalived is None or self.running != rendered)
        if reload:
            self.running = rendered
            self.reloads += reloaded
        outcome = Outcome(self.live.name, before != rendered, reloaded, "", None, sha(rendered))
        if keepalived is not None and reload:
            action = "created" if self.beside is None else "recreated" if self.stale else \
                "unchanged" if keepalived == self.beside else "reloaded"
            outcome.companion = CompanionChange(f"{self.live.name}-keepalived", action, self.stale)
            self.calls.append(("keepalived", self.live.name))
            self.beside, self.stale = keepalived, ""
        return outcome


class Harness:
    def __init__(self, tmp_path: Path, text: str = INVENTORY, names: tuple[str, ...] = ("lb",)) -> None:
        self.path = tmp_path / "inventory.yaml"
        self.path.write_text(text)
        self.clock = Clock()
        self.stream = io.StringIO()
        self.metrics = Metrics()
        self.calls: list[tuple[str, str]] = []
        self.ctl = Controller(WatchOptions(self.path, quiet_period=0.3, max_wait=3.0), connect=lambda _: None,
                              log=DecisionLog("json", self.stream), metrics=self.metrics, clock=self.clock)
        self.ctl.inventory = parse_inventory(text, str(self.path))
        self.ctl.inventory_text = text
        self.targets = [FakeDeployer(n, self.calls) for n in names]
        self.ctl.members = [Member(n, d) for n, d in zip(names, self.targets, strict=True)]  # type: ignore[arg-type]
        self.ctl.render_targets = [RenderTarget(n, stream_only=True) for n in names]
        self.ctl.snapshots = {"docker": Snapshot("docker")}

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [e for e in lines if kind is None or e["event"] == kind]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    def backends(self, *addresses: str) -> None:
        self.ctl.snapshots = {"docker": Snapshot("docker", tuple(
            Candidate("docker", "pool", f"c{i}", {"address": a}) for i, a in enumerate(addresses)))}


# -- the pure decision ----------------------------------------------------------------------------------------


def _input(**kw: Any) -> PassInput:
    inv = parse_inventory(INVENTORY)
    base: dict[str, Any] = dict(trigger="change", inventory=inv, snapshots={"docker": Snapshot("docker")},
                                down=frozenset(), isolated={}, loaded={"lb": None})
    return PassInput(**{**base, **kw})


def _render(inv: Any) -> dict[str, str]:
    return {"lb": "\n".join(f"{g.name} {' '.join(s.address.text for s in g.servers)}" for g in inv.upstreams)}


def test_decide_waits_for_a_source_that_never_answered():
    plan = decide(_input(snapshots={"docker": Snapshot("docker", known=False)}), _render)
    assert plan.action is Action.WAIT and plan.waiting_for == ("docker",) and not plan.rendered


def test_decide_applies_when_loaded_differs_and_is_in_sync_when_equal():
    plan = decide(_input(), _render)
    assert plan.action is Action.APPLY and plan.behind == ("lb",) and plan.drift == ()
    again = decide(_input(loaded={"lb": plan.desired}), _render)
    assert again.action is Action.IN_SYNC


def test_decide_names_drift_only_against_what_this_watch_verified():
    plan = decide(_input(loaded={"lb": "something-else"}, verified="what-we-put"), _render)
    assert plan.drift == (("lb", "something-else"),)
    assert decide(_input(loaded={"lb": "what-we-put"}, verified="what-we-put"), _render).drift == ()


def test_decide_holds_the_config_that_just_failed_until_its_backoff_ends():
    desired = decide(_input(), _render).desired
    assert decide(_input(failed=desired, backoff_pending=True), _render).action is Action.HOLD
    assert decide(_input(failed=desired, backoff_pending=False), _render).action is Action.APPLY


def test_decide_renders_health_and_isolated_servers():
    snaps = {"docker": Snapshot("docker", (Candidate("docker", "pool", "c", {"address": "127.0.0.1:7002"}),))}
    plan = decide(_input(snapshots=snaps, isolated={("pool", "127.0.0.1:7002"): "host not found"}), _render)
    assert plan.rendered["lb"] == "pool 127.0.0.1:7001"
    assert [s.reason for s in plan.merged.skipped] == ["nginx refuses 127.0.0.1:7002: host not found"]
    down = decide(_input(snapshots=snaps, down=frozenset({("pool", "127.0.0.1:7001")})), _render)
    assert ("pool", "docker", "up") in down.merged.rows and ("pool", "static", "down") in down.merged.rows


REJECTED = NginxOutput(["nginx", "-t"], 1, "nginx: [emerg] unknown directive \"x\" in /etc/nginx/nginx.conf:3")


@pytest.mark.parametrize(("error", "result", "retry", "remember", "detach"), [
    (TemplateError("bad"), Result.REJECTED, False, False, False),
    (ConfigRejected(REJECTED), Result.REJECTED, False, True, False),
    (GenerationsLingering(3, 3, []), Result.REFUSED, True, False, False),
    (RestoreFailed("r", [], "lb"), Result.RESTORE_FAILED, True, True, False),
    (ApplyFailure("r", [], "lb"), Result.RESTORED, True, True, False),
    (EnvironmentProblem("gone"), Result.ERROR, True, False, True),
    (NginxctlError("odd"), Result.ERROR, True, False, False),
    (FleetFailure("lb2", EnvironmentProblem("gone"), ["lb1"], [], True), Result.RESTORE_FAILED, True, True, True),
    (FleetFailure("lb2", ApplyFailure("r", [], "lb2"), ["lb1"], [], False), Result.RESTORED, True, True, False),
])
def test_every_failure_has_one_row(error, result, retry, remember, detach):
    failure = classify(error)
    assert (failure.result, failure.retry, failure.remember, failure.detach) == (result, retry, remember, detach)


# -- rollout order --------------------------------------------------------------------------------------------


def test_rollout_tests_everywhere_then_changes_one_at_a_time_and_puts_back_in_reverse():
    calls: list[tuple[str, str]] = []
    targets = [FakeDeployer(n, calls) for n in ("lb1", "lb2", "lb3")]
    for t in targets:
        t.running = t.file = "old"
    targets[2].fail = ApplyFailure("bind() failed", [], "lb3")
    members = [Member(t.live.name, t) for t in targets]  # type: ignore[arg-type]
    with pytest.raises(FleetFailure) as caught:
        rollout(members, {m.name: "new" for m in members}, reload=True, dry_run=False, progress=lambda _: None)
    assert calls == [("precheck", "lb1"), ("precheck", "lb2"), ("precheck", "lb3"),
                     ("apply", "lb1"), ("apply", "lb2"), ("apply", "lb3"),
                     ("apply", "lb2"), ("apply", "lb1")]  # the put-back, newest first
    assert [t.running for t in targets] == ["old", "old", "old"]
    assert caught.value.exit_code == 4


# -- whole passes ------------------------------------------------------------------------------------------------


def test_a_pass_applies_then_the_next_is_in_sync(tmp_path):
    h = Harness(tmp_path)
    h.ctl._reconcile("start")
    assert h.events("reload")[-1]["result"] == "ok" and h.metric("nginxctl_reloads_total", result="ok") == 1
    h.ctl._reconcile("change")
    assert h.events("in-sync") and h.calls.count(("apply", "lb")) == 1
    assert h.metric("nginxctl_pending_changes") == 0


def test_a_backend_joining_is_reported_against_what_nginx_ran(tmp_path):
    h = Harness(tmp_path)
    h.ctl._reconcile("start")
    h.backends("127.0.0.1:7002")
    h.ctl._reconcile("change")
    last = h.events("reload")[-1]
    assert last["added"] == ["pool/127.0.0.1:7002"] and last["removed"] == [] and last["changed"] == []


def test_drift_is_logged_and_corrected(tmp_path):
    h = Harness(tmp_path)
    h.ctl._reconcile("start")
    h.targets[0].running = h.targets[0].file = "stream { }\n"  # a forced apply, a hand edit
    h.ctl._reconcile("resync")
    drift = h.events("drift")
    assert len(drift) == 1 and drift[0]["target"] == "lb"
    assert h.events("reload")[-1]["result"] == "ok"
    assert h.targets[0].running is not None and "127.0.0.1:7001" in h.targets[0].running


def test_a_rejected_config_is_held_located_and_counted_pending(tmp_path):
    h = Harness(tmp_path)
    h.targets[0].fail = ConfigRejected(NginxOutput(["nginx", "-t"], 1,
                                                   "nginx: [emerg] invalid port in /etc/nginx/nginx.conf:5"))
    h.ctl._reconcile("start")
    event = h.events("reload")[-1]
    assert event["result"] == "rejected" and "retry_in" not in event
    assert h.ctl.retry_at is None and h.ctl.publisher.held is not None
    assert h.metric("nginxctl_pending_changes") == 1
    assert h.metric("nginxctl_reloads_total", result="rejected") == 1
    watch = json.loads(h.targets[0].live.files["/etc/nginx/.nginxctl/watch.json"])
    assert watch["held"].startswith("nginx rejected the config")


def test_a_template_error_is_rejected_without_retry(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "stream.conf.j2").write_text("{{ no_such_variable }}\n")
    h = Harness(tmp_path)
    h.ctl.options.templates = templates
    h.ctl._reconcile("start")
    event = h.events("reload")[-1]
    assert event["result"] == "rejected" and "the templates cannot render" in event["message"]
    assert h.calls == []


def test_lingering_generations_defer_and_retry_in_two_seconds(tmp_path):
    h = Harness(tmp_path)
    h.targets[0].fail = GenerationsLingering(3, 3, ["1 worker, 40 connections"])
    h.ctl._reconcile("start")
    event = h.events("reload")[-1]
    assert event["result"] == "refused" and event["retry_in"] == 2.0
    assert h.ctl.retry_at == h.clock.now + 2.0


def test_generations_that_cannot_be_retired_are_said_once_not_every_retry(tmp_path):
    """A remote engine (here: no master to see) cannot retire: the change waits, retried every 2 s, and the
    `retire` warning is said once per 30 s, not at every retry."""
    h = Harness(tmp_path)
    h.targets[0].fail = GenerationsLingering(3, 3, ["2 workers, 40 connections"],
                                             generations=[Generation([11, 12], 40)])
    h.ctl._reconcile("start")
    for _ in range(10):   # 20 s of retries
        h.clock.now += 2.0
        h.ctl._reconcile("retry")
    lines = [e for e in h.events("retire") if "cannot retire" in e["message"]]
    assert len(lines) == 1 and "the change waits" in lines[0]["message"]
    assert all(e["result"] == "refused" for e in h.events("reload"))
    h.clock.now += 12.0
    h.ctl._reconcile("retry")
    assert len([e for e in h.events("retire") if "cannot retire" in e["message"]]) == 2
    assert "cannot retire the oldest generation" in (h.ctl.publisher.held or "")


def test_a_restored_config_is_held_for_its_backoff_and_the_backoff_grows(tmp_path):
    h = Harness(tmp_path)
    h.targets[0].fail = ApplyFailure("bind() failed", [], "lb")
    h.ctl._reconcile("start")
    assert h.events("reload")[-1]["retry_in"] == 0.5
    h.ctl._reconcile("change")  # woken early: the same config is not tried again yet
    assert h.calls.count(("apply", "lb")) == 1
    h.clock.now = h.ctl.retry_at or 0
    h.ctl._reconcile("retry")
    assert h.calls.count(("apply", "lb")) == 2 and h.ctl.retry_at == h.clock.now + 1.0
    assert len(h.events("reload")) == 1  # the same failure again: counted, not said again
    assert h.metric("nginxctl_reloads_total", result="restored") == 2
    h.targets[0].fail = None
    h.clock.now = h.ctl.retry_at or 0
    h.ctl._reconcile("retry")
    assert h.events("reload")[-1]["result"] == "ok" and h.ctl.failures == 0 and h.ctl.publisher.held is None


def test_an_unreachable_target_is_attached_again(tmp_path):
    h = Harness(tmp_path)
    h.targets[0].fail = EnvironmentProblem("container lb no longer exists")
    h.ctl._reconcile("start")
    assert h.events("reload")[-1]["result"] == "error" and h.ctl.members is None


def test_a_discovered_server_nginx_refuses_is_left_out_and_the_rest_applies(tmp_path):
    h = Harness(tmp_path)
    h.backends("127.0.0.1:7002", "nosuchhost.invalid:7003")
    target = h.targets[0]
    original = target.apply

    def refuse_the_name(rendered: str, *, reload: bool, dry_run: bool = False) -> Outcome:
        if "nosuchhost.invalid" in rendered:  # nginx names the line it refused, as nginx -t does
            line = next(i for i, text in enumerate(rendered.splitlines(), 1) if "nosuchhost" in text)
            raise ConfigRejected(NginxOutput(["nginx", "-t"], 1, 'nginx: [emerg] host not found in upstream '
                                             f'"nosuchhost.invalid:7003" in /etc/nginx/nginx.conf:{line}'))
        return original(rendered, reload=reload)

    target.apply = refuse_the_name  # type: ignore[method-assign]
    h.ctl._reconcile("start")
    skip = [e for e in h.events("skip") if e.get("server") == "nosuchhost.invalid:7003"]
    assert len(skip) == 1 and "host not found" in skip[0]["reason"]
    assert h.events("reload")[-1]["result"] == "ok"
    assert target.running is not None and "127.0.0.1:7002" in target.running and "nosuchhost" not in target.running
    assert h.metric("nginxctl_discovered_skipped", source="docker") == 1


def test_a_source_that_never_answered_waits_once_not_once_per_retry(tmp_path):
    h = Harness(tmp_path)
    h.ctl.snapshots = {"docker": Snapshot("docker", known=False)}
    for _ in range(4):
        h.ctl._reconcile("retry")
    assert len(h.events("wait")) == 1 and h.calls == []


def test_a_rejected_config_is_held_until_the_inputs_change_and_stays_pending(tmp_path):
    h = Harness(tmp_path)
    h.targets[0].fail = ConfigRejected(NginxOutput(["nginx", "-t"], 1, "nginx: [emerg] bad in /x:1"))
    h.ctl._reconcile("start")
    h.ctl._reconcile("resync")
    h.ctl._reconcile("change")  # a health change, a resync: the same inputs would be rejected again
    assert h.calls.count(("apply", "lb")) == 1
    assert h.metric("nginxctl_reloads_total", result="rejected") == 1
    assert h.metric("nginxctl_pending_changes") == 1
    h.ctl._handle(Event(EventKind.RESYNC))
    assert h.metric("nginxctl_pending_changes") == 1  # an event does not reset it while the change is held
    h.targets[0].fail = None
    h.backends("127.0.0.1:7002")  # the inputs change: tried again
    h.ctl._reconcile("change")
    assert h.events("reload")[-1]["result"] == "ok" and h.metric("nginxctl_pending_changes") == 0


def test_a_config_file_changed_under_nginx_is_reinstalled_without_a_reload(tmp_path):
    h = Harness(tmp_path)
    h.ctl._reconcile("start")
    target = h.targets[0]
    assert target.reloads == 1
    target.file = "copied in by hand\n"  # docker cp, no HUP: nginx still runs the desired config
    h.ctl._reconcile("resync")
    assert target.file == target.running and target.reloads == 1  # put back, nginx not reloaded
    assert h.events("drift") and "reinstalling" in h.events("apply")[-1]["message"]


def test_a_watch_waiting_for_a_source_publishes_why(tmp_path):
    h = Harness(tmp_path)
    h.ctl.attached = list(h.ctl.members or [])
    h.ctl.snapshots = {"docker": Snapshot("docker", known=False)}
    h.ctl._reconcile("start")
    watch = json.loads(h.targets[0].live.files["/etc/nginx/.nginxctl/watch.json"])
    assert "docker not reachable yet" in watch["held"] and watch["desired_sha256"] is None


def test_one_unreachable_target_does_not_silence_the_watch_on_the_others(tmp_path):
    h = Harness(tmp_path, names=("lb1", "lb2"))
    h.ctl.attached = list(h.ctl.members or [])
    h.ctl._reconcile("start")
    h.targets[1].fail = EnvironmentProblem("container lb2 no longer exists")
    h.backends("127.0.0.1:7002")
    h.ctl._reconcile("change")
    assert h.ctl.members is None  # attached again at the next pass
    watch = json.loads(h.targets[0].live.files["/etc/nginx/.nginxctl/watch.json"])
    assert "lb2 no longer exists" in watch["held"]  # lb1 is told why the change waits


def test_a_restarted_watch_starts_from_the_published_health():
    from nginxctl.controller.health import Checker

    checker = Checker(lambda: None, lambda *_: None)
    checker.seed([{"group": "pool", "address": "127.0.0.1:7001", "state": "down", "since": 5.0,
                   "last_error": "no reply"}, {"group": "pool", "address": "127.0.0.1:7002", "state": "up"}])
    assert checker.down() == {("pool", "127.0.0.1:7001")}


def test_resync_has_a_floor(tmp_path):
    from nginxctl.controller.model import WatchOptions as Options
    from nginxctl.controller.service import run_watch
    from nginxctl.errors import UsageError

    with pytest.raises(UsageError, match="--resync"):
        run_watch(Options(tmp_path / "inventory.yaml", resync=0.0), connect=lambda _: None)


def test_an_edit_while_a_target_is_unreachable_is_published_on_the_others(tmp_path):
    h = Harness(tmp_path, names=("lb1", "lb2"))
    h.ctl.attached = list(h.ctl.members or [])
    h.ctl._reconcile("start")
    before = json.loads(h.targets[0].live.files["/etc/nginx/.nginxctl/watch.json"])["desired_sha256"]
    h.ctl.members = None

    def unreachable() -> list[Member]:
        raise EnvironmentProblem("container lb2 is paused")

    h.ctl._reach = unreachable  # type: ignore[method-assign]
    h.path.write_text(INVENTORY.replace("servers: [127.0.0.1:7001]", "servers: [127.0.0.1:7001, 127.0.0.1:7009]"))
    h.ctl._reconcile("change")
    watch = json.loads(h.targets[0].live.files["/etc/nginx/.nginxctl/watch.json"])
    assert watch["desired_sha256"] != before and "paused" in watch["held"]
    desired = h.targets[0].live.files["/etc/nginx/.nginxctl/desired.conf"]
    assert "127.0.0.1:7009" in desired  # status on lb1 shows the new server pending
