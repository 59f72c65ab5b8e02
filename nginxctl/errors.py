"""The one exception hierarchy of nginxctl; the CLI turns each class into an exit code.

Exit codes (documented in the README):
  0  success
  1  nginx rejected the config, or `diff` found differences
  2  usage or inventory error
  3  environment error: Docker unreachable, image missing, container missing or stopped
  4  apply or reload failed and the previous config was restored
"""

from __future__ import annotations

from dataclasses import dataclass, field


class NginxctlError(Exception):
    """Base class. `exit_code` is what the CLI exits with; `str()` is the message for people."""

    exit_code = 1


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


class InventoryError(NginxctlError):
    """The inventory cannot be used. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(NginxctlError):
    """The command line asks for something that cannot be done (bad flag combination, unknown server)."""

    exit_code = 2


class TemplateError(NginxctlError):
    """A template is missing, broken, or tried to emit a value that fails the safety gate."""

    exit_code = 2


class EnvironmentProblem(NginxctlError):
    """Docker unreachable, image or container missing: nothing nginx said, nothing the inventory did."""

    exit_code = 3

    def __init__(self, cause: str, hint: str = "") -> None:
        self.cause = cause
        self.hint = hint
        super().__init__(f"{cause}. {hint}".strip() if hint else cause)


@dataclass
class NginxOutput:
    """What an nginx command run in a container returned."""

    command: list[str]
    exit_code: int
    output: str = ""  # stderr and stdout
    stdout: str = ""


class ConfigRejected(NginxctlError):
    """`nginx -t` refused the rendered config. `located` maps nginx's message to the inventory."""

    exit_code = 1

    def __init__(self, result: NginxOutput, located: list[str] | None = None) -> None:
        self.result = result
        self.located = located or []
        lines = [line for line in result.output.splitlines() if "[emerg]" in line or "[crit]" in line]
        msg = "nginx rejected the config: " + ("; ".join(lines) if lines else result.output.strip())
        if self.located:
            msg += "\n" + "\n".join(self.located)
        super().__init__(msg)


@dataclass
class ApplyFailure(NginxctlError):
    """The new config did not take; the previous one was restored and is running again."""

    reason: str
    restored: bool = True
    details: list[str] = field(default_factory=list)
    touched: bool = True  # False: refused before anything was installed
    exit_code = 4

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        tail = ("nothing changed; the previous config is still running" if not self.touched
                else "previous config restored and running" if self.restored
                else "previous config NOT restored")
        text = f"apply failed: {self.reason}; {tail}"
        return text + ("\n" + "\n".join(self.details) if self.details else "")


class LockBusy(NginxctlError):
    """Another nginxctl is changing the same target."""

    exit_code = 3
