"""TLS handshakes on the hub's listener, per client: Python ``ssl`` offering ``h2, http/1.1``
(as browsers do), offering only ``http/1.1``, offering no ALPN; curl (Debian's, which offers
ALPN); headless Chromium. Each client's handshake time (p50/p99) and success count, for an
EC P-256 and an RSA-2048 certificate. Before the ALPN fix every client that offers ALPN failed.

    .venv/bin/python benchmarks/bench_tls.py [--handshakes 300] [--curl 40] [--chromium 15]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import Hub  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def make_cert(directory: Path, kind: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / f"{kind}-key.pem", directory / f"{kind}-cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def python_handshakes(port: int, alpn: list[str] | None, count: int) -> tuple[list[float], int, set[str | None]]:
    """Handshake times in ms (TCP connect excluded), failures, negotiated protocols."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    times, failures, protocols = [], 0, set()
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        started = time.perf_counter()
        try:
            tls = context.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLError:
            failures += 1
            raw.close()
            continue
        times.append((time.perf_counter() - started) * 1000)
        protocols.add(tls.selected_alpn_protocol())
        tls.close()
    return times, failures, protocols


def curl_handshakes(url: str, count: int) -> tuple[list[float], int]:
    times, failures = [], 0
    for _ in range(count):
        out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{time_connect} %{time_appconnect}",
                              url + "/alive"], capture_output=True, text=True)
        if out.returncode != 0:
            failures += 1
            continue
        connect, app = (float(x) for x in out.stdout.split())
        times.append((app - connect) * 1000)
    return times, failures


CHROMIUM_SCRIPT = """
import json, sys
from playwright.sync_api import sync_playwright
url, count, chromium = sys.argv[1], int(sys.argv[2]), sys.argv[3]
args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--ignore-certificate-errors"]
times, failures, protocols = [], 0, set()
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=args)
    for _ in range(count):
        context = browser.new_context()  # its own connections
        page = context.new_page()
        try:
            page.goto(url + "/alive")
            t = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                              " return [n.connectEnd - n.secureConnectionStart, n.nextHopProtocol]; }")
            times.append(t[0]); protocols.add(t[1])
        except Exception:
            failures += 1
        context.close()
    browser.close()
print(json.dumps({"times": times, "failures": failures, "protocols": sorted(protocols)}))
"""


def chromium_handshakes(url: str, count: int) -> tuple[list[float], int, list[str]] | None:
    if not os.access(CHROMIUM, os.X_OK):
        return None
    out = subprocess.run([sys.executable, "-c", CHROMIUM_SCRIPT, url, str(count), CHROMIUM], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["times"], result["failures"], result["protocols"]


def line(name: str, times: list[float], failures: int, extra: str = "") -> None:
    if not times:
        print(f"  {name:34s} all {failures} failed {extra}")
        return
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"  {name:34s} ok {len(times):4d}  failed {failures:3d}  p50 {statistics.median(times):6.2f} ms  "
          f"p99 {p99:6.2f} ms  {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--curl", type=int, default=40)
    parser.add_argument("--chromium", type=int, default=15)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    try:
        for kind in ("ec", "rsa"):
            key, cert = make_cert(tmp, kind)
            hub = Hub(["--log-level", "error"], tls=(key, cert), name=f"tls-{kind}")
            try:
                print(f"certificate {'EC P-256' if kind == 'ec' else 'RSA 2048'} ({hub.url}):")
                for name, alpn in (("python ssl, ALPN h2+http/1.1", ["h2", "http/1.1"]),
                                   ("python ssl, ALPN http/1.1", ["http/1.1"]), ("python ssl, no ALPN", None)):
                    times, failures, protocols = python_handshakes(hub.port, alpn, args.handshakes)
                    line(name, times, failures, f"negotiated {sorted(map(str, protocols))}")
                if shutil.which("curl"):
                    times, failures = curl_handshakes(hub.url, args.curl)
                    line("curl (offers h2,http/1.1)", times, failures)
                chromium = chromium_handshakes(hub.url, args.chromium)
                if chromium is None:
                    print("  chromium                           not available")
                else:
                    line("chromium (new context each)", chromium[0], chromium[1], f"protocol {chromium[2]}")
            finally:
                hub.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
