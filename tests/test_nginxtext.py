"""What nginx prints, read as data (nginxctl.nginxtext): pure, no Docker."""

from __future__ import annotations

from nginxctl.nginxtext import (
    UpstreamServer,
    compiled_version,
    config_from_dump,
    dump_files,
    emerg_lines,
    error_log_level,
    error_log_of,
    hosts_lookup,
    includes,
    parse_build,
    parse_docker_time,
    parse_proc_net,
    parse_top,
    parse_version,
    reload_finished,
    reload_lines,
    server_param,
    server_weight,
    shutdown_timeout_of,
    upstream_failures,
)

# A port held by another process (nginx 1.22.1): the first reload retries bind() for ~2.5 s, then gives up;
# the restore's reload follows. Lines from a real run, abridged.
FAILED_THEN_RESTORE = """\
2026/12/02 17:18:08 [notice] 1#1: try again to bind() after 500ms
2026/12/02 17:18:08 [emerg] 1#1: bind() to 127.0.0.1:47124 failed (98: Address already in use)
2026/12/02 17:18:08 [emerg] 1#1: still could not bind()
2026/12/02 17:18:10 [notice] 1#1: signal 1 (SIGHUP) received, reconfiguring
2026/12/02 17:18:10 [notice] 1#1: reconfiguring
2026/12/02 17:18:10 [notice] 1#1: using the "epoll" event method
2026/12/02 17:18:10 [notice] 1#1: start worker processes
2026/12/02 17:18:10 [notice] 1#1: start worker process 31
"""


def test_reload_lines_leave_out_the_tail_of_an_earlier_failed_reload():
    lines, marked = reload_lines(FAILED_THEN_RESTORE)
    assert marked
    assert lines[0].endswith("reconfiguring") and "still could not bind()" not in "\n".join(lines)
    assert emerg_lines(lines) == []
    assert reload_finished(lines)


def test_reload_lines_stop_at_the_next_reload():
    log = "[notice] 1#1: reconfiguring\n[emerg] 1#1: mine\n[notice] 1#1: reconfiguring\n[emerg] 1#1: later\n"
    lines, _ = reload_lines(log)
    assert emerg_lines(lines) == ["[emerg] 1#1: mine"]


def test_reload_lines_without_notices_are_all_lines():
    lines, marked = reload_lines("[emerg] 1#1: host not found in upstream \"x\"\n")
    assert not marked and emerg_lines(lines) == lines


def test_a_failed_reload_is_finished_when_nginx_gives_up():
    retrying = "[notice] 1#1: reconfiguring\n[emerg] 1#1: bind() to 127.0.0.1:1 failed (98: Address already in use)\n"
    assert not reload_finished(reload_lines(retrying)[0])
    assert reload_finished(reload_lines(retrying + "[emerg] 1#1: still could not bind()\n")[0])


def test_the_alerts_of_destroyed_sockets_are_not_a_failed_reload():
    """Retiring a generation destroys nginx's upstream-side sockets: nginx logs an [alert] per socket, which
    may land among a reload's own lines. They are no refusal and the reload finished."""
    log = ("2026/12/04 19:30:01 [notice] 1#1: signal 1 (SIGHUP) received from 7, reconfiguring\n"
           "2026/12/04 19:30:01 [notice] 1#1: reconfiguring\n"
           "2026/12/04 19:30:01 [alert] 31#31: *12 recv() failed (103: Software caused connection abort) while "
           "proxying and reading from upstream, client: 127.0.0.1, server: 127.0.0.1:6666, upstream: "
           "\"127.0.0.1:7001\", bytes from/to client:5/2, bytes from/to upstream:2/5\n"
           "2026/12/04 19:30:01 [notice] 1#1: start worker process 40\n")
    lines, marked = reload_lines(log)
    assert marked and len(lines) == 3
    assert emerg_lines(lines) == []
    assert reload_finished(lines)
    crashed = lines + ["2026/12/04 19:30:02 [alert] 1#1: worker process 40 exited on signal 11"]
    assert emerg_lines(crashed) == crashed[-1:]   # an alert that says a worker died still counts


DUMP = """\
# configuration file /etc/nginx/nginx.conf:
events {}
include /etc/nginx/streams/*.conf;
stream {
    include stream.d/main.conf;
}

# configuration file /etc/nginx/stream.d/main.conf:
upstream a { server 127.0.0.1:1; }

"""


def test_config_from_dump_and_files():
    assert dump_files(DUMP) == ["/etc/nginx/nginx.conf", "/etc/nginx/stream.d/main.conf"]
    assert config_from_dump(DUMP, "/etc/nginx/stream.d/main.conf") == "upstream a { server 127.0.0.1:1; }\n"
    assert config_from_dump(DUMP, "/etc/nginx/other.conf") is None


def test_includes_by_dump_glob_or_failed_open():
    assert includes(DUMP, "/etc/nginx/stream.d/main.conf")
    assert includes(DUMP, "/etc/nginx/streams/pool.conf")  # an include glob, file not there yet
    assert not includes(DUMP, "/etc/nginx/elsewhere.conf")
    assert includes("", "/etc/nginx/s.conf", 'nginx: [emerg] open() "/etc/nginx/s.conf" failed (2: No such file)')


def test_directives_looked_up():
    config = "worker_processes 2;\nerror_log /var/log/nginx/error.log warn;\nworker_shutdown_timeout 10s;\n"
    assert error_log_of(config) == "/var/log/nginx/error.log"
    assert error_log_of("events {}") == "stderr"
    assert shutdown_timeout_of(config) == "10s" and shutdown_timeout_of(None) is None


def test_build_and_version():
    build = parse_build("nginx version: nginx/1.22.1\nconfigure arguments: --prefix=/usr/share/nginx "
                        "--modules-path=/usr/lib/nginx/modules --with-stream=dynamic")
    assert (build.version, build.dynamic_stream) == ("1.22.1", True)
    assert build.stream_module == "/usr/lib/nginx/modules/ngx_stream_module.so"
    assert parse_build("nginx version: nginx/1.25.3\n--prefix=/etc/nginx --with-stream").stream_module \
        == "/etc/nginx/modules/ngx_stream_module.so"
    assert parse_version("nginx version: nginx/1.27.0\n") == "1.27.0"


def test_what_nginx_v_says_read_from_the_binary_s_constants():
    # the string constants as nginx.c compiles them, NUL-terminated, among the binary's other bytes
    version = b"nginx version: nginx/1.22.1\n\0"
    configure = b"configure arguments: --prefix=/usr/share/nginx --with-stream=dynamic\n\0"
    binary = b"\x7fELF\0" + b"\0server: nginx/9.9\0" + version + b"\0\0TLS SNI support enabled\n\0" + configure
    text = compiled_version(binary)
    assert text == "nginx version: nginx/1.22.1\nconfigure arguments: --prefix=/usr/share/nginx --with-stream=dynamic\n"
    assert parse_build(text) == parse_build("nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.11\n"
                                            "TLS SNI support enabled\n" + configure.decode().rstrip("\0"))
    # not found as nginx.c writes them: run the binary instead
    assert compiled_version(b"\x7fELF" + configure) is None                        # no version line
    assert compiled_version(version + version + configure) is None                  # two: which one?
    assert compiled_version(version + b"configure arguments: --prefix=/x\0") is None   # no line end
    assert compiled_version(version + b"configure arguments: --prefix=/x\n") is None   # no NUL after it


def test_parse_top_master_workers_and_old_workers():
    top = {"Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"], "Processes": [
        ["root", "100", "90", "0", "17:00", "?", "00:00:00", "nginx: master process nginx -g daemon off;"],
        ["www-data", "101", "100", "0", "17:00", "?", "00:00:00", "nginx: worker process is shutting down"],
        ["www-data", "102", "100", "0", "17:01", "?", "00:00:00", "nginx: worker process"]]}
    procs = parse_top(top)
    assert procs.master is not None and procs.master.pid == 100
    assert procs.worker_pids == {102} and [p.pid for p in procs.old_workers] == [101]


def test_proc_net_tcp_and_tcp6():
    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1111 1\n"
           "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  0 0 2222 1\n")
    tcp6 = ("   0: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000200007F:0050 01 0:0 0:0 0 "
            "0 0 3333 1\n")
    socks = parse_proc_net(tcp + tcp6)
    assert socks["1111"].state == "LISTEN" and socks["1111"].local == ("127.0.0.1", 8080)
    assert socks["2222"].remote == ("127.0.0.1", 54321)
    assert socks["3333"].remote == ("127.0.0.2", 80)  # IPv4-mapped IPv6 reads as IPv4
    assert set(parse_proc_net(tcp, {"2222"})) == {"2222"}


def test_hosts_lookup():
    hosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n10.0.0.5 db db.local # the database\n"
    assert hosts_lookup(hosts, "localhost") == {"127.0.0.1", "::1"}
    assert hosts_lookup(hosts, "DB.local") == {"10.0.0.5"}
    assert hosts_lookup(hosts, "the") == set()


def test_docker_times():
    t = parse_docker_time("2026-12-02T17:18:08.123456789Z")
    assert t is not None and t.microsecond == 123456 and t.utcoffset() is not None
    assert parse_docker_time("0001-01-01T00:00:00Z") is not None
    assert parse_docker_time("") is None


# nginx 1.22.1, a stream group with one server refusing (max_fails 1) and one timing out, lines from a real run
FAILED_CONNECTS = """\
2026/12/05 00:53:37 [error] 7#7: *1 connect() failed (111: Connection refused) while connecting to upstream, \
client: 127.0.0.1, server: 127.0.0.1:39930, upstream: "127.0.0.1:39931", bytes from/to client:0/0, bytes from/to \
upstream:0/0
2026/12/05 00:53:37 [warn] 7#7: *1 upstream server temporarily disabled while connecting to upstream, client: \
127.0.0.1, server: 127.0.0.1:39930, upstream: "127.0.0.1:39931", bytes from/to client:0/0, bytes from/to upstream:0/0
2026/12/05 00:53:39 [error] 7#7: *4 upstream timed out (110: Connection timed out) while connecting to upstream, \
client: 127.0.0.2, server: 0.0.0.0:39930, upstream: "[::1]:39932", bytes from/to client:0/0, bytes from/to upstream:0/0
2026/12/05 00:53:40 [error] 7#7: *5 connect() failed (111: Connection refused) while connecting to upstream, \
client: 127.0.0.1, server: 127.0.0.1:39930, upstream: "127.0.0.1:39931", bytes from/to client:0/0, bytes from/to \
upstream:0/0
2026/12/05 00:53:41 [error] 7#7: *6 no live upstreams while connecting to upstream, client: 127.0.0.1, server: \
127.0.0.1:39930, upstream: "pool", bytes from/to client:0/0, bytes from/to upstream:0/0
2026/12/05 00:53:42 [notice] 1#1: signal 1 (SIGHUP) received, reconfiguring
"""


def test_failed_connects_are_counted_per_listen_and_server_with_the_latest_error_and_the_take_out():
    found = upstream_failures(FAILED_CONNECTS)
    assert set(found.servers) == {("127.0.0.1:39930", "127.0.0.1:39931"), ("0.0.0.0:39930", "[::1]:39932")}
    refused = found.servers[("127.0.0.1:39930", "127.0.0.1:39931")]
    timed_out = found.servers[("0.0.0.0:39930", "[::1]:39932")]
    assert (refused.count, refused.error) == (2, "connect() failed (111: Connection refused)")
    assert refused.last - refused.taken_out == 3.0                  # taken out at :37, failed again at :40
    assert refused.last == 1796432020.0                               # 2026-12-05T00:53:40Z
    assert (timed_out.count, timed_out.error, timed_out.taken_out) == (
        1, "upstream timed out (110: Connection timed out)", None)
    assert found.no_live == {"127.0.0.1:39930": 1}                    # a group with no live server: a count
    recent = upstream_failures(FAILED_CONNECTS, since=1796432019.0)   # from 00:53:39 on: the window
    assert {key: f.count for key, f in recent.servers.items()} == {
        ("127.0.0.1:39930", "127.0.0.1:39931"): 1, ("0.0.0.0:39930", "[::1]:39932"): 1}
    assert recent.no_live == {"127.0.0.1:39930": 1} and upstream_failures(FAILED_CONNECTS, since=2e9).no_live == {}
    assert upstream_failures("2026/12/05 00:53:37 [error] garbage").servers == {}


def test_docker_timestamps_win_over_nginxs_local_clock_and_udp_and_crit_lines_count():
    lines = (
        '2026-12-05T06:00:01.123456789Z 2026/12/05 01:00:01 [error] 7#7: *9 recv() failed (111: Connection '
        'refused) while proxying connection, udp client: 127.0.0.1, server: 127.0.0.1:53, upstream: "127.0.0.1:5353"'
        ', bytes from/to client:1/0, bytes from/to upstream:0/1\n'
        '2026-12-05T06:00:02.5Z 2026/12/05 01:00:02 [crit] 7#7: *10 connect() to unix:/run/app.sock failed (2: No '
        'such file or directory) while connecting to upstream, client: 127.0.0.1, server: 127.0.0.1:8000, upstream: '
        '"unix:/run/app.sock", bytes from/to client:0/0, bytes from/to upstream:0/0\n'
        '2026-12-05T06:00:03Z 2026/12/05 01:00:03 [error] 7#7: *11 recv() failed (104: Connection reset by peer) '
        'while proxying connection, client: 127.0.0.1, server: 127.0.0.1:8000, upstream: "127.0.0.1:9000", bytes '
        'from/to client:0/0, bytes from/to upstream:0/0\n')
    found = upstream_failures(lines)
    udp = found.servers[("udp 127.0.0.1:53", "127.0.0.1:5353")]   # a UDP listen says so
    assert int(udp.last) == 1796450401       # 06:00:01 UTC by the engine, not nginx's 01:00:01 (a UTC-5 container)
    assert found.servers[("127.0.0.1:8000", "unix:/run/app.sock")].error.startswith("connect() to unix:")
    assert ("127.0.0.1:8000", "127.0.0.1:9000") not in found.servers   # a reset of an established TCP connection


def test_error_log_level_is_read_from_the_config_with_nginxs_default():
    assert error_log_level("error_log stderr notice;\nevents {}") == "notice"
    assert error_log_level("error_log /var/log/nginx/error.log crit;") == "crit"
    assert error_log_level("error_log stderr;") == "error" and error_log_level(None) == "error"
    assert error_log_level("error_log\n    /var/log/nginx/error.log\n    warn;") == "warn"   # over lines


def test_a_server_lines_parameters_are_read_by_name_and_its_weight_defaults_as_nginxs():
    params = ("weight=3", "max_fails=2", "fail_timeout=5s", "fail_timeout=9s")
    assert server_param(params, "fail_timeout") == "5s"   # the first one, as written
    assert server_param(params, "max_fails") == "2"
    assert server_param(params, "fails") is None and server_param(("backup",), "backup") is None
    assert server_weight(params) == 3 == UpstreamServer("127.0.0.1:1", params).weight
    assert [server_weight(p) for p in [(), ("weight=",), ("weight=x",), ("weight=-2",), ("weight=0",)]] == [1] * 5
