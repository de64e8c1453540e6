"""Request/reply with upstream's client frame sequence (benchmarks/node/bench_reqrep.js).

    .venv/bin/python benchmarks/bench_reqrep.py [--runs 5] [--requests 5000] [--in-flight 1 16]
        [--compare /path/to/other/checkout ...] [--own] [--profile DIR]

A hub runs as a real ``twistd`` process per round; the node client (npm socket.io-client,
compression declined by the hub) has a requester and a responder connection: the
requester's inbox is subscribed once, each request is a ``publish`` with an ack and the
``CN-Reply`` header, the responder answers with a ``publish`` with an ack (``respond()``).
Prints req/s, p50 and p99 per number of requests in flight (median of ``--runs`` rounds,
then every round), and the hub's CPU time per request (less sensitive to a busy machine
than the rate).

``--compare`` alternates rounds between this checkout's hub and the hub of another
checkout (its code put first on ``PYTHONPATH``; same venv), so both see the same machine
load. ``--own`` adds this project's own node request path (bench_conat.js reqrep: the
reply is a fire-and-forget publish) to each round. ``--profile DIR`` runs the hub under
cProfile (twistd ``--profile``) for one extra round and prints the top functions by
internal time.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import Hub

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = str(ROOT / "benchmarks" / "node" / "bench_reqrep.js")
OWN_SCRIPT = str(ROOT / "benchmarks" / "node" / "bench_conat.js")
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"

UPSTREAM_SEQUENTIAL = 2161  # req/s of upstream's server with upstream's client (issue 14)


def one_round(node: str, checkout: Path | None, requests: int, in_flight: list[int],
              profile: Path | None = None, own: bool = False) -> dict[int, dict[str, Any]]:
    env = {"PYTHONPATH": str(checkout)} if checkout is not None else None
    twistd = ["--profile", str(profile), "--profiler", "cprofile", "--savestats"] if profile else None
    hub = Hub(env=env, twistd_args=twistd)
    out = {}
    try:
        for n in in_flight:
            proc = subprocess.run([node, NODE_SCRIPT, hub.url, f"hub_password={hub.password}", str(requests), str(n)],
                                  capture_output=True, text=True, timeout=120 + requests / 100, cwd=ROOT,
                                  env={**os.environ, "BENCH_HUB_PID": str(hub.pid)})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"bench_reqrep.js failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                                   f"{proc.stderr[-2000:]}\n{hub.log_tail()}")
            out[n] = json.loads(lines[-1])
        if own:
            proc = subprocess.run([node, OWN_SCRIPT, "reqrep", hub.url, f"hub_password={hub.password}", str(requests)],
                                  capture_output=True, text=True, timeout=120 + requests / 100, cwd=ROOT,
                                  env={**os.environ, "BENCH_HUB_PID": str(hub.pid)})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"bench_conat.js reqrep failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            out[0] = json.loads(lines[-1])
    finally:
        hub.stop()
    return out


def summary(name: str, results: list[dict[int, dict[str, Any]]], in_flight: list[int]) -> None:
    for n in in_flight:
        label = f"in flight {n:3d}" if n else "own client  "
        rates = [r[n]["rate"] for r in results]
        p50s = [r[n]["p50_ms"] for r in results]
        p99s = [r[n]["p99_ms"] for r in results]
        hub_cpu = statistics.median(r[n]["hub_cpu"] for r in results)
        per_req = statistics.median(r[n]["hub_cpu"] * r[n]["seconds"] / r[n]["requests"] * 1e6 for r in results)
        rate, p50 = statistics.median(rates), statistics.median(p50s)
        print(f"{name:10s} {label}: {rate:7.0f} req/s  p50 {p50:.3f} ms"
              f"  p99 {statistics.median(p99s):.3f} ms  (hub CPU {hub_cpu:.0%}, {per_req:.0f} us/req)   runs: "
              + ", ".join(f"{v:.0f}" for v in rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="other checkouts to alternate with (e.g. the base commit)")
    parser.add_argument("--own", action="store_true",
                        help="also this project's own node request path (bench_conat.js reqrep: fire-and-forget reply)")
    parser.add_argument("--profile", type=Path, help="directory for a cProfile of the hub (one extra round)")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "socket.io-client").is_dir():
        sys.exit("node and tests/node/node_modules are needed: make tests/node/node_modules/.installed")
    print(f"# request/reply, upstream client's frame sequence; {args.requests} requests per run; "
          f"{os.cpu_count()} cores shared by hub and client; upstream's server: {UPSTREAM_SEQUENTIAL} req/s sequential")
    checkouts: list[tuple[str, Path | None]] = [("this", None)]
    for i, other in enumerate(args.compare):
        checkouts.insert(i, (f"compare{i + 1}" if len(args.compare) > 1 else "compare", other.resolve()))
    results: dict[str, list[dict[int, dict[str, Any]]]] = {name: [] for name, _ in checkouts}
    for _ in range(args.runs):
        for name, checkout in checkouts:
            results[name].append(one_round(node, checkout, args.requests, args.in_flight, own=args.own))
    for name, _ in checkouts:
        if results[name]:
            summary(name, results[name], args.in_flight + ([0] if args.own else []))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for name, checkout in checkouts:
            path = args.profile / f"hub-{name}.prof"
            one_round(node, checkout, args.requests, args.in_flight, profile=path)
            print(f"\n## cProfile of the hub ({name}), top 25 by internal time: {path}")
            pstats.Stats(str(path)).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
