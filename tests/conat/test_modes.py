"""The broker in a process of its own (``--conat-server``), reached through CONAT_SERVER."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.client import Client, ConatError, connect
from tests.conat.support import ws_connect
from tests.support import TWISTD, free_tcp_port, http_client, settings_for, spawn, start_hub, until
from tests.web.api_client import ApiClient


class SplitProcessTests(unittest.TestCase):
    """Two hubs sharing one data directory: one runs only the broker, the other the web
    side, forwarding BASE_PATH/conat/ to the first."""

    timeout = 60

    def client(self, address: str, cookies: dict[str, str]) -> Client:
        c = connect(reactor, address, cookies=cookies, reconnect=False)
        self.addCleanup(c.close)
        return c

    async def test_browsers_reach_the_broker_through_the_web_process(self) -> None:
        tmp = self.mktemp()
        broker = start_hub(self, settings_for(tmp, {"conat-server": True}))
        web = start_hub(self, settings_for(tmp, {"proxy-server": True}, {"CONAT_SERVER": broker.root}))
        self.assertEqual(sorted(broker.hub.settings.parts), ["conat-server"])
        self.assertIsNone(web.hub.conat)
        http = http_client(self)
        self.assertEqual((await http.get(broker.url("/api/v2/auth/csrf"))).code, 404)  # no JSON API there
        alice = ApiClient(web.base, HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual((await alice.sign_up("alice@example.com")).code, 201)
        account_id = (await alice.get("accounts/profile")).json["account_id"]

        via_web = self.client(web.base, dict(alice.cookies))
        self.assertEqual((await via_web.signed_in())["user"], {"account_id": account_id})
        password = (broker.hub.settings.secrets_dir / "conat-password").read_text().strip()
        direct = self.client(broker.root, {"hub_password": password})
        await direct.signed_in()
        sub = await via_web.subscribe(f"account.{account_id}.inbox")
        big = b"z" * 9_000_000  # two chunks, both through the splice
        self.assertEqual(await direct.publish(f"account.{account_id}.inbox", raw=big), 1)
        self.assertEqual((await sub.next(30)).raw, big)
        assert broker.hub.conat is not None and web.hub.broker_link is not None
        await until(lambda: web.hub.broker_link is not None and web.hub.broker_link.up)
        self.assertEqual(broker.hub.conat.broker.total, 3, "these two clients and the web process's broker link")

        # the web process's own services reach the broker through CONAT_SERVER as the hub
        own = web.hub.conat_client()
        self.addCleanup(own.close)
        self.assertEqual((await own.signed_in())["user"], {"hub_id": "hub"})

    async def test_without_conat_server_the_web_process_says_so(self) -> None:
        web = start_hub(self, settings_for(self.mktemp(), {"proxy-server": True}))
        ws = await ws_connect(self, web.port, expect=503)
        self.assertIn(b"This hub process does not run conat and CONAT_SERVER is not set.", await ws.body())

    async def test_an_unreachable_conat_server_is_a_502(self) -> None:
        dead = f"http://127.0.0.1:{free_tcp_port()}"
        web = start_hub(self, settings_for(self.mktemp(), {"proxy-server": True}, {"CONAT_SERVER": dead}))
        ws = await ws_connect(self, web.port, expect=502)
        self.assertEqual(ws.response_headers["connection"], "close")
        c = self.client(web.root, {"hub_password": "x"})
        with self.assertRaises(ConatError):
            await c.signed_in(timeout=5)


class ConatServerProcessTests(unittest.TestCase):
    timeout = 60

    async def test_twistd_conat_server_runs_only_the_broker(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        port = free_tcp_port()
        proc, transport = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--conat-server",
                                       "--data", str(tmp / "data"), "--port", f"tcp:{port}:interface=127.0.0.1"],
                                cwd=str(tmp))
        await proc.wait_for(rb"cocalc-hub [^ ]+ running: conat-server\n")
        password = (tmp / "data" / "secrets" / "conat-password").read_text().strip()
        c = connect(reactor, f"http://127.0.0.1:{port}", cookies={"hub_password": password}, reconnect=False)
        self.addCleanup(c.close)
        await c.signed_in()
        sub = await c.subscribe("ping")
        self.assertEqual(await c.publish("ping", "pong"), 1)
        self.assertEqual((await sub.next(30)).data, "pong")
        c.close()
        transport.signalProcess("TERM")
        await proc.ended
        self.assertNotIn(b"Traceback", proc.output)


class TlsTests(unittest.TestCase):
    timeout = 60

    async def test_conat_over_the_hubs_tls_listener(self) -> None:
        from tests.support import make_self_signed_cert

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        hub = start_hub(self, settings_for(tmp, {"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"}))
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        clients = []
        for _ in range(2):
            c = connect(reactor, f"https://127.0.0.1:{hub.port}", cookies={"hub_password": password},
                        verify_tls=False)
            self.addCleanup(c.close)
            clients.append(c)
            await c.signed_in(timeout=20)
        sub = await clients[0].subscribe("tls.x")
        self.assertEqual(await clients[1].publish("tls.x", "secure"), 1)
        self.assertEqual((await sub.next(30)).data, "secure")
