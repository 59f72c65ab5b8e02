"""A device fleet and its backends for the churn figure of bench/run.py, on 127.0.0.0/8 only.

  python churn_fleet.py backends PORT...
      one greeting server per port (it sends "b<PORT>\\n", then echoes); prints "ready"; runs until stdin closes.
  python churn_fleet.py devices PORT COUNT SOURCES SECONDS OUT.json ARRIVE
      COUNT devices holding long connections to 127.0.0.1:PORT from 127.0.3.1 .. 127.0.3.SOURCES: half connect at
      once, the other half arrive evenly over ARRIVE seconds after that. Each reads the greeting (the backend it
      reached), sends a heartbeat every second and reads it back; on EOF or reset it reconnects after 10-200 ms
      at random. Prints "ready" once the first half is connected; stops after SECONDS or when stdin closes, and
      writes OUT.json: every connection made (wall time, backend), closes by kind (eof, reset), failed
      reconnects, heartbeats lost.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from typing import Any


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def backends(ports: list[int]) -> None:
    async def serve(port: int) -> asyncio.base_events.Server:
        greeting = f"b{port}\n".encode()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(greeting)
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, reuse_address=True)

    servers = [await serve(p) for p in ports]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)   # until the bench closes stdin
    for server in servers:
        server.close()


async def devices(port: int, count: int, sources: int, seconds: float, out: str, arrive: float) -> None:
    stats: dict[str, Any] = {"connections": [], "eof": 0, "reset": 0, "failed": 0, "lost": 0}
    connected = asyncio.Event()
    up = [0]
    stop = asyncio.Event()

    async def device(i: int) -> None:
        source = f"127.0.3.{1 + i % sources}"
        first = True
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
                name = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
                if not name:
                    raise ConnectionResetError("closed before the greeting")
            except (OSError, asyncio.TimeoutError, ConnectionError):
                stats["failed"] += 1
                await asyncio.sleep(random.uniform(0.01, 0.2))
                continue
            stats["connections"].append((time.time(), name))
            if first:
                first = False
                up[0] += 1
                if up[0] == count:
                    connected.set()
            # heartbeats, a second apart, until the connection ends
            await asyncio.sleep(random.uniform(0, 1))
            try:
                while not stop.is_set():
                    writer.write(b"hb\n")
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), 5)
                    if not line:
                        stats["eof"] += 1
                        break
                    await asyncio.sleep(1)
            except asyncio.TimeoutError:
                stats["lost"] += 1
            except (ConnectionResetError, BrokenPipeError):
                stats["reset"] += 1
            except OSError:
                stats["reset"] += 1
            writer.close()
            if not stop.is_set():
                await asyncio.sleep(random.uniform(0.01, 0.2))   # devices reconnect 10-200 ms after a close

    first = count // 2
    tasks = [asyncio.create_task(device(i)) for i in range(first)]
    target = count
    count = first
    try:
        await asyncio.wait_for(connected.wait(), 120)
    except asyncio.TimeoutError:
        pass
    print("ready" if connected.is_set() else f"connected {up[0]}", flush=True)

    async def arrivals() -> None:
        for i in range(first, target):   # new devices, evenly over `arrive` seconds
            await asyncio.sleep(arrive / max(1, target - first))
            if stop.is_set():
                return
            tasks.append(asyncio.create_task(device(i)))

    tasks.append(asyncio.create_task(arrivals()))
    loop = asyncio.get_running_loop()
    reading = loop.run_in_executor(None, sys.stdin.read)
    await asyncio.wait([asyncio.ensure_future(reading), asyncio.create_task(asyncio.sleep(seconds))],
                       return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with open(out, "w") as fh:
        json.dump(stats, fh)


def main() -> None:
    _raise_nofile()
    if sys.argv[1] == "backends":
        asyncio.run(backends([int(p) for p in sys.argv[2:]]))
    else:
        port, count, sources, seconds, out, arrive = sys.argv[2:8]
        asyncio.run(devices(int(port), int(count), int(sources), float(seconds), out, float(arrive)))


if __name__ == "__main__":
    main()
