"""The value gate, parser by parser: what each grammar takes, the canonical form it returns, and the exact
message for what it refuses (pure, no Docker)."""

from __future__ import annotations

from typing import Any

import pytest
from nginxctl.inventory import grammar as g

MAX = 2 ** 63 - 1


def refused(parse: Any, value: Any) -> str:
    with pytest.raises(g.Invalid) as info:
        parse(value)
    return str(info.value)


# --- durations (nginx's millisecond directives; the CLI's time options) ---

@pytest.mark.parametrize(("value", "text", "ms"), [
    ("30s", "30s", 30_000), ("500ms", "500ms", 500), ("10m", "10m", 600_000), ("1h30m", "1h30m", 5_400_000),
    ("2w3d", "2w3d", 1_468_800_000), ("1d1h1m1s1ms", "1d1h1m1s1ms", 90_061_001), ("5", "5s", 5000),
    (5, "5s", 5000), ("0", "0s", 0), (0, "0s", 0), ("0ms", "0ms", 0), ("007s", "007s", 7000),
    ("15250284452w3d7h12m55s807ms", "15250284452w3d7h12m55s807ms", MAX), ("9223372036854775807ms",
                                                                          "9223372036854775807ms", MAX),
    (MAX // 1000, f"{MAX // 1000}s", MAX // 1000 * 1000),
])
def test_duration(value: Any, text: str, ms: int) -> None:
    d = g.parse_duration(value)
    assert (d.text, d.ms, str(d), d.seconds) == (text, ms, text, ms / 1000)


def test_duration_seconds_is_a_float() -> None:
    assert g.parse_duration("1500ms").seconds == 1.5 and g.parse_duration("5").seconds == 5.0


EXPECTED_DURATION = ("expected a duration such as 30s, 500ms, 10m, 1h30m or a number of seconds (units w d h m s "
                     "ms, largest first; nginx takes no y or M in this one), got ")


@pytest.mark.parametrize("value", ["", "s", "ms", "5 s", " 5s", "5s ", "1.5s", "-1s", -1, "1x", "1m1h", "1s1m",
                                   "1h30", "1y", "1M", "5S", "1msms", "1mss", "３0s", "５", "²", "1٣s", True, None,
                                   1.5, [5], "5s\n"])
def test_duration_refused(value: Any) -> None:
    assert refused(g.parse_duration, value) == EXPECTED_DURATION + g.describe(value)


@pytest.mark.parametrize("value", ["9223372036854775808ms", "9223372036854776s", "9223372036854776",
                                   MAX // 1000 + 1, "15250284452w3d7h12m55s808ms", "99999999999999999999s",
                                   "9" * 5000 + "s"])
def test_duration_beyond_nginx_limit(value: Any) -> None:
    assert refused(g.parse_duration, value) == ("expected a duration of at most 9223372036854775807ms (nginx's "
                                                f"limit, about 292 million years), got {g.describe(value)}")


@pytest.mark.parametrize(("value", "text", "ms"), [
    ("30s", "30s", 30_000), ("1y", "1y", 31_536_000_000), ("2M", "2M", 5_184_000_000), (10, "10s", 10_000),
    ("0", "0s", 0), ("292471208677y6M2w1d15h30m7s", "292471208677y6M2w1d15h30m7s", MAX * 1000),
    (str(MAX), f"{MAX}s", MAX * 1000),
])
def test_duration_in_seconds(value: Any, text: str, ms: int) -> None:
    d = g.parse_duration_seconds(value)
    assert (d.text, d.ms) == (text, ms)


@pytest.mark.parametrize("value", ["500ms", "1s500ms", "1M1y", "x"])
def test_duration_in_seconds_refused(value: str) -> None:
    assert refused(g.parse_duration_seconds, value) == (
        "expected a duration in whole seconds such as 10s, 1m, 2h or a number of seconds (units y M w d h m s, "
        f"largest first; nginx reads this one in seconds, so no ms), got {value!r}")


@pytest.mark.parametrize("value", ["292471208677y6M2w1d15h30m8s", str(MAX + 1), MAX + 1])
def test_duration_in_seconds_beyond_nginx_limit(value: Any) -> None:
    assert refused(g.parse_duration_seconds, value) == ("expected a duration of at most 9223372036854775807s "
                                                        f"(nginx's limit), got {g.describe(value)}")


# --- sizes ---

@pytest.mark.parametrize(("value", "size"), [
    ("4k", 4096), ("16K", 16384), ("1m", 1 << 20), ("2M", 2 << 20), ("4096", 4096), (8192, 8192), ("1", 1),
    (str(MAX), MAX), ("9007199254740991k", 9007199254740991 * 1024), ("8796093022207m", 8796093022207 << 20),
])
def test_size(value: Any, size: int) -> None:
    parsed = g.parse_size(value)
    assert (parsed.text, parsed.bytes) == (str(value), size)


@pytest.mark.parametrize("value", ["16 k", "16kb", "1g", "k", "", "-1", -1, "1.5k", "１6k", True, None, 1.5])
def test_size_refused(value: Any) -> None:
    assert refused(g.parse_size, value) == \
        f"expected a size such as 16k, 1m or a number of bytes, got {g.describe(value)}"


@pytest.mark.parametrize("value", [str(MAX + 1), MAX + 1, "9007199254740992k", "8796093022208m", "9" * 5000])
def test_size_beyond_nginx_limit(value: Any) -> None:
    assert refused(g.parse_size, value) == ("expected a size of at most 9223372036854775807 bytes (nginx's limit; k "
                                            f"and m units only), got {g.describe(value)}")


def test_size_minimum() -> None:
    assert refused(g.parse_size, "0") == "expected a size of at least 1 byte, got '0'"
    assert refused(lambda v: g.parse_size(v, 32768, "why not"), "31k") == \
        "expected a size of at least 32k (why not), got '31k'"


# --- ports and addresses ---

@pytest.mark.parametrize(("value", "port"), [(1, 1), (65535, 65535), ("80", 80), ("080", 80)])
def test_port(value: Any, port: int) -> None:
    assert g.parse_port(value) == port


@pytest.mark.parametrize("value", [0, 65536, "0", "65536", "", "８0", "²", "80 ", "-1", True, None, 80.0,
                                   "9" * 5000])
def test_port_refused(value: Any) -> None:
    assert refused(g.parse_port, value) == f"expected a port from 1 to 65535, got {g.describe(value)}"


@pytest.mark.parametrize(("value", "kind", "host", "port", "text"), [
    ("10.0.0.5:6666", "inet", "10.0.0.5", 6666, "10.0.0.5:6666"),
    ("[::1]:7004", "inet6", "[::1]", 7004, "[::1]:7004"),
    ("[2001:DB8:0:0::1]:80", "inet6", "[2001:db8::1]", 80, "[2001:db8::1]:80"),
    ("DB.Local:3306", "name", "db.local", 3306, "db.local:3306"),
    ("unix:/run/x.sock", "unix", None, None, "unix:/run/x.sock"),
])
def test_server_address(value: str, kind: str, host: str | None, port: int | None, text: str) -> None:
    a = g.parse_server_address(value)
    assert (a.kind, a.host, a.port, a.text) == (kind, host, port, text)


@pytest.mark.parametrize("value", ["10.0.0.5", "10.0.0.5:", ":80", "300.1.1.1:80", "[::1:80", "[zz]:80",
                                   "host_name:80", "-bad.host:80", "a;b:80", "unix:relative.sock",
                                   "unix:/a/../b", "１0.0.0.5:80", 80, None])
def test_server_address_refused(value: Any) -> None:
    assert refused(g.parse_server_address, value).startswith("expected a")


def test_server_address_port_in_other_digits_is_refused() -> None:
    assert refused(g.parse_server_address, "127.0.0.1:３0402") == "expected a port from 1 to 65535, got '３0402'"


def test_an_ipv6_scope_is_refused() -> None:
    assert refused(g.parse_server_address, "[::1%;]:80") == (
        "expected a server address HOST:PORT, IP:PORT, [IPv6]:PORT or unix:/path (no %scope after an IPv6 address), "
        "got '[::1%;]:80'")


def test_unix_path_limit() -> None:
    assert g.parse_server_address("unix:/" + "a" * 106).path == "/" + "a" * 106
    assert refused(g.parse_server_address, "unix:/" + "a" * 107).startswith(
        "expected a unix socket path of at most 107 bytes (the kernel's limit)")


@pytest.mark.parametrize(("value", "text"), [(6666, "6666"), ("6666", "6666"), ("*:80", "*:80"),
                                             ("127.0.0.1:80", "127.0.0.1:80"), ("[::]:80", "[::]:80"),
                                             ("unix:/run/l.sock", "unix:/run/l.sock")])
def test_listen(value: Any, text: str) -> None:
    assert g.parse_listen(value).text == text


@pytest.mark.parametrize("value", ["６６６６", "db.local:80", "0", 0, "x", True])
def test_listen_refused(value: Any) -> None:
    assert refused(g.parse_listen, value).startswith("expected a")


def test_listen_key_treats_wildcards_as_one() -> None:
    keys = {g.listen_key(g.parse_listen(v), "tcp") for v in (6666, "*:6666", "0.0.0.0:6666")}
    assert len(keys) == 1 and g.listen_key(g.parse_listen(6666), "udp") not in keys


# --- hash keys, tokens, names, paths ---

@pytest.mark.parametrize("value", ["$remote_addr", "$remote_addr:$server_port", "x$remote_port", "$binary_remote_addr"])
def test_hash_key(value: str) -> None:
    assert g.parse_hash_key(value) == value


@pytest.mark.parametrize("value", ["", "$nope", "${remote_addr}", "$remote_addrx", "a b", "a;b", "$", 5, None])
def test_hash_key_refused(value: Any) -> None:
    assert refused(g.parse_hash_key, value).startswith("expected a hash key of stream variables and plain characters")


@pytest.mark.parametrize(("value", "token"), [("100k", "100k"), (5, "5"), (True, "on"), (False, "off"),
                                              ("a-b_c.d:e/f@g%h+i=j,k*l[m]", "a-b_c.d:e/f@g%h+i=j,k*l[m]")])
def test_token(value: Any, token: str) -> None:
    assert g.parse_token(value) == token


@pytest.mark.parametrize("value", ["a b", "a;b", "{", "}", "#", "'", '"', "\\", "$x", "", "ü", "a\nb", None, 1.5])
def test_token_refused(value: Any) -> None:
    assert refused(g.parse_token, value).startswith("expected one token of letters, digits")


@pytest.mark.parametrize("value", ["pool", "_x", "a-b", "A9", "x" * 63])
def test_name(value: str) -> None:
    assert g.check_name(value) == value


@pytest.mark.parametrize("value", ["9bad", "-x", "a.b", "a b", "x" * 64, "ü", "", "pool\n", 5])
def test_name_refused(value: Any) -> None:
    assert refused(g.check_name, value) == ("expected a name: a letter or '_' then letters, digits, '_' or '-' "
                                            f"(at most 63), got {g.describe(value)}")


@pytest.mark.parametrize(("value", "ok"), [("/run/x.sock", True), ("/a/b@c+d-e_f.g", True), ("relative", False),
                                           ("/a/../b", False), ("/a b", False), ("/ü", False), ("/a/..", False)])
def test_path(value: str, ok: bool) -> None:
    if ok:
        assert g.check_path(value) == value
    else:
        assert refused(g.check_path, value).startswith("expected an absolute path of letters, digits and ._/@+-")


def test_every_canonical_value_is_one_safe_token() -> None:
    for value in (g.parse_duration("1h30m"), g.parse_size("16k"), g.parse_server_address("[::1]:80"),
                  g.parse_listen("*:80")):
        assert g.SAFE_TOKEN.match(str(getattr(value, "text", value)))
