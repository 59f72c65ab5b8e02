"""The reconcile decision of `nginxctl watch`: what one pass does, and why. Pure: data in, a Plan out.

One pass gathers what it needs (the inventory, the sources' snapshots, the health decisions, the servers nginx
refused, what each target has loaded), then `decide` says what to do, once:

  WAIT     a discovery source has never answered: rendering now would empty its groups; keep what runs
  HOLD     the same desired config failed moments ago: wait out its backoff, whatever woke the loop
  IN_SYNC  every target runs the desired config
  APPLY    these targets run something else: roll the desired config to them (and say which of them run a
           config this watch did not put there: drift); with `ha:`, a target whose keepalived companion holds
           another keepalived.conf than the desired one (an `ha:` edit), or none that can serve it (the target
           restarted: its companion is left in a dead network namespace), is behind too

How a failed apply is counted and retried is `classify`: one table from the error to the reload result.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import (
    EXIT_NOT_RESTORED,
    ApplyFailure,
    ConfigRejected,
    EnvironmentProblem,
    FleetFailure,
    GenerationsLingering,
    KeepalivedRejected,
    NginxctlError,
    RestoreFailed,
    TemplateError,
)
from ..history import sha
from ..inventory import Inventory
from ..trace import trace
from .merge import Merged, merge
from .model import Result, Snapshot

GENERATIONS_RETRY = 2.0


class Action(str, enum.Enum):
    WAIT = "wait"
    HOLD = "hold"
    IN_SYNC = "in-sync"
    APPLY = "apply"


@dataclass(frozen=True)
class PassInput:
    """What one pass knows when it decides."""

    trigger: str                                   # start | change | retry | resync
    inventory: Inventory
    snapshots: Mapping[str, Snapshot]
    down: frozenset[tuple[str, str]]               # rendered down by health checks
    isolated: Mapping[tuple[str, str], str]        # discovered servers nginx refused, and its words
    loaded: Mapping[str, str | None]               # target -> hash of the config it runs (None: unknown)
    verified: str | None = None                    # what this watch last verified on the targets
    failed: str | None = None                      # the desired config whose apply failed last
    backoff_pending: bool = False                  # that failure's backoff has not ended
    failed_for_good: bool = False                  # that failure is not retried (nginx rejects the config)
    installed: Mapping[str, str | None] = field(default_factory=dict)   # target -> hash of its config file
    returned: frozenset[str] = frozenset()         # back from being unreachable (`ha:`): behind, not drifted
    keepalived: Mapping[str, str | None] = field(default_factory=dict)  # ha: target -> the keepalived.conf its
    #                                              companion holds (None: no companion, or one that cannot serve it)


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str
    merged: Merged | None = None
    rendered: Mapping[str, str] = field(default_factory=dict)   # target -> its desired config
    behind: tuple[str, ...] = ()                                 # targets to change, in rollout order
    reload: bool = True        # False: nginx runs the desired config already, only a file differs (reinstall)
    drift: tuple[tuple[str, str | None], ...] = ()               # (target, what it runs) not put there by us
    waiting_for: tuple[str, ...] = ()                            # sources that never answered
    keepalived: Mapping[str, str] = field(default_factory=dict)  # ha: target -> its desired keepalived.conf

    @property
    def desired(self) -> str | None:
        """The hash of the first target's desired config (the one the log and the metrics speak of)."""
        first = next(iter(self.rendered.values()), None)
        return sha(first) if first is not None else None

    @property
    def attempt(self) -> str | None:
        """What a failed apply is remembered by: the desired config, with `ha:` the keepalived.confs beside it (an
        `ha:` edit after a refused keepalived.conf is a new attempt, though the nginx config is the same)."""
        return attempt(self.rendered, self.keepalived)


def attempt(rendered: Mapping[str, str], keepalived: Mapping[str, str]) -> str | None:
    first = next(iter(rendered.values()), None)
    if first is None or not keepalived:
        return sha(first) if first is not None else None
    return sha("\0".join([first, *(keepalived[name] for name in sorted(keepalived))]))


def unknown_sources(inv: Inventory, snapshots: Mapping[str, Snapshot]) -> tuple[str, ...]:
    """The discovery sources the inventory uses that have never answered."""
    return tuple(sorted({g.discover for g in inv.upstreams if g.discover
                         and not (snapshots.get(g.discover) and snapshots[g.discover].known)}))


def decide(p: PassInput, render: Callable[[Inventory], dict[str, str]],
           render_keepalived: Callable[[Inventory], dict[str, str]] | None = None) -> Plan:
    """What this pass does. `render` turns the merged inventory into each target's config, in the targets'
    order (pure: the templates and each target's build are fixed for the pass); `render_keepalived` (`ha:`) into
    each target's keepalived.conf, compared with `p.keepalived`. Raises TemplateError."""
    waiting = unknown_sources(p.inventory, p.snapshots)
    if waiting:
        return Plan(Action.WAIT, f"{', '.join(waiting)} not reachable yet: the target keeps what it runs until "
                    "discovery has answered once", waiting_for=waiting)
    merged = merge(p.inventory, dict(p.snapshots), p.down, dict(p.isolated))
    rendered = render(merged.inventory)
    if not rendered:
        raise NginxctlError("no target to render for (none attached)")
    keepalived = render_keepalived(merged.inventory) if render_keepalived is not None else {}
    if attempt(rendered, keepalived) == p.failed and (p.backoff_pending or p.failed_for_good):
        why = "nginx rejected this config: held until the inputs change" if p.failed_for_good else \
            "the same config failed moments ago: waiting for its backoff"
        return Plan(Action.HOLD, why, merged, rendered, keepalived=keepalived)
    not_loaded = tuple(name for name, text in rendered.items() if p.loaded.get(name) != sha(text))
    # a file changed under nginx (docker cp, no reload): nginx runs the right config, but a restart would not
    file_only = tuple(name for name, text in rendered.items() if name not in not_loaded
                      and name in p.installed and p.installed[name] != sha(text))
    companions = tuple(name for name, text in keepalived.items()
                       if name in rendered and p.keepalived.get(name) != text)
    behind = tuple(name for name in rendered if name in not_loaded or name in file_only or name in companions)
    if not behind:
        return Plan(Action.IN_SYNC, f"nothing to do: the target runs the desired config ({p.trigger})", merged,
                    rendered, keepalived=keepalived)
    drift = tuple((name, p.loaded.get(name)) for name in not_loaded
                  if p.verified is not None and p.loaded.get(name) != p.verified and name not in p.returned)
    drift += tuple((name, p.loaded.get(name)) for name in file_only)
    if not_loaded:
        reason = f"applying ({p.trigger}): the desired config differs from the loaded one"
    elif file_only:
        reason = (f"reinstalling ({p.trigger}): the config file differs from the one nginx runs (changed outside the "
                  "watch)")
    else:
        reason = (f"applying ({p.trigger}): the keepalived.conf beside {', '.join(companions)} differs from the "
                  "desired one (an ha: change, or a companion to make again); nginx runs the desired config")
    # keepalived.conf goes in only with a reload: one that finds nginx running the desired config reloads nothing
    return Plan(Action.APPLY, reason, merged, rendered, behind, bool(not_loaded or companions), drift,
                keepalived=keepalived)


@dataclass(frozen=True)
class Failure:
    """How a failed apply is counted and what happens next."""

    result: Result
    retry: bool                     # retried with backoff; False: wait for the next change
    delay: float | None = None      # a fixed retry delay instead of the backoff
    remember: bool = True           # the desired config is not retried before its backoff ends
    detach: bool = False            # attach the targets again (a container restarted, the engine went away)


# The first matching row wins; FleetFailure is classified by what it wraps (see `classify`).
FAILURES: tuple[tuple[type[NginxctlError], Failure], ...] = (
    (TemplateError, Failure(Result.REJECTED, retry=False, remember=False)),
    (ConfigRejected, Failure(Result.REJECTED, retry=False)),
    (KeepalivedRejected, Failure(Result.REJECTED, retry=False)),
    (GenerationsLingering, Failure(Result.REFUSED, retry=True, delay=GENERATIONS_RETRY, remember=False)),
    (RestoreFailed, Failure(Result.RESTORE_FAILED, retry=True)),
    (ApplyFailure, Failure(Result.RESTORED, retry=True)),
    (EnvironmentProblem, Failure(Result.ERROR, retry=True, remember=False, detach=True)),
    (NginxctlError, Failure(Result.ERROR, retry=True, remember=False)),
)


def classify(exc: NginxctlError) -> Failure:
    """The reload result and the next step for an error raised by an apply."""
    if isinstance(exc, FleetFailure):
        return Failure(Result.RESTORE_FAILED if exc.exit_code == EXIT_NOT_RESTORED else Result.RESTORED,
                       retry=True, detach=isinstance(exc.cause, EnvironmentProblem))
    return next(failure for kind, failure in FAILURES if isinstance(exc, kind))


def describe(exc: NginxctlError) -> str:
    """The decision log's sentence for a failed apply."""
    if isinstance(exc, TemplateError):
        return f"the templates cannot render: {exc}"
    if isinstance(exc, ConfigRejected):
        return f"nginx rejected the config; the last good config keeps running: {str(exc).splitlines()[0]}"
    if isinstance(exc, GenerationsLingering):
        if exc.reason == "memory" and exc.memory is not None and exc.max_memory is not None:
            past = (f"holding {exc.memory / (1 << 20):.1f} MiB (--max-lingering-memory "
                    f"{exc.max_memory / (1 << 20):.0f} MiB)")
        else:
            past = f"(--max-generations {exc.limit})"
        return f"reload deferred: {exc.count} old worker generation(s) linger {past}"
    if isinstance(exc, EnvironmentProblem):
        return f"target unreachable: {exc}"
    if isinstance(exc, (FleetFailure, RestoreFailed, ApplyFailure)):
        return str(exc).replace("\n", "; ")
    return str(exc).splitlines()[0]


def drift_lines(plan: Plan, verified: str | None) -> list[tuple[str, dict[str, object]]]:
    """The `drift` lines of an APPLY plan, one per target that runs a config this watch did not put there:
    (sentence, fields)."""
    lines = []
    for name, runs in plan.drift:
        shown = f"sha256:{runs[:12]}" if runs else "an unknown config"
        fields: dict[str, object] = {"target": name, "loaded": runs[:12] if runs else None}
        if runs is not None and runs == sha(plan.rendered[name]):
            lines.append((f"{name}: its config file was changed outside the watch (nginx still runs the desired "
                          "config, a restart would not): reinstalling it", fields))
            continue
        wanted = f"the config this watch verified (sha256:{verified[:12]})" if verified else "the desired config"
        why = "changed outside the watch (a forced apply, a rollback, a hand edit)" if runs else \
            "restarted, changed outside the watch, or nginx not running yet"
        lines.append((f"{name} runs {shown}, not {wanted}: {why}; putting the desired config back", fields))
    return lines


def locate(exc: ConfigRejected, plan: Plan | None) -> list[str]:
    """The inventory lines a rejection comes from (as `apply` says them)."""
    if plan is None or plan.merged is None or not plan.rendered:
        return []
    return trace(exc.result.output, next(iter(plan.rendered.values())), plan.merged.inventory)
