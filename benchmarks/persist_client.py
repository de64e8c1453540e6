"""Client side of bench_persist.py: this project's persist client, in its own process.

    python persist_client.py write   <url> <hub password> <path> <seconds> <in flight>
    python persist_client.py setmany <url> <hub password> <path> <seconds> <batch>
    python persist_client.py fill    <url> <hub password> <path> <count> <size>
    python persist_client.py getall  <url> <hub password> <path>
    python persist_client.py durable <url> <hub password> <path> <ack log>
    python persist_client.py feed    <url> <hub password> <path> <seconds>

With PERSIST_EPHEMERAL=1 in the environment the stream is opened ephemeral (in memory).

Prints one JSON line (``durable`` runs until SIGTERM and logs "value seq" per acknowledged
write, flushed before the next is counted).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from typing import Any

from twisted.internet import defer, task

from cocalc_hub.conat.client import Client, ConatError, connect
from cocalc_hub.conat.message import MSGPACK, encode
from cocalc_hub.conat.persist.client import PersistClient

WARMUP = 1.0


async def open_stream(reactor: Any, url: str, password: str, path: str,
                      changefeed: bool = False) -> tuple[Client, PersistClient]:
    client = connect(reactor, url, cookies={"hub_password": password}, inbox_prefix="_INBOX.hub-hub")
    await client.signed_in()
    ephemeral = os.environ.get("PERSIST_EPHEMERAL") == "1"
    p = PersistClient(client, path, timeout=10.0, changefeed=changefeed, ephemeral=ephemeral)
    for _ in range(100):
        try:
            await p.connect()
            return client, p
        except ConatError:  # the persist server may still be starting
            p.close()
            p = PersistClient(client, path, timeout=10.0, changefeed=changefeed, ephemeral=ephemeral)
            await task.deferLater(reactor, 0.2, lambda: None)
    raise SystemExit("could not open the stream")


async def write(reactor: Any, p: PersistClient, seconds: float, inflight: int) -> dict[str, Any]:
    payload = b"x" * 100
    acked = 0
    running = True

    async def loop() -> None:
        nonlocal acked
        while running:
            await p.set(raw=payload)
            acked += 1

    loops = [defer.ensureDeferred(loop()) for _ in range(inflight)]
    await task.deferLater(reactor, WARMUP, lambda: None)
    a0, t0 = acked, time.perf_counter()
    await task.deferLater(reactor, seconds, lambda: None)
    a1, t1 = acked, time.perf_counter()
    running = False
    await defer.DeferredList(loops)
    return {"acked": a1 - a0, "seconds": t1 - t0, "rate": (a1 - a0) / (t1 - t0)}


async def set_many(reactor: Any, p: PersistClient, seconds: float, batch: int) -> dict[str, Any]:
    items = [{"messageData": {"encoding": MSGPACK, "raw": b"x" * 100}} for _ in range(batch)]
    acked = 0
    t_end = None
    t0 = time.perf_counter()
    a0 = 0
    while True:
        now = time.perf_counter()
        if t_end is None and now - t0 >= WARMUP:
            a0, t0, t_end = acked, now, now + seconds
        if t_end is not None and now >= t_end:
            break
        results = await p.set_many(items)
        acked += sum(1 for r in results if "seq" in r)
    elapsed = time.perf_counter() - t0
    return {"acked": acked - a0, "seconds": elapsed, "rate": (acked - a0) / elapsed}


async def fill(p: PersistClient, count: int, size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for start in range(0, count, 5000):
        n = min(5000, count - start)
        await p.set_many([{"messageData": {"encoding": MSGPACK, "raw": encode(start + i) + b"x" * size}}
                          for i in range(n)])
    return {"filled": count, "seconds": time.perf_counter() - t0}


async def get_all(p: PersistClient) -> dict[str, Any]:
    t0 = time.perf_counter()
    count = batches = size = 0
    last = 0
    async for batch in p.get_all(timeout=600):
        batches += 1
        for m in batch:
            if m.seq <= last:
                raise SystemExit(f"out of order: {m.seq} after {last}")
            last = m.seq
            count += 1
            size += len(m.raw)
    return {"messages": count, "batches": batches, "bytes": size, "seconds": time.perf_counter() - t0,
            "client_max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


async def durable(reactor: Any, p: PersistClient, log_path: str) -> dict[str, Any]:
    """Write 0, 1, 2, … (50 in flight); log each acknowledged one; a failed write is retried
    (a retry may store a value twice: that is not a loss)."""
    log = open(log_path, "a", buffering=1)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    counter = iter(range(10 ** 9))
    retries = 0

    async def loop() -> None:
        nonlocal retries
        while not stopping:
            value = next(counter)
            while not stopping:
                try:
                    result = await p.set(value)
                except ConatError:
                    retries += 1
                    await task.deferLater(reactor, 0.1, lambda: None)
                    continue
                log.write(f"{value} {result['seq']}\n")
                break

    await defer.DeferredList([defer.ensureDeferred(loop()) for _ in range(50)])
    log.close()
    return {"retries": retries}


async def feed(reactor: Any, p: PersistClient, seconds: float) -> dict[str, Any]:
    """A changefeed reader: events and feed messages per second while another client writes."""
    events = 0

    def got(batch: list[dict[str, Any]]) -> None:
        nonlocal events
        events += len(batch)

    p.on_events = got
    await task.deferLater(reactor, WARMUP, lambda: None)
    assert p.sock is not None
    e0, m0, t0 = events, p.sock.receiver.last, time.perf_counter()
    await task.deferLater(reactor, seconds, lambda: None)
    e1, m1, t1 = events, p.sock.receiver.last, time.perf_counter()
    return {"events": e1 - e0, "messages": m1 - m0, "rate": (e1 - e0) / (t1 - t0),
            "per_message": (e1 - e0) / max(m1 - m0, 1)}


async def main(reactor: Any) -> None:
    mode, url, password, path, *rest = sys.argv[1:]
    client, p = await open_stream(reactor, url, password, path, changefeed=mode == "feed")
    if mode == "write":
        result = await write(reactor, p, float(rest[0]), int(rest[1]))
    elif mode == "setmany":
        result = await set_many(reactor, p, float(rest[0]), int(rest[1]))
    elif mode == "fill":
        result = await fill(p, int(rest[0]), int(rest[1]))
    elif mode == "getall":
        result = await get_all(p)
    elif mode == "durable":
        result = await durable(reactor, p, rest[0])
    elif mode == "feed":
        result = await feed(reactor, p, float(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result), flush=True)
    p.close()
    client.close()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
