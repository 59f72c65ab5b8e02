"""What do clients behind nginx see when nginxctl destroys nginx's upstream-side socket? (issue 14's hint, checked)

Starts an nginx container of this project (host network, image nginxctl/nginx:latest), an echo backend that
greets with its name, N clients through nginx (half of them with an echo left unread in their buffer), then
destroys the upstream-side socket (nginx -> backend) of K of them with SOCK_DESTROY and reports, from the
kernel's tables (CLOSE_WAIT = FIN received, CLOSE = reset) and from each client's reads, what they saw.
Only 127.0.0.1; bounded; the container and the backend are removed at the end.

    python bench/sockdiag_destroy.py [--clients 400] [--destroy 200]
"""

from __future__ import annotations

import argparse
import collections
import socket
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from nginxctl.nginx import LOCAL_IMAGE, LiveNginx  # noqa: E402
from nginxctl.sockdiag import SockDiag, socket_owners  # noqa: E402

from conftest import LB  # noqa: E402
from helpers import Backend, cli, free_port  # noqa: E402


def read_outcome(sock: socket.socket) -> str:
    sock.settimeout(0.05)
    seen = []
    try:
        while True:
            data = sock.recv(100)
            if data == b"":
                seen.append("EOF")
                break
            seen.append("data")
    except TimeoutError:
        seen.append("open")
    except ConnectionResetError:
        seen.append("RST")
    return " then ".join(seen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--destroy", type=int, default=200)
    args = parser.parse_args()
    n = max(2, min(args.clients, 2000))
    k = max(1, min(args.destroy, n))
    client = docker.from_env()
    lb = LB(client, Path(tempfile.mkdtemp()), LOCAL_IMAGE)
    backend = Backend("A", free_port()).start()
    clients: list[socket.socket] = []
    try:
        port, group = lb.group([backend.address])
        lb.write({"pool": group})
        applied = cli("apply", "-i", str(lb.inventory), "--reload")
        if applied.returncode != 0:
            raise SystemExit(applied.stderr)
        procs = LiveNginx.attach(client, lb.name).processes()
        assert procs.master is not None
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(c)
            if c.recv(10) != b"A\n":
                raise SystemExit("no greeting from the backend")
            if i % 2:
                c.sendall(b"e\n")  # an echo the client leaves unread
        if not backend.wait_connections(n, 10):
            raise SystemExit("the backend did not see every connection")
        mine = {c.getsockname()[1] for c in clients}
        with SockDiag(netns_pid=procs.master.pid) as diag:
            owners = socket_owners(procs.worker_pids)
            upstream = [s for s in diag.tcp(remote_ports=[backend.port]) if s.inode in owners]
            start = time.perf_counter()
            destroyed = sum(diag.destroy(s) for s in upstream[:k])
            spent = time.perf_counter() - start
            deadline = time.monotonic() + 10
            while True:
                states = collections.Counter(s.state_name for s in diag.tcp(states=range(1, 12), remote_ports=[port])
                                             if s.local[1] in mine)
                if states["ESTABLISHED"] <= n - k or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            settled = time.perf_counter() - start - spent
        reads = collections.Counter(read_outcome(c) for c in clients)
        log = client.containers.get(lb.name).logs(stderr=True, stdout=False).decode(errors="replace")
        print(f"clients {n}, nginx upstream-side sockets {len(upstream)} "
              f"(per worker {dict(collections.Counter(owners[s.inode] for s in upstream))})")
        print(f"destroyed {destroyed} in {spent:.4f}s; client sockets {spent + settled:.3f}s after the first "
              f"destroy: {dict(states)}")
        print(f"client reads: {dict(reads)}")
        print(f"nginx [alert] lines '(103: Software caused connection abort)': "
              f"{log.count('(103: Software caused connection abort)')}")
    finally:
        for c in clients:
            c.close()
        lb.remove()
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
