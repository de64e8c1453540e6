"""cocalc_hub/conat/transport/flush.py: what a read wrote leaves at the end of that read.

These tests call a connection's ``dataReceived`` directly (not from the reactor) and then
look, with a non-blocking peek on the client's socket, at whether the answer is already in
the client's kernel buffer. They also pin the Twisted behaviour flush.py relies on, so a
Twisted that stops buffering writes in ``tcp.Connection`` (or renames ``doWrite``) fails here
loudly instead of silently losing the effect.
"""

from __future__ import annotations

import socket as pysocket
from typing import Any

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from cocalc_hub.conat.transport.flush import flush
from cocalc_hub.conat.transport.frames import masked_frame
from cocalc_hub.conat.transport.socket import Ack, NamespaceSocket
from cocalc_hub.internals.twisted import tcp_connection
from tests.conat.support import Recorder, open_session, serve_engine, ws_connect
from tests.support import until


def peek(transport: Any) -> bytes | None:
    """What has arrived in this client socket's kernel buffer (None: nothing yet)."""
    try:
        return bytes(transport.getHandle().recv(65536, pysocket.MSG_PEEK | pysocket.MSG_DONTWAIT))
    except BlockingIOError:
        return None


class TwistedBufferingTests(unittest.TestCase):
    async def test_writes_wait_for_the_reactor_and_flush_sends_them_now(self) -> None:
        accepted: list[Any] = []

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                accepted.append(self.transport)

        factory = protocol.Factory.forProtocol(Server)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = pysocket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        await until(lambda: bool(accepted), what="the connection to be accepted")
        server = accepted[0]
        self.addCleanup(server.loseConnection)
        self.assertIs(tcp_connection(server), server)
        server.write(b"hello")
        client.setblocking(False)
        with self.assertRaises(BlockingIOError):  # Twisted has only buffered it
            client.recv(5)
        flush(server)
        client.settimeout(10)
        self.assertEqual(client.recv(5), b"hello")  # sent without the reactor running

    def test_the_tcp_connection_is_found_under_wrappers(self) -> None:
        class Wrapper:
            def __init__(self, transport: object) -> None:
                self.transport = transport

        self.assertIsNone(tcp_connection(Wrapper(Wrapper(None))))
        self.assertIsNone(tcp_connection(object()))
        flush(Wrapper(object()))  # nothing to flush: no error


class EngineFlushTests(unittest.TestCase):
    async def session(self, handler: Any) -> tuple[Any, Any]:
        port, factory = serve_engine(self, handler)
        ws = await ws_connect(self, port)
        await open_session(ws)
        return ws, factory

    async def test_an_ack_is_in_the_clients_socket_when_the_read_that_asked_for_it_ends(self) -> None:
        ws, factory = await self.session(Recorder())
        [proto] = factory.connections
        proto.dataReceived(masked_frame(0x1, b'421["hello"]'))
        data = peek(ws.transport)
        self.assertIsNotNone(data, "the ack is still in Twisted's buffer")
        assert data is not None
        self.assertIn(b'431[{"got":"hello","args":[]}]', data)

    async def test_what_a_read_wrote_to_other_connections_leaves_too(self) -> None:
        sockets: list[NamespaceSocket] = []

        class Relay(Recorder):
            def socket_connected(self, socket: NamespaceSocket) -> None:
                sockets.append(socket)

            def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None:
                for other in sockets:
                    if other is not socket:
                        other.emit("relayed", name)

        port, factory = serve_engine(self, Relay())
        a = await ws_connect(self, port)
        await open_session(a)
        b = await ws_connect(self, port)
        await open_session(b)
        sender = sockets[0].client.engine  # the Engine.IO connection under the first socket
        sender.dataReceived(masked_frame(0x1, b'42["ping"]'))
        data = peek(b.transport)
        self.assertIsNotNone(data, "the relayed event is still in Twisted's buffer")
        assert data is not None
        self.assertIn(b'42["relayed","ping"]', data)


class HubFlushTests(unittest.TestCase):
    async def test_through_the_front_door_of_a_real_hub(self) -> None:
        """The hub's conat connections sit on the front door's shim (a transport over the
        accepted socket): flush finds the socket under it."""
        from tests.support import settings_for, start_hub

        hub = start_hub(self, settings_for(self.mktemp()))
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        ws = await ws_connect(self, hub.port, headers={"Cookie": f"hub_password={password}"})
        await open_session(ws)
        self.assertTrue((await ws.text_skipping_pings()).startswith('420["info"'))
        ws.send_text("430[]")  # the info ack
        assert hub.hub.conat is not None
        [proto] = hub.hub.conat.engine.connections
        self.assertIsNotNone(tcp_connection(proto.transport))
        proto.dataReceived(masked_frame(0x1, b'427["subscriptions",null]'))
        data = peek(ws.transport)
        self.assertIsNotNone(data, "the ack is still in Twisted's buffer")
        assert data is not None
        self.assertIn(b'437[[]]', data)
