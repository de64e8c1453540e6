"""Project manager figures: start/stop latency, 50 concurrent starts, memory per project.

    .venv/bin/python benchmarks/bench_projects.py [--runs 15] [--concurrent 50]

Start latency is measured from the start call to "running with the raw server answering"
(a GET of a file through the project's token-protected server returns 200).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from treq.client import HTTPClient
from twisted.internet import defer, task, threads
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from cocalc_hub.db.sql import SqlStore
from cocalc_hub.db.sqlite import SQLiteBackend
from cocalc_hub.projects import processes
from cocalc_hub.projects.manager import ManagerConfig, ProjectManager


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main(reactor: Any, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-projects-"))
    store = SqlStore(SQLiteBackend(tmp / "hub.db", reactor))
    await threads.deferToThread(store.prepare)
    await store.open()
    manager = ProjectManager(store, ManagerConfig(projects=str(tmp / "projects" / "[project_id]"),
                                                  idle_interval=0, start_timeout=60,
                                                  allow_root=True), reactor)  # run as root in CI: meant
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    owner = await store.create_account(email_address="bench@example.com", password_hash="x")

    async def new() -> str:
        project = await store.create_project(owner_id=owner.account_id)
        manager.ensure_home(project.project_id).joinpath("f.txt").write_text("x")
        return project.project_id

    async def raw_ok(project_id: str) -> bool:
        target = manager.local_target(project_id)
        assert target is not None
        r = await http.get(f"http://127.0.0.1:{target[0]}/{project_id}/raw/f.txt",
                           headers=Headers({"X-CoCalc-Project-Token": [target[1]]}))
        await r.content()
        return bool(r.code == 200)

    starts, stops = [], []
    for _ in range(args.runs):
        pid = await new()
        t0 = time.perf_counter()
        await manager.start(pid)
        assert await raw_ok(pid)
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await manager.stop(pid)
        stops.append(time.perf_counter() - t0)
    print(f"start → running with raw server answering, {args.runs} runs: "
          f"median {statistics.median(starts)*1000:.0f} ms, p90 {pct(starts, 0.9)*1000:.0f} ms, "
          f"min {min(starts)*1000:.0f} ms")
    print(f"stop of a cooperative project, {args.runs} runs: median {statistics.median(stops)*1000:.0f} ms, "
          f"p90 {pct(stops, 0.9)*1000:.0f} ms")

    me = psutil.Process()
    ids = [await new() for _ in range(args.concurrent)]
    rss_before = me.memory_info().rss
    t0 = time.perf_counter()
    results = await defer.DeferredList([defer.ensureDeferred(manager.start(p)) for p in ids], consumeErrors=True)
    wall = time.perf_counter() - t0
    ok = sum(1 for success, state in results if success and state["state"] == "running")
    answering = sum([await raw_ok(p) for p in ids if manager.local_target(p)])
    await task.deferLater(reactor, 1.0, lambda: None)
    rss_after = me.memory_info().rss
    project_rss = [processes.rss_bytes(manager.active[p].pid) for p in ids if p in manager.active]
    print(f"{args.concurrent} concurrent starts: {ok} running, {answering} raw servers answering, "
          f"{args.concurrent - ok} errors, all running after {wall:.1f} s")
    print(f"hub memory per running project: {(rss_after - rss_before) / args.concurrent / 1024:.0f} KiB "
          f"(hub RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MiB)")
    if project_rss:
        print(f"project program RSS: median {statistics.median(project_rss) / 2**20:.1f} MiB per project")
    t0 = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(manager.stop(p)) for p in ids])
    print(f"{args.concurrent} concurrent stops: {time.perf_counter() - t0:.1f} s")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--concurrent", type=int, default=50)
    ns = parser.parse_args()
    task.react(lambda r: defer.ensureDeferred(main(r, ns)))
