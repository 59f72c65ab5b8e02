"""The strict gate: every value that can reach nginx is parsed here against a grammar.

Each parser takes the raw YAML value and returns a canonical, nginx-ready form, or raises
`Invalid` with what was expected. Nothing outside these grammars reaches a template: no
whitespace, `;`, `{`, `}`, `#`, quotes, backslashes, and `$` only in front of a variable
named in `NGINX_VARIABLES`. `SAFE_TOKEN` is the same promise as one regular expression;
the renderer applies it again to every value it prints.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any


class Invalid(ValueError):
    """A value does not match its grammar. `expected` says what would."""

    def __init__(self, expected: str, got: Any = None, *, show_got: bool = True) -> None:
        self.expected = expected
        self.got = got
        text = f"expected {expected}"
        if show_got:
            text += f", got {describe(got)}"
        super().__init__(text)


def describe(value: Any) -> str:
    """A value as the user wrote it, short and quoted, for error messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Variables of the stream core, realip, ssl_preread and proxy_protocol modules: the only
# things that may follow a `$`.
NGINX_VARIABLES = frozenset(
    """binary_remote_addr bytes_received bytes_sent connection hostname msec nginx_version pid
    protocol proxy_protocol_addr proxy_protocol_port proxy_protocol_server_addr
    proxy_protocol_server_port realip_remote_addr realip_remote_port remote_addr remote_port
    server_addr server_port session_time ssl_preread_alpn_protocols ssl_preread_protocol
    ssl_preread_server_name status time_iso8601 time_local""".split()
)
_VAR = "|".join(sorted(NGINX_VARIABLES, key=len, reverse=True))
SAFE_TOKEN = re.compile(rf"(?:[A-Za-z0-9_.:/@%+=,*\[\]-]|\$(?:{_VAR})(?![A-Za-z0-9_]))+\Z")

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
PATH = re.compile(r"/[A-Za-z0-9._/@+-]*\Z")
_DURATION = re.compile(r"(?=\d)(?:\d+y)?(?:\d+M)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m(?!s))?(?:\d+s)?(?:\d+ms)?\Z")
_DURATION_MS = {"y": 31536000000, "M": 2592000000, "w": 604800000, "d": 86400000, "h": 3600000,
                "m": 60000, "s": 1000, "ms": 1}
_SIZE = re.compile(r"(\d+)([kKmM]?)\Z")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


def check_name(value: Any, what: str = "a name") -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise Invalid(f"{what}: a letter or '_' then letters, digits, '_' or '-' (at most 63)", value)
    return value


def check_path(value: Any, what: str = "an absolute path") -> str:
    if not isinstance(value, str) or not PATH.match(value) or "/../" in value + "/":
        raise Invalid(f"{what} of letters, digits and ._/@+- (no spaces, no '..')", value)
    return value


@dataclass(frozen=True)
class Duration:
    """An nginx time value. `text` is what nginx sees, `ms` is for range checks."""

    text: str
    ms: int

    def __str__(self) -> str:
        return self.text


def parse_duration(value: Any) -> Duration:
    expected = "a duration such as 30s, 500ms, 10m, 1h30m (or a number of seconds)"
    if isinstance(value, bool):
        raise Invalid(expected, value)
    if isinstance(value, int) and value >= 0:
        return Duration(f"{value}s", value * 1000)
    if not isinstance(value, str) or not _DURATION.match(value):
        raise Invalid(expected, value)
    if value.isdigit():  # nginx reads a bare number as seconds; say so in the config
        return Duration(f"{value}s", int(value) * 1000)
    ms = sum(int(n) * _DURATION_MS[u] for n, u in re.findall(r"(\d+)(ms|[yMwdhms])", value))
    return Duration(value, ms)


@dataclass(frozen=True)
class Size:
    """An nginx size value (`16k`, `1m`, `4096`)."""

    text: str
    bytes: int

    def __str__(self) -> str:
        return self.text


def parse_size(value: Any) -> Size:
    expected = "a size such as 16k, 1m or a number of bytes"
    if isinstance(value, bool):
        raise Invalid(expected, value)
    if isinstance(value, int) and value > 0:
        return Size(str(value), value)
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) == 0:
        raise Invalid(expected, value)
    factor = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    return Size(value, int(m.group(1)) * factor)


def parse_port(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Invalid("a port from 1 to 65535", value)
    return value


@dataclass(frozen=True)
class Address:
    """A socket address: `kind` is inet (IPv4), inet6, name (host name) or unix.

    `host` is the IPv4/IPv6 literal or host name (None for unix and for a bare port),
    `text` is the nginx form: `10.0.0.5:6666`, `[::1]:6666`, `db.local:3306`, `unix:/run/x.sock`.
    """

    kind: str
    host: str | None
    port: int | None
    path: str | None
    text: str

    @property
    def is_name(self) -> bool:
        return self.kind == "name"


def _split_host_port(value: str, expected: str) -> tuple[str, str]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise Invalid(expected, value)
        return "[" + host + "]", port
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise Invalid(expected, value)
    return host, port


def _parse_unix(value: str, expected: str) -> Address:
    path = value[len("unix:"):]
    check_path(path, "a unix socket path after 'unix:'")
    if len(path) > UNIX_PATH_MAX:
        raise Invalid(f"a unix socket path of at most {UNIX_PATH_MAX} bytes (the kernel's limit)", value)
    return Address("unix", None, None, path, value)


def _parse_host(host: str, expected: str, value: Any, allow_wildcard: bool) -> tuple[str, str]:
    """Return (kind, canonical host) for a host part, or raise."""
    if host.startswith("["):
        try:
            ip6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Invalid(expected, value) from None
        return "inet6", f"[{ip6.compressed}]"
    if allow_wildcard and host == "*":
        return "inet", "*"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return "inet", str(ipaddress.IPv4Address(host))
        except ValueError:
            raise Invalid(expected, value) from None
    if HOSTNAME.match(host) and len(host) <= 253:
        return "name", host.lower()
    raise Invalid(expected, value)


def parse_server_address(value: Any) -> Address:
    """`HOST:PORT`, `IP:PORT`, `[V6]:PORT` or `unix:/path` (a stream upstream needs the port)."""
    expected = "a server address HOST:PORT, IP:PORT, [IPv6]:PORT or unix:/path"
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value.startswith("unix:"):
        return _parse_unix(value, expected)
    host, port_text = _split_host_port(value, expected)
    kind, canon = _parse_host(host, expected, value, allow_wildcard=False)
    port = parse_port(port_text)
    return Address(kind, canon, port, None, f"{canon}:{port}")


def parse_listen(value: Any) -> Address:
    """A port, `ADDR:PORT`, `*:PORT`, `[V6]:PORT` or `unix:/path`."""
    expected = "a listen address: PORT, IP:PORT, *:PORT, [IPv6]:PORT or unix:/path"
    if isinstance(value, int) and not isinstance(value, bool):
        port = parse_port(value)
        return Address("inet", None, port, None, str(port))
    if not isinstance(value, str):
        raise Invalid(expected, value)
    if value.isdigit():
        port = parse_port(value)
        return Address("inet", None, port, None, str(port))
    if value.startswith("unix:"):
        return _parse_unix(value, expected)
    host, port_text = _split_host_port(value, expected)
    kind, canon = _parse_host(host, expected, value, allow_wildcard=True)
    if kind == "name":
        raise Invalid(expected + " (not a host name: nginx resolves it when it loads the config, and a "
                      "listen must be an address of this host)", value)
    port = parse_port(port_text)
    return Address(kind, canon, port, None, f"{canon}:{port}")


def listen_key(addr: Address, protocol: str) -> tuple[str, str, int | None, str]:
    """What makes two listens the same socket: `6666`, `*:6666` and `0.0.0.0:6666` are one."""
    host = addr.host
    if addr.kind == "inet" and host in (None, "*", "0.0.0.0"):
        host = "*"
    return (addr.kind if addr.kind != "name" else "inet", host or addr.path or "", addr.port, protocol)


def parse_hash_key(value: Any) -> str:
    """Variables from `NGINX_VARIABLES` and plain text, e.g. `$remote_addr` or `$remote_addr:$server_port`."""
    expected = ("a hash key of stream variables and plain characters, e.g. $remote_addr "
                f"(variables: ${', $'.join(sorted(NGINX_VARIABLES))})")
    if not isinstance(value, str) or not value or not SAFE_TOKEN.match(value):
        raise Invalid(expected, value)
    return value


def parse_token(value: Any) -> str:
    """A free value for custom templates: one token that passes `SAFE_TOKEN`."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not SAFE_TOKEN.match(value):
        raise Invalid("one token of letters, digits and _.:/@%+=,*[]- (no spaces, quotes, ;{}#, "
                      "$ only before a stream variable)", value)
    return value
