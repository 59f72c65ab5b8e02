"""What nginx and the kernel print, read as data: pure functions with no Docker, files or network.

`nginx -V` builds, `nginx -T` dumps, `docker top` rows, /proc/net/tcp tables, the directives nginxctl
looks up in a config (error_log, worker_shutdown_timeout, include) and the error-log lines that belong
to one reload.
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

STREAM_MODULE = "ngx_stream_module.so"


@dataclass(frozen=True)
class Build:
    """What `nginx -V` says about an image's nginx."""

    version: str                             # 1.22.1
    dynamic_stream: bool                     # stream is a module to load (load_module), not built in
    modules_path: str                        # where load_module finds it
    conf_path: str = "/etc/nginx/nginx.conf"

    @property
    def stream_module(self) -> str:
        return f"{self.modules_path}/{STREAM_MODULE}"


def parse_build(version_output: str) -> Build:
    """`nginx -V` output -> Build."""
    version = re.search(r"nginx/([\w.]+)", version_output)
    modules = re.search(r"--modules-path=(\S+)", version_output)
    prefix = re.search(r"--prefix=(\S+)", version_output)
    conf = re.search(r"--conf-path=(\S+)", version_output)
    base = prefix.group(1) if prefix else "/etc/nginx"
    return Build(version.group(1) if version else "unknown",
                 "--with-stream=dynamic" in version_output,
                 modules.group(1) if modules else f"{base}/modules",
                 conf.group(1) if conf else f"{base}/conf/nginx.conf")


def compiled_version(binary: bytes) -> str | None:
    """What `nginx -V` prints that `parse_build` reads, as the nginx binary itself holds it: the version line
    and the configure arguments line are string constants compiled into it (nginx.c writes them as they are).
    None when the binary does not hold exactly one of each (packed, or not nginx): then it must be run."""
    lines = []
    for start in (b"nginx version: ", b"configure arguments:"):
        at = binary.find(start)
        if at < 0 or binary.find(start, at + 1) >= 0:
            return None
        end = binary.find(b"\0", at)
        if end < 0:
            return None
        line = binary[at:end]
        if not line.endswith(b"\n") or b"\n" in line[:-1]:
            return None
        lines.append(line.decode(errors="replace"))
    return "".join(lines)


def main_config(master_cmd: str, build: Build) -> str:
    """The file an nginx master loads: its `-c FILE`, else the build's --conf-path."""
    m = re.search(r"(?:^|\s)-c\s+(\S+)", master_cmd)
    return m.group(1) if m else build.conf_path


def parse_version(output: str) -> str:
    """`nginx -v` output (`nginx version: nginx/1.22.1`) -> `1.22.1`."""
    m = re.search(r"nginx/([\w.]+)", output)
    return m.group(1) if m else "unknown"


def parse_docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds, `Z`) -> datetime."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text or "")
    if not m:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}")


def staged_name(path: str) -> str:
    """Where a new version of `path` waits, in the same folder (a hard link cannot cross file systems)."""
    return f".{os.path.basename(path)}.nginxctl-new"


def config_from_dump(dump: str, path: str) -> str | None:
    """The text of `path` inside `nginx -T` output (nginx adds one newline after each file)."""
    marker = f"# configuration file {path}:\n"
    start = dump.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = dump.find("\n# configuration file ", start)
    body = dump[start:] if end < 0 else dump[start:end + 1]
    return body[:-1] if body.endswith("\n\n") or (end < 0 and body.endswith("\n")) else body


def dump_files(dump: str) -> list[str]:
    """The files an `nginx -T` dump shows, in order."""
    return re.findall(r"^# configuration file (\S+):$", dump, re.M)


def includes(dump: str, path: str, test_output: str = "") -> bool:
    """Whether the config dumped in `dump` includes `path`: shown in the dump, matched by an include
    glob, or named by the failure to open it (`test_output`: a first deploy, before the file exists)."""
    if path in dump_files(dump) or f'open() "{path}" failed' in test_output:
        return True
    base = os.path.dirname(dump_files(dump)[0]) if dump_files(dump) else "/etc/nginx"
    for pattern in re.findall(r"^\s*include\s+([^\s;]+)\s*;", dump, re.M):
        pattern = pattern.strip("'\"")
        if fnmatch.fnmatch(path, pattern if pattern.startswith("/") else os.path.join(base, pattern)):
            return True
    return False


def directive_args(config: str | None, name: str) -> list[str]:
    """The arguments of the first top-level-looking `name` directive in `config` ([] when there is none)."""
    m = re.search(rf"^\s*{re.escape(name)}\s+([^;{{}}]+);", config or "", re.M)
    return m.group(1).split() if m else []


def directive(config: str | None, name: str) -> str | None:
    """The first argument of the first top-level-looking `name` directive in `config`."""
    return next(iter(directive_args(config, name)), None)


def error_log_of(config: str | None) -> str:
    """Where nginx logs: `stderr` or a file path (nginx's default for a Docker container is stderr)."""
    return directive(config, "error_log") or "stderr"


def shutdown_timeout_of(config: str | None) -> str | None:
    return directive(config, "worker_shutdown_timeout")


_RECONFIGURING = re.compile(r"\[notice\] \d+#\d+: reconfiguring\s*$")


def reload_lines(log: str) -> tuple[list[str], bool]:
    """The error-log lines that belong to the first reload nginx starts in `log` (text logged since the signal).

    The master logs a plain `reconfiguring` notice when it starts working on a reload. Lines before
    that are the tail of an earlier reload (nginx retries a busy bind() for ~2.5 s and logs
    `still could not bind()` late, after a second SIGHUP's own `signal 1 ... received` line, which the
    signal handler logs at once); lines from the next such notice on belong to a later reload.
    Returns the lines and whether the notice was seen (it is not, with the log level above notice:
    then all lines are returned).
    """
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if _RECONFIGURING.search(line)]
    if not starts:
        return lines, False
    end = starts[1] if len(starts) > 1 else len(lines)
    return lines[starts[0]:end], True


# an error-log line about one client's connection to an upstream; optionally led by Docker's own UTC timestamp
# (`docker logs --timestamps`), which is used then: nginx writes the container's local time
_UPSTREAM_LINE = re.compile(r"^(?:(\d{4}-\d\d-\d\dT\S+Z) )?(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) "
                            r"\[(?:crit|error|warn)\] \d+#\d+: \*\d+ (.+?) while (connecting to upstream|proxying "
                            r"connection), (udp )?client: [^,]*, server: ([^,]+), upstream: \"([^\"]+)\"")
TAKEN_OUT = "upstream server temporarily disabled"
NO_LIVE = "no live upstreams"


@dataclass
class UpstreamFailures:
    """nginx's failures to reach one server from one listen (as nginx logs them: the listen's address, the
    address it connected to)."""

    count: int = 0                   # connect() failed, timed out: each a client passed on to the next server
    last: float = 0.0                # the latest (Docker's UTC timestamp, else nginx's clock read as UTC)
    error: str = ""                  # what the latest said, e.g. `connect() failed (111: Connection refused)`
    taken_out: float | None = None   # the latest `temporarily disabled` (max_fails reached: out for fail_timeout)


@dataclass
class LogFailures:
    servers: dict[tuple[str, str], UpstreamFailures] = field(default_factory=dict)   # (listen, upstream)
    no_live: dict[str, int] = field(default_factory=dict)   # listen -> `no live upstreams` (clients turned away)


def upstream_failures(log: str, since: float = 0.0) -> LogFailures:
    """What nginx's passive checks (`max_fails`, `fail_timeout`) saw in `log` (error-log text) from `since` (a
    UTC timestamp) on, which nothing else shows: the servers it failed to connect to (a UDP server: refused
    datagrams) per listen (`udp ` leads a UDP listen), when it took one out, and how often a listen found no
    live server at all."""
    out = LogFailures()
    for line in log.splitlines():
        match = _UPSTREAM_LINE.match(line)
        if match is None:
            continue
        stamp, when, what, action, udp, listen, upstream = match.groups()
        if action == "proxying connection" and not udp:
            continue   # a TCP connection that failed while established: no sign of the server's availability
        moment = parse_docker_time(stamp) if stamp else _nginx_time(when)
        if moment is None or moment.timestamp() < since:
            continue
        at, listen = moment.timestamp(), f"{udp or ''}{listen}"
        if what == NO_LIVE:
            out.no_live[listen] = out.no_live.get(listen, 0) + 1
            continue
        seen = out.servers.setdefault((listen, upstream), UpstreamFailures())
        if what == TAKEN_OUT:
            seen.taken_out = at
        else:
            seen.count, seen.last, seen.error = seen.count + 1, at, what
    out.servers = {key: f for key, f in out.servers.items() if f.count}   # taken-out lines alone: older failures
    return out


def _nginx_time(text: str) -> datetime | None:
    """nginx's log time (the container's local clock), read as UTC."""
    try:
        return datetime.strptime(text, "%Y/%m/%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def listen_port(listen: str) -> str:
    """The port of a `listen` address as nginx writes or logs it (`127.0.0.1:53`, `[::1]:53`, `53`)."""
    return listen.rsplit(":", 1)[-1].split()[0]


def error_log_level(config: str | None) -> str:
    """The level of the loaded config's first `error_log` (nginx's default: error)."""
    args = directive_args(config, "error_log")
    return args[1] if len(args) > 1 else "error"


def emerg_lines(lines: list[str]) -> list[str]:
    """The lines that say nginx refused or lost a config."""
    return [line for line in lines if "[emerg]" in line or "[alert]" in line and "exited on signal" in line]


def reload_finished(lines: list[str]) -> bool:
    """Whether a reload's own lines show it has finished: new workers started, or it gave up."""
    return any("start worker process" in line or "still could not bind()" in line
               or ("[emerg]" in line and "bind()" not in line) for line in lines)


@dataclass(frozen=True)
class Process:
    """One process in the target's process table (`ps`): `started` as ps says it."""

    pid: int
    ppid: int
    cmd: str
    started: str = ""


@dataclass
class Processes:
    master: Process | None
    workers: list[Process] = field(default_factory=list)
    old_workers: list[Process] = field(default_factory=list)

    @property
    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.workers}


def parse_top(top: dict[str, Any]) -> Processes:
    """`docker top` (the Engine API's Titles/Processes) -> master, current and old workers."""
    titles = [t.upper() for t in top.get("Titles", [])]
    procs = []
    for row in top.get("Processes") or []:
        item = dict(zip(titles, row, strict=False))
        cmd = item.get("COMMAND") or item.get("CMD") or item.get("ARGS") or row[-1]
        started = item.get("STARTED") or item.get("STIME") or ""
        procs.append(Process(int(item["PID"]), int(item["PPID"]), cmd, started))
    master = next((p for p in procs if "master process" in p.cmd), None)
    result = Processes(master)
    for proc in procs:
        if master and proc.ppid == master.pid and "worker process" in proc.cmd:
            (result.old_workers if "shutting down" in proc.cmd else result.workers).append(proc)
    return result


@dataclass(frozen=True)
class Socket:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # ESTABLISHED, LISTEN, ...


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def _proc_addr(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        addr = socket.inet_ntop(socket.AF_INET6, words)
        if addr.startswith("::ffff:") and "." in addr:
            addr = addr[7:]
    return addr, int(port, 16)


def parse_proc_net(text: str, inodes: set[str] | None = None) -> dict[str, Socket]:
    """/proc/net/tcp{,6} -> inode: Socket (only `inodes`, when given: the tables hold the whole namespace)."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) > 9 and cols[9].isdigit() and (inodes is None or cols[9] in inodes):
            out[cols[9]] = Socket(_proc_addr(cols[1]), _proc_addr(cols[2]), _TCP_STATES.get(cols[3], cols[3]))
    return out


def hosts_lookup(hosts_file: str, name: str) -> set[str]:
    """The addresses an /etc/hosts text gives `name` (case-insensitive, aliases included)."""
    found = set()
    for line in hosts_file.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
            found.add(fields[0])
    return found


@dataclass(frozen=True)
class UpstreamServer:
    """One `server` line of an `upstream {}` block as nginx reads it."""

    address: str
    params: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """up, down or backup: what nginx does with it (`down` wins over `backup`)."""
        return "down" if "down" in self.params else "backup" if "backup" in self.params else "up"

    @property
    def settings(self) -> tuple[str, ...]:
        """The parameters other than down/backup (weight, max_fails...): a change of these is a change."""
        return tuple(p for p in self.params if p not in ("down", "backup"))

    @property
    def weight(self) -> int:
        """Its `weight=` (1 when absent or not a positive number, as nginx's default)."""
        return server_weight(self.params)


def server_param(params: tuple[str, ...], name: str) -> str | None:
    """The value of a `server` line's first `name=` parameter (weight=, fail_timeout=...); None when absent."""
    return next((p.split("=", 1)[1] for p in params if p.startswith(f"{name}=")), None)


def server_weight(params: tuple[str, ...]) -> int:
    """A `server` line's weight: its `weight=` when a whole number, else 1 (nginx's default)."""
    value = server_param(params, "weight")
    return max(1, int(value)) if value is not None and value.isdigit() else 1


_COMMENT = re.compile(r"#[^\n]*")
_UPSTREAM = re.compile(r"\bupstream\s+([^\s{;]+)\s*\{([^}]*)\}", re.S)


def parse_upstreams(config: str) -> dict[str, list[UpstreamServer]]:
    """The `upstream NAME { server ADDR PARAMS; }` blocks of a config, in order: what nginx balances over.
    Comments are ignored; an upstream block holds no nested blocks in the stream module."""
    text = _COMMENT.sub("", config)
    out: dict[str, list[UpstreamServer]] = {}
    for m in _UPSTREAM.finditer(text):
        servers = []
        for statement in m.group(2).split(";"):
            words = statement.split()
            if len(words) >= 2 and words[0] == "server":
                servers.append(UpstreamServer(words[1], tuple(words[2:])))
        out[m.group(1)] = servers
    return out


@dataclass(frozen=True)
class LoadedGroup:
    """How nginx serves one upstream: its balancing directive and the `listen`s that proxy_pass to it."""

    balance: str                      # round_robin, least_conn, hash, random, random_two_least_conn
    listen: tuple[str, ...] = ()
    protocol: str = "tcp"             # udp when a listen says udp


_SERVER_BLOCK = re.compile(r"\bserver\s*\{([^{}]*)\}", re.S)
_BALANCE = ("least_conn", "hash", "random")


def parse_groups(config: str) -> dict[str, LoadedGroup]:
    """Each upstream of a config with its balancing method and the listens that pass to it (what `status` shows
    of what nginx runs, rather than what the inventory says)."""
    text = _COMMENT.sub("", config)
    balance: dict[str, str] = {}
    for m in _UPSTREAM.finditer(text):
        found = "round_robin"
        for statement in m.group(2).split(";"):
            words = statement.split()
            if words and words[0] in _BALANCE:
                # the inventory's words for it: random two least_conn is random_two_least_conn
                found = "random_two_least_conn" if words[:2] == ["random", "two"] else words[0]
                break
        balance[m.group(1)] = found
    listens: dict[str, list[str]] = {}
    udp: set[str] = set()
    for block in _SERVER_BLOCK.finditer(text):
        statements = [st.split() for st in block.group(1).split(";") if st.split()]
        target = next((w[1] for w in statements if w[0] == "proxy_pass" and len(w) > 1), None)
        if target is None:
            continue
        for words in statements:
            if words[0] == "listen" and len(words) > 1:
                listens.setdefault(target, []).append(words[1])
                if "udp" in words[2:]:
                    udp.add(target)
    return {name: LoadedGroup(b, tuple(listens.get(name, ())), "udp" if name in udp else "tcp")
            for name, b in balance.items()}


def with_servers_down(config: str, group: str, addresses: set[str]) -> str:
    """`config` with `down` added to the `server` lines of `addresses` in `upstream group {}` (those already
    down are left as they are): what `rebalance` loads while it moves connections (no new connection to
    those servers), and what `status` expects while it does. Everything else is kept byte for byte."""
    if not addresses:
        return config
    for m in _UPSTREAM.finditer(config):
        if m.group(1) != group:
            continue
        start, end = m.span(2)

        def mark(statement: re.Match[str]) -> str:
            if statement.group(2) in addresses and "down" not in statement.group(3).split():
                return f"{statement.group(1)}{statement.group(2)}{statement.group(3)} down;"
            return statement.group(0)

        body = re.sub(r"(\bserver\s+)([^\s;#]+)([^;#]*?)\s*;", mark, config[start:end])
        return config[:start] + body + config[end:]
    return config
