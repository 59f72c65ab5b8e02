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
  python churn_fleet.py fleet PORT FIRST+N COUNT RAMP SECONDS OUT.json [HEARTBEAT]
      COUNT devices (the same device model, for the scale-out and consistent-hash figures) from the N source
      addresses FIRST, FIRST+1, ... (device i binds address i % N), arriving evenly over RAMP seconds. A device
      notices a close at once (it is always reading), reconnects 10-200 ms later, and sends a heartbeat
      HEARTBEAT seconds (default 1) after the last one came back: a heartbeat with no echo within 5 s is lost
      (the device then closes and reconnects). Every event is recorded with its wall time and device; a reset
      with how it came (a heartbeat outstanding, whether the FIN came first). Commands on stdin, each answered
      with one JSON line: `wait N S` (until N devices hold a connection, at most S seconds), `snapshot` (the
      backend each device holds now), `probe` (a fresh connection from each device's source address: the
      backend it lands on, closed at once), `quit` (writes OUT.json: every event). Stops by itself after
      SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import resource
import sys
import threading
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


async def greeted(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """A connection to 127.0.0.1:PORT from SOURCE and the backend's greeting (its name). Raises OSError,
    asyncio.TimeoutError, ConnectionError (closed before the greeting)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
    try:
        name = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        if not name:
            raise ConnectionResetError("closed before the greeting")
    except BaseException:
        writer.close()
        raise
    return reader, writer, name


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
                reader, writer, name = await greeted(port, source)
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


HEARTBEAT = 1.0      # seconds between a heartbeat's echo and the next heartbeat (the default)
LOST_AFTER = 5.0     # a heartbeat with no echo by then is lost
LATE_AFTER = 1.0     # an echo slower than this is late (recorded, not lost)


async def fleet(port: int, sources: list[str], count: int, ramp: float, seconds: float, out: str,
                heartbeat: float = HEARTBEAT) -> None:
    events: list[tuple[float, int, str, str]] = []     # (wall time, device, kind, backend or detail)
    current: list[str | None] = [None] * count
    stop = asyncio.Event()
    changed = asyncio.Event()

    def note(i: int, kind: str, detail: str = "") -> None:
        events.append((round(time.time(), 4), i, kind, detail))

    async def hold(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> str:
        """Heartbeats until the connection ends: how it ended (eof, reset, lost, stop)."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + random.uniform(0, heartbeat)
        sent: float | None = None
        while not stop.is_set():
            wait = (sent + LOST_AFTER if sent is not None else next_beat) - loop.time()
            try:
                line = await asyncio.wait_for(reader.readline(), max(0.0, wait))
            except asyncio.TimeoutError:
                if sent is not None:
                    return "lost"
                writer.write(b"hb\n")
                sent = loop.time()
                continue
            except OSError as exc:   # a reset: how it came, for the record
                # (a heartbeat outstanding: sent and not echoed, ms ago; whether the FIN had come first)
                outstanding = f"{(loop.time() - sent) * 1000:.0f}" if sent is not None else "-"
                fin = getattr(reader, "_eof", None)
                return f"reset:{type(exc).__name__} hb_outstanding_ms={outstanding} fin_first={fin}"
            if not line:
                return "eof"
            if sent is not None:
                rtt = loop.time() - sent
                if rtt > LATE_AFTER:
                    note(i, "late", f"{rtt:.2f}")
                sent, next_beat = None, loop.time() + heartbeat
        return "stop"

    async def device(i: int) -> None:
        source = sources[i % len(sources)]
        await asyncio.sleep(ramp * i / count)
        while not stop.is_set():
            writer = None
            try:
                reader, writer, name = await greeted(port, source)
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                note(i, "failed", type(exc).__name__)
                if writer is not None:
                    writer.close()
                await asyncio.sleep(random.uniform(0.01, 0.2))
                continue
            current[i] = name
            note(i, "connect", name)
            changed.set()
            how = await hold(i, reader, writer, name)
            current[i] = None
            changed.set()
            if how != "stop":
                kind, _, detail = how.partition(":")
                note(i, kind, f"{name} {detail}" if detail else name)
            writer.close()
            if not stop.is_set():
                await asyncio.sleep(random.uniform(0.01, 0.2))   # devices reconnect 10-200 ms after a close

    async def probe_one(i: int, gate: asyncio.Semaphore) -> str | None:
        async with gate:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(sources[i % len(sources)], 0)), 5)
                return (await asyncio.wait_for(reader.readline(), 5)).decode().strip() or None
            except (OSError, asyncio.TimeoutError, ConnectionError):
                return None
            finally:
                if writer is not None:
                    writer.close()

    def connected() -> int:
        return sum(1 for c in current if c is not None)

    async def wait_for_count(n: int, limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while connected() < n and loop.time() < deadline:
            changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, min(0.5, deadline - loop.time())))

    tasks = [asyncio.create_task(device(i)) for i in range(count)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    def answer(data: dict[str, Any]) -> None:
        print(json.dumps(data), flush=True)

    lines: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:   # a daemon thread: never keeps the process alive past its deadline
        for text in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, text)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        while loop.time() < deadline:
            try:
                line = await asyncio.wait_for(lines.get(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "wait":
                await wait_for_count(int(words[1]), float(words[2]))
            elif words[0] == "probe":
                gate = asyncio.Semaphore(64)
                answer({"t": time.time(), "probe": await asyncio.gather(*(probe_one(i, gate) for i in range(count)))})
                continue
            answer({"t": time.time(), "connected": connected(), "current": current})
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with open(out, "w") as fh:
            json.dump({"count": count, "sources": sources, "events": events}, fh)
        answer({"done": True})


def _sources(spec: str) -> list[str]:
    first, n = spec.split("+")
    base = ipaddress.IPv4Address(first)
    addresses = [str(base + k) for k in range(int(n))]
    if not all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("127.0.0.0/8") for a in addresses):
        raise SystemExit(f"sources must stay in 127.0.0.0/8: {spec}")
    return addresses


def main() -> None:
    _raise_nofile()
    if sys.argv[1] == "backends":
        asyncio.run(backends([int(p) for p in sys.argv[2:]]))
    elif sys.argv[1] == "fleet":
        port, spec, count, ramp, seconds, out = sys.argv[2:8]
        beat = float(sys.argv[8]) if len(sys.argv) > 8 else HEARTBEAT
        asyncio.run(fleet(int(port), _sources(spec), int(count), float(ramp), float(seconds), out, beat))
    else:
        port, count, sources, seconds, out, arrive = sys.argv[2:8]
        asyncio.run(devices(int(port), int(count), int(sources), float(seconds), out, float(arrive)))


if __name__ == "__main__":
    main()
