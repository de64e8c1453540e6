"""What read barriers cost, side by side with an older tree of the hub.

    .venv/bin/python benchmarks/bench_barriers.py --baseline DIR [--rounds 3] [--seconds 4]

``DIR`` is a checkout of the commit to compare with (e.g. ``git worktree add /tmp/old HEAD~1``);
its hub runs with ``PYTHONPATH=DIR``, this tree's with ``PYTHONPATH`` set to this checkout,
alternately in each round, on the same node clients (npm socket.io-client, from
tests/node/node_modules). Figures, median of the rounds:

* where batching is harmless and must stay: pub/sub 1 → 1 (msgs/s), sequential
  request/reply (req/s, p50), fan-out 1 → 20 (deliveries/s) — benchmarks/node/bench_conat.js;
* where barriers act (benchmarks/node/bench_barriers.js): 16 requests in flight while the
  same client receives a stream on another subject (replies followed by other deliveries:
  holds start), req/s and stream msgs/s; sequential subscribe + unsubscribe pairs/s (every
  subscribe ack is a barrier); and how many holds the hub started (its /metrics);
* ack latency under load (``acks``): a probe publishes with ack, one at a time, while four
  publisher → subscriber pairs stream 2 000 msgs/s each (a busy hub, not a saturated one):
  p50/p99 of the ack round trip, and the streams' rate meanwhile (what one read wrote is sent at the end of that
  read, transport/flush.py, rather than on the reactor's next poll).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from support import Hub

ROOT = Path(__file__).resolve().parent.parent
CONAT_JS = str(ROOT / "benchmarks" / "node" / "bench_conat.js")
BARRIERS_JS = str(ROOT / "benchmarks" / "node" / "bench_barriers.js")


def run(cmd: list[str], hub: Hub) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "BENCH_HUB_PID": str(hub.pid)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def holds(hub: Hub) -> int | None:
    with urllib.request.urlopen(hub.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^cocalc_hub_conat_read_barrier_holds_total (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def one_round(tree: Path, seconds: float) -> dict[str, float]:
    hub = Hub(["--conat-max-connections", "200"], env={"PYTHONPATH": str(tree)})
    try:
        cookie = f"hub_password={hub.password}"
        out: dict[str, float] = {}
        out["pubsub"] = run(["node", CONAT_JS, "pubsub", hub.url, cookie, str(seconds), "1000"], hub)["rate"]
        rr = run(["node", CONAT_JS, "reqrep", hub.url, cookie, "3000"], hub)
        out["reqrep"], out["reqrep_p50"] = rr["rate"], rr["p50_ms"]
        out["fanout"] = run(["node", CONAT_JS, "fanout", hub.url, cookie, str(seconds), "20", "100"], hub)["rate"]
        mixed = run(["node", BARRIERS_JS, "mixed", hub.url, cookie, str(seconds), "16"], hub)
        out["mixed_req"], out["mixed_stream"] = mixed["req_rate"], mixed["stream_rate"]
        out["subscribe"] = run(["node", BARRIERS_JS, "subscribe", hub.url, cookie, "2000"], hub)["rate"]
        acks = run(["node", BARRIERS_JS, "acks", hub.url, cookie, str(seconds), "4", "2000"], hub)
        out["acks_p50"], out["acks_p99"], out["acks_load"] = acks["p50_ms"], acks["p99_ms"], acks["load_rate"]
        h = holds(hub)
        if h is not None:
            out["holds"] = h
        return out
    finally:
        hub.stop()


ROWS = [("pubsub", "pub/sub 1 → 1, msgs/s", "{:,.0f}"), ("reqrep", "request/reply sequential, req/s", "{:,.0f}"),
        ("reqrep_p50", "request/reply p50, ms", "{:.3f}"), ("fanout", "fan-out 1 → 20, deliveries/s", "{:,.0f}"),
        ("mixed_req", "16 in flight + a stream: req/s", "{:,.0f}"),
        ("mixed_stream", "16 in flight + a stream: stream msgs/s", "{:,.0f}"),
        ("subscribe", "subscribe + unsubscribe, pairs/s", "{:,.0f}"),
        ("acks_p50", "ack latency, 4 × 2 000 msgs/s load, p50 ms", "{:.3f}"),
        ("acks_p99", "ack latency, 4 × 2 000 msgs/s load, p99 ms", "{:.3f}"),
        ("acks_load", "the 4 streams meanwhile, msgs/s", "{:,.0f}"),
        ("holds", "holds started (whole run)", "{:,.0f}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this tree": ROOT}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(one_round(tree, args.seconds))
            print(f"round {i + 1} {name}: {results[name][-1]}", flush=True)
    print(f"\n{'figure':42} {'baseline':>12} {'this tree':>12}   (median of {args.rounds} rounds)")
    for key, label, fmt in ROWS:
        cells = []
        for name in trees:
            values = [r[key] for r in results[name] if key in r]
            cells.append(fmt.format(statistics.median(values)) if values else "-")
        print(f"{label:42} {cells[0]:>12} {cells[1]:>12}")


if __name__ == "__main__":
    main()
