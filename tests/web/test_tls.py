"""The hub's TLS listener with the clients it really meets: curl (which offers ALPN), Python's
ssl offering ``h2, http/1.1``, headless Chromium (sign-in page and a conat wss WebSocket);
for ``--https-key/--https-cert`` and for an ``ssl:`` endpoint string. Also: failed handshakes
are logged, and the certificate reloads (``HubService.reload``, SIGHUP) without dropping
open connections."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from cocalc_hub.web.tls import TlsConfigError, TlsFiles, parse_ssl
from tests.support import CI, REPO, TWISTD, LogCapture, make_self_signed_cert, settings_for, spawn, start_hub
from tests.web.test_browser import missing as browser_missing

CURL = shutil.which("curl") or "/usr/bin/curl"
BROWSER_TLS = str(Path(__file__).resolve().parent / "browser_tls.py")
ARTIFACTS = REPO / "artifacts" / "web"


def need_curl(case: unittest.TestCase) -> None:
    if not os.access(CURL, os.X_OK):
        if CI:
            case.fail("curl is missing under CI (.ci/debian-packages lists it)")
        raise unittest.SkipTest("curl is missing (apt-get install curl)")


async def curl(*args: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(CURL, ["--silent", "--show-error", "--max-time", "20", *args],
                                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def python_tls_get(port: int, alpn: list[str] | None, path: str = "/alive") -> tuple[str | None, bytes, bytes]:
    """(negotiated ALPN protocol, peer certificate DER, response) with the stdlib client (in a thread)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
            return tls.selected_alpn_protocol(), tls.getpeercert(binary_form=True) or b"", b"".join(chunks)


def cert_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def spki_sha256(path: Path) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list wants for this certificate."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class TlsListenerMixin:
    """A hub in this process on a TLS listener; subclasses say how the listener is written."""

    timeout = 180
    name = ""

    def listener_options(self, key: Path, cert: Path) -> dict[str, str]:
        raise NotImplementedError

    def setUp(self) -> None:
        case: Any = self
        self.tmp = Path(case.mktemp()).resolve()
        self.tmp.mkdir()
        self.key, self.cert = make_self_signed_cert(self.tmp)
        self.hub = start_hub(case, settings_for(self.tmp, self.listener_options(self.key, self.cert)))
        self.url = f"https://127.0.0.1:{self.hub.port}"

    async def test_curl_offers_alpn(self) -> None:
        need_curl(self)  # type: ignore[arg-type]
        code, out, err = await curl("--insecure", "--verbose", self.url + "/alive")
        case: Any = self
        case.assertEqual((code, out), (0, "alive\n"), err)
        case.assertIn("ALPN: offers h2,http/1.1", err)
        case.assertIn("ALPN: server accepted http/1.1", err)

    async def test_curl_offering_only_http11_or_nothing(self) -> None:
        need_curl(self)  # type: ignore[arg-type]
        case: Any = self
        for flags in (["--http1.1"], ["--no-alpn"]):
            code, out, err = await curl("--insecure", *flags, self.url + "/alive")
            case.assertEqual((code, out), (0, "alive\n"), (flags, err))

    async def test_python_ssl_offering_h2_and_http11(self) -> None:
        case: Any = self
        for alpn in (["h2", "http/1.1"], ["http/1.1"], None):
            protocol, der, response = await threads.deferToThread(python_tls_get, self.hub.port, alpn)
            case.assertEqual(protocol, None if alpn is None else "http/1.1")
            case.assertEqual(der, cert_der(self.cert))
            case.assertTrue(response.startswith(b"HTTP/1.1 200 "), response[:100])
            case.assertTrue(response.endswith(b"alive\n"))

    async def test_chromium_sign_in_page_and_conat_websocket(self) -> None:
        case: Any = self
        reason = browser_missing()
        if reason is not None:
            if CI:
                case.fail(f"the browser test cannot run under CI: {reason}")
            raise unittest.SkipTest(reason)
        env = {k: v for k, v in os.environ.items() if k.startswith(("PLAYWRIGHT", "XDG_"))}
        proto, _ = spawn(case, [sys.executable, BROWSER_TLS, self.url, spki_sha256(self.cert), str(ARTIFACTS),
                                self.name], env=env, cwd=str(REPO))
        code = await proto.ended
        output = proto.output.decode("utf-8", "replace")
        case.assertEqual(code, 0, output[-3000:])
        result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        case.assertEqual((result["sign_in_status"], result["sign_in_has_form"]), (200, True), result)
        case.assertEqual(result["protocol"], "http/1.1", result)
        conat = result["conat"]
        case.assertNotIn("error", conat, result)
        case.assertTrue(conat["frames"][0].startswith("0{"), conat)
        info = [f for f in conat["frames"] if f.startswith("42") and '"info"' in f][0]
        case.assertIn('"account_id"', info)
        case.assertNotIn('"error"', info)


class FlagsTlsTests(TlsListenerMixin, unittest.TestCase):
    name = "flags"

    def listener_options(self, key: Path, cert: Path) -> dict[str, str]:
        return {"port": "0", "hostname": "127.0.0.1", "https-key": str(key), "https-cert": str(cert)}


class EndpointTlsTests(TlsListenerMixin, unittest.TestCase):
    name = "endpoint"

    def listener_options(self, key: Path, cert: Path) -> dict[str, str]:
        return {"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"}


class HandshakeAndReloadTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir()
        self.key, self.cert = make_self_signed_cert(self.tmp)
        self.logs = LogCapture(self)
        self.hub = start_hub(self, settings_for(self.tmp, {
            "port": f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"}))

    async def test_failed_handshake_is_logged_once_with_peer_and_reason(self) -> None:
        need_curl(self)
        # curl does not trust the self-signed certificate: it aborts the handshake with an alert.
        code, _, err = await curl(f"https://127.0.0.1:{self.hub.port}/alive")
        self.assertEqual(code, 60, err)
        line = await self.logs.wait_for("TLS handshake with 127.0.0.1:")
        self.assertRegex(line, r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*unknown ca")
        # an HTTP request on the TLS port is a handshake failure too, and nothing is echoed
        response, _, _ = await getProcessOutputAndValue(CURL, ["--silent", "--max-time", "10", "--http0.9",
                                                               f"http://127.0.0.1:{self.hub.port}/<script>"])
        self.assertNotIn(b"<script>", response)
        await self.logs.wait_for("failed: http request")
        self.assertEqual(len([line for line in self.logs.lines if "TLS handshake with" in line]), 2, self.logs.lines)
        code, metrics, _ = await curl("--insecure", f"https://127.0.0.1:{self.hub.port}/metrics")
        self.assertIn("cocalc_hub_tls_handshake_failures_total 2.0", metrics)

    async def test_reload_serves_new_certificate_and_keeps_open_connections(self) -> None:
        port = self.hub.port
        first = cert_der(self.cert)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["h2", "http/1.1"])

        def open_connection() -> ssl.SSLSocket:
            return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                                       server_hostname="localhost")

        def request(conn: ssl.SSLSocket) -> bytes:
            conn.sendall(b"GET /alive HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = b""
            while not data.endswith(b"alive\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

        old = await threads.deferToThread(open_connection)
        self.addCleanup(old.close)
        self.assertTrue((await threads.deferToThread(request, old)).endswith(b"alive\n"))
        renewed = self.tmp / "renewed"
        renewed.mkdir()
        new_key, new_cert = make_self_signed_cert(renewed)
        shutil.copy(new_key, self.key)
        shutil.copy(new_cert, self.cert)
        self.hub.hub.reload()
        await self.logs.wait_for("TLS certificate reloaded")
        # the open connection goes on with the old certificate; new ones get the new one
        self.assertTrue((await threads.deferToThread(request, old)).endswith(b"alive\n"))
        self.assertEqual(old.getpeercert(binary_form=True), first)
        _, der, response = await threads.deferToThread(python_tls_get, port, ["h2", "http/1.1"])
        self.assertEqual(der, cert_der(new_cert))
        self.assertNotEqual(der, first)
        self.assertTrue(response.endswith(b"alive\n"))

        # a broken file is refused: the hub keeps serving the certificate it has
        self.cert.write_text("not a certificate\n")
        self.hub.hub.reload()
        line = await self.logs.wait_for("TLS certificate not reloaded")
        self.assertIn(str(self.cert), line)
        self.assertIn("holds no PEM certificate", line)
        _, der, _ = await threads.deferToThread(python_tls_get, port, None)
        self.assertEqual(der, cert_der(new_cert))


class SighupTests(unittest.TestCase):
    """``kill -HUP`` on a real ``cocalc-hub`` process reloads its certificate."""

    timeout = 90

    async def test_sighup_reloads_the_certificate(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        proc, transport = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--data", str(tmp / "data"),
                                       "--port", "0", "--https-key", str(key), "--https-cert", str(cert)],
                                cwd=str(tmp))
        port = int((await proc.wait_for(rb"listening on 127\.0\.0\.1:(\d+)")).group(1))
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        _, der, _ = await threads.deferToThread(python_tls_get, port, ["h2", "http/1.1"])
        self.assertEqual(der, cert_der(cert))
        renewed = tmp / "renewed"
        renewed.mkdir()
        new_key, new_cert = make_self_signed_cert(renewed)
        shutil.copy(new_key, key)
        shutil.copy(new_cert, cert)
        transport.signalProcess("HUP")
        await proc.wait_for(rb"TLS certificate reloaded")
        _, der, _ = await threads.deferToThread(python_tls_get, port, ["h2", "http/1.1"])
        self.assertEqual(der, cert_der(new_cert))
        transport.signalProcess("TERM")
        await proc.ended
        self.assertNotIn(b"Traceback", proc.output)


class ParseSslTests(unittest.TestCase):
    """``ssl:`` endpoint strings as Twisted's grammar reads them."""

    def test_keywords_escapes_and_defaults(self) -> None:
        parsed = parse_ssl(r"ssl:8443:interface=\:\:1:privateKey=/k\:ey.pem:backlog=7")
        assert parsed is not None
        self.assertEqual((parsed.port, parsed.interface, parsed.backlog), (8443, "::1", 7))
        self.assertEqual(parsed.files, TlsFiles(private_key="/k:ey.pem", cert_key="/k:ey.pem"))
        self.assertIsNone(parse_ssl("tcp:5000"))

    def test_positional_parameters_in_twisteds_order(self) -> None:
        parsed = parse_ssl("ssl:443:key.pem:cert.pem")
        assert parsed is not None
        self.assertEqual((parsed.files.private_key, parsed.files.cert_key), ("key.pem", "cert.pem"))

    def test_bad_descriptions(self) -> None:
        for bad, fragment in (("ssl:", "port number"), ("ssl:x", "port number"), ("ssl:99999", "port number"),
                              ("ssl:4²", "port number"),
                              ("ssl:443:colour=red", "unknown ssl: parameter 'colour'"),
                              ("ssl:443:backlog=many", "backlog"), ("ssl:443:backlog=²", "backlog"),
                              ("ssl:443:a:b:c:d:5:f:g:h", "too many positional")):
            with self.assertRaises(TlsConfigError) as caught:
                parse_ssl(bad)
            self.assertIn(fragment, str(caught.exception))

    def test_startup_errors_name_the_file(self) -> None:
        from cocalc_hub.settings import SettingsError

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        other = tmp / "other"
        other.mkdir()
        other_key, _ = make_self_signed_cert(other)
        (tmp / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
        cases = (
            (f"ssl:0:privateKey={other_key}:certKey={cert}", "do not work together"),
            (f"ssl:0:privateKey={key}:certKey={tmp / 'garbage.pem'}", "not a valid PEM certificate"),
            (f"ssl:0:privateKey={key}:certKey={tmp / 'missing.pem'}", "cannot read the certificate"),
            (f"ssl:0:privateKey={cert}:certKey={cert}", "not a valid PEM private key"),
        )
        for description, fragment in cases:
            with self.assertRaises(SettingsError) as caught:
                settings_for(tmp, {"port": description})
            self.assertIn(fragment, str(caught.exception))
            self.assertEqual(len(str(caught.exception).splitlines()), 1)
