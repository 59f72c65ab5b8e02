"""The strict gate: every value that can reach nginx is parsed here against a grammar.

Each parser takes the raw YAML value and returns a canonical, nginx-ready form, or raises
`Invalid` with what was expected. Nothing outside these grammars reaches a template: no
whitespace, `;`, `{`, `}`, `#`, quotes, backslashes, and `$` only in front of a variable
named in `NGINX_VARIABLES`. `SAFE_TOKEN` is the same promise as one regular expression;
the renderer applies it again to every value it prints.

Digits are ASCII only (`[0-9]`, never `\\d` or `str.isdigit()`, which take `３` or `²`), and every
number is bounded by what nginx itself accepts, so that a value that loads is one `nginx -t` accepts.
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
# the variables of a hash key nginxctl can compute for a held connection (`hashring`, for rebalance)
KEY_VARIABLES = ("remote_addr", "remote_port", "server_addr", "server_port")
SAFE_TOKEN = re.compile(rf"(?:[A-Za-z0-9_.:/@%+=,*\[\]-]|\$(?:{_VAR})(?![A-Za-z0-9_]))+\Z")

NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]{0,62}"
NAME = re.compile(NAME_PATTERN + r"\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?\Z")
PATH = re.compile(r"/[A-Za-z0-9._/@+-]*\Z")
DIGITS = re.compile(r"[0-9]+\Z")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL

# nginx's own limits (64-bit builds), from src/core/ngx_parse.c and ngx_string.c, confirmed with `nginx -t`
# by tests/test_property.py:
# - NGX_MAX_INT_T_VALUE is the cutoff of ngx_atoi (counts: max_conns=, proxy_responses, ...) and of
#   ngx_parse_time: a time in milliseconds (proxy_timeout and the other ngx_conf_set_msec_slot directives)
#   or in seconds (fail_timeout=) is at most 2^63 - 1 of its unit.
# - NGX_MAX_SIZE_T_VALUE is the cutoff of ngx_parse_size (proxy_buffer_size, zone): 2^63 - 1 bytes,
#   with k and m only (no g).
NGX_MAX_INT = 2 ** 63 - 1
NGX_MAX_SIZE = 2 ** 63 - 1
# Millisecond times (ngx_conf_set_msec_slot) start parsing at "month": nginx refuses y and M there.
MS_UNITS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
# Second times (fail_timeout=) allow y and M but not ms.
S_UNITS = {"y": 31_536_000, "M": 2_592_000, "w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
DURATION_MS = re.compile(
    r"[0-9]+|(?=[0-9])(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m(?!s))?(?:[0-9]+s)?(?:[0-9]+ms)?")
DURATION_S = re.compile(r"[0-9]+|(?=[0-9])(?:[0-9]+y)?(?:[0-9]+M)?(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?"
                         r"(?:[0-9]+m)?(?:[0-9]+s)?")
_PART = re.compile(r"([0-9]+)(ms|[yMwdhms])")
_SIZE = re.compile(r"([0-9]+)([kKmM]?)")
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def check_name(value: Any, what: str = "a name") -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise Invalid(f"{what}: a letter or '_' then letters, digits, '_' or '-' (at most 63)", value)
    return value


def check_path(value: Any, what: str = "an absolute path") -> str:
    if not isinstance(value, str) or not PATH.match(value) or "/../" in value + "/":
        raise Invalid(f"{what} of letters, digits and ._/@+- (no spaces, no '..')", value)
    return value


@dataclass(frozen=True)
class Written:
    """A value as nginx reads it (`text`, rendered as is); the subclasses add its number for range checks."""

    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Duration(Written):
    """An nginx time value (`5s`, `1m30s`, `500ms`); `ms` in milliseconds."""

    ms: int

    @property
    def seconds(self) -> float:
        return self.ms / 1000


def _duration(value: Any, grammar: re.Pattern[str], units: dict[str, int], expected: str, limit: str) -> Duration:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid(expected, value)
    text = str(value)
    if (isinstance(value, int) and value < 0) or not grammar.fullmatch(text):
        raise Invalid(expected, value)
    if DIGITS.match(text):  # nginx reads a bare number as seconds; say so in the config
        total, text = _number(text) * units["s"], text + "s"
    else:
        total = sum(_number(n) * units[u] for n, u in _PART.findall(text))
    if total > NGX_MAX_INT:
        raise Invalid(limit, value)
    return Duration(text, total * (1000 // units["s"]))


def parse_duration(value: Any) -> Duration:
    """A time as nginx's millisecond directives read it (proxy_timeout, worker_shutdown_timeout, ...).

    Units w, d, h, m, s and ms, largest first (`30s`, `500ms`, `10m`, `1h30m`), or a bare non-negative
    integer (or digit string) of seconds: `5` and `"5"` are `5s`, `0` is `0s`. At most 2^63 - 1 ms,
    nginx's limit. Raises Invalid.
    """
    return _duration(value, DURATION_MS, MS_UNITS,
                     "a duration such as 30s, 500ms, 10m, 1h30m or a number of seconds (units w d h m s ms, "
                     "largest first; nginx takes no y or M in this one)",
                     f"a duration of at most {NGX_MAX_INT}ms (nginx's limit, about 292 million years)")


def parse_duration_seconds(value: Any) -> Duration:
    """A time as nginx reads `fail_timeout=`: whole seconds, units y, M, w, d, h, m, s (no ms), or a bare
    integer of seconds; at most 2^63 - 1 s. Raises Invalid."""
    return _duration(value, DURATION_S, S_UNITS,
                     "a duration in whole seconds such as 10s, 1m, 2h or a number of seconds (units y M w d "
                     "h m s, largest first; nginx reads this one in seconds, so no ms)",
                     f"a duration of at most {NGX_MAX_INT}s (nginx's limit)")


@dataclass(frozen=True)
class Size(Written):
    """An nginx size value (`16k`, `1m`, `4096`); `bytes` its size."""

    bytes: int


def parse_size(value: Any, minimum: int = 1, why: str = "") -> Size:
    """A size as ngx_parse_size reads it: bytes, or a number with k or m (1024-based); `minimum` bytes at
    least (`why` says why, for the message) and at most 2^63 - 1 bytes (nginx's limit). Raises Invalid."""
    expected = "a size such as 16k, 1m or a number of bytes"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid(expected, value)
    m = _SIZE.fullmatch(str(value)) if not isinstance(value, int) or value >= 0 else None
    if not m:
        raise Invalid(expected, value)
    size = _number(m.group(1)) * SIZE_UNITS[m.group(2).lower()]
    if size < minimum:
        raise Invalid(f"a size of at least {_size_text(minimum)}" + (f" ({why})" if why else ""), value)
    if size > NGX_MAX_SIZE:
        raise Invalid(f"a size of at most {NGX_MAX_SIZE} bytes (nginx's limit; k and m units only)", value)
    return Size(str(value), size)


def _size_text(n: int) -> str:
    for unit, factor in (("m", 1024 * 1024), ("k", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes" if n != 1 else "1 byte"


def _number(digits: str) -> int:
    """ASCII digits as an int; anything beyond nginx's limits as NGX_MAX_INT + 1 (Python refuses to
    convert more than 4300 digits, and no limit here needs more than 19)."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 20 else NGX_MAX_INT + 1


def parse_port(value: Any) -> int:
    """1 to 65535, as an integer or ASCII digits."""
    port = _number(value) if isinstance(value, str) and DIGITS.match(value) else value
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Invalid("a port from 1 to 65535", value)
    return port


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
        if ip6.scope_id is not None:  # `%eth0`: Python takes any text there, nginx none
            raise Invalid(expected + " (no %scope after an IPv6 address)", value)
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
    if DIGITS.match(value):
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


def _with_unit(value: Any, suffix: str, expected: str) -> float:
    """A number written bare or with its unit suffix (`20/s`, `10%`); YAML may give it as a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Invalid(expected, value)
    text = str(value).strip()
    try:
        number = float(text[:-len(suffix)] if text.endswith(suffix) else text)
    except ValueError:
        raise Invalid(expected, value) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise Invalid(expected, value)
    return number


def parse_rate(value: Any) -> float:
    """Closes per second: `20` or `20/s`, more than 0."""
    rate = _with_unit(value, "/s", "closes per second such as 20 or 20/s")
    if not rate > 0:
        raise Invalid("more than 0 closes per second", value)
    return rate


def parse_percent(value: Any) -> float:
    """A tolerance: `10%` or `10` (the same), 0-100%, as a fraction (0.1)."""
    percent = _with_unit(value, "%", "a percentage such as 10% or 10")
    if not 0 <= percent <= 100:
        raise Invalid("a percentage between 0% and 100%", value)
    return percent / 100
