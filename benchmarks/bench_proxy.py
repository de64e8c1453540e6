"""The project proxy against nginx ``proxy_pass``, measured in one run on loopback.

    .venv/bin/python benchmarks/bench_proxy.py [--seconds 8] [--connections 50] [--only small]
        [--profile FILE]

Needs Debian's ``nginx`` and ``wrk`` (``apt-get install nginx wrk``) and ``curl``. A hub runs
as a real ``twistd`` process; nginx (1 worker) runs *inside* a project as the backend, so
the hub's port-ownership check passes; a second nginx (1 worker, upstream keepalive) is
the reference proxy. Figures: small keep-alive responses (req/s, p99, and the hub's CPU
time per request, which a noisy machine disturbs less than req/s), 64 KiB and 100 MB
transfers (throughput), and WebSocket echo (throughput and added round-trip time).
``--only small`` stops after the small responses. ``--profile FILE`` runs the hub under
cProfile (twistd ``--profile``) and, at the end, prints the Python function calls per
request the hub served (deterministic: a refactor that adds work per request shows there
whatever the machine's noise) and the top functions by internal time.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import psutil
from support import TWISTD, free_port

ROOT = Path(__file__).resolve().parent.parent
WS_ECHO = str(ROOT / "tests" / "proxy" / "backend_app.py")


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def post(self, endpoint: str, params: dict[str, object]) -> dict[str, object]:
        token = next((c.value for c in self.jar if c.name == "csrf_token"), None)
        headers = {"Content-Type": "application/json", **({"X-CSRF-Token": token} if token else {})}
        req = urllib.request.Request(f"{self.base}/api/v2/{endpoint}", data=json.dumps(params).encode(),
                                     headers=headers)
        with self.opener.open(req) as r:
            return dict(json.loads(r.read()))

    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


def wrk(url: str, seconds: int, connections: int, cookie: str | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if cookie:
        cmd[1:1] = ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
    mbps = float(transfer.group(1)) * scale[transfer.group(2)] / 1024 ** 2 if transfer else 0.0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * unit[p99.group(2)] if p99 else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {"requests": float(done.group(1)) if done else 0.0, "rps": rps, "mbps": mbps, "p99_ms": p99_ms,
            "non2xx": float(errors.group(1)) if errors else 0.0}


def curl_speed(url: str, cookie: str | None, runs: int = 3) -> float:
    speeds = []
    for _ in range(runs):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", url]
        if cookie:
            cmd[1:1] = ["-H", f"Cookie: {cookie}"]
        speeds.append(float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) / 1024 ** 2)
    return statistics.median(speeds)


WS_CLIENT = r"""
import sys, time
from twisted.internet import reactor
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS

url, cookie, seconds, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])


class Client(WebSocketClientProtocol):
    # Phase 1: keep `window` messages in flight for `seconds` (throughput).
    # Phase 2: one message at a time, 2000 times (round-trip latency).
    def onOpen(self):
        self.transport.setTcpNoDelay(True)
        self.count, self.rtts, self.rate, self.t0 = 0, [], None, time.perf_counter()
        for _ in range(window):
            self.sendMessage(b"x" * 16, True)

    def onMessage(self, payload, isBinary):
        now = time.perf_counter()
        if self.rate is None:
            self.count += 1
            if now - self.t0 < seconds:
                self.sendMessage(b"x" * 16, True)
            elif self.count and not hasattr(self, "draining"):
                self.draining = True
                self.rate = self.count / (now - self.t0)
                reactor.callLater(0.5, self.ping)
        elif payload == b"y" * 16:
            self.rtts.append(now - self.sent)
            self.ping()

    def ping(self):
        if len(self.rtts) >= 2000:
            self.rtts.sort()
            print(f"{self.rate:.0f} {self.rtts[len(self.rtts) // 2] * 1e6:.0f}")
            self.sendClose()
            reactor.callLater(0.2, reactor.stop)
            return
        self.sent = time.perf_counter()
        self.sendMessage(b"y" * 16, True)


factory = WebSocketClientFactory(url, headers={"Cookie": cookie} if cookie else {})
factory.protocol = Client
factory.setProtocolOptions(autoPingInterval=0)
connectWS(factory)
reactor.run()
"""


def ws_bench(url: str, cookie: str, seconds: float) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", WS_CLIENT, url, cookie, str(seconds), "100"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--only", choices=["small"], help="only the small keep-alive responses")
    parser.add_argument("--profile", type=Path, help="cProfile the hub into this file; print calls per request")
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install -y nginx wrk curl")
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    hub_port, backend_port, nginx_proxy_port, ws_port = free_port(), free_port(), free_port(), free_port()
    profile = ["--profile", str(args.profile), "--profiler", "cprofile", "--savestats"] if args.profile else []
    served = 0  # requests the hub answered (wrk's counts), for calls per request
    hub = subprocess.Popen([TWISTD, "--nodaemon", "--pidfile=", *profile, "cocalc-hub", "--data", str(tmp / "data"),
                            "--port", f"tcp:{hub_port}:interface=127.0.0.1", "--log-level", "warn",
                            # a benchmark run as root (CI) means its single-user projects to run as root
                            *(["--allow-root-projects"] if os.geteuid() == 0 else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = None
    try:
        wait_port(hub_port)
        hub_process = psutil.Process(hub.pid)
        api = Api(f"http://127.0.0.1:{hub_port}")
        api.post("auth/sign-up", {"email": "bench@example.com", "password": "a-Good-passphrase"})
        api.post("auth/sign-in", {"email": "bench@example.com", "password": "a-Good-passphrase"})  # (202 above)
        pid = str(api.post("projects/create", {"title": "bench"})["project_id"])
        api.post("projects/start", {"project_id": pid})
        home = tmp / "data" / "projects" / pid
        files = home / "files"
        files.mkdir()
        (files / "64k.bin").write_bytes(b"x" * 65536)
        with open(files / "100m.bin", "wb") as f:
            f.truncate(100 * 1024 * 1024)
        (home / "nginx.conf").write_text(f"""
user root; worker_processes 1; daemon off; pid {home}/nginx.pid; error_log {home}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on;
  server {{ listen 127.0.0.1:{backend_port};
    location = /hello {{ return 200 "hello world\\n"; }}
    location /files/ {{ root {home}; }}
    location /{pid}/port/{backend_port}/ {{ return 200 "hello world\\n"; }} }} }}
""")
        api.post("exec", {"project_id": pid, "command": shutil.which("nginx"),
                          "args": ["-c", str(home / "nginx.conf")], "async_call": True})
        api.post("exec", {"project_id": pid, "command": sys.executable, "args": [WS_ECHO, str(ws_port)],
                          "async_call": True})
        wait_port(backend_port)
        wait_port(ws_port)
        (tmp / "ref.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/ref.pid; error_log {tmp}/ref.err;
events {{ worker_connections 1024; }}
http {{ access_log off;
  upstream be {{ server 127.0.0.1:{backend_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx_proxy_port};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        ref = subprocess.Popen(["nginx", "-c", str(tmp / "ref.conf")])
        wait_port(nginx_proxy_port)
        cookie = api.cookie()
        server = f"http://127.0.0.1:{hub_port}/{pid}/server/{backend_port}"
        direct = f"http://127.0.0.1:{backend_port}"
        via_nginx = f"http://127.0.0.1:{nginx_proxy_port}"
        s, c = args.seconds, args.connections
        served += int(wrk(f"{server}/hello", 2, c, cookie)["requests"])  # warm up
        print(f"# small keep-alive responses (wrk -t1 -c{c} -d{s}s)")
        results = {}
        port_url = f"http://127.0.0.1:{hub_port}/{pid}/port/{backend_port}/x"
        for name, url, ck in (("backend direct", f"{direct}/hello", None),
                              ("nginx proxy_pass", f"{via_nginx}/hello", None),
                              ("cocalc-hub /server/", f"{server}/hello", cookie),
                              ("cocalc-hub /port/", port_url, cookie)):
            cpu_before = sum(hub_process.cpu_times()[:2])
            r = wrk(url, s, c, ck)
            hub_cpu = sum(hub_process.cpu_times()[:2]) - cpu_before
            results[name] = r
            served += int(r["requests"]) if name.startswith("cocalc-hub") else 0
            # The hub's CPU per request: steadier than req/s on a noisy machine (0 when it is not involved).
            per_request = hub_cpu / max(r["rps"] * s, 1) * 1e6
            print(f"{name:22s} {r['rps']:9.0f} req/s   p99 {r['p99_ms']:7.2f} ms   non-2xx {r['non2xx']:.0f}"
                  f"   hub CPU {per_request:5.1f} us/req")
        nginx_rps = results["nginx proxy_pass"]["rps"]
        print(f"ratio hub/nginx: /server/ {results['cocalc-hub /server/']['rps'] / nginx_rps:.2f}, "
              f"/port/ {results['cocalc-hub /port/']['rps'] / nginx_rps:.2f}")
        if args.only == "small":
            return
        print("# 64 KiB responses (wrk -t1 -c10)")
        k64 = {}
        for name, url, ck in (("nginx proxy_pass", f"{via_nginx}/files/64k.bin", None),
                              ("cocalc-hub /server/", f"{server}/files/64k.bin", cookie)):
            r = wrk(url, s, 10, ck)
            served += int(r["requests"]) if name.startswith("cocalc-hub") else 0
            k64[name] = r["mbps"]
            print(f"{name:22s} {r['mbps']:9.1f} MiB/s   {r['rps']:7.0f} req/s   p99 {r['p99_ms']:.2f} ms")
        print(f"ratio: {k64['cocalc-hub /server/'] / k64['nginx proxy_pass']:.2f}")
        print("# 100 MB transfers (curl, median of 3)")
        big = {}
        for name, url, ck in (("backend direct", f"{direct}/files/100m.bin", None),
                              ("nginx proxy_pass", f"{via_nginx}/files/100m.bin", None),
                              ("cocalc-hub /server/", f"{server}/files/100m.bin", cookie)):
            big[name] = curl_speed(url, ck)
            print(f"{name:22s} {big[name]:9.1f} MiB/s")
        print(f"ratio: {big['cocalc-hub /server/'] / big['nginx proxy_pass']:.2f}")
        print("# WebSocket echo, 16 B messages (autobahn client, 100 in flight; then lock-step)")
        d_rate, d_rtt = ws_bench(f"ws://127.0.0.1:{ws_port}/ws", "", s)
        p_rate, p_rtt = ws_bench(f"ws://127.0.0.1:{hub_port}/{pid}/server/{ws_port}/ws", cookie, s)
        print(f"direct                 {d_rate:9.0f} msg/s   lock-step RTT p50 {d_rtt:.0f} us")
        print(f"through the proxy      {p_rate:9.0f} msg/s   lock-step RTT p50 {p_rtt:.0f} us")
        print(f"ratio: {p_rate / d_rate:.2f}; added round-trip latency {p_rtt - d_rtt:.0f} us")
    finally:
        if ref is not None:
            ref.terminate()
        hub.terminate()
        hub.wait(timeout=30)
        if args.profile is not None and args.profile.exists() and served:
            stats = pstats.Stats(str(args.profile))
            calls = stats.total_calls  # type: ignore[attr-defined]
            print(f"# cProfile of the hub: {calls / served:.0f} function calls per request "
                  f"({calls} calls, {served} requests by wrk, start-up and the rest included)")
            stats.sort_stats("tottime").print_stats(20)
        subprocess.run(["pkill", "-f", f"nginx.*{tmp}"], check=False)
        subprocess.run(["pkill", "-f", f"{WS_ECHO} {ws_port}"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
