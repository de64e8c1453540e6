"""The conat broker under load, driven over real sockets by node and by the Python client.

    .venv/bin/python benchmarks/bench_conat.py [--runs 3] [--seconds 5] [--requests 5000] [--idle 10000]

Needs ``node`` and the npm ``socket.io-client`` in tests/node/node_modules
(``make tests/node/node_modules/.installed``). A hub runs as a real ``twistd`` process
(``DATA`` in a temporary directory, connection limits raised to 12 000). Clients, in their
own processes: npm ``socket.io-client`` with the conat framing written out
(benchmarks/node/bench_conat.js) and this project's Python conat client
(benchmarks/conat_py_client.py). Messages are 100 bytes. Figures: pub/sub one publisher
to one subscriber (fire-and-forget, bounded by a window of messages not yet received),
sequential request/reply (rate, p50, p99), request/reply with the frame sequence of
upstream's client (benchmarks/node/bench_reqrep.js; 1 and 16 requests in flight), fan-out
to 20 subscribers, and the hub's RSS
per idle signed-in connection (10 000 node connections). Each figure is measured
``--runs`` times; the median is printed first, then every run. Also checks that the hub's
sockets have TCP_NODELAY (read from the hub's own file descriptors with pidfd_getfd).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import Hub, rss_kib

ROOT = Path(__file__).resolve().parent.parent
NODE_SCRIPT = str(ROOT / "benchmarks" / "node" / "bench_conat.js")
REQREP_SCRIPT = str(ROOT / "benchmarks" / "node" / "bench_reqrep.js")
PY_CLIENT = str(ROOT / "benchmarks" / "conat_py_client.py")
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
NODE, PYTHON = "node socket.io-client", "python conat client"

TARGET_PUBSUB = 21_000  # msgs/s
TARGET_REQ = 1_250  # req/s
TARGET_P50 = 0.74  # ms
TARGET_FANOUT = 40_000  # deliveries/s
TARGET_IDLE_KIB = 100  # KiB per idle connection
UPSTREAM_REQ = 2161  # req/s, upstream's server with upstream's client, sequential (issue 14)


def run_json(cmd: list[str], timeout: float, hub: Hub) -> dict[str, Any]:
    """Run a client; its JSON line (figures, and the CPU the hub and the client used while
    measuring: the client reads the hub's /proc/<pid>/stat)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "BENCH_HUB_PID": str(hub.pid)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        output = proc.stdout[-2000:] + proc.stderr[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{output}")
    return dict(json.loads(lines[-1]))


def nodelay(pid: int, port: int) -> tuple[int, int]:
    """(established sockets of the hub on ``port``, how many have TCP_NODELAY): the hub's
    descriptors are duplicated into this process with pidfd_getfd(2) and asked."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
            inodes.add(fields[9])
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    total = on = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not (target.startswith("socket:[") and target[8:-1] in inodes):
                continue
            local = libc.syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd
            if local < 0:
                raise OSError(ctypes.get_errno(), "pidfd_getfd: " + os.strerror(ctypes.get_errno()))
            s = socket.socket(fileno=local)
            try:
                total += 1
                on += bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return total, on


def verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def runs_text(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def cpu_text(results: list[dict[str, Any]]) -> str:
    hub = statistics.median(r["hub_cpu"] for r in results)
    client = statistics.median(r["client_cpu"] for r in results)
    return f"(CPU while measuring: hub {hub:.0%}, client process {client:.0%} of a core)"


def idle_run(node: str, count: int, hub: Hub, check_nodelay: bool) -> tuple[int, int, int, float, str | None]:
    """Open ``count`` signed-in connections, hold them, close them: RSS before, with them,
    after closing; seconds the sign-in took; the TCP_NODELAY finding."""
    time.sleep(1)
    before = rss_kib(hub.pid)
    proc = subprocess.Popen([node, NODE_SCRIPT, "idle", hub.url, f"hub_password={hub.password}", str(count), "50"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        if ready.get("ready") != count:
            raise RuntimeError(f"not every connection signed in: {ready}")
        time.sleep(1)
        after = rss_kib(hub.pid)
        found = None
        if check_nodelay:
            try:
                total, on = nodelay(hub.pid, hub.port)
                found = f"TCP_NODELAY is set on {on} of the hub's {total} established sockets on its port"
            except OSError as e:
                found = f"TCP_NODELAY could not be checked here ({e})"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.stdout.readline()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1)
    return before, after, rss_kib(hub.pid), float(ready["seconds"]), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time of a throughput run")
    parser.add_argument("--requests", type=int, default=5000, help="requests per request/reply run")
    parser.add_argument("--idle", type=int, default=10000, help="idle connections (0: skip)")
    parser.add_argument("--window", type=int, default=1000, help="messages in flight in pub/sub")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "socket.io-client").is_dir():
        sys.exit("node and tests/node/node_modules are needed: make tests/node/node_modules/.installed")
    s, w, n = args.seconds, args.window, args.runs
    hub = Hub(["--conat-max-connections", "12000", "--conat-max-connections-per-user", "12000"])
    try:
        print(f"# conat broker: twistd cocalc-hub on 127.0.0.1; {os.cpu_count()} cores shared by the hub and the "
              f"client process; {n} runs per figure (median, then every run); 100-byte messages")
        cookie = f"hub_password={hub.password}"

        def node_cmd(*a: Any) -> list[str]:
            return [node, NODE_SCRIPT, str(a[0]), hub.url, cookie, *map(str, a[1:])]

        def py_cmd(*a: Any) -> list[str]:
            return [sys.executable, PY_CLIENT, str(a[0]), hub.url, hub.password, *map(str, a[1:])]

        timeout = s + 120
        print(f"\n## pub/sub, 1 publisher -> 1 subscriber (fire-and-forget, window {w} msgs); "
              f"target >= {TARGET_PUBSUB} msgs/s")
        for name, cmd in ((NODE, node_cmd("pubsub", s, w)), (PYTHON, py_cmd("pubsub", s, w))):
            results = [run_json(cmd, timeout, hub) for _ in range(n)]
            rates = [r["rate"] for r in results]
            med = statistics.median(rates)
            print(f"{name:22s} {med:9.0f} msgs/s   runs: {runs_text(rates, '.0f')}   "
                  f"{verdict(med >= TARGET_PUBSUB)}   {cpu_text(results)}")

        print(f"\n## request/reply, sequential ({args.requests} requests; requester and responder are two "
              f"connections of one client process); target >= {TARGET_REQ} req/s with p50 <= {TARGET_P50} ms")
        for name, cmd in ((NODE, node_cmd("reqrep", args.requests)), (PYTHON, py_cmd("reqrep", args.requests))):
            results = [run_json(cmd, timeout + args.requests / 100, hub) for _ in range(n)]
            rates = [r["rate"] for r in results]
            p50s = [r["p50_ms"] for r in results]
            p99s = [r["p99_ms"] for r in results]
            med, p50 = statistics.median(rates), statistics.median(p50s)
            print(f"{name:22s} {med:9.0f} req/s   p50 {p50:.3f} ms   p99 {statistics.median(p99s):.3f} ms   "
                  f"{verdict(med >= TARGET_REQ and p50 <= TARGET_P50)}   {cpu_text(results)}")
            print(f"{'':22s} runs: {runs_text(rates, '.0f')} req/s; p50 {runs_text(p50s, '.3f')} ms; "
                  f"p99 {runs_text(p99s, '.3f')} ms")

        print(f"\n## request/reply as upstream's client does it (inbox subscribed once; request = publish with "
              f"ack and CN-Reply; reply = publish with ack, as respond(); benchmarks/node/bench_reqrep.js); "
              f"{args.requests} requests; upstream's server: {UPSTREAM_REQ} req/s sequential")
        for in_flight in (1, 16):
            cmd = [node, REQREP_SCRIPT, hub.url, cookie, str(args.requests), str(in_flight)]
            results = [run_json(cmd, timeout + args.requests / 100, hub) for _ in range(n)]
            rates = [r["rate"] for r in results]
            p50s = [r["p50_ms"] for r in results]
            p99s = [r["p99_ms"] for r in results]
            med = statistics.median(rates)
            label = f"{NODE}, {in_flight} in flight"
            print(f"{label:34s} {med:7.0f} req/s   p50 {statistics.median(p50s):.3f} ms   "
                  f"p99 {statistics.median(p99s):.3f} ms   {cpu_text(results)}")
            print(f"{'':34s} runs: {runs_text(rates, '.0f')} req/s; p50 {runs_text(p50s, '.3f')} ms; "
                  f"p99 {runs_text(p99s, '.3f')} ms")

        print(f"\n## fan-out, 1 publisher -> 20 subscribers (20 connections; window 100 msgs); "
              f"target >= {TARGET_FANOUT} deliveries/s")
        for name, cmd in ((NODE, node_cmd("fanout", s, 20, 100)), (PYTHON, py_cmd("fanout", s, 20, 100))):
            results = [run_json(cmd, timeout, hub) for _ in range(n)]
            rates = [r["rate"] for r in results]
            med = statistics.median(rates)
            print(f"{name:22s} {med:9.0f} deliveries/s   runs: {runs_text(rates, '.0f')}   "
                  f"{verdict(med >= TARGET_FANOUT)}   {cpu_text(results)}")
    except BaseException:
        sys.stderr.write(hub.log_tail())
        raise
    finally:
        hub.stop()

    count = args.idle or 20
    found = None
    if args.idle:
        print(f"\n## {count} idle connections ({NODE}; all signed in, i.e. info received), hub RSS "
              f"(VmRSS; a fresh hub each run); target <= {TARGET_IDLE_KIB} KiB per connection")
    per_conn = []
    for i in range(n if args.idle else 1):
        hub = Hub(["--conat-max-connections", "12000", "--conat-max-connections-per-user", "12000"])
        try:
            before, after, closed, took, nd = idle_run(node, count, hub, check_nodelay=i == 0)
            found = found or nd
            if not args.idle:
                break
            kib = (after - before) / count
            per_conn.append(kib)
            print(f"run {i + 1}: RSS before {before / 1024:.1f} MiB, with {count} connections "
                  f"{after / 1024:.1f} MiB (+{kib:.1f} KiB each; all signed in after {took:.1f} s), "
                  f"after closing them {closed / 1024:.1f} MiB")
            if i == n - 1:
                _, again, closed2, _, _ = idle_run(node, count, hub, check_nodelay=False)
                print(f"       the same {count} again on that hub: {again / 1024:.1f} MiB "
                      f"({(again - after) / count:+.1f} KiB each against the first time), "
                      f"after closing {closed2 / 1024:.1f} MiB")
        except BaseException:
            sys.stderr.write(hub.log_tail())
            raise
        finally:
            hub.stop()
    if per_conn:
        med = statistics.median(per_conn)
        print(f"{NODE:22s} {med:9.1f} KiB per idle connection   runs: {runs_text(per_conn, '.1f')}   "
              f"{verdict(med <= TARGET_IDLE_KIB)}")
    print(f"\n## {found}")


if __name__ == "__main__":
    main()
