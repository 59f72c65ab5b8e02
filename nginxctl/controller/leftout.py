"""Discovered servers the watch leaves out of the config, each said once in the decision log: those nginx
refused (found from its rejection, `isolate.culprits`; kept out until their source drops them or changes their
address) and those the grammar refused (`merge`'s skips, counted per source for the metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from ..errors import ConfigRejected, InventoryError
from .decide import Plan
from .isolate import culprits
from .log import DecisionLog, Logged
from .merge import Merged, candidate_server
from .metrics import Metrics
from .model import Snapshot


class LeftOut:
    def __init__(self, log: DecisionLog, metrics: Metrics) -> None:
        self.log = log
        self.metrics = metrics
        self.refused: dict[tuple[str, str], str] = {}   # (group, address) nginx refused -> its reason
        self.seen: set[tuple[str, str, str]] = set()    # the grammar's skips already said

    def prune(self, snapshots: Mapping[str, Snapshot]) -> None:
        """A refused backend is tried again once its source drops it or changes its address."""
        present = set()
        for snapshot in snapshots.values():
            for candidate in snapshot.candidates:
                with contextlib.suppress(InventoryError, ValueError):
                    present.add((candidate.group, candidate_server(candidate).address.text))
        self.refused = {k: v for k, v in self.refused.items() if k in present}

    def isolate(self, exc: ConfigRejected, plan: Plan) -> bool:
        """Leave out the discovered servers nginx's rejection points at, so the rest of the change applies.
        False when the rejection is not about a discovered server (the inventory's author must fix it)."""
        assert plan.merged is not None
        merged = plan.merged
        rendered = plan.rendered.get(exc.target or "") or next(iter(plan.rendered.values()))
        discovered = {key for key, source in merged.sources.items() if source != "static"}
        found = [c for c in culprits(exc.result.output, rendered, discovered) if (c[0], c[1]) not in self.refused]
        for group, address, why in found:
            self.refused[(group, address)] = why
            self.log(Logged.SKIP, f"{merged.sources[(group, address)]} backend {group}/{address} left out: "
                     "nginx refuses "
                     f"it ({why}); the rest of the change applies", group=group, server=address,
                     source=merged.sources[(group, address)], reason=why)
        return bool(found)

    def report(self, merged: Merged) -> None:
        """Say each new skip of the grammar once (not those nginx refused: said when found); count them."""
        said = {(group, f"nginx refuses {address}: {why}") for (group, address), why in self.refused.items()}
        counts: dict[str, int] = {}
        for skip in merged.skipped:
            counts[skip.source] = counts.get(skip.source, 0) + 1
            key = (skip.source, skip.origin, skip.reason)
            if key not in self.seen and (skip.group, skip.reason) not in said:
                self.seen.add(key)
                self.log(Logged.SKIP, f"{skip.source} backend {skip.origin} skipped: {skip.reason}", source=skip.source,
                         origin=skip.origin, group=skip.group)
        for source in ("docker", "etcd"):
            self.metrics.skipped.labels(source).set(counts.get(source, 0))
