"""`watch` rebalances a group by itself (`rebalance:`), in-process: the watch's loop hooks with a fake deployer
and a fake clock (as tests/test_controller.py), and the real rebalance engine (`rebalance.Rebalancer`) counting
and closing through a simulated kernel: clients that reconnect, when their connection is closed, to the least
connected server the target's running config leaves up (nginx's least_conn), so the overlay steers them as it
steers real clients. No Docker, no sleep: time is the fake clock, moved to each step's `due`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from nginxctl.apply import Outcome
from nginxctl.controller.health import Checker
from nginxctl.errors import ConfigRejected, GenerationsLingering, NginxOutput
from nginxctl.fleet import Member
from nginxctl.history import History, sha
from nginxctl.nginxtext import Processes, parse_upstreams
from nginxctl.pool import Held, Pool, ServerPool
from nginxctl.rebalance import Rebalancer
from nginxctl.sockdiag import TcpSocket

from test_controller import FakeDeployer
from test_controller import Harness as ControllerHarness

A, B, C, D = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004"
AFTER = 30.0


def inventory(*servers: str, health: bool = False) -> str:
    return ("target: {container: lb}\nupstreams:\n  pool:\n    listen: 127.0.0.1:7000\n    balance: least_conn\n"
            f"    servers: [{', '.join(servers)}]\n    rebalance: {{rate: 50/s, tolerance: 10%, after: 30s}}\n"
            + ("    health_check: {}\n" if health else ""))


class Target(FakeDeployer):
    """The fake target with what a rebalance uses of a Deployer: its loaded config, the limits (a reload past
    `max_generations` lingering generations is refused unless waived, as `Deployer` does) and a real history
    over the fake file store."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        super().__init__(name, calls)
        self.history = History(self.live, "/etc/nginx/nginx.conf")  # type: ignore[assignment]
        self.max_generations: int | None = 16
        self.max_memory: int | None = None
        self.waive_limits = False
        self.record_history = True
        self.lingering = 0
        self.applied: list[tuple[str, bool]] = []   # (config, waived) of every reload
        self.refuse: str | None = None   # nginx -t refuses the configs with this text

    def loaded(self) -> str | None:
        return sha(self.running) if self.running is not None else None

    def loaded_config(self) -> tuple[str | None, str | None]:
        return self.loaded(), self.running

    def apply(self, rendered: str, *, reload: bool, dry_run: bool = False) -> Outcome:
        if self.refuse is not None and self.refuse in rendered:
            raise ConfigRejected(NginxOutput(["nginx", "-t"], 1, "nginx: [emerg] bad in /etc/nginx/nginx.conf:1"))
        if reload and self.max_generations is not None and self.lingering >= self.max_generations \
                and not self.waive_limits:
            raise GenerationsLingering(self.lingering, self.max_generations, [])
        if self.record_history and self.file is not None and self.file != rendered:   # as Deployer: the file it
            self.history.write(self.history.record(self.file, self.history.entries()))   # replaces, then the new
        outcome = super().apply(rendered, reload=reload)
        if reload:
            self.lingering += 1
            self.applied.append((rendered, self.waive_limits))
        if self.record_history:
            self.history.write(self.history.record(rendered, self.history.entries()))
        return outcome


class Kernel:
    """The target's connections: `clients` long-lived clients, each on one server; a closed one reconnects at the
    next count, to the up server (in the config the target runs) holding the fewest."""

    def __init__(self, target: Target, where: dict[int, str]) -> None:
        self.target = target
        self.where = where
        self.away: list[int] = []
        self.destroyed = 0
        self.closed = 0   # times the run released its handle on the kernel

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for server in self.where.values():
            out[server] = out.get(server, 0) + 1
        return out

    def pool(self, config: str) -> Pool:
        assert self.target.running is not None
        up = [s.address for s in parse_upstreams(self.target.running)["pool"] if s.state == "up"]
        for client in self.away:
            counts = self.counts()
            self.where[client] = min(up, key=lambda s: (counts.get(s, 0), up.index(s)))
        self.away = []
        servers = [ServerPool("pool", s.address, s.state, 1, [
            Held(TcpSocket(2, 1, (s.address.split(":")[0], int(s.address.split(":")[1])), ("127.0.0.1", 40000 + i),
                           0, i, i, 0, 0, 0), 1, False) for i, at in sorted(self.where.items()) if at == s.address])
            for s in parse_upstreams(config)["pool"]]
        return Pool({"pool": servers}, {}, Processes(None), 0.0)

    def destroy(self, sock: TcpSocket) -> bool:
        if sock.cookie not in self.where:
            return False
        del self.where[sock.cookie]
        self.away.append(sock.cookie)
        self.destroyed += 1
        return True

    def close(self) -> None:
        self.closed += 1


class Harness(ControllerHarness):
    """test_controller's harness (a controller on a fake clock), with one target whose clients reconnect through a
    simulated kernel wherever the config it runs sends them."""

    def __init__(self, tmp_path: Path, text: str, clients: dict[str, int]) -> None:
        super().__init__(tmp_path, text)
        self.target = Target("lb", self.calls)
        self.ctl.members = [Member("lb", self.target)]  # type: ignore[arg-type]
        n = 0
        where = {}
        for server, count in clients.items():
            for _ in range(count):
                where[n] = server
                n += 1
        self.kernel = Kernel(self.target, where)
        rng = random.Random(7)

        def engine(deployer: Any, name: str, group: Any, options: Any, on_step: Any) -> Rebalancer:
            return Rebalancer(deployer, name, group, options, on_step=on_step, clock=self.clock, rng=rng,
                              by_watch=True, sockets=self.kernel)

        self.ctl.rebalancing.make = engine

    def edit(self, text: str) -> None:
        self.path.write_text(text)
        self.ctl._reconcile("change")

    def events(self, kind: str | None = None, phase: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [e for e in lines if (kind is None or e["event"] == kind) and (phase is None or e.get("phase") == phase)]

    def moves(self) -> float:
        return self.metrics.registry.get_sample_value("nginxctl_rebalance_moves_total", {"group": "pool"}) or 0.0

    def turn(self) -> None:
        """One turn of the loop's hook, at the time it is due (the fake clock moves there)."""
        due = self.ctl.rebalancing.due
        assert due is not None
        self.clock.now = max(self.clock.now, due)
        self.ctl.rebalancing.turn(self.ctl.members or [], busy=False)

    def run_until(self, done: Any, limit: int = 20000) -> None:
        for _ in range(limit):
            if done():
                return
            self.turn()
        raise AssertionError(f"not done after {limit} turns: {self.events('rebalance')[-3:]}")

    def overlay(self) -> dict[str, Any]:
        return json.loads(self.target.live.files["/etc/nginx/.nginxctl/overlay.json"])

    def history(self) -> list[str]:
        history = self.target.history
        return [history.read(e) or "" for e in history.entries()]

    def started(self) -> None:
        """The watch started with A and B, the first timer ran (nothing to move), then C was added."""
        self.ctl._reconcile("start")
        self.run_until(lambda: bool(self.events("rebalance", "done")))
        self.edit(inventory(A, B, C))


def down_servers(config: str | None) -> set[str]:
    assert config is not None
    return {s.address for s in parse_upstreams(config)["pool"] if s.state == "down"}


def test_the_watch_rebalances_a_group_once_its_membership_is_stable_for_after(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.ctl._reconcile("start")
    assert h.ctl.rebalancing.due == h.clock.now + AFTER   # the watch does not know since when it was stable
    h.run_until(lambda: bool(h.events("rebalance", "done")))
    first = h.events("rebalance", "done")[0]
    assert first["moved"] == 0 and "nothing to move" in first["message"] and not h.events("rebalance", "start")

    h.clock.now += 100
    h.edit(inventory(A, B, C))   # a scale-out: the timer starts
    added = h.clock.now
    assert h.ctl.rebalancing.due == added + AFTER
    h.clock.now = added + AFTER - 0.1   # the loop woke early (an event): nothing starts before `after`
    h.ctl.rebalancing.turn(h.ctl.members or [], busy=False)
    assert len(h.events("rebalance", "start")) == 0 and h.kernel.destroyed == 0
    h.turn()
    start = h.events("rebalance", "start")[0]
    assert h.clock.now == added + AFTER
    assert start["group"] == "pool" and start["counts"] == {A: 30, B: 30, C: 0} and start["to_move"] == 18
    assert down_servers(h.target.running) == {A, B}   # the overlay steers the moved clients to C
    assert h.overlay()["down"] == [A, B] and h.overlay()["by"] == "watch"   # status names the watch

    reloads, applies = h.target.reloads, len(h.events("apply"))
    h.ctl._reconcile("resync")   # the overlay is runtime state: in sync, no drift, not put back
    assert not h.events("drift") and len(h.events("apply")) == applies and h.target.reloads == reloads
    watch = json.loads(h.target.live.files["/etc/nginx/.nginxctl/watch.json"])
    assert watch["held"] is None and watch["loaded_sha256"] == watch["desired_sha256"]

    h.run_until(lambda: bool(h.events("rebalance", "done")[1:]))
    done = h.events("rebalance", "done")[-1]
    counts = h.kernel.counts()
    assert all(abs(n - 20) <= 2 for n in counts.values()) and sum(counts.values()) == 60, counts
    assert done["moved"] == h.kernel.destroyed == h.moves() and 18 <= done["moved"] <= 21, done
    assert done["after"] == counts and done["minimum"] == 18
    assert h.clock.now - (added + AFTER) >= (done["moved"] - 1) * 0.5 / 50   # paced: at most 50/s, with jitter
    assert down_servers(h.target.running) == set() and h.overlay()["group"] is None   # the normal config back
    assert all(not down_servers(text) for text in h.history())   # the overlay never entered the history
    assert h.ctl.rebalancing.due is None   # nothing more until the membership changes again
    assert h.kernel.closed >= 1   # the run released its sockets


def test_a_change_cancels_the_run_removes_the_overlay_and_starts_the_timer_again(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.started()
    h.run_until(lambda: h.kernel.destroyed >= 5)
    assert down_servers(h.target.running) == {A, B}
    reloads = h.target.reloads
    h.edit(inventory(A, B, C, D))   # another scale-out while the run moves connections
    assert h.target.reloads == reloads + 1   # one reload: the change's, which replaced the overlay
    assert down_servers(h.target.running) == set() and D in (h.target.running or "")
    cancelled = h.events("rebalance", "cancelled")
    assert len(cancelled) == 1 and "a change was applied" in cancelled[0]["reason"]
    assert cancelled[0]["moved"] == h.kernel.destroyed == h.moves()
    assert h.overlay()["group"] is None and not h.events("drift")
    assert all(not down_servers(text) for text in h.history())
    assert h.ctl.rebalancing.run is None and h.ctl.rebalancing.due == h.clock.now + AFTER   # the timer again
    h.run_until(lambda: bool(h.events("rebalance", "done")[1:]))
    counts = h.kernel.counts()
    assert set(counts) == {A, B, C, D} and all(abs(n - 15) <= 2 for n in counts.values()), counts


def test_a_health_take_out_during_a_run_is_applied_at_once(tmp_path):
    h = Harness(tmp_path, inventory(A, B, health=True), {A: 30, B: 30})
    checker = h.ctl.health.checker = Checker(lambda: None, lambda *_: None)
    try:
        h.started()
        h.run_until(lambda: h.kernel.destroyed >= 5)
        moved = h.kernel.destroyed
        checker.seed([{"group": "pool", "address": A, "state": "down"}])   # A fails its checks
        h.ctl._reconcile("change")
        assert h.kernel.destroyed == moved   # no step of the run came first
        config, waived = h.target.applied[-1]
        assert down_servers(config) == {A} and waived   # A out, the overlay gone, past any limit
        assert h.events("reload")[-1]["health_down"] == [f"pool/{A}"]
        assert h.events("rebalance", "cancelled")[0]["moved"] == moved
        assert h.ctl.rebalancing.due == h.clock.now + AFTER   # the membership changed: the timer again
    finally:
        checker.pool.shutdown()


def test_a_held_change_removes_the_overlay(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.started()
    h.run_until(lambda: h.kernel.destroyed >= 3)
    h.target.refuse = D   # the next change is one nginx refuses
    h.edit(inventory(A, B, C, D))
    assert h.events("reload")[-1]["result"] == "rejected"
    assert down_servers(h.target.running) == set() and h.overlay()["group"] is None   # put back by the run
    assert "held" in h.events("rebalance", "cancelled")[0]["reason"]


def test_the_first_overlay_reload_counts_toward_the_limits(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.started()
    h.target.lingering = 16   # past --max-generations: the run does not start
    h.turn()
    cancelled = h.events("rebalance", "cancelled")
    assert len(cancelled) == 1 and "not started" in cancelled[0]["message"] and h.kernel.destroyed == 0
    assert down_servers(h.target.running) == set() and h.overlay()["group"] is None
    assert h.ctl.rebalancing.due == h.clock.now + AFTER
    h.target.lingering = 0   # retired meanwhile
    h.run_until(lambda: bool(h.events("rebalance", "done")[1:]))
    assert h.events("rebalance", "done")[-1]["moved"] >= 18
    assert h.target.lingering >= 2 and not any(w for _, w in h.target.applied[-2:])   # the run's reloads counted


def test_a_stopping_watch_removes_the_overlay(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.started()
    h.run_until(lambda: h.kernel.destroyed >= 3)
    h.ctl.close()
    assert down_servers(h.target.running) == set() and h.overlay()["group"] is None
    assert h.events("rebalance", "cancelled")[0]["reason"] == "the watch stops"


def test_a_run_does_not_start_while_a_change_waits(tmp_path):
    h = Harness(tmp_path, inventory(A, B), {A: 30, B: 30})
    h.started()
    h.clock.now = h.ctl.rebalancing.due or 0
    h.ctl.rebalancing.turn(h.ctl.members or [], busy=True)   # a change in its quiet period
    assert not h.events("rebalance", "start") and h.ctl.rebalancing.due == h.clock.now + 0.5
    h.turn()
    assert h.events("rebalance", "start")
