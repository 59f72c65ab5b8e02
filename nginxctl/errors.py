"""The one exception hierarchy of nginxctl; the CLI turns each class into an exit code.

`EXIT_CODES` is the documented table (the README's table is checked against it by a test).
Every error can describe itself as data (`to_dict`) for `--format json`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_RESTORED = 4
EXIT_NOT_RESTORED = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (`diff`: no difference; `status` exits 0 with or without drift)",
    EXIT_REJECTED: "nginx (or keepalived, with `ha:`) rejected the config (nothing changed), `diff` found "
                   "differences or a pending reload, `drain --wait` timed out with connections left, or "
                   "`rebalance` did not converge by its --timeout",
    EXIT_USAGE: "usage or inventory error: file, line, column, key path, what was expected; nothing written",
    EXIT_ENVIRONMENT: "environment error: Docker unreachable, image missing, container missing or not running, "
                      "target locked by another nginxctl or controlled by `nginxctl watch` (without --force), "
                      "a fleet target unreachable",
    EXIT_RESTORED: "the change did not take and the previous config was restored, verified and is running; or "
                   "the reload was refused because old worker generations linger past `--max-generations` or "
                   "`--max-lingering-memory` (nothing changed; `--retire-rate` retires the oldest instead)",
    EXIT_NOT_RESTORED: "the change did not take and restoring the previous config failed too: the target may "
                       "not run the previous config; look at it now (`nginxctl status`)",
    EXIT_INTERNAL: "internal error in nginxctl (a bug: `--debug` shows the traceback; please report it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): the message says what was and was not done",
}


class NginxctlError(Exception):
    """Base class. `exit_code` is what the CLI exits with; `str()` is the message for people."""

    exit_code = EXIT_REJECTED
    report: dict[str, Any] | None = None   # the command's report, when it has one to give with the error

    def to_dict(self) -> dict[str, Any]:
        """The error as data, for `--format json`."""
        return {"type": type(self).__name__, "message": str(self)}

    def errors(self) -> list[dict[str, Any]]:
        """The `errors` list of a JSON error document: one entry per problem, located where possible."""
        return [self.to_dict()]

    def stdout_lines(self) -> list[str]:
        """What the command still prints as its result (text output) before the error itself."""
        return []


@dataclass(frozen=True)
class Location:
    """Where in the inventory file a problem sits. Line and column are 1-based."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One inventory problem: where, which key path, and the rule broken."""

    location: Location
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.location.file, "line": self.location.line, "column": self.location.column,
                "path": self.path, "message": self.message}


class InventoryError(NginxctlError):
    """The inventory cannot be used. Carries every problem found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "InventoryError", "message": f"{len(self.problems)} problem(s) in the inventory",
                "problems": [p.to_dict() for p in self.problems]}

    def errors(self) -> list[dict[str, Any]]:
        return [{"type": "InventoryError", **p.to_dict()} for p in self.problems]


class UsageError(NginxctlError):
    """The command line asks for something that cannot be done (bad flag combination, unknown server)."""

    exit_code = EXIT_USAGE


class TemplateError(NginxctlError):
    """A template is missing, broken, or tried to emit a value that fails the safety gate."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(NginxctlError):
    """Docker unreachable, image or container missing: nothing nginx said, nothing the inventory did."""

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, cause: str, hint: str = "") -> None:
        self.cause = cause
        self.hint = hint
        super().__init__(f"{cause}. {hint}".strip() if hint else cause)


class LockBusy(EnvironmentProblem):
    """Another nginxctl is changing the same target."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class InternalError(NginxctlError):
    """A bug in nginxctl (never exit 1, "nginx rejected", for it)."""

    exit_code = EXIT_INTERNAL

    @classmethod
    def of(cls, exc: BaseException) -> InternalError:
        return cls(f"internal error: {type(exc).__name__}: {exc} (a bug in nginxctl: --debug shows the traceback)")


class WatchOwnsTarget(EnvironmentProblem):
    """A running `nginxctl watch` controls the target: other commands do not change it behind its back."""

    def __init__(self, target: str, watch: str, resync: float | None, hint: str | None = None) -> None:
        self.target = target
        self.watch = watch
        again = f"within {resync:g}s" if resync else "at its next resync"
        super().__init__(f"{target} is controlled by nginxctl watch ({watch}); nothing changed",
                         hint or "change what the watch applies instead: edit its inventory (`down: true` to drain a "
                         "server) and it reloads, verified, on its own; or stop the watch. --force (apply, "
                         f"rollback) changes the target anyway: the watch sees the drift and puts its config back "
                         f"{again}")


@dataclass
class NginxOutput:
    """What an nginx command run in a container returned."""

    command: list[str]
    exit_code: int
    output: str = ""  # stderr and stdout
    stdout: str = ""


class ConfigRejected(NginxctlError):
    """`nginx -t` refused the rendered config; nothing changed. `located` maps nginx's message to the inventory."""

    exit_code = EXIT_REJECTED

    def __init__(self, result: NginxOutput, located: list[str] | None = None, target: str | None = None) -> None:
        self.result = result
        self.located = located or []
        self.target = target
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [line for line in self.result.output.splitlines() if "[emerg]" in line or "[crit]" in line]
        said = "; ".join(lines) if lines else self.result.output.strip()
        msg = (f"{self.target}: " if self.target else "") + "nginx rejected the config: " + said
        if self.located:
            msg += "\n" + "\n".join(self.located)
        return msg

    def locate(self, located: list[str]) -> ConfigRejected:
        """The same rejection, traced back to the inventory lines it came from."""
        self.located = located
        self.args = (self._message(),)
        return self

    def on(self, target: str) -> ConfigRejected:
        """The same rejection, naming the target whose nginx refused it (a fleet)."""
        self.target = target
        self.args = (self._message(),)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ConfigRejected", "message": str(self).splitlines()[0], "located": self.located,
                "nginx_output": self.result.output.strip()}

    def errors(self) -> list[dict[str, Any]]:
        """One entry per inventory line nginx's errors trace back to (`file:line:col: path: nginx: ...`)."""
        entries = []
        for text in self.located:
            m = re.match(r"(.+?):(\d+):(\d+): (\S+): (.*)\Z", text)
            if m:
                entries.append({"type": "ConfigRejected", "file": m.group(1), "line": int(m.group(2)),
                                "column": int(m.group(3)), "path": m.group(4), "message": m.group(5)})
        return entries or [self.to_dict()]


class KeepalivedRejected(NginxctlError):
    """`keepalived --config-test` refused a target's rendered keepalived.conf (`ha:`); nothing changed."""

    exit_code = EXIT_REJECTED

    def __init__(self, target: str, result: NginxOutput) -> None:
        self.target = target
        self.result = result
        said = "; ".join(line.strip() for line in result.output.splitlines() if line.strip()) or \
            f"exit code {result.exit_code}, no message"
        super().__init__(f"{target}: keepalived rejected its keepalived.conf (`nginxctl render --keepalived --targets "
                         f"{target}` shows it): {said}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "KeepalivedRejected", "message": str(self), "target": self.target,
                "keepalived_output": self.result.output.strip()}


class ApplyFailure(NginxctlError):
    """The new config did not take; the previous one was restored, verified, and is running again."""

    exit_code = EXIT_RESTORED

    def __init__(self, reason: str, details: list[str] | None = None, target: str | None = None) -> None:
        self.reason = reason
        self.details = list(details or [])
        self.target = target
        super().__init__(reason)

    @property
    def outcome(self) -> str:
        return "previous config restored, verified, and running"

    def __str__(self) -> str:
        text = f"apply failed: {self.reason}; {self.outcome}"
        return text + ("\n" + "\n".join(self.details) if self.details else "")

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self).splitlines()[0], "reason": self.reason,
                "details": self.details, "restored": self.exit_code == EXIT_RESTORED}


class RestoreFailed(ApplyFailure):
    """The new config did not take and restoring the previous one failed too: the target may run neither."""

    exit_code = EXIT_NOT_RESTORED

    @property
    def outcome(self) -> str:
        return "restoring the previous config FAILED: the target may not run it; check it now (nginxctl status)"


class ReloadFailed(NginxctlError):
    """A reload did not verifiably take (raised inside the apply procedure, which restores and re-raises
    as ApplyFailure or RestoreFailed)."""

    def __init__(self, reason: str, details: list[str] | None = None, cursor: Any = None) -> None:
        self.reason = reason
        self.details = list(details or [])
        self.cursor = cursor  # where in nginx's error log this reload's lines start
        super().__init__(reason)


class GenerationsLingering(NginxctlError):
    """The reload was refused before anything changed: old worker generations still drain past a limit (their
    count, `--max-generations`, or their memory, `--max-lingering-memory`). `generations` (oldest first, each
    with `pids`, `connections`, `memory`) and `excess` (how many of the oldest must go) let the controller
    retire them."""

    exit_code = EXIT_RESTORED

    def __init__(self, count: int, limit: int | None, details: list[str], *, memory: int | None = None,
                 max_memory: int | None = None, reason: str = "count", generations: Sequence[Any] = (),
                 excess: int = 1, target: str | None = None, unfinished: str | None = None,
                 advice: str | None = None) -> None:
        self.count = count
        self.limit = limit
        self.details = details
        self.memory = memory
        self.max_memory = max_memory
        self.reason = reason
        self.generations = list(generations)
        self.excess = excess
        self.target = target
        if unfinished is not None:
            text = (f"refused: {unfinished}; nothing was reloaded, the current config is still running (the "
                    "connections closed so far reconnected to it)")
        else:
            if reason == "memory" and memory is not None and max_memory is not None:
                why = (f"{count} old worker generation(s) still shutting down hold {memory / (1 << 20):.1f} MiB "
                       f"(--max-lingering-memory {max_memory / (1 << 20):.0f} MiB)")
            else:
                why = f"{count} old worker generation(s) still shutting down (--max-generations {limit})"
            text = (f"refused: {why}; a reload now would add one more; nothing changed, the current config is "
                    "still running. " + (advice or "Wait for them to drain (--wait), retire the oldest by closing "
                    "its connections at a pace (--retire-rate 20/s: idle first, clients see an orderly close and "
                    "reconnect), or set worker_shutdown_timeout"))
        super().__init__(text + ("\n" + "\n".join(details) if details else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "GenerationsLingering", "message": str(self).splitlines()[0],
                "lingering_generations": self.count, "max_generations": self.limit, "reason": self.reason,
                "lingering_memory_bytes": self.memory, "max_lingering_memory_bytes": self.max_memory,
                "details": self.details}


class DrainTimeout(NginxctlError):
    """`drain --wait` gave up with connections to the server still open (the server is drained)."""

    exit_code = EXIT_REJECTED

    def __init__(self, address: str, remaining: int, waited: str, holders: dict[int, int]) -> None:
        self.address = address
        self.remaining = remaining
        self.holders = holders
        who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(holders.items()))
        super().__init__(f"{remaining} connection(s) to {address} still open after {waited} ({who}); the server is "
                         "drained (no new connections); they close when their clients leave, or set "
                         "worker_shutdown_timeout to bound it")

    def stdout_lines(self) -> list[str]:
        who = ", ".join(f"worker {pid}: {n}" for pid, n in sorted(self.holders.items()))
        return [f"{self.remaining} connection(s) to {self.address} remain ({who})"]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "DrainTimeout", "message": str(self), "address": self.address,
                "remaining": self.remaining, "holders": {str(k): v for k, v in self.holders.items()}}


class RebalanceTimeout(NginxctlError):
    """`rebalance` did not bring the group within tolerance by its --timeout (the overlay is removed; the
    connections it closed stay closed). `result` is the rebalance's result; the command attaches its report."""

    exit_code = EXIT_REJECTED

    def __init__(self, result: Any, reason: str) -> None:
        self.result = result
        self.reason = reason
        self.result_lines: list[str] = []   # the report's lines, set by the command
        super().__init__(f"not rebalanced: {reason}; {getattr(result, 'moved', 0)} connection(s) moved")

    def stdout_lines(self) -> list[str]:
        return self.result_lines

    def to_dict(self) -> dict[str, Any]:
        return {"type": "RebalanceTimeout", "message": str(self), "reason": self.reason}


class DrainCancelled(NginxctlError):
    """`drain --wait` stopped because the server is no longer drained (another command changed it)."""

    exit_code = EXIT_REJECTED


class Interrupted(NginxctlError):
    """Ctrl-C (or SIGTERM) stopped a command; `done` and `not_done` say where it stopped."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, done: list[str], not_done: list[str]) -> None:
        self.done = done
        self.not_done = not_done
        lines = ["interrupted"]
        lines += [f"done: {d}" for d in done] or ["done: nothing"]
        lines += [f"not done: {n}" for n in not_done]
        super().__init__("\n".join(lines))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "Interrupted", "message": "interrupted", "done": self.done, "not_done": self.not_done}


class Step(enum.Enum):
    """The steps of a change, as a journal records them: matched by identity, never by their text."""

    EDIT = "edit the inventory"
    STAGE = "stage the new config beside the old one"
    INSTALL = "install the new config"
    RELOAD = "reload and verify"
    PUT_BACK = "put the inventory back"


@dataclass
class Journal:
    """What a workflow has done so far, for the report an interruption gives (see `Interrupted`). Each step
    is planned and done by its `Step`; the text says it to people (the step's own, or a more precise one)."""

    done: list[tuple[Step, str]] = field(default_factory=list)
    pending: list[tuple[Step, str]] = field(default_factory=list)

    def did(self, step: Step, what: str | None = None) -> None:
        self.done.append((step, what or step.value))
        self.pending = [(s, text) for s, text in self.pending if s is not step]

    def plan(self, *steps: Step | tuple[Step, str]) -> None:
        self.pending = [(s, s.value) if isinstance(s, Step) else s for s in steps]

    def has_done(self, step: Step) -> bool:
        return any(s is step for s, _ in self.done)

    def interrupted(self) -> Interrupted:
        return Interrupted([text for _, text in self.done], [text for _, text in self.pending])


class FleetFailure(NginxctlError):
    """A fleet rollout stopped at one target; the targets changed before it were put back."""

    def __init__(self, target: str, cause: NginxctlError, put_back: list[str], not_put_back: list[str],
                 uncertain: bool) -> None:
        self.target = target
        self.cause = cause
        self.put_back = put_back
        self.not_put_back = not_put_back
        self.exit_code = EXIT_NOT_RESTORED if (not_put_back or uncertain) else EXIT_RESTORED
        back = ", ".join(put_back) if put_back else "none (it was the first changed)"
        lines = [f"fleet rollout stopped at {target}: {str(cause).splitlines()[0]}",
                 f"put back to their previous config, verified: {back}"]
        if not_put_back:
            lines.append(f"NOT put back (check them now): {', '.join(not_put_back)}")
        if uncertain:
            lines.append(f"{target} may not run its previous config (it failed mid-change): check it now")
        super().__init__("\n".join(lines + str(cause).splitlines()[1:]))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "FleetFailure", "message": str(self).splitlines()[0], "target": self.target,
                "cause": self.cause.to_dict(), "put_back": self.put_back, "not_put_back": self.not_put_back}
