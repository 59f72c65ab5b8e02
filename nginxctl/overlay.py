"""A rebalance's temporary overlay on one target: the config nginx ran before (`normal`) with the servers of one
group that must not receive new connections marked `down`.

Loaded through the normal `Deployer.apply` (tested, reloaded, verified; the change lock held for that reload
only), published first in `.nginxctl/overlay.json` so that `status` expects it (runtime state, like a health
decision: never drift), and kept out of the history, so that `rollback` never returns to it. Removing it puts
`normal` back, byte for byte, verified.

The first overlay of a run is refused like any reload when old generations linger past the target's limits
(nothing changed: its reloads count toward them); later ones never are: a run must be able to change and
remove what it put in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .apply import Deployer
from .errors import EnvironmentProblem, WatchOwnsTarget
from .fleet import Member
from .history import sha
from .nginxtext import with_servers_down
from .owner import check_owner
from .published import Published


@contextlib.contextmanager
def _reload_terms(deployer: Deployer, *, limited: bool) -> Iterator[None]:
    """An overlay's reload: out of the history; within the target's limits (`limited`, and never waived by a
    flag a watch's pass left set) or past them."""
    saved = deployer.max_generations, deployer.max_memory, deployer.waive_limits, deployer.record_history
    deployer.record_history = False
    if limited:
        deployer.waive_limits = False
    else:
        deployer.max_generations = deployer.max_memory = None
    try:
        yield
    finally:
        deployer.max_generations, deployer.max_memory, deployer.waive_limits, deployer.record_history = saved


class Overlay:
    """The overlay of one run (`by_watch`: the run of the watch that controls the target, which needs no
    one-owner check). `down` is None while no overlay is loaded; `expected` is the hash of the config the run
    expects nginx to run (the overlay, or for a consistent hash the normal config)."""

    def __init__(self, deployer: Deployer, group: str, *, by_watch: bool = False) -> None:
        self.deployer = deployer
        self.group = group
        self.by_watch = by_watch
        self.published = Published(deployer.live, deployer.history.base)
        self.normal: str | None = None
        self.down: set[str] | None = None
        self.expected: str | None = None
        self.reloads = 0

    def set(self, down: set[str], first: bool = False) -> None:
        """Load the normal config with `down` closed to new connections (published first, so `status` expects
        it). Raises EnvironmentProblem when the target's config changed under the run (another apply): it stops
        there; GenerationsLingering (the first one only), and what `Deployer.apply` raises."""
        assert self.normal is not None
        if down == self.down:
            return
        if not first:
            self.check_unchanged()
        text = with_servers_down(self.normal, self.group, down)
        self.published.write(Published.overlay_files(self.group, sorted(down), sha(self.normal),
                                                         by="watch" if self.by_watch else "rebalance"))
        try:
            with _reload_terms(self.deployer, limited=first):
                self.deployer.apply(text, reload=True)
        except BaseException:
            if first:
                self.unpublish()
            raise
        self.down = down
        self.expected = sha(text)
        self.reloads += 1

    def runs(self) -> bool:
        """Whether nginx runs the config this run expects (a few file reads)."""
        return self.expected is not None and self.deployer.loaded() == self.expected

    def check_unchanged(self) -> None:
        """The target still runs what this run loaded and no watch took it over; else someone changed it
        meanwhile (an `apply` takes the change lock too, but between two of our reloads): stop, and put nothing
        back over it. Raises EnvironmentProblem, WatchOwnsTarget."""
        if not self.by_watch:
            try:
                check_owner([Member(self.deployer.live.name, self.deployer)])
            except WatchOwnsTarget:
                self.forget()   # the watch puts its own config back: never fight it
                raise
        self.check_loaded()

    def check_loaded(self) -> None:
        """The target still runs this run's config (checked at every count); else stop. Raises
        EnvironmentProblem."""
        if self.expected is not None and not self.runs():
            self.forget()
            if not self.by_watch:   # a watch started meanwhile and put its config in: say so
                check_owner([Member(self.deployer.live.name, self.deployer)])
            raise EnvironmentProblem(f"the config of {self.deployer.live.name} changed while rebalancing (another "
                                     "nginxctl apply?): stopped; the new config is left as it is",
                                     "run the rebalance again")

    def remove(self) -> None:
        """Put back the config nginx ran before the rebalance, verified; then unpublish the overlay. A config
        someone else installed meanwhile is left as it is (EnvironmentProblem)."""
        if self.down is None or self.normal is None:
            return
        self.check_unchanged()
        with _reload_terms(self.deployer, limited=False):
            self.deployer.apply(self.normal, reload=True)
        self.reloads += 1
        self.down = None
        self.expected = None
        self.unpublish()

    def forget(self) -> None:
        """Another config replaced the overlay (an apply, or the watch's own reload): nothing to put back."""
        self.down = None
        self.unpublish()

    def unpublish(self) -> None:
        self.published.write(Published.overlay_files(None, []))
