#!/usr/bin/env python3
"""nginxctl benchmarks: every figure measured side by side in one run, on this machine, on loopback only.

    python bench/run.py            full run, writes bench/RESULTS.md
    python bench/run.py --quick    small smoke run (CI), prints the tables, writes nothing

Needs Docker, the nginxctl/nginx:bare image (scripts/build-nginx-image.sh), gcc and nginxctl installed.
Load comes from bench/client.c against bench/echo_server.c (epoll, C). Every loop is bounded in count and
time; all traffic goes to 127.0.0.1. Only ratios measured in the same run mean anything on a shared
machine: each table compares its rows, measured minutes apart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import yaml

HERE = Path(__file__).resolve().parent
IMAGE = os.environ.get("NGINXCTL_BENCH_IMAGE", "nginxctl/nginx:bare")
MODULE = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
PER_CLIENT = 15000  # connections per client process: under the 20,000 open files a process may hold
TICK = os.sysconf("SC_CLK_TCK")
FACTS: dict[str, Any] = {}  # what the figures measured, for the targets table
_SCRIPT = Path(sys.executable).parent / "nginxctl"
NGINXCTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nginxctl"]

sys.path.insert(0, str(HERE.parent))
from nginxctl.nginx import LiveNginx  # noqa: E402

# Every listen port of the benchmark: below the ephemeral range (so no client or nginx connection takes
# one), and exactly what the NOTRACK rules cover.
PORTS = range(21000, 22000)
_used: set[int] = set()


def free_port() -> int:
    for port in PORTS:
        if port in _used:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx and the backends bind
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used.add(port)
        return port
    raise RuntimeError("no free port in the benchmark's range")


def build_tools(out: Path) -> tuple[Path, Path]:
    for name in ("echo_server", "client"):
        subprocess.run(["gcc", "-O2", "-o", str(out / name), str(HERE / f"{name}.c")], check=True)
    return out / "echo_server", out / "client"


@contextlib.contextmanager
def notrack() -> Iterator[None]:
    """Keep the benchmark's loopback connections (to and from its own ports) out of connection tracking,
    whose table the whole machine shares; the rules are removed afterwards. Without iptables or root the
    runs stay short instead."""
    rules = []
    if shutil.which("iptables") and os.geteuid() == 0:
        spec = f"{PORTS.start}:{PORTS.stop - 1}"
        for chain, iface in (("OUTPUT", "-o"), ("PREROUTING", "-i")):
            for direction in ("--dport", "--sport"):
                rule = [chain, iface, "lo", "-p", "tcp", direction, spec, "-j", "NOTRACK"]
                if subprocess.run(["iptables", "-t", "raw", "-A", *rule], capture_output=True).returncode == 0:
                    rules.append(rule)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-t", "raw", "-D", *rule], capture_output=True)


class Backends:
    """Echo server processes, one per port. nginx reaches a backend from 127.0.0.1, so one backend port
    takes at most ~28,000 connections (the ephemeral port range): 40,000 need two or more."""

    def __init__(self, binary: Path, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.port = self.ports[0]
        self.procs = []
        for port in self.ports:
            proc = subprocess.Popen([str(binary), str(port)], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            self.procs.append(proc)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


class Nginx:
    """An nginx container on the host network, running `config` (a whole nginx.conf)."""

    def __init__(self, client: Any, config: str | None = None) -> None:
        self.name = f"nginxctl-bench-{uuid.uuid4().hex[:8]}"
        self.container = client.containers.run(IMAGE, name=self.name, detach=True, network_mode="host")
        self.container.reload()
        self.live = LiveNginx(client, self.container)
        if config is not None:
            self.install(config)

    def install(self, config: str) -> None:
        before = self.live.processes().worker_pids
        self.live.install_file("/etc/nginx/nginx.conf", config)
        self.container.kill(signal="HUP")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = self.live.processes().worker_pids
            if now and not now & before:
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start a new worker generation")

    def workers(self) -> list[int]:
        return sorted(self.live.processes().worker_pids)

    def memory_mib(self) -> float:
        """Proportional set size of the current workers (shared pages split fairly)."""
        total = 0
        for pid in self.workers():
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total / 1024

    def cpu_seconds(self) -> float:
        procs = self.live.processes()
        total = 0
        for pid in [p.pid for p in procs.workers + procs.old_workers] + ([procs.master.pid] if procs.master else []):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / TICK

    def generations(self) -> int:
        from nginxctl.observe import reload_state

        return len(reload_state(self.live, None).generations)

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)


def naive_config(listen: int, backend: int) -> str:
    # The config of a typical blog post: one worker, nginx's 1024 connections, no zone.
    return f"""{MODULE}
worker_processes 1;
events {{ worker_connections 1024; }}
stream {{
    upstream backend {{ server 127.0.0.1:{backend}; }}
    server {{ listen 127.0.0.1:{listen}; proxy_pass backend; }}
}}
"""


def tuned_config(listen: int, backend: int) -> str:
    # What an expert writes by hand for this machine: a worker per core, big limits, zone, reuseport.
    return f"""{MODULE}
worker_processes 2;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
stream {{
    upstream backend {{ zone backend 64k; server 127.0.0.1:{backend}; }}
    server {{ listen 127.0.0.1:{listen} reuseport; proxy_pass backend; }}
}}
"""


def inventory(path: Path, listen: int, backends: list[str], container: str, **nginx: Any) -> Path:
    path.write_text(yaml.safe_dump({
        "nginx": {"load_modules": ["/usr/lib/nginx/modules/ngx_stream_module.so"], **nginx},
        "target": {"container": container},
        "upstreams": {"pool": {"listen": f"127.0.0.1:{listen}", "reuseport": True, "balance": "least_conn",
                               "servers": backends}}}))
    return path


def nginxctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nginxctl", *args], capture_output=True, text=True, cwd="/",
                          timeout=600)


def generated(client: Any, tmp: Path, listen: int, backends: list[str], **nginx: Any) -> tuple[Nginx, Path]:
    box = Nginx(client)
    inv = inventory(tmp / f"{box.name}.yaml", listen, backends, box.name, **nginx)
    result = nginxctl("apply", "-i", str(inv), "--reload", "-q")
    if result.returncode != 0:
        box.remove()
        raise RuntimeError(f"nginxctl apply failed: {result.stderr}")
    return box, inv


def rate(client_bin: Path, port: int, seconds: float, limit: int) -> tuple[int, int, float]:
    out = subprocess.run([str(client_bin), "rate", str(port), str(seconds), str(limit), "32"], capture_output=True,
                         text=True, timeout=seconds + 60).stdout.split()
    return int(out[1]), int(out[3]), float(out[5])


@dataclass
class Holders:
    procs: list[subprocess.Popen[str]]
    held: int
    failed: int

    def probe(self, size: int = 1) -> int:
        """Send `size` bytes on every held connection and read them back; how many came back whole."""
        for proc in self.procs:
            assert proc.stdin
            proc.stdin.write(f"probe {size}\n")
            proc.stdin.flush()
        alive = 0
        for proc in self.procs:
            assert proc.stdout
            alive += int(proc.stdout.readline().split()[1])
        return alive

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(timeout=60)
            if proc.stdout:
                proc.stdout.close()


def hold(client_bin: Path, port: int, count: int) -> Holders:
    procs, held, failed = [], 0, 0
    while count > 0:
        n = min(count, PER_CLIENT)
        count -= n
        proc = subprocess.Popen([str(client_bin), "hold", str(port), str(n), "4"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
    for proc in procs:
        assert proc.stdout
        words = proc.stdout.readline().split()
        held, failed = held + int(words[1]), failed + int(words[2])
    return Holders(procs, held, failed)


def table(title: str, header: list[str], rows: list[list[Any]], note: str = "") -> str:
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines + ([""] + [note] if note else []) + [""])


# ---------------------------------------------------------------- the figures


def bench_rate(client: Any, tools: tuple[Path, Path], tmp: Path, quick: bool) -> str:
    seconds, limit = (1.0, 5000) if quick else (4.0, 60000)
    backends = Backends(tools[0], 1)
    rows, boxes = [], []
    try:
        direct = rate(tools[1], backends.port, seconds, limit)
        rows.append(["direct to the backend (the limit)", *fmt_rate(direct, direct), "-"])
        naive_port, tuned_port, gen_port = free_port(), free_port(), free_port()
        naive = Nginx(client, naive_config(naive_port, backends.port))
        tuned = Nginx(client, tuned_config(tuned_port, backends.port))
        gen, _ = generated(client, tmp, gen_port, backends.addresses, worker_processes=2)
        boxes = [naive, tuned, gen]
        for label, box, port in (("naive blog config", naive, naive_port), ("hand-tuned", tuned, tuned_port),
                                 ("nginxctl generated", gen, gen_port)):
            cpu0 = box.cpu_seconds()
            result = rate(tools[1], port, seconds, limit)
            cpu = box.cpu_seconds() - cpu0
            rows.append([label, *fmt_rate(result, direct), f"{cpu / max(result[0], 1) * 1e6:.0f}"])
            FACTS[f"cpu_us {label}"] = cpu / max(result[0], 1) * 1e6
    finally:
        for box in boxes:
            box.remove()
        backends.stop()
    return table("New connections per second (connect, one echo round trip, close)",
                 ["path", "connections/s", "failed", "x direct", "nginx CPU µs per connection"], rows,
                 f"{seconds:.0f} s per row, 32 connections in flight; client, nginx and backend share the cores.")


def fmt_rate(result: tuple[int, int, float], direct: tuple[int, int, float]) -> list[str]:
    per_s = result[0] / result[2]
    return [f"{per_s:,.0f}", str(result[1]), f"{per_s / (direct[0] / direct[2]):.2f}"]


def bench_hold(client: Any, tools: tuple[Path, Path], tmp: Path, quick: bool) -> str:
    steps = [1000, 2000] if quick else [10000, 20000, 30000, 40000]
    top = steps[-1]
    flow = 32768  # bytes each way per connection: enough to fill every buffer size compared here
    backends = Backends(tools[0], 1 if quick else 3)
    rows = []
    try:
        naive_port = free_port()
        naive = Nginx(client, naive_config(naive_port, backends.port))
        try:
            holders = hold(tools[1], naive_port, 1000)
            rows.append(["naive blog config", 1000, holders.held, holders.failed, "-", "-", "-"])
            FACTS["naive held"] = holders.held
            holders.close()
        finally:
            naive.remove()
        for workload in ("idle", "balanced", "bulk"):
            port = free_port()
            box, _ = generated(client, tmp, port, backends.addresses, max_connections=top, workload=workload)
            try:
                base = box.memory_mib()
                for step in (steps if workload == "idle" else [top]):
                    holders = hold(tools[1], port, step)
                    quiet = (box.memory_mib() - base) / step * 1000
                    alive = holders.probe(flow)
                    flowed = (box.memory_mib() - base) / step * 1000
                    FACTS[f"held {workload} {step}"] = (holders.held, holders.failed, quiet, flowed)
                    rows.append([f"nginxctl, max_connections {top}, workload {workload}", step, holders.held,
                                 holders.failed, f"{quiet:.1f}", f"{flowed:.1f}", f"{alive}/{holders.held}"])
                    holders.close()
            finally:
                box.remove()
    finally:
        backends.stop()
    return table("Concurrent long connections held through the load balancer",
                 ["config", "asked", "held", "failed", "MiB per 1,000 idle", "MiB per 1,000 after 32 KiB each way",
                  "alive after the data"], rows,
                 "Worker memory is the workers' PSS above their baseline. Idle: one byte echoed per connection; "
                 "then 32 KiB each way, which fills the buffers (workload idle: 4k, balanced: nginx's 16k, "
                 "bulk: 64k per direction).")


def bench_reloads(client: Any, tools: tuple[Path, Path], tmp: Path, quick: bool) -> str:
    held_n, reloads, max_gen = (500, 3, 2) if quick else (5000, 10, 3)
    backends = Backends(tools[0], 1)
    rows = []
    try:
        for label, mode, timeout in (("manual HUP, no worker_shutdown_timeout", "manual", None),
                                     (f"nginxctl apply --max-generations {max_gen}", "nginxctl", None),
                                     ("nginxctl apply, worker_shutdown_timeout 2s", "nginxctl", "2s")):
            port = free_port()
            extra = {"worker_processes": 2, **({"worker_shutdown_timeout": timeout} if timeout else {})}
            box, inv = generated(client, tmp, port, backends.addresses, **extra)
            try:
                batches = [hold(tools[1], port, held_n // 2)]
                traffic = subprocess.Popen([str(tools[1]), "rate", str(port), str(5 + reloads * 2), "1000000", "2"],
                                           stdout=subprocess.PIPE, text=True)
                applied = refused = 0
                for i in range(reloads):
                    # devices keep dialling in: each generation of workers gets its own long connections
                    batches.append(hold(tools[1], port, held_n // 2 // reloads))
                    data = yaml.safe_load(inv.read_text())
                    data["upstreams"]["pool"]["proxy_timeout"] = f"{3600 + i + 1}s"
                    inv.write_text(yaml.safe_dump(data))
                    if mode == "manual":
                        rendered = nginxctl("render", "-i", str(inv), "--full").stdout
                        box.install(rendered)
                        applied += 1
                    else:
                        r = nginxctl("apply", "-i", str(inv), "--reload", "-q", "--max-generations", str(max_gen))
                        applied += r.returncode == 0
                        refused += r.returncode == 4
                if timeout:
                    time.sleep(3)  # let the chosen timeout expire before counting survivors
                out, _ = traffic.communicate(timeout=120)
                words = out.split()
                lingering = box.generations()
                alive = sum(b.probe() for b in batches)
                held = sum(b.held for b in batches)
                FACTS[f"reloads {label}"] = (lingering, alive, held, int(words[3]), max_gen)
                rows.append([label, f"{applied}/{reloads}", refused, lingering, f"{alive}/{held}",
                             words[3], words[1]])
                for b in batches:
                    b.close()
            finally:
                box.remove()
    finally:
        backends.stop()
    return table(f"{reloads} reloads while {held_n} long connections are held: half before, the rest arriving "
                 "between reloads, with short connections arriving all along",
                 ["procedure", "reloads done", "refused", "lingering generations", "held connections alive",
                  "failed new connections", "new connections ok"], rows,
                 "Refused applies exit 4 and change nothing: the held connections stay and no generation is added.")


def manual_apply(box: Nginx, inv: Path, tmp: Path) -> float:
    """The bare manual sequence people run (copy the file, nginx -t, HUP; nothing verified): seconds taken."""
    conf = tmp / "manual.conf"
    conf.write_text(nginxctl("render", "-i", str(inv), "--full").stdout)
    t0 = time.perf_counter()
    for cmd in (["docker", "cp", str(conf), f"{box.name}:/etc/nginx/nginx.conf"],
                ["docker", "exec", box.name, "/usr/sbin/nginx", "-t", "-q"],
                ["docker", "kill", "-s", "HUP", box.name]):
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def bench_apply(client: Any, tmp: Path, quick: bool) -> str:
    runs = 3 if quick else 7
    box, inv = generated(client, tmp, free_port(), [f"127.0.0.1:{free_port()}"], worker_processes=2)
    times: dict[str, list[float]] = {"manual": [], "nginxctl": []}
    try:
        for i in range(runs):
            for mode in ("manual", "nginxctl"):
                data = yaml.safe_load(inv.read_text())
                data["upstreams"]["pool"]["proxy_timeout"] = f"{7200 + 2 * i + (mode == 'nginxctl')}s"
                inv.write_text(yaml.safe_dump(data))
                if mode == "manual":
                    times[mode].append(manual_apply(box, inv, tmp))
                else:
                    t0 = time.perf_counter()
                    r = subprocess.run([*NGINXCTL, "apply", "-i", str(inv), "--reload", "-q",
                                        "--max-generations", "100"], capture_output=True, text=True)
                    times[mode].append(time.perf_counter() - t0)
                    assert r.returncode == 0, r.stderr
    finally:
        box.remove()
    manual, ours = statistics.median(times["manual"]), statistics.median(times["nginxctl"])
    FACTS["apply ratio"] = ours / manual
    rows = [["manual: docker cp, nginx -t, HUP (nothing verified)", f"{manual * 1000:.0f}", "1.00"],
            ["nginxctl apply --reload (CLI start-up, diff, lock, test, history, verify)", f"{ours * 1000:.0f}",
             f"{ours / manual:.2f}"]]
    return table("apply --reload end to end against the bare manual sequence",
                 ["procedure", f"median ms ({runs} runs)", "x manual"], rows)


def bench_startup(tmp: Path, quick: bool) -> str:
    """Interpreter start-up and imports of the commands that need no engine, against importing typer alone."""
    runs = 5 if quick else 15
    inv = tmp / "startup.yaml"
    inv.write_text("upstreams:\n  a: {listen: 7000, servers: [127.0.0.1:7001]}\n")
    cases = {"python -c 'import typer'": [sys.executable, "-c", "import typer"],
             "nginxctl --help": [*NGINXCTL, "--help"],
             "nginxctl render": [*NGINXCTL, "render", "-i", str(inv)],
             "nginxctl schema": [*NGINXCTL, "schema"]}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():  # interleaved: a busy moment costs every case alike
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, cwd=tmp)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["python -c 'import typer'"])
    rows = []
    for name in cases:
        median = statistics.median(times[name])
        FACTS[f"startup {name}"] = median / base
        rows.append([name, f"{median * 1000:.0f}", f"{median / base:.2f}"])
    return table("Start-up of the commands that need no Docker engine", ["command", f"median ms ({runs} runs)",
                                                                         "x import typer"], rows,
                 "None of them imports the Docker SDK, requests, prometheus_client, etcd3gw or watchdog "
                 "(tests/test_imports.py proves it).")


class BenchEtcd:
    """etcd (Debian's etcd-server) on loopback with a temp data dir, for the watcher's etcd source."""

    def __init__(self, tmp: Path) -> None:
        self.port, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            [shutil.which("etcd") or "/usr/bin/etcd", "--name", "bench", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
             "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"bench={peer_url}",
             "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = url
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("etcd did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _proc_cpu_rss(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    return (int(fields[11]) + int(fields[12])) / TICK, rss / 1024


CONTROLLER_IMAGE = "nginxctl/nginxctl:local"


class WatchEvents:
    """A running `nginxctl watch`'s JSON decision log, line by line, from any byte stream."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        import threading

        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, args=(chunks,), daemon=True).start()

    def _read(self, chunks: Iterator[bytes]) -> None:
        import json as _json

        buf = b""
        for chunk in chunks:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError), self.cond:
                    self.events.append(_json.loads(line))
                    self.cond.notify_all()

    def next_reload(self, after: int) -> dict[str, Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(e.get("event") == "reload" for e in self.events[after:]), 60)
        if not ok:
            raise RuntimeError(f"watch did not reload: {self.events[-5:]}")
        return next(e for e in self.events[after:] if e.get("event") == "reload")


def _watch_reloads(client: Any, box: Nginx, inv: Path, write: Callable[[int], None], tmp: Path, runs: int,
                   idle: float | None, container: bool) -> tuple[list[float], list[float], tuple[float, float] | None]:
    """Start a watch (a host process, or the controller image run as compose's `controller` service runs it),
    then alternately the manual sequence and an inventory edit the watch reloads: (manual seconds, watch
    seconds, the idle watcher's CPU % and RSS MiB when `idle`)."""
    args = ["watch", "-i", str(inv), "--log-format", "json", "--quiet-period", "100ms", "--max-generations", "100"]
    write(7200)
    if container:
        box_ctl = client.containers.run(
            CONTROLLER_IMAGE, args, detach=True, name=f"nginxctl-bench-controller-{os.getpid()}",
            network_mode="host", pid_mode="host", cap_drop=["ALL"], cap_add=["SYS_PTRACE"],
            security_opt=["no-new-privileges:true"], read_only=True,
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                     str(inv.parent): {"bind": str(inv.parent), "mode": "ro"}})
        log = WatchEvents(box_ctl.logs(stream=True, follow=True, stdout=False, stderr=True))

        def stop() -> None:
            # SIGTERM first: the watch releases its lock (a container of its own) as it stops; killed, it would
            # leave that lock behind
            box_ctl.stop(timeout=20)
            box_ctl.remove(force=True)
    else:
        proc = subprocess.Popen([*NGINXCTL, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        log = WatchEvents(iter(lambda: proc.stderr.read1(65536) if proc.stderr else b"", b""))

        def stop() -> None:
            proc.terminate()
            proc.wait(30)

    manual: list[float] = []
    watch: list[float] = []
    usage = None
    try:
        assert log.next_reload(0)["result"] == "ok"
        for i in range(runs):
            manual.append(manual_apply(box, inv, tmp))
            seen = len(log.events)
            write(7201 + i)
            event = log.next_reload(seen)
            if event.get("result") != "ok":
                raise RuntimeError(f"watch reload failed: {event}")
            watch.append(float(event["seconds"]))
        if idle and not container:
            cpu0, _ = _proc_cpu_rss(proc.pid)
            time.sleep(idle)  # the measurement itself: an idle watcher over a fixed window
            cpu1, rss = _proc_cpu_rss(proc.pid)
            usage = ((cpu1 - cpu0) / idle * 100, rss)
    finally:
        stop()
    return manual, watch, usage


def bench_watch(client: Any, tmp: Path, quick: bool) -> str:
    """`nginxctl watch`: change seen -> verified reload (quiet period excluded) against the manual sequence,
    side by side, the watch as a host process and as the controller container (when its image exists);
    then the idle watcher's CPU and memory, with every source running."""
    runs = 3 if quick else 9
    idle = 3.0 if quick else 30.0
    etcd = BenchEtcd(tmp)
    box = Nginx(client)
    inv = tmp / "watch.yaml"
    backend = f"127.0.0.1:{free_port()}"

    def write(timeout: int) -> None:
        inv.write_text(yaml.safe_dump({
            "nginx": {"load_modules": ["/usr/lib/nginx/modules/ngx_stream_module.so"], "worker_processes": 2},
            "target": {"container": box.name}, "discovery": {"etcd": {"endpoints": [etcd.endpoint]}},
            "upstreams": {"pool": {"listen": f"127.0.0.1:{free_port()}", "servers": [backend],
                                   "proxy_timeout": f"{timeout}s", "discover": "docker"},
                          "registered": {"listen": f"127.0.0.1:{free_port()}", "discover": {"etcd": "/bench/"}}}}))

    try:
        manual, ours, usage = _watch_reloads(client, box, inv, write, tmp, runs, idle, container=False)
        contained = None
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.get(CONTROLLER_IMAGE)
            contained = _watch_reloads(client, box, inv, write, tmp, runs, None, container=True)
    finally:
        box.remove()
        etcd.stop()
    assert usage is not None
    m, w = statistics.median(manual), statistics.median(ours)
    FACTS["watch ratio"] = w / m
    FACTS["watch idle"] = usage
    rows = [["manual: docker cp, nginx -t, HUP (nothing verified)", f"{m * 1000:.0f}", "1.00"],
            ["nginxctl watch (host process): change seen -> read, merge, render, test, install, reload, verified",
             f"{w * 1000:.0f}", f"{w / m:.2f}"]]
    if contained is not None:
        cm, cw = statistics.median(contained[0]), statistics.median(contained[1])
        FACTS["watch container ratio"] = cw / cm
        rows += [["manual, measured beside the container's runs", f"{cm * 1000:.0f}", "1.00"],
                 [f"nginxctl watch (container {CONTROLLER_IMAGE}, as compose's `controller` service): the same",
                  f"{cw * 1000:.0f}", f"{cw / cm:.2f}"]]
    table_apply = table("watch: change to verified reload (quiet period excluded) against the bare manual sequence",
                        ["procedure", f"median ms ({runs} runs)", "x manual"], rows,
                        "The watcher runs beside the engine: files through /proc/PID/root, processes from /proc, the "
                        "signal sent directly; nginx -t runs in the container. Verification waits for nginx to stop "
                        "the old workers accepting (~100 ms after the new ones start). The container runs with the "
                        "host's PID namespace and SYS_PTRACE only, so it keeps that path.")
    table_idle = table(f"watch idle for {idle:.0f} s (file, Docker events, etcd watch, metrics server running)",
                       ["CPU %", "RSS MiB"], [[f"{usage[0]:.2f}", f"{usage[1]:.1f}"]])
    return table_apply + "\n" + table_idle


class Greeter:
    """A backend on 127.0.0.1 that greets each connection at once (the first byte) and answers PING with PONG;
    `hung` accepts and never answers (a hung event loop)."""

    def __init__(self) -> None:
        import socketserver
        import threading

        self.hung = threading.Event()
        self.release = threading.Event()
        me = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if me.hung.is_set():
                    me.release.wait(60)
                    return
                with contextlib.suppress(OSError):
                    self.request.sendall(b"hi\n")
                    data = b""
                    while True:
                        chunk = self.request.recv(64)
                        if not chunk:
                            return
                        data += chunk
                        if b"PING" in data:
                            self.request.sendall(b"PONG\n")
                            data = b""

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.port = free_port()
        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def blackholed(port: int) -> Iterator[None]:
    """Drop the SYNs to 127.0.0.1:port (a backend whose host vanished): connects hang until they time out."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)


def first_bytes(port: int, seconds: float, rate: float, timeout: float) -> list[float]:
    """New connections through the load balancer at `rate` per second for `seconds`: connect-to-first-byte
    latency of each (a connection that gets no byte within `timeout` counts as `timeout`)."""
    import threading

    results: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.settimeout(max(0.01, timeout - (time.perf_counter() - t0)))
                got = s.recv(1)
                took = time.perf_counter() - t0 if got else timeout
        except OSError:
            took = timeout
        with lock:
            results.append(min(took, timeout))

    threads = []
    start = time.perf_counter()
    for i in range(int(seconds * rate)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load, not synchronising
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout + 5)
    return results


def bench_health(client: Any, tmp: Path, quick: bool) -> str:
    """A backend blackholed (SYNs dropped) or hung (accepts, never answers): new connections' connect-to-first-
    byte latency through nginx with passive checks only, and with `watch` health checks; time to take it out."""
    import json as _json
    import threading

    seconds, rate, timeout = (6.0, 10.0, 8.0) if quick else (20.0, 20.0, 8.0)
    check = {"interval": "1s", "timeout": "500ms", "fails": 2, "passes": 2, "send": "PING\r\n", "expect": "PONG"}
    rows = []
    for failure in ("blackholed", "hung"):
        for mode in ("passive only (max_fails 1, fail_timeout 10s)", "watch health checks"):
            good, bad = Greeter(), Greeter()
            box = Nginx(client)
            listen = free_port()
            inv = tmp / f"health-{box.name}.yaml"
            group: dict[str, Any] = {"listen": f"127.0.0.1:{listen}",
                                     "servers": [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"],
                                     "proxy_timeout": "1m"}
            if mode.startswith("watch"):
                group["health_check"] = check
            inv.write_text(yaml.safe_dump({
                "nginx": {"load_modules": ["/usr/lib/nginx/modules/ngx_stream_module.so"], "worker_processes": 1},
                "target": {"container": box.name}, "upstreams": {"pool": group}}))
            proc = None
            events: list[dict[str, Any]] = []
            try:
                if mode.startswith("watch"):
                    proc = subprocess.Popen([*NGINXCTL, "watch", "-i", str(inv), "--log-format", "json",
                                             "--quiet-period", "100ms", "--max-wait", "2s"], stderr=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, text=True)
                    ready = threading.Event()

                    def read(p: Any = proc, seen: list[dict[str, Any]] = events,
                             arrived: threading.Event = ready) -> None:
                        for line in p.stderr:
                            with contextlib.suppress(ValueError):
                                seen.append(_json.loads(line))
                                arrived.set()

                    threading.Thread(target=read, daemon=True).start()
                    deadline = time.monotonic() + 60
                    while not any(e.get("event") == "reload" for e in events) and time.monotonic() < deadline:
                        ready.wait(0.2)
                else:
                    r = nginxctl("apply", "-i", str(inv), "--reload", "-q")
                    assert r.returncode == 0, r.stderr
                t0 = time.time()
                with (blackholed(bad.port) if failure == "blackholed" else contextlib.nullcontext()):
                    if failure == "hung":
                        bad.hung.set()
                    lat = sorted(first_bytes(listen, seconds, rate, timeout))
                out = next((e["time"] - t0 for e in events if e.get("event") == "reload" and e.get("time", 0) > t0
                            and e.get("result") == "ok"), None)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
                box.remove()
                good.close()
                bad.close()
            p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            slow = sum(1 for x in lat if x > 1.0)
            FACTS[f"health {failure} {mode.split()[0]}"] = (p50, p99, out)
            rows.append([failure, mode, len(lat), f"{p50 * 1000:.0f}", f"{p99 * 1000:.0f}", f"{slow}",
                         "-" if out is None else f"{out:.1f} s"])
    return table("A failed backend: new connections through nginx, passive checks only vs watch health checks",
                 ["backend", "checks", "connections", "p50 ms to first byte", "p99 ms", "over 1 s", "taken out after"],
                 rows, f"{rate:.0f} new connections/s for {seconds:.0f} s, two backends, one failed from the start of "
                 f"the window. Health check: interval 1s, timeout 500ms, fails 2 (out within 2 s plus one reload), "
                 f"send PING / expect PONG. proxy_connect_timeout 5s (nginxctl's default); a connection with no "
                 f"byte within {timeout:.0f} s counts as {timeout:.0f} s. Blackholed: its SYNs dropped (iptables on "
                 "lo); hung: it accepts and never answers.")


def bench_scale(client: Any, tmp: Path, quick: bool) -> str:
    from nginxctl.inventory import parse_inventory
    from nginxctl.render import render, template_env

    sizes = [1, 100, 1000] if quick else [1, 100, 1000, 10000]
    rows = []
    env = template_env()
    render(parse_inventory(yaml.safe_dump({"upstreams": {"w": {"listen": 1, "servers": ["127.0.0.1:1"]}}})), env,
           full=True)  # compile the templates before timing
    for n in sizes:
        text = yaml.safe_dump({"nginx": {"worker_processes": 2, "load_modules": [
            "/usr/lib/nginx/modules/ngx_stream_module.so"]}, "upstreams": {
            f"g{i}": {"listen": f"127.0.0.1:{10000 + i}", "servers": [f"127.0.0.1:{30000 + j}" for j in range(10)]}
            for i in range(n)}})
        t0 = time.perf_counter()
        inv = parse_inventory(text)
        t1 = time.perf_counter()
        config = render(inv, env, full=True)
        t2 = time.perf_counter()
        path = tmp / f"scale-{n}.yaml"
        path.write_text(text)
        t3 = time.perf_counter()
        v = nginxctl("validate", "-i", str(path), "--image", IMAGE, "-q")
        t4 = time.perf_counter()
        FACTS[f"render {n}"] = t2 - t1
        rows.append([n, f"{len(config) / 1e6:.1f}", f"{(t1 - t0) * 1000:.0f}", f"{(t2 - t1) * 1000:.0f}",
                     f"{(t2 - t1) / n * 1e6:.0f}", f"{(t4 - t3) * 1000:.0f}"
                     + ("" if v.returncode == 0 else " (failed)")])
    return table("Render and validate time by inventory size (10 servers per group)",
                 ["groups", "config MB", "load + check ms", "render ms", "render µs per group",
                  "nginxctl validate ms (CLI, container, nginx -t)"], rows)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _churn_run(client: Any, tmp: Path, label: str, args: list[str], devices: int, changes: int,
               rate: float) -> list[str]:
    """One churn run: `devices` long connections through nginx under `watch` (with `args`), `changes` membership
    changes 2 s apart (the oldest member replaced by a new backend). Returns the table row."""
    import json as _json
    import threading
    import urllib.request

    from nginxctl.observe import reload_state

    members_n = 4
    ports = [free_port() for _ in range(members_n + changes)]
    listen, metrics_port = free_port(), free_port()
    fleet = [sys.executable, str(HERE / "churn_fleet.py")]
    back = subprocess.Popen([*fleet, "backends", *map(str, ports)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    box = Nginx(client)
    inv = tmp / f"churn-{listen}.yaml"
    out = tmp / f"churn-{listen}.json"
    members = [f"127.0.0.1:{p}" for p in ports[:members_n]]
    fresh = [f"127.0.0.1:{p}" for p in ports[members_n:]]

    def write() -> None:
        inv.write_text(yaml.safe_dump({"nginx": {"worker_processes": 2}, "target": {"container": box.name},
                                       "upstreams": {"pool": {"listen": f"127.0.0.1:{listen}",
                                                              "servers": list(members)}}}))

    write()
    watch = subprocess.Popen([*NGINXCTL, "watch", "-i", str(inv), "--log-format", "json", "--metrics",
                              f"127.0.0.1:{metrics_port}", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert watch.stderr is not None
    log = WatchEvents(iter(lambda: watch.stderr.read1(65536) if watch.stderr else b"", b""))
    dev: subprocess.Popen[str] | None = None
    seen = {"generations": 0, "pending": 0.0}
    done = threading.Event()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def sample() -> None:
        while not done.wait(0.25):   # bounded by the run: `done` is set in finally
            with contextlib.suppress(Exception):
                seen["generations"] = max(seen["generations"], len(reload_state(box.live, None, False).generations))
                seen["pending"] = max(seen["pending"], _metric(scrape(), "nginxctl_pending_seconds") or 0.0)

    sampler = threading.Thread(target=sample, daemon=True)
    removed: dict[str, float] = {}
    try:
        assert back.stdout is not None and back.stdout.readline().strip() == "ready"
        log.next_reload(0)
        dev = subprocess.Popen([*fleet, "devices", str(listen), str(devices), "8", "900", str(out),
                                str(2.0 * changes)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert dev.stdout is not None
        ready = dev.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"devices: {ready}")
        sampler.start()
        for _ in range(changes):
            gone = members.pop(0)
            members.append(fresh.pop(0))
            write()
            removed[gone] = time.time()
            time.sleep(2.0)   # the workload's pace: a membership change every 2 s
        # let the last change apply (bounded: its generation's connections at the rate, plus a margin)
        deadline = time.monotonic() + (devices / rate + 30 if rate else 10)
        while time.monotonic() < deadline:
            text = scrape()
            if (_metric(text, "nginxctl_pending_seconds") or 0) == 0 and not (_metric(text, "nginxctl_pending_changes")
                                                                            or 0):
                break
            time.sleep(0.5)   # polling the metrics endpoint
        time.sleep(3.0)       # the devices closed last reconnect and say where they landed
        final = scrape()
    finally:
        done.set()
        if dev is not None:
            with contextlib.suppress(Exception):
                assert dev.stdin is not None
                dev.stdin.close()
                dev.wait(60)
        watch.terminate()
        with contextlib.suppress(Exception):
            watch.wait(30)
        if back.stdin is not None:
            back.stdin.close()
        with contextlib.suppress(Exception):
            back.wait(10)
        box.remove()
    stats = _json.loads(out.read_text())
    late = [t - removed[f"127.0.0.1:{name[1:]}"] for t, name in stats["connections"]
            if f"127.0.0.1:{name[1:]}" in removed and t > removed[f"127.0.0.1:{name[1:]}"]]
    waited = [float(e["since_first_change"]) for e in log.events
              if e.get("event") == "reload" and e.get("result") == "ok" and e.get("since_first_change") is not None]
    retires = [int(e["connections"]) for e in log.events if e.get("event") == "retire" and "rate" in e]
    bound = (max(retires) / rate if retires and rate else 0) + 2
    pending_end = _metric(final, "nginxctl_pending_seconds") or 0.0
    closed = int(_metric(final, 'nginxctl_retired_connections_total{close="eof"}') or 0)
    resets = int(_metric(final, 'nginxctl_retired_connections_total{close="reset"}') or 0)
    finished = [e for e in log.events if e.get("event") == "retire" and "seconds" in e]
    longest = max(finished, key=lambda e: float(e["seconds"]), default=None)
    effective = (sum(int(e["closed"]) + int(e["resets"]) for e in finished)
                 / max(1e-9, sum(float(e["seconds"]) for e in finished))) if finished else 0.0
    return [label, str(seen["generations"]), f"{max(waited, default=0):.1f}",
            f"{seen['pending']:.1f}" + (f" (still {pending_end:.0f} at the end)" if pending_end else ""),
            f"{len(late)} / {max(late, default=0):.1f}", f"{bound:.1f}" if rate else "-",
            f"{len(finished)} / {float(longest['seconds']) if longest else 0:.1f} / {effective:.0f}",
            f"{closed} / {resets}",
            str(stats["eof"]), str(stats["reset"]), str(stats["failed"]), str(stats["lost"])]


def bench_churn(client: Any, tmp: Path, quick: bool) -> str:
    """Issue 14, item 4: generations never stall `watch`. Devices hold long connections while the pool's
    membership changes every 2 s: with watch's defaults, with the old count limit and a retirement rate, and
    with `--retire-rate 0` (the old behaviour)."""
    devices, changes = (200, 4) if quick else (2000, 15)
    runs = [("watch defaults (16 generations, 512 MiB, retire 20/s)", [], 20.0),
            ("--max-generations 3 --retire-rate 100/s", ["--max-generations", "3", "--retire-rate", "100/s"], 100.0),
            ("--max-generations 3 --retire-rate 0 (the old behaviour)", ["--max-generations", "3", "--retire-rate",
                                                                         "0"], 0.0)]
    rows = [_churn_run(client, tmp, label, args, devices, changes, rate) for label, args, rate in runs]
    return table(f"Churn: {devices} devices (8 source addresses), {changes} membership changes 2 s apart under watch",
                 ["watch", "most lingering generations", "longest change wait s (since first change)",
                  "max nginxctl_pending_seconds", "new connections to a removed backend after its removal: count / "
                  "latest s", "bound s (largest retired generation's connections / rate + 2)",
                  "retirements: count / longest s / closes per s", "closed by retirement: EOF / reset",
                  "device EOFs", "device resets", "failed reconnects", "heartbeats lost"], rows,
                 "Each change replaces the pool's oldest member with a new backend. Half the devices connect "
                 "before the first change, the other half arrive evenly during the changes (so every generation "
                 "holds long connections, as in issue 14). Devices send a heartbeat every "
                 "second and reconnect 10-200 ms after a close. `bench/churn_fleet.py` runs the devices and the "
                 "greeting backends (asyncio).")


# ------------------------------------------------- issue 14: rebalance after a scale-out, consistent hash


class Fleet:
    """bench/churn_fleet.py's `fleet`: devices holding long connections, driven by one-line commands."""

    def __init__(self, port: int, sources: str, count: int, ramp: float, seconds: float, out: Path) -> None:
        self.out = out
        # NGINXCTL_BENCH_HEARTBEAT: seconds between heartbeats (1 by default; smaller makes a heartbeat crossing
        # a close likelier: the reset that can cause, see RESULTS.md)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "churn_fleet.py"), "fleet", str(port), sources,
                                      str(count), str(ramp), str(seconds), str(out),
                                      os.environ.get("NGINXCTL_BENCH_HEARTBEAT", "1")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events: list[list[Any]] = []

    def ask(self, command: str) -> dict[str, Any]:
        """One command, its answer (bounded: the fleet stops by itself after its SECONDS)."""
        import json as _json

        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the device fleet stopped (asked {command!r})")
        return dict(_json.loads(line))

    def close(self) -> None:
        import json as _json

        with contextlib.suppress(Exception):
            assert self.proc.stdin
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        with contextlib.suppress(OSError, ValueError):
            self.events = _json.loads(self.out.read_text())["events"]


class GreetingBackends:
    """churn_fleet.py's greeting servers (each says `b<PORT>`, then echoes), one process, one port each."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.proc = subprocess.Popen([sys.executable, str(HERE / "churn_fleet.py"), "backends", *map(str, self.ports)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the greeting backends did not start")
        self.addresses = [f"127.0.0.1:{port}" for port in self.ports]
        self.names = {f"b{port}": f"127.0.0.1:{port}" for port in self.ports}

    def stop(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _cli(*args: str, timeout: float = 180) -> tuple[int, dict[str, Any], float]:
    """An nginxctl command with --format json: (exit code, its JSON document, wall seconds)."""
    import json as _json

    t0 = time.perf_counter()
    r = subprocess.run([*NGINXCTL, *args, "--format", "json"], capture_output=True, text=True, cwd="/",
                       timeout=timeout)
    seconds = time.perf_counter() - t0
    try:
        doc = dict(_json.loads(r.stdout))
    except ValueError:
        doc = {"ok": False, "errors": [{"type": "bench", "message": f"not JSON: {r.stdout[-300:]} {r.stderr[-300:]}"}]}
    return r.returncode, doc, seconds


def _error(doc: dict[str, Any]) -> str:
    return "; ".join(str(e.get("message")) for e in doc.get("errors") or [])


class Watch:
    """`nginxctl watch` as a host process with its JSON decision log."""

    def __init__(self, inv: Path, metrics_port: int) -> None:
        self.proc = subprocess.Popen([*NGINXCTL, "watch", "-i", str(inv), "--log-format", "json", "--metrics",
                                      f"127.0.0.1:{metrics_port}"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        self.log = WatchEvents(iter(lambda: self.proc.stderr.read1(65536) if self.proc.stderr else b"", b""))

    def wait(self, after: int, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        with self.log.cond:
            ok = self.log.cond.wait_for(lambda: any(match(e) for e in self.log.events[after:]), timeout)
        if not ok:
            raise RuntimeError(f"watch: no such event within {timeout:g}s: {self.log.events[-5:]}")
        return next(e for e in self.log.events[after:] if match(e))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _window(events: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """What the devices saw between `start` and `end` (wall time): closes by kind, the devices the load balancer
    closed (EOF or reset: moved) and where each landed next, failed reconnects, lost and late heartbeats, and
    how each reset came (churn_fleet.py records it)."""
    inside = [e for e in events if start <= e[0] <= end]
    moved = {e[1] for e in inside if e[2] in ("eof", "reset")}
    landed: dict[int, str] = {}
    for t, i, kind, name in sorted(events):
        if i in moved and kind == "connect" and t >= start and i not in landed:
            landed[i] = name
    eofs = [e[0] for e in inside if e[2] == "eof"]
    closes = [e[0] for e in inside if e[2] in ("eof", "reset")]
    return {"eof": len(eofs), "reset": sum(1 for e in inside if e[2] == "reset"),
            "closes": len(closes), "resets": [f"device {e[1]} at +{e[0] - start:.2f} s: {e[3]}" for e in inside
                                              if e[2] == "reset"],
            "eof span": (min(closes) - start, max(closes) - start) if closes else None,
            "failed": sum(1 for e in inside if e[2] == "failed"), "moved": moved, "landed": landed,
            "lost": {e[1] for e in inside if e[2] == "lost"}, "late": sum(1 for e in inside if e[2] == "late"),
            "lost_unmoved": {e[1] for e in inside if e[2] == "lost"} - moved}


def _span(window: dict[str, Any]) -> str:
    if not window["eof span"]:
        return "-"
    first, last = window["eof span"]
    return f"{first:.1f} / {last:.1f}, {(window['closes'] - 1) / max(1e-9, last - first):.0f}/s"


def _counts(current: list[str | None], names: dict[str, str]) -> dict[str, int]:
    out = {address: 0 for address in names.values()}
    for name in current:
        if name is not None:
            out[names.get(name, name)] = out.get(names.get(name, name), 0) + 1
    return out


def _status_counts(inv: Path, group: str) -> dict[str, Any]:
    code, doc, _ = _cli("status", "-i", str(inv))
    servers: list[dict[str, Any]] = next((g["servers"] for g in doc.get("groups") or [] if g.get("name") == group),
                                         [])
    return {"exit": code, "drift": doc.get("drift"), "overlay": doc.get("overlay"), "pool s": doc.get("pool_seconds"),
            "counts": {s["address"]: s.get("connections") for s in servers},
            "states": {s["address"]: s.get("state") for s in servers}}


def _dist(counts: dict[str, Any], order: list[str], labels: str = "ABC") -> str:
    return " / ".join(f"{labels[k]} {counts.get(a, 0)}" for k, a in enumerate(order))


def bench_scaleout(client: Any, tmp: Path, quick: bool) -> str:
    """Issue 14: 3,000 devices on A and B, C joins through a Docker label under `nginxctl watch`, then
    `nginxctl rebalance --rate 200 --tolerance 10%`. The watch owns the target (the one-owner rule): rebalance
    under it is tried (refused, exit 3), then the watch is stopped, rebalance runs, the watch starts again."""
    devices = 300 if quick else 3000
    group = f"scaleout_{os.getpid()}"
    backs = GreetingBackends(3)
    a, b, c = backs.addresses
    listen, metrics_port = free_port(), free_port()
    box = Nginx(client)
    inv = tmp / f"{group}.yaml"
    inv.write_text(yaml.safe_dump({"nginx": {"worker_processes": 2}, "target": {"container": box.name},
                                   "upstreams": {group: {"listen": f"127.0.0.1:{listen}", "balance": "least_conn",
                                                         "servers": [a, b], "discover": "docker"}}}))
    watch: Watch | None = Watch(inv, metrics_port)
    fleet: Fleet | None = None
    labelled = None
    facts: dict[str, Any] = {}
    try:
        assert watch is not None
        first = watch.wait(0, lambda e: e.get("event") in ("reload", "in-sync"), 60)
        if first.get("event") == "reload" and first.get("result") != "ok":
            raise RuntimeError(f"watch: first reload failed: {first}")
        fleet = Fleet(listen, "127.0.6.1+8", devices, 3.0, 170.0, tmp / f"{group}.json")
        held = fleet.ask(f"wait {devices} 60")
        if held["connected"] < devices:
            raise RuntimeError(f"only {held['connected']} of {devices} devices connected")
        time.sleep(1.0)
        facts["before devices"] = _counts(fleet.ask("snapshot")["current"], backs.names)
        # C joins: a container labelled for the group (host network: nginx reaches it at 127.0.0.1)
        seen, t_label = len(watch.log.events), time.time()
        labelled = client.containers.run(IMAGE, name=f"nginxctl-bench-label-{uuid.uuid4().hex[:8]}", detach=True,
                                         network_mode="host", labels={"nginxctl.group": group,
                                                                      "nginxctl.port": str(backs.ports[2])})
        joined = watch.wait(seen, lambda e: e.get("event") == "reload" and f"{group}/{c}" in (e.get("added") or []),
                            60)
        facts["joined s"] = float(joined["time"]) - t_label
        facts["joined result"] = joined.get("result")
        time.sleep(1.0)
        code, dry, _ = _cli("rebalance", group, "-i", str(inv), "--dry-run")
        facts["dry"] = (code, dry)
        code, refused, _ = _cli("rebalance", group, "-i", str(inv), "--rate", "200", "--tolerance", "10%")
        facts["under watch"] = (code, _error(refused))
        facts["watch exit"] = watch.stop()
        watch = None
        t0 = time.time()
        code, report, wall = _cli("rebalance", group, "-i", str(inv), "--rate", "200", "--tolerance", "10%",
                                  "--timeout", "120s")
        t1 = time.time()
        facts["rebalance"] = (code, report, wall)
        back = fleet.ask(f"wait {devices} 30")
        facts["all back s"] = float(back["t"]) - t1 if back["connected"] >= devices else None
        time.sleep(7.0)   # a heartbeat lost in the window (no echo within 5 s) is recorded by then
        t_end = time.time()
        facts["after devices"] = _counts(fleet.ask("snapshot")["current"], backs.names)
        facts["status"] = _status_counts(inv, group)
        watch = Watch(inv, metrics_port)
        again = watch.wait(0, lambda e: e.get("event") in ("reload", "in-sync", "drift"), 60)
        facts["watch again"] = (again.get("event"), again.get("result"), again.get("message"))
        fleet.close()
        facts["window"] = _window(fleet.events, t0, t_end)
        facts["all"] = _window(fleet.events, 0, t_end)
    finally:
        if watch is not None:
            watch.stop()
        if fleet is not None:
            fleet.close()
        if labelled is not None:
            with contextlib.suppress(docker.errors.NotFound):
                labelled.remove(force=True)
        box.remove()
        backs.stop()
    code, report, wall = facts["rebalance"]
    w, order = facts["window"], [a, b, c]
    dcode, dry = facts["dry"]
    moved, minimum = int(report.get("moved", 0)), int(report.get("minimum", 0))
    ratio = moved / minimum if minimum else 0.0
    landed = {address: 0 for address in order}
    for name in w["landed"].values():
        landed[backs.names.get(name, name)] = landed.get(backs.names.get(name, name), 0) + 1
    FACTS["scaleout"] = {"devices": devices, "code": code, "seconds": report.get("seconds"), "moved": moved,
                         "minimum": minimum, "ratio": ratio, "resets": w["reset"], "failed": w["failed"],
                         "lost_unmoved": len(w["lost_unmoved"]), "under watch": facts["under watch"][0]}
    st = facts["status"]
    rows = [
        ["devices (8 source addresses), held before C joins", _dist(facts["before devices"], order), "A 1500 / B 1500"
         if devices == 3000 else "-", "-"],
        ["C joins: labelled container started -> watch reload verified (s)",
         f"{facts['joined s']:.1f} ({facts['joined result']})", "-", "-"],
        ["`rebalance --dry-run` under the watch: exit, minimum, per server to move",
         f"{dcode}, {dry.get('minimum')}, " + ", ".join(f"{r['address'].rsplit(':', 1)[1]}: {r.get('to_move')}"
                                                        for r in dry.get("plan") or []), "-", "-"],
        ["`rebalance --rate 200 --tolerance 10%` while the watch runs: exit", f"{facts['under watch'][0]}",
         "3 (one owner)", met(facts["under watch"][0] == 3)],
        ["watch stopped (SIGTERM): exit", str(facts["watch exit"]), "0", met(facts["watch exit"] == 0)],
        ["rebalance (watch stopped): exit / report seconds / CLI wall s / reloads",
         f"{code} / {report.get('seconds')} / {wall:.1f} / {report.get('reloads')}", "0 / - / - / 2", met(code == 0)],
        ["moved / minimum (ratio)", f"{moved} / {minimum} ({ratio:.3f}x)", "<= 1.15x",
         met(code == 0 and minimum > 0 and ratio <= 1.15)],
        ["before (rebalance's count)", _dist(report.get("before") or {}, order), "-", "-"],
        ["after (rebalance's count)", _dist(report.get("after") or {}, order), "each 1000 +- 10%", met(
            all(abs((report.get("after") or {}).get(x, 0) - devices / 3) <= 0.1 * devices / 3 + 1 for x in order))],
        ["after (devices, all back)", _dist(facts["after devices"], order) + (
            f", all back {facts['all back s']:.1f} s after rebalance exited" if facts["all back s"] is not None
            else ", NOT all back"), "-", "-"],
        ["after (`nginxctl status`)", _dist(st["counts"], order) + f", drift {st['drift']}, overlay {st['overlay']}"
         f" (its pool read: {st['pool s']} s)",
         "drift false, no overlay", met(st["drift"] is False and not st["overlay"])],
        ["devices closed in the window (EOF + reset; moved) / where they reconnected",
         f"{w['eof']} + {w['reset']} ({len(w['moved'])} devices) / {_dist(landed, order)}", "= moved, all to C",
         met(w["closes"] == moved and landed.get(c, 0) == len(w["landed"]))],
        ["closes seen by the devices: first / last after the rebalance started (s), rate between them",
         _span(w), "-", "-"],
        ["device resets in the window", str(w["reset"]) + "".join(f"; {r}" for r in w["resets"]), "0",
         met(w["reset"] == 0)],
        ["failed reconnects in the window", str(w["failed"]), "0", met(w["failed"] == 0)],
        ["devices not moved that lost a heartbeat (no echo in 5 s)", str(len(w["lost_unmoved"])), "0",
         met(not w["lost_unmoved"])],
        ["heartbeats late (echo > 1 s) in the window; lost by moved devices", f"{w['late']}; "
         f"{len(w['lost'] & w['moved'])}", "-", "-"],
        ["watch started again: first decision", f"{facts['watch again'][0]} ({facts['watch again'][1] or '-'})",
         "in-sync", met(facts["watch again"][0] == "in-sync")],
    ]
    errors = _error(report)
    note = (f"Least_conn group of A and B with `discover: docker`; C is a greeting server on the host announced by a "
            f"container (nginxctl/nginx:bare, host network) labelled `nginxctl.group`/`nginxctl.port`. The watch "
            f"refuses to share the target, so rebalance under it exits {facts['under watch'][0]} "
            f"(\"{facts['under watch'][1]}\"). The issue's figure is the one-shot command, so the watch is "
            "stopped (SIGTERM), rebalance runs, and the watch is started again (the other way: `rebalance:` on the "
            "group, and the watch rebalances it by itself). "
            "The window runs from the rebalance's start to 7 s after every device is back. Devices: a "
            "heartbeat a second, reconnect 10-200 ms after a close (`bench/churn_fleet.py fleet`).")
    if errors:
        note += f" Rebalance said: {errors[:300]}"
    return table(f"Scale-out: {devices:,} devices on A and B, C added by label under watch, then `nginxctl rebalance "
                 "--rate 200 --tolerance 10%` (`python bench/run.py --only scaleout`)",
                 ["measure", "measured", "target", "met"], rows, note)


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def bench_hash(client: Any, tmp: Path, quick: bool) -> str:
    """Issue 14: a `hash $remote_addr consistent` group, 250 devices from 250 source addresses, a server added,
    `nginxctl rebalance`: the misplaced (the dry run's plan, and nginx's own answer: a fresh connection from
    the same address), moved, and afterwards every held connection on the server its key maps to."""
    from nginxctl.hashring import Ring

    devices = 50 if quick else 250
    group = f"hash_{os.getpid()}"
    backs = GreetingBackends(3)
    a, b, c = backs.addresses
    listen = free_port()
    box = Nginx(client)
    inv = tmp / f"{group}.yaml"

    def write(servers: list[str]) -> None:
        inv.write_text(yaml.safe_dump({"nginx": {"worker_processes": 2}, "target": {"container": box.name},
                                       "upstreams": {group: {"listen": f"127.0.0.1:{listen}", "balance": "hash",
                                                             "hash_key": "$remote_addr", "consistent": True,
                                                             "servers": servers}}}))

    fleet: Fleet | None = None
    facts: dict[str, Any] = {}
    try:
        write([a, b])
        if (r := nginxctl("apply", "-i", str(inv), "--reload", "-q")).returncode != 0:
            raise RuntimeError(f"apply: {r.stderr}")
        fleet = Fleet(listen, f"127.0.4.1+{devices}", devices, 1.0, 150.0, tmp / f"{group}.json")
        if (held := fleet.ask(f"wait {devices} 60"))["connected"] < devices:
            raise RuntimeError(f"only {held['connected']} of {devices} devices connected")
        sources = [f"127.0.4.{1 + i}" for i in range(devices)]
        current = fleet.ask("snapshot")["current"]
        probe = fleet.ask("probe")["probe"]
        facts["before on key"] = sum(1 for h, p in zip(current, probe, strict=True) if h is not None and h == p)
        facts["before devices"] = _counts(current, backs.names)
        write([a, b, c])
        if (r := nginxctl("apply", "-i", str(inv), "--reload", "-q")).returncode != 0:
            raise RuntimeError(f"apply: {r.stderr}")
        current = fleet.ask("snapshot")["current"]
        probe = fleet.ask("probe")["probe"]
        facts["probe failed"] = sum(1 for p in probe if p is None)
        misplaced = {i for i, (h, p) in enumerate(zip(current, probe, strict=True))
                     if h is not None and p is not None and h != p}
        ring = Ring.build([(x, 1, False) for x in (a, b, c)])
        predicted = {i for i in range(devices) if backs.names.get(str(current[i])) != ring.lookup(sources[i].encode())}
        facts["misplaced"], facts["predicted"] = misplaced, predicted
        code, dry, _ = _cli("rebalance", group, "-i", str(inv), "--dry-run")
        facts["dry"] = (code, dry)
        t0 = time.time()
        code, report, wall = _cli("rebalance", group, "-i", str(inv), "--rate", "200", "--timeout", "60s")
        t1 = time.time()
        facts["rebalance"] = (code, report, wall)
        back = fleet.ask(f"wait {devices} 30")
        facts["all back s"] = float(back["t"]) - t1 if back["connected"] >= devices else None
        time.sleep(7.0)   # a heartbeat lost in the window is recorded by then
        t_end = time.time()
        current = fleet.ask("snapshot")["current"]
        probe = fleet.ask("probe")["probe"]
        facts["after held"] = sum(1 for h in current if h is not None)
        facts["after on key"] = sum(1 for h, p in zip(current, probe, strict=True) if h is not None and h == p)
        facts["after on ring"] = sum(1 for i, h in enumerate(current)
                                     if h is not None and backs.names.get(h) == ring.lookup(sources[i].encode()))
        facts["after devices"] = _counts(current, backs.names)
        facts["again"] = _cli("rebalance", group, "-i", str(inv), "--dry-run")
        fleet.close()
        facts["window"] = _window(fleet.events, t0, t_end)
    finally:
        if fleet is not None:
            fleet.close()
        box.remove()
        backs.stop()
    code, report, wall = facts["rebalance"]
    w, order = facts["window"], [a, b, c]
    dcode, dry = facts["dry"]
    misplaced, predicted = facts["misplaced"], facts["predicted"]
    moved, minimum = int(report.get("moved", 0)), int(report.get("minimum", 0))
    again_code, again, _ = facts["again"]
    FACTS["hash"] = {"devices": devices, "code": code, "misplaced": len(misplaced), "plan": dry.get("minimum"),
                     "moved": moved, "held": facts["after held"], "on key": facts["after on key"],
                     "resets": w["reset"], "failed": w["failed"]}
    rows = [
        ["devices (one source address each, 127.0.4.1-...), held before the server is added",
         _dist(facts["before devices"], order) + f"; on their key's server: {facts['before on key']}/{devices}",
         "all on key", met(facts["before on key"] == devices)],
        ["misplaced after C is added: nginx's answer (held server != a fresh connection's from the same address)",
         f"{len(misplaced)} (probes failed: {facts['probe failed']})", "-", "-"],
        ["misplaced predicted by nginxctl.hashring (ketama ring of A, B, C)", f"{len(predicted)}; same devices as "
         f"nginx's: {predicted == misplaced}", "= nginx's", met(predicted == misplaced)],
        ["`rebalance --dry-run`: exit, minimum (the plan), per server to move",
         f"{dcode}, {dry.get('minimum')}, " + ", ".join(f"{r['address'].rsplit(':', 1)[1]}: {r.get('to_move')}"
                                                        for r in dry.get("plan") or []),
         "= misplaced", met(dry.get("minimum") == len(misplaced))],
        ["closes seen by the devices: first / last after the rebalance started (s), rate between them",
         _span(w), "-", "-"],
        ["`rebalance --rate 200`: exit / report seconds / CLI wall s / reloads",
         f"{code} / {report.get('seconds')} / {wall:.1f} / {report.get('reloads')}", "0 / - / - / 0",
         met(code == 0 and report.get("reloads") == 0)],
        ["moved / minimum", f"{moved} / {minimum}", "moved = misplaced", met(moved == minimum == len(misplaced))],
        ["devices closed in the window (EOF + reset) / exactly the misplaced ones", f"{w['eof']} + {w['reset']} / "
         f"{w['moved'] == misplaced}", "= moved / yes", met(w["closes"] == moved and w["moved"] == misplaced)],
        ["after: held / on the server their key maps to (fresh connection from the same address)",
         f"{facts['after held']} / {facts['after on key']} ({facts['after on key'] / max(1, facts['after held']):.1%})"
         + (f", all back {facts['all back s']:.1f} s after rebalance exited" if facts["all back s"] is not None
            else ", NOT all back"), "100%", met(facts["after held"] == devices and facts["after on key"] == devices)],
        ["after: on the hashring's server for their address", f"{facts['after on ring']}/{facts['after held']}", "100%",
         met(facts["after on ring"] == devices)],
        ["after (devices)", _dist(facts["after devices"], order), "-", "-"],
        ["rebalance's report before / after", f"{_dist(report.get('before') or {}, order)} -> "
         f"{_dist(report.get('after') or {}, order)}", "-", "-"],
        ["device resets / failed reconnects / devices not moved that lost a heartbeat",
         f"{w['reset']} / {w['failed']} / {len(w['lost_unmoved'])}" + "".join(f"; {r}" for r in w["resets"]),
         "0 / 0 / 0",
         met(w["reset"] == 0 and w["failed"] == 0 and not w["lost_unmoved"])],
        ["a second `rebalance --dry-run`: minimum", f"{again.get('minimum')} (exit {again_code})", "0",
         met(again.get("minimum") == 0)],
    ]
    note = ("`balance: hash`, `hash_key: $remote_addr`, `consistent: true` (nginx `hash $remote_addr consistent`); "
            "A and B, then C added to `servers:` and `nginxctl apply --reload` (no watch). A probe is a fresh "
            "connection from the device's own source address: the backend nginx picks for that key now, found without "
            "nginxctl. The window runs from the rebalance's start to 7 s after every device is back.")
    if _error(report):
        note += f" Rebalance said: {_error(report)[:300]}"
    return table(f"Consistent hash: {devices} devices from {devices} addresses, a server added, `nginxctl rebalance` "
                 "(`python bench/run.py --only hash`)", ["measure", "measured", "target", "met"], rows, note)


def targets(quick: bool) -> str:
    """The issue's targets against what this run measured."""
    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = []
    top = 2000 if quick else 40000
    held = FACTS.get(f"held idle {top}")
    if held:
        rows.append([f"generated config holds {top:,} long connections with zero failures (naive: ~500)",
                     f"{held[0]:,} held, {held[1]} failed; naive held {FACTS.get('naive held')}", met(held[1] == 0)])
    gen, tuned = FACTS.get("cpu_us nginxctl generated"), FACTS.get("cpu_us hand-tuned")
    if gen and tuned:
        rows.append(["nginx CPU per connection within 10 % of the hand-tuned config",
                     f"{gen:.0f} vs {tuned:.0f} µs ({gen / tuned - 1:+.0%})", met(gen <= tuned * 1.10)])
    for key, value in FACTS.items():
        if key.startswith("reloads nginxctl apply --max-generations"):
            lingering, alive, total, failed, max_gen = value
            rows.append([f"applies under held connections: lingering generations <= {max_gen}, no held connection "
                         "dropped, no failed new connection",
                         f"{lingering} lingering, {alive}/{total} alive, {failed} failed", met(
                             lingering <= max_gen and alive == total and failed == 0)])
    big = max((int(k.split()[1]) for k in FACTS if k.startswith("render ")), default=0)
    if big:
        t = FACTS[f"render {big}"]
        per_small, per_big = FACTS["render 100"] / 100, t / big
        rows.append([f"render {big:,} groups x 10 servers under 1 s, growing linearly",
                     f"{t * 1000:.0f} ms; {per_big * 1e6:.0f} µs per group at {big:,} vs {per_small * 1e6:.0f} at 100",
                     met(t < 1.0 and per_big < per_small * 2)])
    if "apply ratio" in FACTS:
        rows.append(["apply --reload end to end within 1.5x the bare manual sequence",
                     f"{FACTS['apply ratio']:.2f}x", met(FACTS["apply ratio"] <= 1.5)])
    if "watch ratio" in FACTS:
        rows.append(["watch: change seen to verified reload within 1.5x the bare manual sequence",
                     f"{FACTS['watch ratio']:.2f}x", met(FACTS["watch ratio"] <= 1.5)])
    if "watch container ratio" in FACTS:
        rows.append(["watch in its container: the same ratio, within 1.5x",
                     f"{FACTS['watch container ratio']:.2f}x", met(FACTS["watch container ratio"] <= 1.5)])
    for failure in ("blackholed", "hung"):
        health = FACTS.get(f"health {failure} watch")
        if health:
            out = health[2]
            rows.append([f"{failure} backend taken out within interval x fails + one reload (2 s + ~0.3 s)",
                         "-" if out is None else f"{out:.1f} s", met(out is not None and out <= 3.0)])
    if "scaleout" in FACTS:
        f = FACTS["scaleout"]
        rows.append([f"rebalance after a scale-out ({f['devices']:,} devices, C by label): moved <= 1.15x the minimum, "
                     "0 resets, 0 failed reconnects, 0 unmoved devices losing a heartbeat",
                     f"exit {f['code']}, {f['seconds']} s, {f['moved']}/{f['minimum']} ({f['ratio']:.3f}x), "
                     f"{f['resets']} resets, {f['failed']} failed, {f['lost_unmoved']} lost",
                     met(f["code"] == 0 and 0 < f["ratio"] <= 1.15 and f["resets"] == 0 and f["failed"] == 0
                         and f["lost_unmoved"] == 0)])
    if "hash" in FACTS:
        f = FACTS["hash"]
        rows.append([f"consistent hash ({f['devices']} devices): plan = misplaced = moved, afterwards 100% on their "
                     "key's server", f"exit {f['code']}, misplaced {f['misplaced']}, plan {f['plan']}, moved "
                     f"{f['moved']}, {f['on key']}/{f['held']} on key", met(
                         f["code"] == 0 and f["misplaced"] == f["plan"] == f["moved"] and f["on key"] == f["held"]
                         == f["devices"])])
    if "watch idle" in FACTS:
        cpu, rss = FACTS["watch idle"]
        rows.append(["idle watcher: no CPU (event-driven), under 80 MiB", f"{cpu:.2f} % CPU, {rss:.1f} MiB",
                     met(cpu < 0.5 and rss < 80)])
    return table("Targets", ["target", "measured", "met"], rows)


def machine(client: Any) -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    box = Nginx(client)
    try:
        version = box.live.exec(["-v"]).output.strip()
    finally:
        box.remove()
    return (f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
            f"{mem:.0f} GiB, Linux {platform.release()}, Docker {client.version()['Version']}, {version} "
            f"({IMAGE}), Python {platform.python_version()}; open files per process: "
            f"{__import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE)[1]}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run; prints, writes nothing")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", help="comma-separated figures to run (startup, rate, hold, reloads, apply, watch, "
                        "health, scale, churn, scaleout, hash); prints, writes nothing")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmpdir, notrack():
        tmp = Path(tmpdir)
        tools = build_tools(tmp)
        sections = [f"# nginxctl benchmarks{' (quick smoke)' if args.quick else ''}", "", machine(client), "",
                    "Reproduce: `python bench/run.py` (full) or `python bench/run.py --quick`.", ""]
        figures = {"startup": lambda: bench_startup(tmp, args.quick),
                   "rate": lambda: bench_rate(client, tools, tmp, args.quick),
                   "hold": lambda: bench_hold(client, tools, tmp, args.quick),
                   "reloads": lambda: bench_reloads(client, tools, tmp, args.quick),
                   "apply": lambda: bench_apply(client, tmp, args.quick),
                   "watch": lambda: bench_watch(client, tmp, args.quick),
                   "health": lambda: bench_health(client, tmp, args.quick),
                   "scale": lambda: bench_scale(client, tmp, args.quick),
                   "churn": lambda: bench_churn(client, tmp, args.quick),
                   "scaleout": lambda: bench_scaleout(client, tmp, args.quick),
                   "hash": lambda: bench_hash(client, tmp, args.quick)}
        for name, figure in figures.items():
            if only is not None and name not in only:
                continue
            text = figure()
            print(text, flush=True)
            sections.append(text)
        text = targets(args.quick)
        print(text, flush=True)
        sections.insert(6, text)
    if not args.quick and only is None:
        args.out.write_text("\n".join(sections))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
