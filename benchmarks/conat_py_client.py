"""Python conat client side of bench_conat.py (this project's client, its own process).

    python conat_py_client.py pubsub <url> <hub password> <seconds> <window>
    python conat_py_client.py reqrep <url> <hub password> <requests>
    python conat_py_client.py fanout <url> <hub password> <seconds> <subscribers> <window>

Prints one JSON line with the figures (same shapes as benchmarks/node/bench_conat.js).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from cocalc_hub.conat.client import Client, Message, connect, random_id

PAYLOAD = b"x" * 100
WARMUP = 1.0


def hub_cpu() -> float | None:
    pid = os.environ.get("BENCH_HUB_PID")
    if not pid:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class CpuMark:
    """CPU (in cores) used by this process and by the hub (pid in BENCH_HUB_PID) since creation."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.self = time.process_time()
        self.hub = hub_cpu()

    def since(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t
        hub = hub_cpu()
        return {"client_cpu": (time.process_time() - self.self) / wall,
                "hub_cpu": None if hub is None or self.hub is None else (hub - self.hub) / wall}


async def clients(reactor: Any, url: str, password: str, n: int) -> list[Client]:
    out = [connect(reactor, url, cookies={"hub_password": password}, inbox_prefix="_INBOX.hub-hub")
           for _ in range(n)]
    for c in out:
        await c.signed_in()
    return out


async def measure(reactor: Any, seconds: float, counter: dict[str, int]) -> tuple[int, float, dict[str, Any]]:
    await task.deferLater(reactor, WARMUP, lambda: None)
    r0, t0, mark = counter["recv"], time.perf_counter(), CpuMark()
    await task.deferLater(reactor, seconds, lambda: None)
    return counter["recv"] - r0, time.perf_counter() - t0, mark.since()


async def pubsub(reactor: Any, url: str, password: str, seconds: float, window: int) -> dict[str, Any]:
    pub, sub = await clients(reactor, url, password, 2)
    subject = f"bench.ps.{random_id()}"
    state = {"sent": 0, "recv": 0, "running": 1}

    def pump() -> None:
        while state["running"] and state["sent"] - state["recv"] < window:
            pub.publish_sync(subject, raw=PAYLOAD)
            state["sent"] += 1

    def received(_: Message) -> None:
        state["recv"] += 1
        if state["sent"] - state["recv"] <= window // 2:
            pump()

    await sub.subscribe(subject, callback=received)
    pump()
    n, elapsed, cpu = await measure(reactor, seconds, state)
    state["running"] = 0
    for c in (pub, sub):
        c.close()
    return {"messages": n, "seconds": elapsed, "rate": n / elapsed, **cpu}


async def reqrep(reactor: Any, url: str, password: str, requests: int) -> dict[str, Any]:
    responder, requester = await clients(reactor, url, password, 2)
    subject = f"bench.rr.{random_id()}"
    await responder.subscribe(subject, queue="0", callback=lambda msg: msg.respond_sync(raw=msg.raw))
    await requester.request(subject, raw=PAYLOAD)  # the inbox is ready
    warmup = min(500, requests)
    latencies = []
    t0, mark = time.perf_counter(), CpuMark()
    for i in range(warmup + requests):
        if i == warmup:
            t0, mark = time.perf_counter(), CpuMark()
        start = time.perf_counter()
        await requester.request(subject, raw=PAYLOAD, timeout=10)
        if i >= warmup:
            latencies.append((time.perf_counter() - start) * 1000)
    elapsed = time.perf_counter() - t0
    cpu = mark.since()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))]

    for c in (requester, responder):
        c.close()
    return {"requests": requests, "seconds": elapsed, "rate": requests / elapsed, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), **cpu}


async def fanout(reactor: Any, url: str, password: str, seconds: float, count: int, window: int) -> dict[str, Any]:
    pub, *subs = await clients(reactor, url, password, count + 1)
    subject = f"bench.fo.{random_id()}"
    state = {"sent": 0, "recv": 0, "running": 1}

    def pump() -> None:
        while state["running"] and state["sent"] * count - state["recv"] < window * count:
            pub.publish_sync(subject, raw=PAYLOAD)
            state["sent"] += 1

    def received(_: Message) -> None:
        state["recv"] += 1
        if state["sent"] * count - state["recv"] <= window * count // 2:
            pump()

    for s in subs:
        await s.subscribe(subject, callback=received)
    pump()
    n, elapsed, cpu = await measure(reactor, seconds, state)
    state["running"] = 0
    for c in (pub, *subs):
        c.close()
    return {"deliveries": n, "seconds": elapsed, "rate": n / elapsed, **cpu}


def main(reactor: Any) -> defer.Deferred[None]:
    mode, url, password, *rest = sys.argv[1:]
    nums = [float(x) for x in rest]

    async def run() -> None:
        if mode == "pubsub":
            out = await pubsub(reactor, url, password, nums[0], int(nums[1]))
        elif mode == "reqrep":
            out = await reqrep(reactor, url, password, int(nums[0]))
        elif mode == "fanout":
            out = await fanout(reactor, url, password, nums[0], int(nums[1]), int(nums[2]))
        else:
            raise SystemExit(f"unknown mode {mode}")
        print(json.dumps(out), flush=True)
        await task.deferLater(reactor, 0.1, lambda: None)

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main)
