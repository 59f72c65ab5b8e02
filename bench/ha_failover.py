"""Failover of the virtual IP (issue 16): seconds without a successful new connection to the VIP when the master
fails, medians of several runs, for three ways it fails.

    python bench/ha_failover.py --runs 5

Each run builds the tests' own network (tests/ha_net.py: a bridge in a namespace of its own, veth pairs,
10.254.0.0/16 only, two nginx targets with `network_mode: none`, a backend and a client in namespaces of their
own), applies an inventory with `ha: {advert_interval: 1s}` (keepalived beside each target), waits for the VIP on
lb1, then starts a prober in the client's namespace (a new connection to the VIP every 50 ms, each with a 200 ms
timeout, recording when it got the backend's answer) and makes lb1 fail:

  kill    the nginx container of lb1 is killed (keepalived's check fails; FAULT)
  pause   nginx on lb1 hangs (`docker pause`: its kernel still completes handshakes; the check wants an answer)
  stop    the runbook's "fail over by hand": `docker stop lb1-keepalived` (keepalived gives the address up)

The outage is the time from the last success before the failure to the first success after it (through lb2).
Prints a markdown table; removes everything it started, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

import docker  # noqa: E402

from ha_net import VIP, inventory, network, wait_for  # noqa: E402

PROBER = """
import socket, sys, time
port, limit = int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + limit
print("ready", flush=True)
for _ in range(int(limit / 0.05) + 1):   # bounded in count and time
    if time.monotonic() > end:
        break
    began = time.monotonic()
    try:
        with socket.create_connection((sys.argv[1], port), timeout=0.2) as c:
            c.settimeout(0.2)
            ok = c.recv(64).startswith(b"backend")
    except OSError:
        ok = False
    print(("ok" if ok else "fail"), time.monotonic(), flush=True)
    time.sleep(max(0.0, 0.05 - (time.monotonic() - began)))   # the probe's pace, not a synchronisation
"""


def nginxctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nginxctl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180)


def outage(client: docker.DockerClient, how: str, tmp: Path) -> float:
    """One run: the seconds without a successful new connection to the VIP around lb1's failure."""
    with network(client) as net:
        inv = inventory(tmp, net)
        applied = nginxctl("apply", "-i", str(inv), "--reload", cwd=tmp)
        assert applied.returncode == 0, applied.stderr
        wait_for("the VIP on lb1", lambda: net.holders() == ["lb1"], timeout=30, net=net)
        wait_for("a connection through the VIP", lambda: net.connect() == "backend", timeout=30)
        prober = subprocess.Popen(["ip", "netns", "exec", f"{net.prefix}-cl", sys.executable, "-c", PROBER, VIP,
                                   "6666", "40"], stdout=subprocess.PIPE, text=True)
        lb1 = client.containers.get(net.name("lb1"))
        try:
            assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
            seen: list[tuple[str, float]] = []
            while len([s for s in seen if s[0] == "ok"]) < 5:   # a few successes through lb1 first
                kind, when = prober.stdout.readline().split()
                seen.append((kind, float(when)))
            failed_at = time.monotonic()
            if how == "kill":
                net.pids["lb1"] = client.containers.get(f"{net.name('lb1')}-keepalived").attrs["State"]["Pid"]
                lb1.kill()
            elif how == "pause":
                lb1.pause()
            else:
                client.containers.get(f"{net.name('lb1')}-keepalived").stop(timeout=10)
            while True:   # until a success after the failure (the prober ends by itself within 40 s)
                line = prober.stdout.readline()
                if not line:
                    raise RuntimeError(f"{how}: no connection through the VIP after the failure")
                kind, when = line.split()
                seen.append((kind, float(when)))
                if kind == "ok" and float(when) > failed_at:
                    break
            last_before = max(t for k, t in seen if k == "ok" and t <= failed_at)
            first_after = min(t for k, t in seen if k == "ok" and t > failed_at)
            assert net.holders() == ["lb2"], net.holders()
            return first_after - last_before
        finally:
            prober.kill()
            prober.wait()
            if prober.stdout is not None:
                prober.stdout.close()
            with contextlib.suppress(docker.errors.APIError):   # the network's teardown removes it anyway
                lb1.reload()
                if lb1.status == "paused":
                    lb1.unpause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the seconds of every run as JSON too")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    client = docker.from_env()
    results: dict[str, list[float]] = {}
    for how in ("kill", "pause", "stop"):
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                results.setdefault(how, []).append(outage(client, how, Path(tmp)))
    load = os.getloadavg()[0]
    print("| master fails by | runs | median s | min s | max s | target s |\n|---|---|---|---|---|---|")
    for how, seconds in results.items():
        print(f"| {how} | {len(seconds)} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{max(seconds):.2f} | <= 4 (3 advert intervals + 1 s) |")
    print(f"\nload average at the end: {load:.1f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
