"""Conat persist with the SQLite backend: write rate, getAll memory, kill -9 durability.

    .venv/bin/python benchmarks/bench_persist.py [--runs 3] [--seconds 5] [--messages 100000] [--cycles 20]
        [--only writes|getall|kill] [--only-feed]

Real processes throughout: ``twistd cocalc-hub`` (DATA in a temporary directory; SQLite
stream files under DATA/sync, WAL with synchronous=FULL and group commit) and persist
clients in their own processes, talking through the broker's WebSocket: this project's
(benchmarks/persist_client.py) and, when node and tests/node/node_modules are there, one
written from the protocol spec on npm socket.io-client (benchmarks/node/bench_persist.js).
Figures:

* acknowledged writes/s into one stream: ``set`` requests with 256 or 512 in flight (each
  one a conat request answered after its transaction committed; the node client checks at
  the end that the stream holds every acknowledged write), and ``setMany`` of 500;
  target >= 10 000/s; and ``set`` while another process follows the stream's changefeed
  (events/s it receives, and events per feed message: what batching is left now that every
  change reaches the feeds before its writer's reply), on SQLite and on an ephemeral
  (in-memory: no group commit) stream;
* getAll of ``--messages`` 1 KB messages: time, and the hub's and the client's memory while
  it streams (both must stay far below the stream's size);
* kill -9 loop: a broker process (``--conat-server``) and a persist process
  (``--conat-persist``, CONAT_SERVER pointing at the broker); a writer keeps 50 writes in
  flight and logs every acknowledged one; the persist process is killed with SIGKILL and
  restarted ``--cycles`` times; at the end the stream file itself is read with sqlite3 and
  every acknowledged value must be in it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
from support import Hub, rss_kib

ROOT = Path(__file__).resolve().parent.parent
CLIENT = str(ROOT / "benchmarks" / "persist_client.py")
NODE_CLIENT = str(ROOT / "benchmarks" / "node" / "bench_persist.js")
NODE_MODULES = ROOT / "tests" / "node" / "node_modules" / "socket.io-client"
TARGET_WRITES = 10_000


def run_client(hub: Hub, *args: Any, timeout: float = 300, ephemeral: bool = False) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, CLIENT, str(args[0]), hub.url, hub.password, *map(str, args[1:])],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PERSIST_EPHEMERAL": "1" if ephemeral else "0"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"persist_client {args[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def parallel(hub: Hub, count: int, *args: Any) -> float:
    """``count`` client processes at once, all on the same stream; their summed rate."""
    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(lambda _: run_client(hub, *args), range(count)))
    return sum(r["rate"] for r in results)


def run_node(hub: Hub, path: str, seconds: float, inflight: int) -> dict[str, Any]:
    proc = subprocess.run(["node", NODE_CLIENT, "write", hub.url, f"hub_password={hub.password}", path, str(seconds),
                           str(inflight)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "BENCH_HUB_PID": str(hub.pid)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench_persist.js failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    result = dict(json.loads(lines[-1]))
    if result["errors"] or result["stored"] != result["total_acked"]:
        raise RuntimeError(f"acknowledged writes missing or refused: {result}")
    return result


def with_reader(hub: Hub, path: str, seconds: float, ephemeral: bool = False) -> dict[str, Any]:
    """One writer (256 in flight) while another process follows the stream's changefeed."""
    with ThreadPoolExecutor(2) as pool:
        reader = pool.submit(run_client, hub, "feed", path, seconds, ephemeral=ephemeral)
        writer = pool.submit(run_client, hub, "write", path, seconds, 256, ephemeral=ephemeral)
        return {"rate": writer.result()["rate"], "feed": reader.result()}


def writes(args: argparse.Namespace) -> None:
    print(f"## acknowledged writes into one stream (SQLite, synchronous=FULL); target >= {TARGET_WRITES}/s")
    print("   node: a persist client on npm socket.io-client (benchmarks/node/bench_persist.js), as")
    print("   browsers and projects talk to persist; python: this project's client, which is CPU-bound")
    print("   itself (2 cores here, shared with the hub), so several processes show what the hub sustains")
    hub = Hub()
    try:
        node = shutil.which("node") is not None and NODE_MODULES.is_dir()
        cases: list[tuple[str, Any]] = []
        if node:
            for inflight in (256, 512):
                cases.append((f"set, node client x {inflight} in flight",
                              lambda path, n=inflight: run_node(hub, path, args.seconds, n)))
        else:
            print("   (node or tests/node/node_modules missing: node cases skipped)")
        for n in (1, 2, 3):
            cases.append((f"set, {n} python client{'s' if n > 1 else ''} x {256 // n} in flight",
                          lambda path, n=n: {"rate": parallel(hub, n, "write", path, args.seconds, 256 // n)}))
        cases.append(("setMany of 500, 1 python client",
                      lambda path: {"rate": parallel(hub, 1, "setmany", path, args.seconds, 500)}))
        cases.append(("set, 1 python x 256 + changefeed reader", lambda path: with_reader(hub, path, args.seconds)))
        cases.append(("  the same, ephemeral (memory) stream",
                      lambda path: with_reader(hub, path, args.seconds, ephemeral=True)))
        if args.only_feed:
            cases = cases[-2:]
        for i, (label, run_case) in enumerate(cases):
            results = [run_case(f"hub/bench/w{i}-{run}") for run in range(args.runs)]
            rates = [r["rate"] for r in results]
            med = statistics.median(rates)
            cpu = ""
            if "hub_cpu" in results[0]:
                cpu = (f"   hub CPU {statistics.median(r['hub_cpu'] for r in results):.2f} cores, client "
                       f"{statistics.median(r['client_cpu'] for r in results):.2f}")
            if "feed" in results[0]:
                cpu = (f"   reader: {statistics.median(r['feed']['rate'] for r in results):.0f} events/s, "
                       f"{statistics.median(r['feed']['per_message'] for r in results):.1f} per feed message")
            print(f"{label:38s} {med:9.0f} writes/s   runs: {', '.join(f'{r:.0f}' for r in rates)}   "
                  f"{'ok' if med >= TARGET_WRITES else 'below target'}{cpu}")
    finally:
        hub.stop()


def sample_peak(pid: int, peak: list[int], stop: threading.Event) -> None:
    """Keep the highest RSS of ``pid`` in ``peak[0]`` until ``stop``."""
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib(pid))
        time.sleep(0.02)


def get_all(args: argparse.Namespace) -> None:
    n = args.messages
    print(f"\n## getAll of {n} messages of 1 KB ({n / 1000:.0f} MB) from one stream")
    hub = Hub()
    try:
        path = "hub/bench/getall"
        filled = run_client(hub, "fill", path, n, 1000)
        print(f"filled in {filled['seconds']:.1f} s (setMany of 5000)")
        for i in range(args.runs):
            time.sleep(1)
            before = rss_kib(hub.pid)
            peak = [before]
            stop = threading.Event()

            sampler = threading.Thread(target=sample_peak, args=(hub.pid, peak, stop))
            sampler.start()
            try:
                r = run_client(hub, "getall", path)
            finally:
                stop.set()
                sampler.join()
            if r["messages"] != n:
                raise RuntimeError(f"getAll returned {r['messages']} of {n} messages")
            print(f"run {i + 1}: {r['messages']} messages in {r['batches']} replies, {r['seconds']:.2f} s "
                  f"({r['messages'] / r['seconds']:.0f} msgs/s); hub RSS {before / 1024:.0f} MiB -> peak "
                  f"{peak[0] / 1024:.0f} MiB (+{(peak[0] - before) / 1024:.0f} MiB); client max RSS "
                  f"{r['client_max_rss_kib'] / 1024:.0f} MiB")
    finally:
        hub.stop()


def kill_loop(args: argparse.Namespace) -> None:
    print(f"\n## kill -9 of the persist process, {args.cycles} cycles, 50 writes in flight")
    tmp = Path(tempfile.mkdtemp(prefix="bench-persist-kill-"))
    data = tmp / "data"
    broker = Hub(["--conat-server"], data=data, name="broker")
    env = {"CONAT_SERVER": broker.url}
    persist = Hub(["--conat-persist"], data=data, env=env, http=False, name="persist")
    path = "hub/bench/durable"
    ack_log = tmp / "acked.txt"
    writer = subprocess.Popen([sys.executable, CLIENT, "durable", broker.url, broker.password, path, str(ack_log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)

    def acked() -> int:
        try:
            with open(ack_log) as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    try:
        downtime = []
        for cycle in range(args.cycles):
            start = acked()
            deadline = time.time() + 60
            while acked() < start + 300:  # the writer made progress against this persist process
                if writer.poll() is not None:
                    raise RuntimeError(f"the writer died:\n{writer.stderr.read()[-3000:] if writer.stderr else ''}")
                if time.time() > deadline:
                    raise RuntimeError(f"cycle {cycle}: no progress in 60 s\n{persist.log_tail()}")
                time.sleep(0.02)
            persist.kill()
            killed_at, count_at_kill = time.time(), acked()
            persist = Hub(["--conat-persist"], data=data, env=env, http=False, name="persist")
            while acked() <= count_at_kill + 10:
                if time.time() - killed_at > 90:
                    raise RuntimeError(f"cycle {cycle}: the writer never recovered\n{persist.log_tail()}")
                time.sleep(0.02)
            downtime.append(time.time() - killed_at)
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=60)
        stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        persist.stop()
        values = {}
        for line in ack_log.read_text().splitlines():
            value, seq = line.split()
            values[int(value)] = int(seq)
        db = sqlite3.connect(f"file:{data / 'sync' / path}.db?mode=ro", uri=True)
        stored: dict[int, int] = {}
        for raw, seq in db.execute("SELECT raw, seq FROM messages"):
            stored.setdefault(msgpack.unpackb(raw), seq)
        db.close()
        lost = [v for v in values if v not in stored]
        rows = sum(1 for _ in stored)
        print(f"{args.cycles} kills; {len(values)} acknowledged writes, {len(lost)} lost "
              f"({'ok' if not lost else 'LOST: ' + str(lost[:10])}); {rows} distinct values stored, "
              f"{stats.get('retries', '?')} failed requests retried by the writer; recovery after a kill "
              f"(new process up and writes acknowledged again): median {statistics.median(downtime):.1f} s")
    finally:
        if writer.poll() is None:
            writer.kill()
        persist.stop()
        broker.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--only", choices=["writes", "getall", "kill"])
    parser.add_argument("--only-feed", action="store_true", help="of the writes, only the changefeed cases")
    args = parser.parse_args()
    print(f"# conat persist: twistd cocalc-hub on 127.0.0.1, {os.cpu_count()} cores; {args.runs} runs per figure")
    if args.only in (None, "writes"):
        writes(args)
    if args.only in (None, "getall"):
        get_all(args)
    if args.only in (None, "kill"):
        kill_loop(args)


if __name__ == "__main__":
    main()
