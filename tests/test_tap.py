"""The twistd plugin, Options, makeService composition and listener endpoints."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import Application, IService, IServiceMaker
from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import ILogObserver
from twisted.plugin import getPlugins
from twisted.trial import unittest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from cocalc_hub import tap
from cocalc_hub.logs import RedactingObserver
from cocalc_hub.settings import SettingsError
from tests.support import (
    free_tcp_port,
    http_client,
    make_self_signed_cert,
    parse_response,
    raw_get,
    raw_http,
    raw_stream,
    settings_for,
    socket_dir,
    start_hub,
)


class PluginTests(unittest.TestCase):
    def test_plugin_is_discoverable(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("cocalc-hub", makers)
        maker = makers["cocalc-hub"]
        self.assertIsInstance(maker.options(), tap.Options)

    def test_plugins_dir_has_no_init(self) -> None:
        plugins = Path(__file__).resolve().parent.parent / "twisted" / "plugins"
        self.assertTrue((plugins / "cocalc_hub_plugin.py").is_file())
        self.assertFalse((plugins / "__init__.py").exists())
        self.assertFalse((plugins.parent / "__init__.py").exists())

    def test_options_parse(self) -> None:
        o = tap.Options()
        o.parseOptions(["--port", "tcp:5001", "--hostname", "0.0.0.0", "--conat-server", "--trust-proxy",
                        "--log-format", "json", "--data", "/tmp/x", "--mode", "multi-user"])
        self.assertEqual(o["port"], "tcp:5001")
        self.assertEqual(o["hostname"], "0.0.0.0")
        self.assertTrue(o["conat-server"])
        self.assertFalse(o["conat-api"])
        self.assertTrue(o["trust-proxy"])
        self.assertEqual(o["log-format"], "json")

    def test_make_service_bad_setting_exits_with_one_line(self) -> None:
        o = tap.Options()
        o.parseOptions(["--port", "notaport", "--data", self.mktemp()])
        e = self.assertRaises(SystemExit, tap.makeService, o)
        msg = str(e.code)
        self.assertTrue(msg.startswith("cocalc-hub: --port:"), msg)
        self.assertNotIn("\n", msg)


class CompositionTests(unittest.TestCase):
    def test_all_parts_by_default(self) -> None:
        s = settings_for(self.mktemp())
        hub = tap.build_service(s, reactor)
        self.assertIsNotNone(hub.web)

    def test_persist_only_has_no_listener(self) -> None:
        s = settings_for(self.mktemp(), {"conat-persist": True, "port": None},
                         env={"CONAT_SERVER": "http://127.0.0.1:5000"})
        hub = tap.build_service(s, reactor)
        self.assertIsNone(hub.web)
        self.assertEqual([child.name for child in hub], ["conat-broker-link", "conat-persist"])

    async def test_persist_with_a_port_listens_for_health_only(self) -> None:
        from tests.support import http_client, start_hub

        hub = start_hub(self, settings_for(self.mktemp(), {"conat-persist": True},
                                           env={"CONAT_SERVER": "http://127.0.0.1:1"}))
        http = http_client(self)
        r = await http.get(hub.url("/healthcheck"))
        body = await r.json()
        self.assertEqual((r.code, body["parts"]), (503, ["conat-persist"]))
        self.assertFalse(body["components"]["conat-broker"]["ok"])
        for path in ("/alive", "/metrics"):
            self.assertEqual((await http.get(hub.root + path)).code, 200)
        for path in ("/", "/static/app.css", "/api/v2/auth/csrf", "/auth/sign-in"):
            r = await http.get(hub.url(path))
            self.assertEqual(r.code, 404, path)
            await r.content()

    def test_persist_or_api_without_a_broker_needs_conat_server(self) -> None:
        from cocalc_hub.settings import SettingsError

        for part in ("conat-persist", "conat-api"):
            with self.assertRaises(SettingsError) as e:
                settings_for(self.mktemp(), {part: True})
            self.assertIn("CONAT_SERVER", str(e.exception))
        settings_for(self.mktemp(), {"conat-persist": True, "conat-server": True})  # the broker is here

    def test_observer_installed_on_application(self) -> None:
        s = settings_for(self.mktemp())
        seen: list[Any] = []
        hub = tap.build_service(s, reactor, observer=RedactingObserver(seen.append))
        app = Application("cocalc-hub")
        hub.setServiceParent(app)
        self.assertIs(app.getComponent(ILogObserver), hub.observer)
        self.assertIn(hub, list(IService(app)))

    def test_port_in_use_exits_cleanly(self) -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        s = settings_for(self.mktemp(), {"port": str(port)})
        hub = tap.build_service(s, reactor)
        e = self.assertRaises(SystemExit, hub.privilegedStartService)
        self.assertIn(f"--port: cannot listen on tcp:{port}:interface=127.0.0.1", str(e.code))
        self.assertIn("ddress already in use", str(e.code))

    def test_settings_error_is_exception_with_setting(self) -> None:
        e = SettingsError("BASE_PATH", "bad")
        self.assertEqual(str(e), "BASE_PATH: bad")


class EndpointTests(unittest.TestCase):
    async def test_bare_number_listens_on_hostname(self) -> None:
        port = free_tcp_port()
        hub = start_hub(self, settings_for(self.mktemp(), {"port": str(port)}))
        self.assertEqual(hub.port, port)
        self.assertEqual(hub.hub.web.port.getHost().host, "127.0.0.1")  # type: ignore[union-attr]
        r = await http_client(self).get(f"http://127.0.0.1:{port}/alive")
        self.assertEqual(r.code, 200)
        self.assertEqual(await r.text(), "alive\n")

    async def test_tcp_endpoint(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp(), {"port": "tcp:0:interface=127.0.0.1"}))
        r = await http_client(self).get(hub.root + "/alive")
        self.assertEqual(r.code, 200)
        self.assertEqual(await r.text(), "alive\n")

    async def test_ssl_endpoint_with_real_tls_request(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        port = free_tcp_port()
        s = settings_for(tmp, {"port": str(port), "https-key": str(key), "https-cert": str(cert)})
        start_hub(self, s)
        authority = Certificate.loadPEM(cert.read_bytes())

        class Policy(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return optionsForClientTLS("localhost", trustRoot=authority)

        pool = HTTPConnectionPool(reactor, persistent=False)
        client = HTTPClient(Agent(reactor, contextFactory=Policy(), pool=pool))
        r = await client.get(f"https://127.0.0.1:{port}/alive")
        self.assertEqual(r.code, 200)
        self.assertEqual(await r.text(), "alive\n")
        r = await client.get(f"https://127.0.0.1:{port}/healthcheck")
        self.assertEqual(json.loads(await r.text())["status"], "ok")

    async def test_plain_http_to_tls_port_gets_nothing(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        s = settings_for(tmp, {"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"})
        hub = start_hub(self, s)
        raw = await raw_http(hub.port, raw_get("/alive"))
        self.assertNotIn(b"alive", raw)

    async def test_unix_endpoint(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir()
        sock = socket_dir(self) / "hub.sock"
        hub = tap.build_service(settings_for(tmp, {"port": f"unix:{sock}"}), reactor)
        hub.startService()
        self.addCleanup(hub.stopService)
        raw = await raw_stream(UNIXClientEndpoint(reactor, str(sock)), raw_get("/alive"))
        status, _, body = parse_response(raw)
        self.assertEqual((status, body), (200, b"alive\n"))

    def test_unix_path_too_long_is_one_line_and_leaves_nothing_running(self) -> None:
        # Twisted starts the factory before bind() fails; the hub must undo that (trial
        # would otherwise report the front door's sweeper as a dirty reactor).
        tmp = Path(self.mktemp()).resolve()
        sock = tmp / ("d" * 60) / ("s" * 60 + ".sock")
        sock.parent.mkdir(parents=True)
        hub = tap.build_service(settings_for(tmp, {"port": f"unix:{sock}"}), reactor)
        with self.assertRaises(SystemExit) as raised:
            hub.startService()
        message = str(raised.exception.code)
        self.assertTrue(message.startswith("cocalc-hub: --port: cannot listen on unix:"), message)
        self.assertIn("path too long", message)
        self.assertEqual(len(message.splitlines()), 1)
        self.assertEqual(hub.web.factory.numPorts if hub.web else -1, 0)
        self.assertFalse(hub.running)
