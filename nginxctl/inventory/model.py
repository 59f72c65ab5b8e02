"""The validated inventory: plain frozen data that templates and the apply procedure read.

Every string in here has passed `grammar`; every default has been filled in by `schema`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from .grammar import Address, Duration, Size
from .yamlsource import Positions


@dataclass(frozen=True)
class Server:
    address: Address
    weight: int | None = None
    max_fails: int | None = None
    fail_timeout: Duration | None = None
    max_conns: int | None = None
    backup: bool = False
    down: bool = False

    @property
    def params(self) -> list[str]:
        """The parameters after the address in nginx's `server` line, in nginx's documented order."""
        out = []
        if self.weight is not None:
            out.append(f"weight={self.weight}")
        if self.max_conns is not None:
            out.append(f"max_conns={self.max_conns}")
        if self.max_fails is not None:
            out.append(f"max_fails={self.max_fails}")
        if self.fail_timeout is not None:
            out.append(f"fail_timeout={self.fail_timeout}")
        if self.backup:
            out.append("backup")
        if self.down:
            out.append("down")
        return out

    @property
    def usable(self) -> bool:
        return not (self.backup or self.down)


@dataclass(frozen=True)
class HealthCheck:
    """Active checks `nginxctl watch` makes of each server of a group."""

    interval: Duration
    timeout: Duration
    fails: int = 3
    passes: int = 2
    send: str | None = None
    expect: str | None = None


@dataclass(frozen=True)
class Rebalance:
    """`rebalance:`: `nginxctl watch` rebalances the group by itself once its membership has been stable for
    `after` (closes per second, a fraction of the fair share)."""

    rate: float
    tolerance: float
    after: Duration


@dataclass(frozen=True)
class Group:
    """One upstream group and the `server {}` that listens for it."""

    name: str
    listen: tuple[Address, ...]
    servers: tuple[Server, ...]
    protocol: str = "tcp"
    balance: str = "round_robin"
    hash_key: str | None = None
    consistent: bool = False
    zone_size: Size | None = None
    proxy_connect_timeout: Duration | None = None
    proxy_timeout: Duration | None = None
    proxy_next_upstream: bool | None = None
    proxy_next_upstream_tries: int | None = None
    proxy_next_upstream_timeout: Duration | None = None
    proxy_responses: int | None = None
    proxy_protocol: bool | None = None
    proxy_buffer_size: Size | None = None
    proxy_socket_keepalive: bool | None = None
    reuseport: bool = False
    backlog: int | None = None
    so_keepalive: bool = False
    max_connections: int | None = None
    allow_no_primary: bool = False
    vars: dict[str, str] = field(default_factory=dict)
    health_check: HealthCheck | None = None
    discover: str | None = None          # docker | etcd: servers found at run time (nginxctl watch)
    discover_prefix: str | None = None   # the etcd key prefix
    rebalance: Rebalance | None = None   # watch rebalances the group by itself (None: it does not)

    @property
    def balance_tokens(self) -> list[str]:
        """The balancing directive inside `upstream {}`; empty for round-robin (nginx's default)."""
        if self.balance == "hash":
            return ["hash", str(self.hash_key)] + (["consistent"] if self.consistent else [])
        return {"least_conn": ["least_conn"], "random": ["random"],
                "random_two_least_conn": ["random", "two", "least_conn"]}.get(self.balance, [])

    @property
    def listen_params(self) -> list[str]:
        out = ["udp"] if self.protocol == "udp" else []
        if self.reuseport:
            out.append("reuseport")
        if self.backlog is not None:
            out.append(f"backlog={self.backlog}")
        if self.so_keepalive:
            out.append("so_keepalive=on")
        return out


@dataclass(frozen=True)
class NginxSettings:
    """Main-context settings, used when a whole nginx.conf is rendered."""

    worker_processes: int | str = "auto"
    worker_connections: int = 8192
    worker_rlimit_nofile: int | None = None
    worker_shutdown_timeout: Duration | None = None
    error_log: str = "stderr"
    error_log_level: str = "notice"
    pid: str = "/run/nginx.pid"
    load_modules: tuple[str, ...] = ()
    image: str | None = None
    max_connections: int | None = None
    workload: str = "balanced"
    fd_limit: int = 20000
    memory_limit: Size | None = None
    proxy_buffer_size: Size | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """Where `apply` deploys: a container, optionally on another Docker engine."""

    container: str | None = None
    docker_host: str | None = None
    config_path: str = "/etc/nginx/nginx.conf"
    stream_only: bool = False


@dataclass(frozen=True)
class NamedTarget(Target):
    """One load balancer of a fleet (`targets:`)."""

    name: str = ""
    priority: int | None = None   # VRRP priority with `ha:` (filled in from the default order); None without


@dataclass(frozen=True)
class HA:
    """A virtual IP that moves between the fleet's targets (VRRP by keepalived beside each target's nginx)."""

    vip: str                    # address/prefix, canonical: 10.254.7.100/24
    address: str                # the address alone: 10.254.7.100
    family: str                 # inet | inet6
    virtual_router_id: int
    interface: str = "eth0"
    advert_interval: Duration = Duration("1s", 1000)
    nopreempt: bool = True
    health_port: int = 61999
    fall: int = 2
    rise: int = 2
    image: str = "nginxctl/keepalived:local"
    nonlocal_bind: bool = False  # a group listens on the VIP itself: the standbys bind an address they do not hold

    @property
    def advert_seconds(self) -> int:
        return self.advert_interval.ms // 1000

    @property
    def vrrp_version(self) -> int:
        return 2 if self.family == "inet" else 3

    @property
    def digest(self) -> str:
        """sha256 of this section as parsed (defaults included), named in each keepalived.conf's first line: an
        inventory change elsewhere leaves keepalived.conf as it is, so it costs keepalived no reload (`nonlocal_bind`
        is derived from the groups' listens and is nothing keepalived reads)."""
        return hashlib.sha256(repr(replace(self, nonlocal_bind=False)).encode()).hexdigest()


@dataclass(frozen=True)
class Inventory:
    source: str
    digest: str
    upstreams: tuple[Group, ...]
    nginx: NginxSettings = NginxSettings()
    target: Target = Target()
    templates: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    discovery_etcd_endpoints: tuple[str, ...] = ()
    targets: tuple[NamedTarget, ...] = ()   # a fleet; empty: the single `target`
    ha: HA | None = None                    # a virtual IP over the fleet (`ha:`)
    # Where each key sits in the file (yamlsource.Positions), to trace nginx errors back to it.
    positions: Positions | None = field(default=None, compare=False, repr=False)
    # The parsed YAML, kept so that capacity can be checked against a machine later without parsing again.
    data: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # the digest of what shapes the nginx config: the inventory without `target:`/`targets:` (which say where
    # it runs), so that editing only where it runs is no reload, no new worker generation
    config_digest: str = ""

    def group(self, name: str) -> Group | None:
        return next((g for g in self.upstreams if g.name == name), None)
