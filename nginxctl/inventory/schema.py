"""The inventory's keys, in one table: type, default, nginx directive, and docs.

The same table validates input, fills defaults, and is exported as JSON Schema (`nginxctl schema`)
and as the key reference in docs/inventory.md, so the three cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import grammar as g

Parser = Callable[[Any], Any]


@dataclass(frozen=True)
class Key:
    name: str
    parse: Parser
    json: dict[str, Any]
    doc: str
    directive: str = ""
    default: Any = None  # raw YAML value; None: nginx's own default applies, nothing rendered


def _int(minimum: int, maximum: int | None = None) -> tuple[Parser, dict[str, Any]]:
    def parse(value: Any) -> int:
        expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        if isinstance(value, bool) or not isinstance(value, int):
            raise g.Invalid(expected, value)
        if value < minimum or (maximum is not None and value > maximum):
            raise g.Invalid(expected, value)
        return value

    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return parse, schema


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise g.Invalid("true or false", value)
    return value


def _enum(*choices: str) -> tuple[Parser, dict[str, Any]]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise g.Invalid("one of " + ", ".join(choices), value)
        return str(value)

    return parse, {"enum": list(choices)}


def _worker_processes(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise g.Invalid("'auto' or an integer >= 1", value)
    return value


def _error_log(value: Any) -> str:
    if value == "stderr":
        return "stderr"
    return g.check_path(value, "'stderr' or an absolute file path")


def _listen_list(value: Any) -> tuple[g.Address, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise g.Invalid("at least one listen address", value)
    return tuple(g.parse_listen(v) for v in items)


def _modules(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise g.Invalid("a list of module paths", value)
    out = []
    for item in value:
        path = g.check_path(item, "a module path")
        if not path.endswith(".so"):
            raise g.Invalid("a module path ending in .so", item)
        out.append(path)
    return tuple(out)


def _image(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value):
        raise g.Invalid("a Docker image reference such as nginx:stable", value)
    return value


def _container(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", value):
        raise g.Invalid("a container name or id", value)
    return value


def _docker_host(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(unix|tcp|ssh|npipe)://[^\s]*", value):
        raise g.Invalid("a Docker host URL such as unix:///var/run/docker.sock or ssh://user@lb1", value)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise g.Invalid("a path (text)", value)
    return value


def _vars(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise g.Invalid("a mapping of NAME: VALUE for custom templates", value)
    return {g.check_name(k, "a variable name"): g.parse_token(v) for k, v in value.items()}


_DURATION = {"type": ["string", "integer"], "pattern": r"^(\d+(ms|[yMwdhms])?)+$"}
_SIZE = {"type": ["string", "integer"], "pattern": r"^\d+[kKmM]?$"}
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
    _k("weight", _int(1, 1000), "Share of new connections relative to the other servers.", "weight="),
    _k("max_fails", _int(0, 1000), "Failed attempts within fail_timeout before the server is skipped "
       "(0: never). Counted across workers (the upstream has a zone).", "max_fails="),
    _k("fail_timeout", g.parse_duration, "Window for max_fails, and how long a failed server is skipped.",
       "fail_timeout=", json=_DURATION),
    _k("max_conns", _int(0), "Most connections at once to this server across all workers (0: no limit).",
       "max_conns="),
    _k("backup", _bool, "Used only when every primary server is unavailable. Not with hash or random.",
       "backup", False, _BOOL),
    _k("down", _bool, "Marked unavailable: gets no new connections (nginxctl drain sets this).",
       "down", False, _BOOL),
]

GROUP_KEYS = [
    _k("listen", _listen_list, "Where clients connect: a port, ADDR:PORT, [IPv6]:PORT, unix:/path, or a list.",
       "listen", json={"oneOf": [{"type": ["string", "integer"]},
                                 {"type": "array", "items": {"type": ["string", "integer"]}, "minItems": 1}]}),
    _k("protocol", _enum("tcp", "udp"), "Transport of the listen sockets.", "listen ... udp", "tcp"),
    _k("balance", _enum("round_robin", "least_conn", "hash", "random", "random_two_least_conn"),
       "Balancing method. least_conn suits long-lived connections best (new ones go where the "
       "fewest are open).", "least_conn / hash / random / random two least_conn", "round_robin"),
    _k("hash_key", g.parse_hash_key, "Key for balance: hash, e.g. $remote_addr.", "hash KEY",
       json={"type": "string"}),
    _k("consistent", _bool, "With balance: hash, use ketama consistent hashing (adding a server "
       "moves few clients).", "hash ... consistent", False, _BOOL),
    _k("zone_size", g.parse_size, "Shared memory for the group's state, so balancing, max_fails and "
       "least_conn counts are shared by all workers.", "zone NAME SIZE", "64k", _SIZE),
    _k("proxy_connect_timeout", g.parse_duration, "Time to establish the backend connection before "
       "trying the next server (nginx: 60s; 5s fails over faster).", "proxy_connect_timeout", "5s",
       _DURATION),
    _k("proxy_timeout", g.parse_duration, "Idle time after which a connection is closed. Default 1h for "
       "tcp (nginx's 10m cuts idle pooled MySQL connections and quiet devices), 30s for udp.",
       "proxy_timeout", json=_DURATION),
    _k("proxy_next_upstream", _bool, "On a failed connect, try the next server.", "proxy_next_upstream",
       json=_BOOL),
    _k("proxy_next_upstream_tries", _int(0), "Most servers to try (0: no limit).",
       "proxy_next_upstream_tries"),
    _k("proxy_next_upstream_timeout", g.parse_duration, "Time limit for trying servers (0: none).",
       "proxy_next_upstream_timeout", json=_DURATION),
    _k("proxy_responses", _int(0), "udp only: datagrams expected back per request (DNS: 1).",
       "proxy_responses"),
    _k("proxy_protocol", _bool, "Send a PROXY protocol header to the backends (client address).",
       "proxy_protocol", json=_BOOL),
    _k("proxy_buffer_size", g.parse_size, "Buffer per direction per connection (nginx: 16k). Decides "
       "memory per idle connection; see nginx.workload.", "proxy_buffer_size", json=_SIZE),
    _k("proxy_socket_keepalive", _bool, "TCP keepalive on backend connections: finds dead peers of "
       "long-lived connections.", "proxy_socket_keepalive", json=_BOOL),
    _k("reuseport", _bool, "One listen socket per worker: the kernel spreads new connections evenly "
       "across workers.", "listen ... reuseport", False, _BOOL),
    _k("backlog", _int(1, 65535), "Listen queue length (tcp).", "listen ... backlog="),
    _k("so_keepalive", _bool, "TCP keepalive on client connections (tcp).", "listen ... so_keepalive=on",
       False, _BOOL),
    _k("max_connections", _int(1), "Capacity intent: client connections this group must hold at once. "
       "Adds to nginx.max_connections when sizing workers.", ""),
    _k("allow_no_primary", _bool, "Accept a group whose primary servers are all down while a backup is up "
       "(backups serve alone, as nginx does). Set by `nginxctl drain --force`.", "", False, _BOOL),
    _k("vars", _vars, "NAME: VALUE pairs for custom templates (each value one safe token).", "",
       json={"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}}),
    _k("servers", lambda v: v, "The backends: a list of server mappings, or 'ADDRESS' strings.",
       "server", json={"type": "array", "minItems": 1,
                       "items": {"oneOf": [{"type": "string"}, {"$ref": "#/$defs/server"}]}}),
]

NGINX_KEYS = [
    _k("worker_processes", _worker_processes, "Worker processes; auto: one per core.", "worker_processes",
       "auto", {"oneOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]}),
    _k("worker_connections", _int(16, 1048576), "Connections per worker, client and backend sides "
       "together: each proxied connection takes two. Derived from max_connections when that is set.",
       "events { worker_connections }"),
    _k("worker_rlimit_nofile", _int(64, 1048576), "Open-file limit per worker; derived from "
       "worker_connections when unset.", "worker_rlimit_nofile"),
    _k("worker_shutdown_timeout", g.parse_duration, "After a reload, old workers cut their remaining "
       "connections after this long. Unset: they wait for clients to leave (nothing is cut; "
       "apply --max-generations bounds how many linger).", "worker_shutdown_timeout", json=_DURATION),
    _k("error_log", _error_log, "stderr (docker logs) or a file path.", "error_log", "stderr",
       {"type": "string"}),
    _k("error_log_level", _enum("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg"),
       "Least severe level logged; notice shows reloads.", "error_log ... LEVEL", "notice"),
    _k("pid", lambda v: g.check_path(v, "a pid file path"), "Master's pid file.", "pid", "/run/nginx.pid",
       {"type": "string"}),
    _k("load_modules", _modules, "Module files to load, for builds where stream is a dynamic module. "
       "validate and apply add the stream module themselves when the image needs it.", "load_module",
       json={"type": "array", "items": {"type": "string"}}),
    _k("image", _image, "Image for validate when --image is not given.", "", json={"type": "string"}),
    _k("max_connections", _int(1), "Capacity intent: client connections the load balancer must hold "
       "at once. nginxctl derives worker_connections, worker_rlimit_nofile and worker_processes.", ""),
    _k("workload", _enum("idle", "balanced", "bulk"), "What the connections mostly do: idle (device "
       "pools, heartbeats: 4k buffers, ~4x less memory per connection), balanced (nginx's 16k), bulk "
       "(data streams: 64k buffers, more throughput). Sets the default proxy_buffer_size.", "",
       "balanced"),
    _k("fd_limit", _int(64, 1048576), "Hard open-file limit of the nginx processes on the target "
       "(ulimit -Hn); max_connections is checked against it.", "", 20000),
    _k("memory_limit", g.parse_size, "Memory the workers may use for connection buffers; "
       "max_connections beyond it is an error.", "", json=_SIZE),
]

TARGET_KEYS = [
    _k("container", _container, "The nginx container apply, diff, status and rollback act on.", "",
       json={"type": "string"}),
    _k("docker_host", _docker_host, "Docker engine URL (else DOCKER_HOST, else the local socket).", "",
       json={"type": "string"}),
    _k("config_path", lambda v: g.check_path(v, "a config file path"), "File nginxctl owns in the "
       "container.", "", "/etc/nginx/nginx.conf", {"type": "string"}),
    _k("stream_only", _bool, "Deploy only the stream {} block to config_path, for an nginx.conf that "
       "includes it.", "", False, _BOOL),
]

TOP_KEYS = [
    _k("upstreams", lambda v: v, "NAME: group. NAME becomes the upstream's name.", "upstream NAME",
       json={"type": "object", "minProperties": 1,
             "propertyNames": {"pattern": g.NAME.pattern.rstrip("\\Z") + "$"},
             "additionalProperties": {"$ref": "#/$defs/group"}}),
    _k("defaults", lambda v: v, "Any group key (but listen and servers), for every group that does not "
       "set it.", "", json={"$ref": "#/$defs/defaults"}),
    _k("nginx", lambda v: v, "Main-context settings for a whole nginx.conf.", "",
       json={"$ref": "#/$defs/nginx"}),
    _k("target", lambda v: v, "Where apply deploys.", "", json={"$ref": "#/$defs/target"}),
    _k("templates", _text, "Folder of templates overriding the shipped ones (relative to the inventory).",
       "", json={"type": "string"}),
    _k("vars", _vars, "NAME: VALUE pairs for custom templates.", "",
       json={"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean"]}}),
]

NOT_DEFAULTABLE = {"listen", "servers"}


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
            "group": _object(GROUP_KEYS, ("listen", "servers")),
            "defaults": defaults,
            "nginx": _object(NGINX_KEYS),
            "target": _object(TARGET_KEYS),
        },
    })
    return schema


def reference_markdown() -> str:
    """The key reference as Markdown tables (docs/inventory.md is generated from this)."""
    sections = [("Top level", TOP_KEYS), ("A group: `upstreams.NAME`", GROUP_KEYS),
                ("A server: `upstreams.NAME.servers[]`", SERVER_KEYS), ("`nginx:`", NGINX_KEYS),
                ("`target:`", TARGET_KEYS)]
    out = []
    for title, keys in sections:
        out += [f"### {title}", "", "| key | type | default | nginx | meaning |", "|---|---|---|---|---|"]
        for k in keys:
            typ = k.json.get("type") or ("auto or integer" if k.name == "worker_processes" else
                                         "address or list" if "oneOf" in k.json else "integer")
            if isinstance(typ, list):
                typ = " or ".join(typ)
            if "enum" in k.json:
                typ = " / ".join(f"`{c}`" for c in k.json["enum"])
            default = "" if k.default is None else f"`{k.default}`"
            directive = f"`{k.directive}`" if k.directive else ""
            out.append(f"| `{k.name}` | {typ} | {default} | {directive} | {k.doc} |")
        out.append("")
    return "\n".join(out)
