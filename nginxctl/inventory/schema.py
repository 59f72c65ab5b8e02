"""The inventory's keys, in one table: type, default, nginx directive, and docs.

The same table validates input, fills defaults, and is exported as JSON Schema (`nginxctl schema`)
and as the key reference in docs/inventory.md, so the three cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..capacity import NGINX_MAX_WORKERS, NGINX_WORKER_LIMIT
from . import grammar as g
from . import values as v
from .values import Parser
from .yamlsource import MAX_BYTES, MAX_DEPTH, MAX_NODES


@dataclass(frozen=True)
class Key:
    name: str
    parse: Parser
    json: dict[str, Any]
    doc: str
    directive: str = ""
    default: Any = None  # raw YAML value; None: nginx's own default applies, nothing rendered


# JSON Schema patterns are ECMA-262 and unanchored: `^` and `(?![\s\S])` (the end of the text, where
# Python's `$` would also match before a final newline) make them mean what the loader's grammar means.
_END = r"(?![\s\S])"
_DURATION = {"type": ["string", "integer"], "minimum": 0, "maximum": g.NGX_MAX_INT // 1000,
             "pattern": rf"^(?:{g.DURATION_MS.pattern}){_END}"}
_DURATION_S = {"type": ["string", "integer"], "minimum": 0, "maximum": g.NGX_MAX_INT,
               "pattern": rf"^(?:{g.DURATION_S.pattern}){_END}"}
_SIZE = {"type": ["string", "integer"], "minimum": 1, "maximum": g.NGX_MAX_SIZE,
         "pattern": rf"^[0-9]+[kKmM]?{_END}"}
_BOOL = {"type": "boolean"}
_ADDRESS = {"type": "string"}


def _k(name: str, parser: Any, doc: str, directive: str = "", default: Any = None,
       json: dict[str, Any] | None = None) -> Key:
    if isinstance(parser, tuple):
        parser, json = parser
    if not json:
        raise TypeError(f"key {name!r} needs its JSON Schema type")
    return Key(name, parser, json, doc, directive, default)


SERVER_KEYS = [
    _k("address", g.parse_server_address,
       "HOST:PORT, IP:PORT, [IPv6]:PORT or unix:/path. Host names are resolved when nginx loads the config.",
       "server ADDRESS", json=_ADDRESS),
    _k("weight", v.integer(1, 1000), "Share of new connections relative to the other servers.", "weight="),
    _k("max_fails", v.integer(0, 1000), "Failed attempts within fail_timeout before the server is skipped "
       "(0: never). Counted across workers (the upstream has a zone).", "max_fails="),
    _k("fail_timeout", g.parse_duration_seconds, "Window for max_fails, and how long a failed server is "
       "skipped. Whole seconds (nginx reads it in seconds: no ms).", "fail_timeout=", json=_DURATION_S),
    _k("max_conns", v.integer(0), "Most connections at once to this server across all workers (0: no limit).",
       "max_conns="),
    _k("backup", v.boolean, "Used only when every primary server is unavailable. Not with hash or random.",
       "backup", False, _BOOL),
    _k("down", v.boolean, "Marked unavailable: gets no new connections (nginxctl drain sets this).",
       "down", False, _BOOL),
]

GROUP_KEYS = [
    _k("listen", v.listen_list, "Where clients connect: a port, ADDR:PORT, [IPv6]:PORT, unix:/path, or a list.",
       "listen", json={"oneOf": [{"type": ["string", "integer"]},
                                 {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 1}]}),
    _k("protocol", v.one_of("tcp", "udp"), "Transport of the listen sockets.", "listen ... udp", "tcp"),
    _k("balance", v.one_of("round_robin", "least_conn", "hash", "random", "random_two_least_conn"),
       "Balancing method. least_conn suits long-lived connections best (new ones go where the "
       "fewest are open).", "least_conn / hash / random / random two least_conn", "round_robin"),
    _k("hash_key", g.parse_hash_key, "Key for balance: hash, e.g. $remote_addr.", "hash KEY",
       json={"type": "string"}),
    _k("consistent", v.boolean, "With balance: hash, use ketama consistent hashing (adding a server "
       "moves few clients).", "hash ... consistent", False, _BOOL),
    _k("zone_size", v.zone_size, "Shared memory for the group's state, so balancing, max_fails and "
       "least_conn counts are shared by all workers. At least 32k (nginx: 8 pages).", "zone NAME SIZE", "64k",
       {**_SIZE, "minimum": v.ZONE_MINIMUM}),
    _k("proxy_connect_timeout", g.parse_duration, "Time to establish the backend connection before "
       "trying the next server (nginx: 60s; 5s fails over faster).", "proxy_connect_timeout", "5s",
       _DURATION),
    _k("proxy_timeout", g.parse_duration, "Idle time after which a connection is closed. Default 1h for "
       "tcp (nginx's 10m cuts idle pooled MySQL connections and quiet devices), 30s for udp.",
       "proxy_timeout", json=_DURATION),
    _k("proxy_next_upstream", v.boolean, "On a failed connect, try the next server.", "proxy_next_upstream",
       json=_BOOL),
    _k("proxy_next_upstream_tries", v.integer(0), "Most servers to try (0: no limit).",
       "proxy_next_upstream_tries"),
    _k("proxy_next_upstream_timeout", g.parse_duration, "Time limit for trying servers (0: none).",
       "proxy_next_upstream_timeout", json=_DURATION),
    _k("proxy_responses", v.integer(0), "udp only: datagrams expected back per request (DNS: 1).",
       "proxy_responses"),
    _k("proxy_protocol", v.boolean, "Send a PROXY protocol header to the backends (client address).",
       "proxy_protocol", json=_BOOL),
    _k("proxy_buffer_size", g.parse_size, "Buffer per direction per connection (nginx: 16k). Decides "
       "memory per idle connection; see nginx.workload.", "proxy_buffer_size", json=_SIZE),
    _k("proxy_socket_keepalive", v.boolean, "TCP keepalive on backend connections: finds dead peers of "
       "long-lived connections.", "proxy_socket_keepalive", json=_BOOL),
    _k("reuseport", v.boolean, "One listen socket per worker: the kernel spreads new connections evenly "
       "across workers.", "listen ... reuseport", False, _BOOL),
    _k("backlog", v.integer(1, 65535), "Listen queue length (tcp).", "listen ... backlog="),
    _k("so_keepalive", v.boolean, "TCP keepalive on client connections (tcp).", "listen ... so_keepalive=on",
       False, _BOOL),
    _k("max_connections", v.integer(1), "Capacity intent: client connections this group must hold at once. "
       "Adds to nginx.max_connections when sizing workers.", ""),
    _k("allow_no_primary", v.boolean, "Accept a group whose primary servers are all down while a backup is up "
       "(backups serve alone, as nginx does). Set by `nginxctl drain --force`.", "", False, _BOOL),
    _k("vars", v.variables, "NAME: VALUE pairs for custom templates (each value one safe token).", "",
       json={"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}}),
    _k("servers", lambda v: v, "The backends: a list of server mappings, or 'ADDRESS' strings. May be "
       "left out (or empty) in a group that discovers its servers.",
       "server", json={"type": "array",
                       "items": {"oneOf": [{"type": "string"}, {"$ref": "#/$defs/server"}]}}),
    _k("health_check", lambda v: v, "Active health checks by `nginxctl watch` (open-source nginx has none): a "
       "server failing `fails` checks in a row is rendered down until it passes `passes`. TCP connect, or send "
       "and expect. See docs/controller.md.", "", json={"$ref": "#/$defs/health_check"}),
    _k("rebalance", lambda v: v, "`nginxctl watch` rebalances the group by itself: once its membership (its up "
       "primary servers, health take-outs and put-backs included) has been stable for `after`, it moves the "
       "group's long connections as `nginxctl rebalance` does (paced, until every up primary server is within "
       "`tolerance` of its fair share; consistent hash: exactly the misplaced); a new change cancels the run. "
       "`true` or `{}`: the defaults; `false`: off. TCP only, not with plain hash. In `defaults:`, every group "
       "it can rebalance. See docs/controller.md.", "",
       json={"oneOf": [{"type": "boolean"}, {"$ref": "#/$defs/rebalance"}]}),
    _k("discover", v.discover, "Servers found at run time besides `servers`: `docker` (running containers "
       "labelled nginxctl.group=NAME) or `{etcd: /prefix/}` (one server per key under the prefix; needs "
       "discovery.etcd.endpoints). One source per group, not a list. See docs/controller.md.", "server",
       json={"oneOf": [{"const": "docker"},
                       {"type": "object", "properties": {"etcd": {"type": "string", "pattern": "^/"}},
                        "required": ["etcd"], "additionalProperties": False}]}),
]

HEALTH_KEYS = [
    _k("interval", g.parse_duration, "Time between two checks of a server.", "", "2s", _DURATION),
    _k("timeout", g.parse_duration, "How long one check may take (connect, and the reply with expect); shorter "
       "than interval.", "", "1s", _DURATION),
    _k("fails", v.integer(1, 100), "Failed checks in a row that take a server out (rendered down).", "", 3),
    _k("passes", v.integer(1, 100), "Passed checks in a row that put it back.", "", 2),
    _k("send", v.probe_text, "Bytes to send once connected (e.g. \"PING\\r\\n\"). Without send and expect a "
       "check is a TCP connect.", "", json={"type": "string"}),
    _k("expect", v.probe_text, "Text the reply must contain within timeout (needs send).", "", json={"type": "string"}),
]

# the patterns say what `values.rate` and `values.percent` take: a rate more than 0, a percentage up to 100
_RATE = {"type": ["string", "number"], "exclusiveMinimum": 0,
         "pattern": rf"^(?!0*(?:\.0*)?(?:/s)?{_END})[0-9]+(?:\.[0-9]+)?(?:/s)?{_END}"}
_PERCENT = {"type": ["string", "number"], "minimum": 0, "maximum": 100,
            "pattern": rf"^(?:100(?:\.0+)?|[0-9]{{1,2}}(?:\.[0-9]+)?)%?{_END}"}

REBALANCE_KEYS = [
    _k("rate", v.rate, "Most connections closed per second (with jitter), like `nginxctl rebalance --rate`.", "",
       "20/s", _RATE),
    _k("tolerance", v.percent, "Done when every up primary server holds its fair share within this (or within one "
       "connection), like `--tolerance`.", "", "10%", _PERCENT),
    _k("after", v.settle_time, "How long the group's membership must stay the same before the watch rebalances it "
       "(at least 1s): a burst of changes is rebalanced once, after it.", "", "30s", {**_DURATION, "minimum": 1}),
]

NGINX_KEYS = [
    _k("worker_processes", v.worker_processes, f"Worker processes; auto: one per core. At most {NGINX_MAX_WORKERS} "
       f"({NGINX_WORKER_LIMIT}).", "worker_processes",
       "auto", {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1, "maximum": NGINX_MAX_WORKERS}]}),
    _k("worker_connections", v.integer(16, 1048576), "Connections per worker, client and backend sides "
       "together: each proxied connection takes two. Derived from max_connections when that is set.",
       "events { worker_connections }"),
    _k("worker_rlimit_nofile", v.integer(64, 1048576), "Open-file limit per worker; derived from "
       "worker_connections when unset.", "worker_rlimit_nofile"),
    _k("worker_shutdown_timeout", g.parse_duration, "After a reload, old workers cut their remaining "
       "connections after this long. Unset: they wait for clients to leave (nothing is cut; "
       "apply --max-generations bounds how many linger).", "worker_shutdown_timeout", json=_DURATION),
    _k("error_log", v.error_log, "stderr (docker logs) or a file path.", "error_log", "stderr",
       {"type": "string"}),
    _k("error_log_level", v.one_of("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"),
       "Least severe level logged; notice shows reloads.", "error_log ... LEVEL", "notice"),
    _k("pid", lambda v: g.check_path(v, "a pid file path"), "Master's pid file.", "pid", "/run/nginx.pid",
       {"type": "string"}),
    _k("load_modules", v.modules, "Module files to load, for builds where stream is a dynamic module. "
       "validate and apply add the stream module themselves when the image needs it.", "load_module",
       json={"type": "array", "items": {"type": "string"}}),
    _k("image", v.image, "Image for validate when --image is not given.", "", json={"type": "string"}),
    _k("max_connections", v.integer(1), "Capacity intent: client connections the load balancer must hold "
       "at once. nginxctl derives worker_connections, worker_rlimit_nofile and worker_processes, and refuses "
       "an intent beyond fd_limit, memory_limit (else the machine's memory) or 4 workers per CPU of the "
       "machine nginx runs on (at least 4).", ""),
    _k("workload", v.one_of("idle", "balanced", "bulk"), "What the connections mostly do: idle (device "
       "pools, heartbeats: 4k buffers, ~4x less memory per connection), balanced (nginx's 16k), bulk "
       "(data streams: 64k buffers, more throughput). Sets the default proxy_buffer_size.", "",
       "balanced"),
    _k("fd_limit", v.integer(64, 1048576), "Hard open-file limit of the nginx processes on the target "
       "(ulimit -Hn); max_connections is checked against it.", "", 20000),
    _k("memory_limit", g.parse_size, "Memory nginx may use for connection buffers and the groups' shared "
       "zones; an intent beyond it is an error. Unset: the memory of the machine nginx runs on, where "
       "nginxctl knows it (the Docker engine's, or this machine's for render).", "", json=_SIZE),
]

TARGET_KEYS = [
    _k("container", v.container, "The nginx container apply, diff, status and rollback act on.", "",
       json={"type": "string"}),
    _k("docker_host", v.docker_host, "Docker engine URL (else DOCKER_HOST, else the local socket).", "",
       json={"type": "string"}),
    _k("config_path", lambda v: g.check_path(v, "a config file path"), "File nginxctl owns in the "
       "container.", "", "/etc/nginx/nginx.conf", {"type": "string"}),
    _k("stream_only", v.boolean, "Deploy only the stream {} block to config_path, for an nginx.conf that "
       "includes it.", "", False, _BOOL),
]

FLEET_TARGET_KEYS = [
    _k("name", lambda v: g.check_name(v, "a target name"), "How commands and reports name this load balancer "
       "(--targets NAME,...).", "", json={"type": "string"}),
    *TARGET_KEYS,
    _k("priority", v.integer(1, 254), "With ha: this load balancer's VRRP priority (the highest healthy one takes the "
       "virtual IP when none holds it). Default: descending in the order of targets: 200, 190, 180, ... (closer "
       "together beyond 20 targets). 255 is the address owner's, which no target is.", "keepalived: priority"),
]

HA_PRIORITY_TOP = 200  # the first target's default priority; each next one is lower

HA_KEYS = [
    _k("vip", v.vip, "The virtual IP with its prefix length, e.g. 10.254.7.100/24: the address clients dial. "
       "keepalived adds it to interface on the target that is MASTER and removes it elsewhere. IPv4 (VRRP "
       "version 2) or IPv6 (version 3).", "keepalived: virtual_ipaddress",
       json={"type": "string", "pattern": rf"^[0-9A-Fa-f.:]+/[0-9]{{1,3}}{_END}"}),
    _k("interface", v.interface, "The interface, inside each target's network namespace, that carries VRRP and "
       "the virtual IP.", "keepalived: interface", "eth0", {"type": "string"}),
    _k("virtual_router_id", v.integer(1, 255), "VRRP group id, 1-255: the same on every target of this inventory and "
       "unique among VRRP groups on the network (it is the last byte of the virtual MAC).",
       "keepalived: virtual_router_id"),
    _k("advert_interval", v.advert_interval, "Time between the master's VRRP adverts, whole seconds (1s to "
       "255s). A backup takes over after 3 missed adverts; nginx's health is checked at the same interval.",
       "keepalived: advert_int", "1s", {**_DURATION, "minimum": 1, "maximum": 255}),
    _k("nopreempt", v.boolean, "A recovered (higher-priority) target does not take the virtual IP back from the "
       "healthy target holding it, which would cut the clients a second time; it waits as BACKUP. false: the "
       "highest priority always holds it.", "keepalived: nopreempt", True, _BOOL),
    _k("health_port", v.integer(1, 65535), "Loopback TCP port (127.0.0.1) of a listener nginxctl adds to the nginx "
       "config, answered by nginx itself (`return`); keepalived checks it every advert_interval and a target "
       "whose nginx does not answer (stopped, hung, paused) goes to FAULT and gives the virtual IP up. The "
       "default is outside Linux's default ephemeral range (32768-60999).", "listen 127.0.0.1:PORT", 61999),
    _k("fall", v.integer(1, 10), "Failed health checks in a row that put a target in FAULT (it gives up the "
       "virtual IP). Failover takes about fall x advert_interval plus one check.", "keepalived: fall", 2),
    _k("rise", v.integer(1, 10), "Passed health checks in a row that take a target out of FAULT (with nopreempt it "
       "then waits as BACKUP).", "keepalived: rise", 2),
    _k("image", v.image, "The keepalived image: apply and watch run it beside each target, validate checks each "
       "target's keepalived.conf with it (`keepalived --config-test`). scripts/setup.sh builds the default from "
       "Debian's keepalived package (scripts/build-keepalived-image.sh, no registry).", "",
       "nginxctl/keepalived:local", {"type": "string"}),
]

TOP_KEYS = [
    _k("upstreams", lambda v: v, "NAME: group. NAME becomes the upstream's name.", "upstream NAME",
       json={"type": "object", "minProperties": 1,
             "propertyNames": {"pattern": f"^{g.NAME_PATTERN}{_END}"},
             "additionalProperties": {"$ref": "#/$defs/group"}}),
    _k("defaults", lambda v: v, "Any group key (but listen and servers), for every group that does not "
       "set it.", "", json={"$ref": "#/$defs/defaults"}),
    _k("nginx", lambda v: v, "Main-context settings for a whole nginx.conf.", "",
       json={"$ref": "#/$defs/nginx"}),
    _k("target", lambda v: v, "Where apply deploys.", "", json={"$ref": "#/$defs/target"}),
    _k("targets", lambda v: v, "A fleet: several load balancers that serve this inventory, changed one at a "
       "time (the first is the canary). Instead of target.", "",
       json={"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/fleet_target"}}),
    _k("templates", v.path_text, "Folder of templates overriding the shipped ones (relative to the inventory).",
       "", json={"type": "string"}),
    _k("vars", v.variables, "NAME: VALUE pairs for custom templates.", "",
       json={"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}}),
    _k("ha", lambda v: v, "A virtual IP that moves between the fleet's load balancers (VRRP, keepalived beside "
       "each target's nginx): needs targets: with at least two. See docs/inventory.md, `ha:`.", "",
       json={"$ref": "#/$defs/ha"}),
    _k("discovery", v.discovery, "Where discovering groups look: {etcd: {endpoints: [http://127.0.0.1:2379]}}.",
       "", json={"type": "object", "properties": {"etcd": {
           "type": "object", "properties": {"endpoints": {"type": "array", "items": {"type": "string"},
                                                          "minItems": 1}},
           "required": ["endpoints"], "additionalProperties": False}}, "additionalProperties": False}),
]

NOT_DEFAULTABLE = {"listen", "servers", "discover"}


def _object(keys: list[Key], required: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {}
    for key in keys:
        prop = dict(key.json)
        prop["description"] = key.doc + (f" nginx: {key.directive}." if key.directive else "")
        if key.default is not None:
            prop["default"] = key.default
        props[key.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def json_schema() -> dict[str, Any]:
    """The inventory's JSON Schema (draft 2020-12), for editors and yaml-language-server."""
    defaults = _object([k for k in GROUP_KEYS if k.name not in NOT_DEFAULTABLE])
    schema = _object(TOP_KEYS, ("upstreams",))
    schema.update({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://nginxctl.dev/inventory.schema.json",
        "title": "nginxctl inventory",
        "$defs": {
            "server": _object(SERVER_KEYS, ("address",)),
            "group": {**_object(GROUP_KEYS, ("listen",)),
                      "anyOf": [{"required": ["servers"]}, {"required": ["discover"]}]},
            "defaults": defaults,
            "nginx": _object(NGINX_KEYS),
            "health_check": _object(HEALTH_KEYS),
            "rebalance": _object(REBALANCE_KEYS),
            "target": _object(TARGET_KEYS),
            "fleet_target": _object(FLEET_TARGET_KEYS, ("name", "container")),
            "ha": _object(HA_KEYS, ("vip", "virtual_router_id")),
        },
    })
    return schema


def reference_document() -> str:
    """docs/inventory.md, whole. Regenerate it with
    `python -c "from nginxctl.inventory.schema import reference_document as d; print(d(), end='')" > docs/inventory.md`.
    """
    header = f"""# Inventory reference

Generated from the schema table in `nginxctl/inventory/schema.py` (the same table validates input and
produces `nginxctl schema`). Defaults not listed leave nginx's own default in force and render nothing.

Value grammar (the safety gate): addresses are `HOST:PORT`, `IP:PORT`, `[IPv6]:PORT` or `unix:/path`;
durations `500ms`, `30s`, `10m`, `1h30m` (units w, d, h, m, s, ms, largest first; nginx takes no `y` or
`M` in these) or a number of seconds (`5` is `5s`), and `fail_timeout`, which nginx reads in whole
seconds, `y`, `M`, `w`, `d`, `h`, `m`, `s` but no `ms`; sizes `4k`, `16k`, `1m` (or bytes; no `g`);
hash keys are stream variables (`$remote_addr`, ...) and plain characters. Whitespace, quotes, `;`, `{{`,
`}}`, `#`, and `$` before anything but a known stream variable are refused at load time with the file,
line and key, and refused again by the renderer for anything a template prints. Digits are ASCII only.

Bounds are nginx's own, so a config that loads is one `nginx -t` accepts: a duration is at most
{g.NGX_MAX_INT:,} of its unit (ms, or s for `fail_timeout`), a size or a count at most
{g.NGX_MAX_SIZE:,}, a zone at least 32k (8 memory pages). The file is at most {MAX_BYTES // 1024 ** 2} MiB and
{MAX_NODES:,} values once YAML aliases are expanded, nested at most {MAX_DEPTH} deep (alias bombs are
refused before they expand).

"""
    return header + reference_markdown()


HA_NOTES = """\
With `ha:`, `nginxctl apply` runs keepalived beside each target's nginx: a container `<container>-keepalived`
(image `ha.image`) in the target's network namespace (`network_mode: container:<target>`), with the capabilities
NET_ADMIN, NET_BROADCAST and NET_RAW, plus SETUID and SETGID, which keepalived uses to start each health check.
It is recreated when the target container was restarted or recreated (keepalived left in a dead namespace holds
nothing) and reloaded (SIGHUP) only when its keepalived.conf changed. `nginxctl render --keepalived` prints each
target's `keepalived.conf`; `nginxctl validate` checks it with `keepalived --config-test`. A rollout changes the
standbys first and the holder of the address last; keepalived.conf is kept in the target's history with the
nginx config (one `rollback` puts both back). `nginxctl watch` runs the companions too: an edit of `ha:` reaches
them at the next pass, and a restarted target's companion is made again in its new namespace (docs/controller.md,
Fleets). What nginxctl decides for you, and why:

- **Every target starts as BACKUP**, and the healthy one with the highest priority becomes MASTER. With
  `nopreempt` (the default) a target that recovers does not take the address back from a healthy holder: the
  clients are cut once (at the failure), not twice.
- **Health is nginx answering, not a port accepting.** nginxctl adds a listener on `127.0.0.1:health_port` to
  the nginx config that nginx answers itself (`return`); keepalived's check connects and needs that answer
  within the advert interval. A TCP connect alone passes on a hung or paused nginx: the kernel completes the
  handshake into the listen backlog. The check has weight 0, so `fall` failures put the target in FAULT and it
  gives the address up; a lower priority would not move the address with `nopreempt`. A target starts
  failed (`init_fail`): it can become MASTER only after `rise` answers, and a check that cannot run keeps it out.
- **VRRP adverts are multicast** (224.0.0.18, or ff02::12 for an IPv6 virtual IP) on `interface`: a LAN or a
  bridge carries them. Networks that drop multicast (most clouds) are not supported yet: unicast peers need each
  target's own address, which the inventory does not have.
- **keepalived says its state, the namespaces say who holds the address.** A `notify` line makes keepalived
  write MASTER, BACKUP or FAULT to /run/nginxctl-vrrp.state in its companion at every transition; `nginxctl
  status` shows it beside the holders, read from each target's network namespace, and says a split brain or no
  holder loudly; `watch` exports `nginxctl_vip_holder` and logs each move (README, "Who holds it").
- **No VRRP authentication.** RFC 3768 removed it from VRRP version 2 and keepalived advises against it: an
  8-byte clear-text password stops no one who can send adverts on the segment. Keep VRRP on a segment only the
  load balancers share.
- **A group that listens on the virtual IP itself** (rather than on a port alone) needs the standbys to bind an
  address they do not hold: `ip_nonlocal_bind` in the targets' namespace. `validate` allows it; `apply` and
  `watch` set it in each target's namespace before its reload (from the engine's host, as root), but a
  namespace is new at every container start and nginx then cannot bind before anything sets it: create the
  target containers with `--sysctl net.ipv4.ip_nonlocal_bind=1` (or `ipv6`), which a remote engine needs anyway.
  Any other specific listen address must be loopback: every target runs the same config.
"""


def reference_markdown() -> str:
    """The key reference as Markdown tables (docs/inventory.md is generated from this)."""
    sections = [("Top level", TOP_KEYS), ("A group: `upstreams.NAME`", GROUP_KEYS),
                ("A server: `upstreams.NAME.servers[]`", SERVER_KEYS), ("`nginx:`", NGINX_KEYS),
                ("`target:`", TARGET_KEYS), ("`upstreams.NAME.health_check` (or `defaults.health_check`)",
                                             HEALTH_KEYS),
                ("`upstreams.NAME.rebalance` (or `defaults.rebalance`)", REBALANCE_KEYS),
                ("A fleet: `targets[]`", FLEET_TARGET_KEYS),
                ("A virtual IP: `ha:` (with `targets:`)", HA_KEYS)]
    out = []
    for title, keys in sections:
        out += [f"### {title}", "", "| key | type | default | nginx | meaning |", "|---|---|---|---|---|"]
        for k in keys:
            typ: Any = k.json.get("type")
            if "enum" in k.json:
                typ = " / ".join(f"`{c}`" for c in k.json["enum"])
            elif isinstance(typ, list):
                typ = " or ".join(typ)
            elif typ is None:  # a section ($ref), or a choice of types
                typ = {"worker_processes": "auto or integer", "listen": "address or list",
                       "discover": "`docker` or `{etcd: /prefix/}`",
                       "rebalance": "boolean or object"}.get(k.name, "object" if "$ref" in k.json else None)
            if typ is None:
                raise TypeError(f"key {k.name!r}: say its type in reference_markdown()")
            default = "" if k.default is None else f"`{k.default}`"
            directive = f"`{k.directive}`" if k.directive else ""
            out.append(f"| `{k.name}` | {typ} | {default} | {directive} | {k.doc} |")
        out.append("")
        if keys is HA_KEYS:
            out.append(HA_NOTES)
    return "\n".join(out)
