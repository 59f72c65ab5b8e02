"""How fast can nginxctl read the socket tables at 40,000 connections? (issue 14: status within 1 s)

Opens N established TCP connections on 127.0.0.0/8 (both ends on this machine: 2N sockets), held by
several processes (a process may hold at most 20,000 open files here), then times:
  - the sock_diag netlink dump filtered in the kernel to the port (nginxctl.sockdiag), with and without tcp_info
  - the same dump unfiltered, filtered in Python
  - /proc/net/tcp + tcp6 read and parsed (no filter in the kernel, no tcp_info)
  - `ss -tn` (and `ss -tni`) with the same filter, as a subprocess
  - socket -> process by /proc/PID/fd links (nginxctl.sockdiag.socket_owners) over every holder
  - opening the reader in another network namespace (setns in a thread), and SOCK_DESTROY per socket
Only 127.0.0.0/8; every loop is bounded in count and time; every process it starts is stopped at the end.
Connection tracking: --notrack adds iptables raw NOTRACK rules for the bench's port and removes them after.

    python bench/sockdiag_bench.py [--connections 40000] [--repeat 5] [--notrack] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from nginxctl.sockdiag import SockDiag, socket_owners

MAX_CONNECTIONS = 40_000
PER_PROCESS = 13_500  # sockets one process holds (limit 20,000 open files)
SETUP_DEADLINE = 180.0
DESTROYS = 1000


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def acceptor(listener: socket.socket, quota: int, ready: Any, stop: Any) -> None:
    """Accept up to `quota` connections from the shared listener and hold them until told to stop."""
    _raise_nofile()
    held: list[socket.socket] = []
    listener.settimeout(1.0)
    deadline = time.monotonic() + SETUP_DEADLINE
    while len(held) < quota and time.monotonic() < deadline and not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        held.append(conn)
    listener.close()
    ready.send(len(held))
    stop.wait(SETUP_DEADLINE + 600)
    for conn in held:
        conn.close()


def connector(port: int, source: str, count: int, ready: Any, stop: Any) -> None:
    """Open `count` connections to 127.0.0.1:port from `source`, hold them, then close with a reset
    (SO_LINGER 0: no TIME_WAIT left behind on either side)."""
    _raise_nofile()
    held: list[socket.socket] = []
    deadline = time.monotonic() + SETUP_DEADLINE
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            held.append(sock)
    except OSError as exc:
        print(f"connector {source}: {exc} after {len(held)}", file=sys.stderr)
    ready.send(len(held))
    stop.wait(SETUP_DEADLINE + 600)
    linger = struct.pack("ii", 1, 0)
    for sock in held:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.close()


def timed(action: Callable[[], int], repeat: int) -> dict[str, Any]:
    seconds, counts = [], set()
    for _ in range(repeat):
        start = time.perf_counter()
        counts.add(action())
        seconds.append(time.perf_counter() - start)
    return {"min_s": round(min(seconds), 4), "median_s": round(statistics.median(seconds), 4),
            "found": sorted(counts)}


def proc_net_tcp(port: int) -> int:
    """/proc/net/tcp and tcp6: established sockets whose remote port is `port` (what the file allows)."""
    found = 0
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path, encoding="ascii") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[3] == "01" and fields[2].endswith(want):
                    int(fields[9])  # the inode, as a reader would take it
                    found += 1
    return found


def ss(port: int, info: bool) -> int:
    args = ["ss", "-Htn" + ("i" if info else ""), "state", "established", f"( dport = :{port} )"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    lines = out.splitlines()
    # with -i, each socket's tcp_info is printed on a second, indented line
    return sum(1 for line in lines if not line.startswith((" ", "\t"))) if info else len(lines)


def open_in_another_netns(repeat: int) -> dict[str, Any]:
    """SockDiag(netns_pid=P) and a dump of a namespace of our own (unshare --net) that holds no socket: the
    setns thread (~0.3 ms) plus the walk of the kernel's TCP hash, which all namespaces share."""
    with subprocess.Popen(["unshare", "--net", "sleep", "60"]) as holder:
        try:
            deadline = time.monotonic() + 10
            while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                if time.monotonic() > deadline:
                    raise SystemExit("unshare did not enter a new namespace")
                time.sleep(0.01)

            def once() -> int:
                with SockDiag(netns_pid=holder.pid) as diag:
                    return len(diag.tcp())
            return timed(once, repeat)
        finally:
            holder.kill()


def conntrack_count() -> int | None:
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as fh:
            return int(fh.read())
    except OSError:
        return None


def notrack(port: int, add: bool) -> None:
    for direction in ("--dport", "--sport"):
        rule = ["-p", "tcp", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", direction, str(port), "-j", "NOTRACK",
                "-m", "comment", "--comment", f"nginxctl-sockdiag-bench-{os.getpid()}"]
        subprocess.run(["iptables", "-t", "raw", "-I" if add else "-D", "OUTPUT", *rule], check=add, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--notrack", action="store_true", help="iptables raw NOTRACK for the bench's port")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    n = max(1, min(args.connections, MAX_CONNECTIONS))
    repeat = max(1, min(args.repeat, 20))

    ctx = multiprocessing.get_context("fork")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    quiet_pairs: list[socket.socket] = []
    processes = (n + PER_PROCESS - 1) // PER_PROCESS
    share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    net = random.randint(1, 250)  # a fresh 127.x.y.0/24 per run: no clash with earlier runs' ports
    stop = ctx.Event()
    children: list[Any] = []
    pipes: list[Any] = []
    if args.notrack:
        notrack(port, True)
    results: dict[str, Any] = {"connections": n, "processes": 2 * processes, "repeat": repeat,
                               "kernel": os.uname().release, "cpus": os.cpu_count(),
                               "conntrack_before": conntrack_count(), "notrack": args.notrack}
    try:
        start = time.monotonic()
        for i, count in enumerate(share):
            for role, target, extra in (("acceptor", acceptor, (listener, count)),
                                        ("connector", connector, (port, f"127.{net}.{i + 1}.1", count))):
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=target, args=(*extra, child, stop), name=f"{role}-{i}", daemon=True)
                proc.start()
                children.append(proc)
                pipes.append(parent)
        listener.close()
        # a port with few connections (after the fork: the holders do not inherit them): filter selectivity
        quiet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        quiet_pairs.append(quiet)
        quiet.bind(("127.0.0.1", 0))
        quiet.listen(16)
        quiet_port = quiet.getsockname()[1]
        quiet_pairs += [socket.create_connection(("127.0.0.1", quiet_port)) for _ in range(10)]
        quiet_pairs += [quiet.accept()[0] for _ in range(10)]
        held = 0
        for pipe in pipes:
            if not pipe.poll(SETUP_DEADLINE):
                raise SystemExit("setup did not finish in time")
            held += pipe.recv()
        results["setup_s"] = round(time.monotonic() - start, 2)
        results["established_sockets"] = held
        results["conntrack_peak"] = conntrack_count()
        print(f"{held} sockets held by {len(children)} processes (n={n}) in {results['setup_s']}s", file=sys.stderr)

        def netlink(info: bool, **ports: list[int]) -> int:
            with SockDiag() as diag:
                return len(diag.tcp(info=info, **ports))

        def netlink_python_filter() -> int:
            with SockDiag() as diag:
                return sum(1 for s in diag.tcp(info=True) if s.remote[1] == port)

        def status_like() -> int:
            with SockDiag() as diag:
                socks = diag.tcp(remote_ports=[port])
            owners = socket_owners(p.pid for p in children)
            return sum(1 for s in socks if s.inode in owners)

        holders = [p.pid for p in children]
        results["timings"] = {
            "netlink_port_filter_info": timed(lambda: netlink(True, remote_ports=[port]), repeat),
            "netlink_port_filter_no_info": timed(lambda: netlink(False, remote_ports=[port]), repeat),
            "netlink_quiet_port_filter": timed(lambda: netlink(True, remote_ports=[quiet_port]), repeat),
            "netlink_all_filter_in_python": timed(netlink_python_filter, repeat),
            "netlink_all_established_info": timed(lambda: netlink(True), repeat),
            "proc_net_tcp": timed(lambda: proc_net_tcp(port), repeat),
            "ss_tn_port_filter": timed(lambda: ss(port, False), repeat),
            "ss_tni_port_filter": timed(lambda: ss(port, True), repeat),
            "fd_links_socket_owners": timed(lambda: len(socket_owners(holders)), repeat),
            "status_like_dump_plus_owners": timed(status_like, repeat),
        }
        results["timings"]["open_and_dump_in_another_netns"] = open_in_another_netns(repeat)
        with SockDiag() as diag:
            victims = diag.tcp(local_ports=[port], info=False)[:DESTROYS]
            start = time.perf_counter()
            destroyed = sum(diag.destroy(s) for s in victims)
            spent = time.perf_counter() - start
        results["timings"]["destroy_each"] = {"min_s": round(spent / max(1, len(victims)), 6),
                                              "median_s": round(spent / max(1, len(victims)), 6),
                                              "found": [destroyed]}
    finally:
        stop.set()
        for proc in children:
            proc.join(60)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        for sock in quiet_pairs:
            sock.close()
        if args.notrack:
            notrack(port, False)
    width = max(len(k) for k in results["timings"])
    for name, t in results["timings"].items():
        print(f"{name:<{width}}  min {t['min_s']:.6f}s  median {t['median_s']:.6f}s  found {t['found']}")
    print(json.dumps({k: v for k, v in results.items() if k != "timings"}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
