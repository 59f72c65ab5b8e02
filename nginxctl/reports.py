"""What the commands report: one type per command, each with `lines()` (text for people) and `to_dict()`
(the JSON document); `Many` holds one report per target of a fleet."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .apply import Outcome
from .clock import utc_text
from .errors import ConfigRejected, NginxOutput
from .fleet import Member
from .inventory import Inventory
from .rebalance import Result
from .targets import Opened
from .view import Pending


@dataclass
class RenderReport:
    text: str
    notes: list[str]
    written: Path | None



@dataclass
class ValidateReport:
    ok: bool
    image: str
    nginx_version: str
    modules: list[str]
    unchecked_names: list[str]
    network: str
    inventory: Inventory
    output: str
    located: list[str]
    groups: int
    discovered: list[str] = field(default_factory=list)
    keepalived_checked: list[str] = field(default_factory=list)  # ha: the targets whose keepalived.conf passed

    def to_dict(self) -> dict[str, Any]:
        out = {"ok": self.ok, "image": self.image, "nginx_version": self.nginx_version,
               "stream_module_loaded": self.modules, "unchecked_names": self.unchecked_names,
               "network": self.network, "inventory_sha256": self.inventory.digest, "output": self.output,
               "errors": self.located, "notes": list(self.inventory.nginx.notes) + self.discovered}
        if self.inventory.ha is not None:
            out["keepalived"] = {"image": self.inventory.ha.image, "targets_checked": self.keepalived_checked}
        return out

    def notes(self) -> list[str]:
        unchecked = [f"not resolved (mapped to a placeholder): {', '.join(self.unchecked_names)}; use --resolve or "
                     "--container to check them"] if self.unchecked_names else []
        return self.to_dict()["notes"] + unchecked

    def lines(self, path: Path) -> list[str]:
        lines = [f"ok: nginx {self.nginx_version} ({self.image}) accepts the config for {path} ({self.groups} "
                 "group(s))"]
        if self.inventory.ha is not None:
            lines.append(f"ok: keepalived ({self.inventory.ha.image}) accepts the keepalived.conf of "
                         f"{', '.join(self.keepalived_checked)}")
        return lines

    def rejection(self) -> ConfigRejected:
        """nginx -t refused the config: the error, traced to the inventory, carrying this report for JSON."""
        rejected = ConfigRejected(NginxOutput(["nginx", "-t"], 1, self.output), self.located)
        rejected.report = self.to_dict()
        return rejected


@dataclass
class ApplyReport:
    outcome: Outcome
    dry_run: bool
    notes: list[str] = field(default_factory=list)

    @property
    def diff(self) -> str:
        return self.outcome.diff

    def to_dict(self) -> dict[str, Any]:
        o = self.outcome
        data: dict[str, Any] = {
            "target": o.target, "changed": o.changed, "reloaded": o.reloaded, "dry_run": self.dry_run,
            "previous_sha256": o.previous_hash, "new_sha256": o.new_hash, "loaded_before": o.loaded_before,
            "diff": o.diff, "messages": o.messages, "notes": self.notes}
        if o.reload:
            data["workers"] = {"old": sorted(o.reload.old_workers), "new": sorted(o.reload.new_workers)}
        if o.generations is not None:
            data["before_reload"] = o.generations.to_dict()
        if o.preview is not None:
            data["reload_preview"] = o.preview.to_dict()
        if o.companion is not None:   # with ha: what the keepalived.conf beside it came to
            data["keepalived"] = {"container": o.companion.name, "action": o.companion.action,
                                  "why": o.companion.why or None}
        return data

    def lines(self) -> list[str]:
        o = self.outcome
        if self.dry_run:
            out = ["dry run: " + ("changes shown above; nothing changed" if o.changed else "no changes to the file")]
            if not o.changed and o.loaded_before != o.new_hash:
                out.append(f"dry run: nginx in {o.target} has not loaded this config yet: a reload would load it")
            return out + (o.preview.lines() if o.preview else [])
        if o.reloaded and o.reload:
            return [f"applied and reloaded: nginx in {o.target} runs config sha256:{o.new_hash[:12]} (workers "
                    f"{sorted(o.reload.old_workers)} -> {sorted(o.reload.new_workers)})"]
        if o.changed:
            return [f"installed config sha256:{o.new_hash[:12]} in {o.target}; not reloaded: nginx still runs the "
                    "previous config (use --reload)"]
        if o.loaded_before != o.new_hash:
            return [f"{o.target} has this config installed but nginx has not loaded it: use --reload"]
        if o.keepalived_changed:
            return [f"{o.target} already runs this nginx config (not reloaded); {o.companion}"]
        return [f"no changes: {o.target} already runs this config; nothing done"]


@dataclass
class FleetReport:
    """`apply` on a fleet: one report per target, in rollout order."""

    names: list[str]
    reports: list[ApplyReport]
    notes: list[str]

    @property
    def diff(self) -> str:
        return "".join(r.outcome.diff for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": [{"name": n, **r.to_dict()} for n, r in zip(self.names, self.reports, strict=True)],
                "notes": self.notes}

    def lines(self, with_diffs: bool = False) -> list[str]:
        out: list[str] = []
        for n, r in zip(self.names, self.reports, strict=True):
            if with_diffs and r.outcome.diff:
                out += [f"== {n}", *r.outcome.diff.rstrip("\n").split("\n")]
            out += [f"{n}: {line}" for line in r.lines()]
        return out


@dataclass
class Many:
    """A command's reports for each target of a fleet."""

    names: list[str]
    reports: list[Any]
    unreachable: dict[str, str] = field(default_factory=dict)   # targets not reached: why (read-only commands)

    @property
    def differs(self) -> bool:
        return any(r.differs for r in self.reports)

    @property
    def diff(self) -> str:
        return "".join(getattr(r, "diff", "") for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        items = []
        for name, report in zip(self.names, self.reports, strict=True):
            data = report.to_dict()
            items.append({"name": name, **(data if isinstance(data, dict) else {"entries": data})})
        items += [{"name": name, "reachable": False, "error": why} for name, why in self.unreachable.items()]
        out: dict[str, Any] = {"targets": items}
        if self.unreachable:
            out["errors"] = [{"type": "EnvironmentProblem", "message": f"{name} cannot be reached: {why}"}
                             for name, why in self.unreachable.items()]
        return out

    def lines(self, with_diffs: bool = False) -> list[str]:
        """Each target's lines under its name (`with_diffs`: its diff too, under the same header)."""
        out: list[str] = []
        for name, report in zip(self.names, self.reports, strict=True):
            out.append(f"== {name}")
            diff = str(getattr(report, "diff", "") or "")
            if with_diffs and diff:
                out += diff.rstrip("\n").split("\n")
            out += report.lines()
        for name, why in self.unreachable.items():
            out += [f"== {name}", f"unreachable: {why}"]
        return out


def one_or_many(opened: Opened, members: list[Member], reports: list[Any]) -> Any:
    if len(members) == 1 and (opened.inventory is None or not opened.inventory.targets):
        return reports[0]
    return Many([m.name for m in members], reports)


@dataclass
class HistoryReport:
    target: str
    rows: list[dict[str, Any]]

    def to_dict(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.rows

    def lines(self) -> list[str]:
        if not self.rows:
            return [f"no history on {self.target} yet (apply records it)"]
        return [f"{r['id']:>4}  {r['time']}  {str(r['sha256'])[:12]}"
                f"{'  keepalived ' + r['keepalived_sha256'][:12] if r.get('keepalived_sha256') else ''}"
                f"{'  current' if r['current'] else ''}" for r in self.rows]


@dataclass
class RollbackReport:
    target: str
    entry_id: int
    entry_hash: str
    outcome: Outcome

    @property
    def diff(self) -> str:
        return self.outcome.diff

    def to_dict(self) -> dict[str, Any]:
        companion = self.outcome.companion
        return {"target": self.target, "entry": self.entry_id, "sha256": self.entry_hash,
                "reloaded": self.outcome.reloaded, "diff": self.outcome.diff,
                "keepalived": companion.action if companion is not None else None}

    def lines(self) -> list[str]:
        state = "rolled back and reloaded" if self.outcome.reloaded else \
            "rolled back" if self.outcome.keepalived_changed else "already running"
        companion = f"; {self.outcome.companion}" if self.outcome.keepalived_changed else ""
        return [f"{state}: {self.target} runs history entry {self.entry_id} (sha256:{self.entry_hash[:12]}){companion}"]


@dataclass
class DrainReport:
    target: str
    group: str
    address: str
    down: bool
    inventory_changed: bool
    outcome: Outcome
    remaining: dict[int, int] | None = None  # worker pid -> connections still open to the server
    counted: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "group": self.group, "server": self.address, "down": self.down,
                "inventory_changed": self.inventory_changed, "reloaded": self.outcome.reloaded,
                "remaining_connections": None if self.remaining is None else sum(self.remaining.values()),
                "holders": None if self.remaining is None else {str(k): v for k, v in self.remaining.items()}}

    def lines(self) -> list[str]:
        verb = "drained" if self.down else "undrained"
        state = "reloaded" if self.outcome.reloaded else "nginx already runs this config"
        out = [f"{verb} {self.address} in '{self.group}': inventory "
               f"{'updated' if self.inventory_changed else 'unchanged'}, {state}"]
        if not self.down:
            return out
        if not self.counted:
            out.append("connections cannot be counted from here (a unix socket, or a remote Docker engine)")
        elif not self.remaining:
            out.append(f"no connection to {self.address} remains")
        else:
            who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(self.remaining.items()))
            out.append(f"{sum(self.remaining.values())} connection(s) to {self.address} remain ({who})")
        return out


@dataclass
class StatusReport:
    data: dict[str, Any]
    summary: list[str]
    inventory: Inventory | None

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def lines(self) -> list[str]:
        d = self.data
        out = [f"container   {d['container']}  nginx {d['nginx_version']}",
               f"master      {d['master_pid']}  workers {', '.join(map(str, d['worker_pids'])) or '-'}"]
        out += [f"            {line}" for line in self.summary]
        dep, loaded = d["deployed_sha256"], d["loaded"]
        out.append(f"deployed    {dep[:12] if dep else 'none'}  {d['config_path']}")
        hint = "the watch reinstalls and reloads its config itself" if d.get("watch") else "nginxctl apply --reload"
        out.append(f"loaded      {loaded[:12] if loaded else 'unknown'}"
                   + (f"  (the installed file is not loaded yet: {hint})" if d["reload_pending"] else ""))
        watch = d.get("watch")
        if watch:
            held = f"; held back since {_when(watch['held_since'])}: {watch['held']}" if watch.get("held") else ""
            out.append(f"watch       pid {watch['pid']} on {watch['host']} controls this target "
                       f"({watch['inventory']}){held}")
        if d.get("wanted_by") == "inventory":
            out.append(f"inventory   {str(d['inventory_config_sha256'])[:12]}  {d['inventory_path']}")
        if d["drift"] is not None:
            pend = d.get("pending")
            if pend is None:
                out.append("drift       yes: nginx runs a config nginxctl cannot identify")
            else:
                out.append(f"drift       {'yes: ' + Pending(**pend).summary() + ' pending' if d['drift'] else 'no'}")
                out += [f"pending     + {item}" for item in pend["added"]]
                out += [f"pending     - {item}" for item in pend["removed"]]
                out += [f"pending     ~ {item}" for item in pend["changed"]]
                if pend["config"]:
                    out.append("pending     ~ other settings (nginxctl diff shows them)")
            pending_text = {True: "pending", False: "not pending", None: "unknown (what nginx runs is unknown)"}
            out.append(f"reload      {pending_text[d['reload_pending']]}")
        health = d.get("health") or {}
        if health and health.get("stale"):
            out.append(f"health      as last published by watch (pid {health.get('watch_pid')}), which no longer "
                       "runs: nothing checks the servers now")
        for row in health.get("servers", []):
            if row.get("state") == "down":
                rendered = "rendered down" if row.get("rendered_down") else \
                    (row.get("why") or "kept in (every primary fails)")
                out.append(f"health      {row['group']}/{row['address']} down since {_when(row.get('since'))}: "
                           f"{row.get('last_error')} ({rendered})")
            elif row.get("rendered_down"):
                out.append(f"health      {row['group']}/{row['address']} passes its checks again, still out: "
                           f"{row.get('why') or 'put back at the next reload'}")
        if health and not any(r.get("state") == "down" or r.get("rendered_down") for r in health.get("servers", [])):
            checked = len(health.get("servers", []))
            out.append(f"health      {checked} server(s) all passing at its last checks" if health.get("stale") else
                       f"health      {checked} server(s) checked by watch (pid {health.get('watch_pid')}), all passing")
        if d["last_apply"] not in ("done", "none") and d["reload_pending"]:
            out.append(f"last apply  unfinished ({d['last_apply']}): the next apply --reload completes it")
        out += [f"note        {note}" for note in d.get("notes", [])]
        if d.get("groups") is None:
            out.append("\nthe servers nginx runs cannot be listed: the loaded config is not known")
        failing = {(f["group"], f["address"]): f for f in d.get("recent_failures") or []}
        for g in d.get("groups") or []:
            head = f"\n{g['name']}"
            if g["protocol"]:
                head += f"  {g['protocol']} {' '.join(g['listen'])}  {g['balance']}"
            out.append(head)
            most = max((s.get("connections") or 0 for s in g["servers"]), default=0)
            width = max((len(s["address"]) for s in g["servers"]), default=0)
            for s in g["servers"]:
                state = s["state"] + (f" ({s['reason']})" if s.get("reason") else "")
                extra = " ".join(f for f in s["flags"] if f not in ("down", "backup"))
                out.append(f"  {s['address']:<{width}}  {state:<20} {_bar(s, most)}  {extra}".rstrip())
                if failed := failing.pop((g["name"], s["address"]), None):
                    out.append(f"  {'':<{width}}  {_failed_text(failed)}")
            out += [f"  {f['address']}  not in the loaded config: {_failed_text(f)}" for (group, _), f in
                    failing.items() if group == g["name"]]
        overlay = d.get("overlay")
        if overlay and not overlay.get("stale"):
            out.append(f"\nrebalance   {overlay['group']}: {', '.join(overlay.get('down', []))} closed to new "
                       f"connections by nginxctl {overlay.get('by', 'rebalance')} (pid {overlay.get('pid')}) since "
                       f"{_when(overlay.get('since'))}")
        return out


BAR = 20


def _bar(server: dict[str, Any], most: int) -> str:
    """A server's connections at a glance: a bar scaled to the group's busiest server (old generations shown
    apart), the count, and the fair share."""
    held = server.get("connections")
    if held is None:
        return ""
    old = server.get("old_generation_connections") or 0
    full = round(BAR * held / most) if most else 0
    aged = min(full, round(BAR * old / most)) if most else 0
    bar = "▒" * aged + "█" * (full - aged) + "·" * (BAR - full)
    share = server.get("fair_share")
    text = f"{bar} {held:>6}"
    if old:
        text += f" ({old} old)"
    if share is not None:
        text += f"  share {share:g}"
    return text


def _failed_text(failed: dict[str, Any]) -> str:
    """A `recent_failures` row as a sentence."""
    return (f"nginx could not connect {failed['count']} time(s) in the last {failed['window_seconds']:g}s, last "
            f"{failed['seconds_ago']}s ago: {failed['error']}"
            + ("" if failed["taken_out_seconds_ago"] is None else
               f"; its passive check took it out {failed['taken_out_seconds_ago']}s ago (max_fails)")
            + ("" if failed["taken_out_seconds_ago"] is None or failed["out_now"] is None else
               f", {'out' if failed['out_now'] else 'back in'} now (fail_timeout {failed['fail_timeout_seconds']:g}s)"))


def _when(t: float | None) -> str:
    return utc_text(t) if t else "?"


@dataclass
class DiffReport:
    target: str
    diff: str
    deployed: str | None
    rendered: str
    loaded: str | None
    change: Pending | None = None
    notes: list[str] = field(default_factory=list)
    unknown: bool = False   # some groups' wanted servers cannot be known now (a discovery source unreachable)

    @property
    def pending(self) -> bool:
        """The installed file is not what nginx runs: a reload would change what runs."""
        return self.loaded != self.deployed

    @property
    def differs(self) -> bool:
        """nginx does not run what is wanted: the file differs, or it is not loaded yet."""
        if self.unknown and not self.diff and self.change is not None and not self.change and self.loaded is not None:
            return False  # only groups whose wanted servers cannot be known differ
        return bool(self.diff) or self.loaded != self.rendered

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target": self.target, "differs": self.differs, "diff": self.diff, "deployed_sha256": self.deployed,
            "inventory_config_sha256": self.rendered, "loaded": self.loaded, "reload_pending": self.pending,
            "pending": self.change.to_dict() if self.change is not None else None, "notes": self.notes}
        if self.differs:
            what = "the deployed file differs from what is wanted" if self.diff else \
                "the file matches what is wanted but nginx has not loaded it"
            data["errors"] = [{"type": "Differences", "message": what}]
        return data

    def lines(self) -> list[str]:
        out = [f"# note: {n}" for n in self.notes]
        if self.diff or self.loaded == self.rendered or not self.differs:
            return out
        loaded = f"sha256:{self.loaded[:12]}" if self.loaded else "an unknown config"
        return out + [f"# {self.target}: the file matches the inventory, but nginx runs {loaded}: a reload is "
                      "pending (nginxctl apply --reload)"]


@dataclass
class RebalanceReport:
    """`rebalance` on one target: what was moved against the minimum, the counts before and after."""

    result: Result

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"target": r.target, "group": r.group, "method": r.method, "dry_run": r.dry_run, "moved": r.moved,
                "minimum": r.minimum, "before": r.before, "after": r.after, "seconds": r.seconds, "plan": r.plan,
                "reloads": r.reloads, "notes": r.notes}

    def lines(self) -> list[str]:
        r = self.result
        out: list[str] = []
        if r.dry_run:
            out.append(f"dry run: {r.group} on {r.target} ({r.method}); nothing closed")
            out.append(f"  {'server':<28} {'connections':>11} {'fair share':>10} {'to move':>8}")
            for row in r.plan:
                share = row.get("fair_share")
                out.append(f"  {row['address']:<28} {row['connections']:>11} "
                           f"{'-' if share is None else format(share, '.1f'):>10} {row.get('to_move', 0):>8}")
            out.append(f"minimum: {r.minimum} connection(s) must move")
        else:
            verb = "rebalanced" if r.moved else "nothing to move in"
            out.append(f"{verb} {r.group} on {r.target}: {r.moved} connection(s) moved (minimum {r.minimum}) in "
                       f"{r.seconds:.1f}s")
            for address in dict.fromkeys([*r.before, *r.after]):
                out.append(f"  {address}: {r.before.get(address, 0)} -> {r.after.get(address, 0)}")
        out += [f"note: {note}" for note in r.notes]
        return out
