"""The proxy behind the hub's own TLS listener: HTTP and WebSocket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial import unittest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.proxy.support import Harness
from tests.support import make_self_signed_cert


class TlsProxyTests(unittest.TestCase):
    timeout = 120

    async def test_http_and_websocket_through_tls(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        h = Harness()
        h.scheme = "https"
        await h.setup(self, options={"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"})
        authority = Certificate.loadPEM(cert.read_bytes())

        class Policy(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return optionsForClientTLS("localhost", trustRoot=authority)

        client = HTTPClient(Agent(reactor, contextFactory=Policy(), pool=HTTPConnectionPool(reactor, False)))
        url = f"https://127.0.0.1:{h.hub.port}/{h.a}/server/{h.port_a}/echo"
        r = await client.get(url, headers=Headers({"Cookie": [h.cookie(h.owner)]}))
        self.assertEqual(r.code, 200)
        echoed = json.loads(await r.content())
        headers = dict(echoed["headers"])
        self.assertEqual(headers["x-forwarded-proto"], "https")
        self.assertNotIn("remember_me", headers.get("cookie", ""))
        r = await client.get(url)
        self.assertEqual(r.code, 401)
        await r.content()

        from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS

        received: list[bytes] = []
        done: defer.Deferred[None] = defer.Deferred()

        class Client(WebSocketClientProtocol):
            def onOpen(self) -> None:
                self.sendMessage(b"over tls", isBinary=True)

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                received.append(payload)
                self.sendClose(1000)

            def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
                if not done.called:
                    done.callback(None)

        factory = WebSocketClientFactory(f"wss://127.0.0.1:{h.hub.port}/{h.a}/port/{h.port_a}/ws",
                                         headers={"Cookie": h.cookie(h.owner)})
        factory.protocol = Client
        factory.setProtocolOptions(autoPingInterval=0)
        connectWS(factory, optionsForClientTLS("localhost", trustRoot=authority))
        await done
        self.assertEqual(received, [b"over tls"])
