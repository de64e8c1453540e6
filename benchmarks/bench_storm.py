"""A connection storm: N conat clients connecting at once, as after a hub restart.

    .venv/bin/python benchmarks/bench_storm.py [--connections 10000] [--clients 4] [--runs 3]
                                               [--tree DIR ...]

Needs ``node`` and the npm ``socket.io-client`` in tests/node/node_modules. A hub runs as a
real ``twistd`` process (``DATA`` in a temporary directory, connection limits raised above
N); ``--clients`` node processes (benchmarks/node/storm.js, niced so that they do not starve
the hub) each open their share of the N connections at the same moment (WebSocket
transport, the hub password as cookie). Figures: seconds until every connection has its
``info`` (signed in), p50/p99 of the per-connection time from the start to ``info``, and
the hub's RSS per idle connection (RSS with the connections idle minus RSS before, divided by
the number signed in),
and the CPU seconds the hub and the clients used (on a machine with few cores the clients
can be the limit of the wall-clock figure: the hub's CPU per connection is the hub's own).
Also the kernel's listen-queue overflow counter over the storm (SYNs dropped by a full
accept queue are retried by the client after 1 s, 3 s, 7 s…; the counter is system-wide).

``--tree DIR`` (repeatable) runs the hub of another checkout (its ``.venv/bin/twistd``, or
this venv's with the checkout first on ``PYTHONPATH``):
the trees are measured in alternation, each ``--runs`` times, the clients always this
tree's; medians are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import support
from support import Hub

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = str(ROOT / "benchmarks" / "node" / "storm.js")
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"


def listen_overflows() -> int:
    """TcpExt ListenOverflows: connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def twistd(tree: Path, profile: str | None) -> str:
    """The tree's twistd; with ``profile``, a wrapper running it under cProfile (stats saved
    to ``profile`` when the hub stops)."""
    own = tree / ".venv" / "bin" / "twistd"
    path = str(own if own.exists() else Path(sys.executable).parent / "twistd")  # + PYTHONPATH=tree
    if profile is None:
        return path
    fd, wrapper = tempfile.mkstemp(prefix="twistd-profile-", suffix=".sh")
    os.write(fd, f'#!/bin/sh\nexec {shlex.quote(path)} --profile={shlex.quote(profile)} --profiler=cprofile '
                 f'--savestats "$@"\n'.encode())
    os.close(fd)
    os.chmod(wrapper, 0o755)
    return wrapper


def storm(tree: Path, node: str, connections: int, clients: int, nice: int, hub_args: list[str],
          profile: str | None = None) -> dict[str, Any]:
    support.TWISTD = twistd(tree, profile)
    limit = str(connections + 1000)
    hub = Hub(["--conat-max-connections", limit, "--conat-max-connections-per-user", limit, *hub_args],
              env={"PYTHONPATH": str(tree)})
    procs: list[subprocess.Popen[str]] = []
    try:
        process = psutil.Process(hub.pid)
        time.sleep(1)
        before = process.memory_info().rss
        shares = [connections // clients + (i < connections % clients) for i in range(clients)]
        for share in shares:
            procs.append(subprocess.Popen(
                ["nice", "-n", str(nice), node, NODE_SCRIPT, hub.url, f"hub_password={hub.password}", str(share)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        for p in procs:
            assert p.stdout is not None
            if json.loads(p.stdout.readline() or "{}").get("waiting") is not True:
                raise RuntimeError("a client did not start")
        overflows = listen_overflows()
        cpu0 = process.cpu_times()
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline() or "{}"))
        wall = time.monotonic() - t0
        cpu1 = process.cpu_times()
        overflows = listen_overflows() - overflows
        ms = sorted(m for r in results for m in r.get("ms", []))
        failed = sum(int(r.get("failed", 0)) for r in results)
        errors: dict[str, int] = {}
        for r in results:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        client_cpu = 0.0
        for p in procs:
            times = psutil.Process(p.pid).cpu_times()
            client_cpu += times.user + times.system + times.children_user + times.children_system
        time.sleep(2)
        after = process.memory_info().rss
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("close\n")
            p.stdin.flush()
        for p in procs:
            p.wait(timeout=120)
        return {
            "seconds": (ms[-1] / 1000) if ms else float("nan"), "wall": wall,
            "p50": pct(ms, 0.5) if ms else float("nan"), "p99": pct(ms, 0.99) if ms else float("nan"),
            "kib": (after - before) / 1024 / max(1, len(ms)), "before_mib": before / 2**20, "after_mib": after / 2**20,
            "failed": failed, "errors": errors, "overflows": overflows,
            "hub_cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), "client_cpu": client_cpu,
        }
    except BaseException:
        sys.stderr.write(hub.log_tail())
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4, help="node client processes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nice", type=int, default=5, help="niceness of the client processes")
    parser.add_argument("--tree", action="append", default=[], help="another checkout to compare (its .venv)")
    parser.add_argument("--hub-arg", action="append", default=[], help="extra option for the hub")
    parser.add_argument("--profile", help="run the hub under cProfile, stats to PROFILE.<n> (pstats format)")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "socket.io-client").is_dir():
        sys.exit("node and tests/node/node_modules are needed: make tests/node/node_modules/.installed")
    trees = [ROOT, *(Path(t).resolve() for t in args.tree)]
    print(f"# connection storm: {args.connections} conat connections at once from {args.clients} node processes "
          f"(nice {args.nice}); {os.cpu_count()} cores shared by the hub and the clients; {args.runs} runs per tree, "
          f"alternating; median (then every run)")
    found: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    for i in range(args.runs):
        for tree in trees:
            profile = f"{args.profile}.{len(trees) * i + trees.index(tree)}" if args.profile else None
            r = storm(tree, node, args.connections, args.clients, args.nice, args.hub_arg, profile)
            found[tree].append(r)
            print(f"  run {i + 1} {tree}: all signed in after {r['seconds']:.2f} s, p50 {r['p50']:.0f} ms, "
                  f"p99 {r['p99']:.0f} ms, {r['kib']:.1f} KiB/conn "
                  f"({r['before_mib']:.0f} -> {r['after_mib']:.0f} MiB), "
                  f"hub CPU {r['hub_cpu']:.1f} s, clients' CPU {r['client_cpu']:.1f} s, "
                  f"failed {r['failed']} {r['errors'] or ''}, "
                  f"listen overflows {r['overflows']}", flush=True)
    print()
    print(f"{'tree':28s} {'all signed in':>14s} {'p50':>9s} {'p99':>9s} {'KiB/conn':>9s} {'hub CPU':>8s} "
          f"{'ms/conn':>8s} {'failed':>7s}")
    for tree, rs in found.items():
        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)
        print(f"{str(tree)[-28:]:28s} {med('seconds'):12.2f} s {med('p50'):6.0f} ms {med('p99'):6.0f} ms "
              f"{med('kib'):9.1f} {med('hub_cpu'):6.1f} s {med('hub_cpu') * 1000 / args.connections:8.3f} "
              f"{sum(r['failed'] for r in rs):7d}")
        print(f"{'':28s} runs: {', '.join(format(r['seconds'], '.2f') for r in rs)} s; "
              f"{', '.join(format(r['kib'], '.1f') for r in rs)} KiB/conn; "
              f"hub CPU {', '.join(format(r['hub_cpu'], '.1f') for r in rs)} s")

if __name__ == "__main__":
    main()
