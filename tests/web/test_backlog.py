"""The hub's listener has a listen queue sized for a reconnect storm unless told otherwise."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from cocalc_hub.web.tls import DEFAULT_BACKLOG, parse_ssl, server_endpoint, with_backlog
from tests.support import socket_dir


class BacklogTests(unittest.TestCase):
    async def listen(self, description: str) -> Any:
        endpoint, _ = server_endpoint(reactor, description)
        port = await endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(port.stopListening)
        return port

    async def test_tcp_default_is_large(self) -> None:
        """Twisted's default of 50 drops most SYNs of a storm of thousands of clients."""
        self.assertGreaterEqual(DEFAULT_BACKLOG, 1024)
        port = await self.listen("tcp:0:interface=127.0.0.1")
        self.assertEqual(port.backlog, DEFAULT_BACKLOG)

    async def test_unix_default_is_large(self) -> None:
        path = socket_dir(self) / "hub.sock"  # short: a deep checkout's temp dir can pass AF_UNIX's limit
        port = await self.listen(f"unix:{path}")
        self.assertEqual(port.backlog, DEFAULT_BACKLOG)

    async def test_explicit_backlog_is_kept(self) -> None:
        port = await self.listen("tcp:0:interface=127.0.0.1:backlog=7")
        self.assertEqual(port.backlog, 7)
        port = await self.listen("tcp:0:127.0.0.1:9")  # positional: interface, backlog
        self.assertEqual(port.backlog, 9)

    def test_descriptions(self) -> None:
        self.assertEqual(with_backlog("tcp:5000"), f"tcp:5000:backlog={DEFAULT_BACKLOG}")
        self.assertEqual(with_backlog("tcp6:5000"), f"tcp6:5000:backlog={DEFAULT_BACKLOG}")
        self.assertEqual(with_backlog("tcp6:5000:12"), "tcp6:5000:12")
        self.assertEqual(with_backlog("tcp:5000:interface=\\:\\:1"),
                         f"tcp:5000:interface=\\:\\:1:backlog={DEFAULT_BACKLOG}")
        self.assertEqual(with_backlog("unix:/run/h.sock:660"), f"unix:/run/h.sock:660:backlog={DEFAULT_BACKLOG}")
        self.assertEqual(with_backlog("unix:/run/h.sock:660:3"), "unix:/run/h.sock:660:3")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")
        parsed = parse_ssl("ssl:443:privateKey=k.pem")
        assert parsed is not None
        self.assertEqual(parsed.backlog, DEFAULT_BACKLOG)
