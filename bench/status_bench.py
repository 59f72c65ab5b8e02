"""`nginxctl status` over a pool of N long connections through a real nginx (issue 14: within 1 s at 40,000).

    python bench/status_bench.py --connections 40000

Starts echo backends (C, bench/echo_server.c), an nginx container configured by nginxctl for that many
connections, N held client connections (bench/client.c), then times `nginxctl status --format json` end
to end (a new process, as a user runs it) and the pool reading inside it (`pool_seconds`): median and
range of --runs, each beside `python -c 'import typer'` (the floor of any typer command, timed in the same
moments: the ratio compares runs on a shared machine), with the load average before and after.
Prints one line per measure; removes everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import docker  # noqa: E402

from run import PER_CLIENT, Backends, build_tools, free_port, generated, hold, notrack  # noqa: E402


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=40000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp, notrack():
        tools = build_tools(Path(tmp))
        # a backend per PER_CLIENT connections: each stays under the 20,000 files a process may hold
        backends = Backends(tools[0], max(1, -(-args.connections // PER_CLIENT)))
        box = None
        holders = None
        try:
            port = free_port()
            box, inv = generated(client, Path(tmp), port, backends.addresses, max_connections=args.connections,
                                 workload="idle")
            holders = hold(tools[1], port, args.connections)
            print(f"held {holders.held} connections ({holders.failed} failed) over {len(backends.ports)} backends")
            walls, pools, floors = [], [], []
            load = os.getloadavg()
            for _ in range(args.runs):
                began = time.monotonic()
                out = subprocess.run([sys.executable, "-m", "nginxctl", "status", "-i", str(inv), "--format", "json"],
                                     capture_output=True, text=True, timeout=120, cwd="/")
                walls.append(time.monotonic() - began)
                data = json.loads(out.stdout)
                pools.append(data["pool_seconds"])
                began = time.monotonic()
                subprocess.run([sys.executable, "-c", "import typer"], check=True, timeout=60, cwd="/")
                floors.append(time.monotonic() - began)
            counted = sum(s["connections"] or 0 for g in data["groups"] for s in g["servers"])
            print(f"status counted {counted} connections to the servers")
            print(f"status, whole command ({args.runs} runs): {spread(walls)}; "
                  f"{statistics.median(walls) / statistics.median(floors):.1f}x `python -c 'import typer'` "
                  f"({spread(floors)})")
            print(f"status, pool reading inside it: {spread(pools)}")
            print("load average (1, 5, 15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
                *load, *os.getloadavg()))
        finally:
            if holders is not None:
                holders.close()
            if box is not None:
                box.remove()
            backends.stop()
            client.close()


if __name__ == "__main__":
    main()
