"""The WebSocket cases of the Engine.IO v4 and Socket.IO v5 protocol conformance suites,
written anew in Python from the protocol documents and the suites' case list.

The suites run against two servers: a pure Engine.IO server that echoes every message
(text or binary), and a Socket.IO server with the namespaces ``/`` and ``/custom`` that
sends ``auth`` (the CONNECT payload) on connect, answers ``message`` with ``message-back``
and acknowledges ``message-with-ack`` with its arguments. Both use a 300 ms ping
interval, a 200 ms ping timeout and a 1 000 000-byte max payload, like the suites'
servers. Timers run on a clock each test advances; the HTTP long-polling and upgrade cases
do not apply (this server speaks WebSocket only). 9 Engine.IO + 22 Socket.IO = 31 cases.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from cocalc_hub.conat.transport.engine import EngineOptions, EngineProtocol
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import Ack, NamespaceSocket
from tests.conat.support import RawWS, serve_engine, ws_connect

OPTIONS = EngineOptions(ping_interval=0.3, ping_timeout=0.2, connect_timeout=1.0, max_payload=1_000_000)
WS_PATH = "/conat/?EIO=4&transport=websocket"


class EchoReceiver:
    def __init__(self, engine: EngineProtocol) -> None:
        self.engine = engine

    def on_message(self, text: str) -> None:
        self.engine.send_message(text)

    def on_binary(self, data: bytes) -> None:
        self.engine.send_message(data)

    def on_close(self, reason: str) -> None:
        pass


class Echo:
    """An Engine.IO-only server: every message comes back as it was."""

    def engine_connected(self, engine: EngineProtocol) -> EchoReceiver:
        engine.established()
        return EchoReceiver(engine)


class SuiteHandler:
    """The Socket.IO suite's server, for one namespace."""

    def socket_connected(self, socket: NamespaceSocket) -> None:
        socket.emit("auth", socket.auth)

    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None:
        if name == "message":
            socket.emit("message-back", *args)
        elif name == "message-with-ack" and ack is not None:
            ack(*args)

    def socket_disconnected(self, socket: NamespaceSocket, reason: str) -> None:
        pass


def suite_server() -> SocketIOServer:
    return SocketIOServer(SuiteHandler(), {"/custom": SuiteHandler()})


async def closed(ws: RawWS) -> None:
    """The server closes the connection (close handshake or not), as a browser sees it."""
    while True:
        try:
            opcode, payload = await ws.next_frame()
        except ConnectionError:
            break
        if opcode == 0x8:
            ws.send_frame(0x8, payload[:2])  # the closing handshake's reply
            break
    await ws.closed


class Common:
    """The Engine.IO cases both suites have (WebSocket transport)."""

    server: Any

    def serve(self: Any) -> tuple[int, task.Clock]:
        clock = task.Clock()
        port, _ = serve_engine(self, self.server(), OPTIONS, clock=clock)
        return port, clock

    async def test_opens_a_session(self: Any) -> None:
        port, _ = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        text = await ws.text()
        self.assertEqual(text[0], "0")
        value = json.loads(text[1:])
        self.assertEqual(set(value), {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"})
        self.assertIsInstance(value["sid"], str)
        self.assertEqual((value["upgrades"], value["pingInterval"], value["pingTimeout"], value["maxPayload"]),
                         ([], 300, 200, 1_000_000))

    async def test_invalid_eio_query_parameter(self: Any) -> None:
        port, _ = self.serve()
        for path in ("/conat/?transport=websocket", "/conat/?EIO=abc&transport=websocket"):
            await ws_connect(self, port, path, expect=400)  # the upgrade is refused

    async def test_invalid_transport_query_parameter(self: Any) -> None:
        port, _ = self.serve()
        for path in ("/conat/?EIO=4", "/conat/?EIO=4&transport=abc"):
            await ws_connect(self, port, path, expect=400)

    async def test_heartbeat_ping_pong(self: Any) -> None:
        port, clock = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        for _ in range(3):
            clock.advance(0.3)
            self.assertEqual(await ws.text(), "2")
            ws.send_text("3")
            await self.handled(ws)

    async def test_closes_the_session_upon_ping_timeout(self: Any) -> None:
        port, clock = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        clock.advance(0.3)
        self.assertEqual(await ws.text(), "2")
        clock.advance(0.2)
        await closed(ws)

    async def test_forcefully_closes_the_session(self: Any) -> None:
        port, _ = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        ws.send_text("1")
        await closed(ws)


class EngineIOSuite(Common, unittest.TestCase):
    server = Echo

    async def handled(self, ws: RawWS) -> None:
        """Everything sent so far has been handled (the echo of a marker came back)."""
        ws.send_text("4sync")
        self.assertEqual(await ws.text(), "4sync")

    async def test_sends_and_receives_a_plain_text_packet(self) -> None:
        port, _ = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        ws.send_text("4hello")
        self.assertEqual(await ws.text(), "4hello")

    async def test_sends_and_receives_a_binary_packet(self) -> None:
        port, _ = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        ws.send_binary(bytes([1, 2, 3, 4]))
        self.assertEqual(await ws.binary(), bytes([1, 2, 3, 4]))

    async def test_closes_the_session_upon_invalid_packet_format(self) -> None:
        port, _ = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()
        ws.send_text("abc")
        await closed(ws)


class SocketIOSuite(Common, unittest.TestCase):
    server = staticmethod(suite_server)

    async def handled(self, ws: RawWS) -> None:
        """Everything sent so far has been handled: no namespace joined, so a CONNECT to an
        unknown one is the marker."""
        ws.send_text("40/sync")
        self.assertEqual(await ws.text(), '44/sync,{"message":"Invalid namespace"}')

    async def opened(self) -> tuple[RawWS, task.Clock]:
        port, clock = self.serve()
        ws = await ws_connect(self, port, WS_PATH)
        await ws.text()  # Engine.IO handshake
        return ws, clock

    async def joined(self) -> tuple[RawWS, task.Clock]:
        ws, clock = await self.opened()
        ws.send_text("40")
        self.assertTrue((await ws.text()).startswith("40{"))
        self.assertEqual(await ws.text(), '42["auth",{}]')
        return ws, clock

    async def check_connect(self, sent: str, prefix: str, auth: str) -> None:
        ws, _ = await self.opened()
        ws.send_text(sent)
        data = await ws.text()
        self.assertTrue(data.startswith(prefix), data)
        handshake = json.loads(data[len(prefix):])
        self.assertEqual(list(handshake), ["sid"])
        self.assertIsInstance(handshake["sid"], str)
        self.assertEqual(await ws.text(), auth)

    # connect

    async def test_connection_to_the_main_namespace(self) -> None:
        await self.check_connect("40", "40", '42["auth",{}]')

    async def test_connection_to_the_main_namespace_with_a_payload(self) -> None:
        await self.check_connect('40{"token":"123"}', "40", '42["auth",{"token":"123"}]')

    async def test_connection_to_a_custom_namespace(self) -> None:
        await self.check_connect("40/custom,", "40/custom,", '42/custom,["auth",{}]')

    async def test_connection_to_a_custom_namespace_with_a_payload(self) -> None:
        await self.check_connect('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]')

    async def test_connection_to_an_unknown_namespace_is_refused(self) -> None:
        ws, _ = await self.opened()
        ws.send_text("40/random")
        self.assertEqual(await ws.text(), '44/random,{"message":"Invalid namespace"}')

    async def test_connection_with_an_invalid_handshake(self) -> None:
        ws, _ = await self.opened()
        ws.send_text("4abc")
        await closed(ws)

    async def test_connection_closed_if_no_handshake_is_received(self) -> None:
        ws, clock = await self.opened()
        for _ in range(3):  # answering pings does not count as joining
            clock.advance(0.3)
            self.assertEqual(await ws.text(), "2")
            ws.send_text("3")
            await self.handled(ws)
        clock.advance(0.15)  # past the connect timeout (1 s), before the next ping (1.2 s)
        self.assertEqual(await ws.close_code(), 1000)  # the connect timeout, not a ping timeout

    # disconnect

    async def test_disconnect_from_the_main_namespace(self) -> None:
        ws, clock = await self.joined()
        ws.send_text("41")
        clock.advance(0.3)
        self.assertEqual(await ws.text(), "2")  # the connection stays open

    async def test_connect_then_disconnect_from_a_custom_namespace(self) -> None:
        ws, clock = await self.joined()
        clock.advance(0.3)
        self.assertEqual(await ws.text(), "2")
        ws.send_text("40/custom")
        self.assertTrue((await ws.text()).startswith("40/custom,{"))
        self.assertEqual(await ws.text(), '42/custom,["auth",{}]')
        ws.send_text("41/custom")
        ws.send_text('42["message","message to main namespace"]')
        self.assertEqual(await ws.text(), '42["message-back","message to main namespace"]')

    # message

    async def test_plain_text_packet(self) -> None:
        ws, _ = await self.joined()
        ws.send_text('42["message",1,"2",{"3":[true]}]')
        self.assertEqual(await ws.text(), '42["message-back",1,"2",{"3":[true]}]')

    async def test_packet_with_binary_attachments(self) -> None:
        ws, _ = await self.joined()
        ws.send_text('452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        ws.send_binary(bytes([1, 2, 3]))
        ws.send_binary(bytes([4, 5, 6]))
        self.assertEqual(await ws.text(),
                         '452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        self.assertEqual(await ws.binary(), bytes([1, 2, 3]))
        self.assertEqual(await ws.binary(), bytes([4, 5, 6]))

    async def test_plain_text_packet_with_an_ack(self) -> None:
        ws, _ = await self.joined()
        ws.send_text('42456["message-with-ack",1,"2",{"3":[false]}]')
        self.assertEqual(await ws.text(), '43456[1,"2",{"3":[false]}]')

    async def test_packet_with_binary_attachments_and_an_ack(self) -> None:
        ws, _ = await self.joined()
        ws.send_text('452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        ws.send_binary(bytes([1, 2, 3]))
        ws.send_binary(bytes([4, 5, 6]))
        self.assertEqual(await ws.text(), '462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]')
        self.assertEqual(await ws.binary(), bytes([1, 2, 3]))
        self.assertEqual(await ws.binary(), bytes([4, 5, 6]))

    async def test_invalid_format_unknown_packet_type(self) -> None:
        ws, _ = await self.joined()
        ws.send_text("4abc")
        await closed(ws)

    async def test_invalid_format_invalid_payload(self) -> None:
        ws, _ = await self.joined()
        ws.send_text("42{}")
        await closed(ws)

    async def test_invalid_format_invalid_ack_id(self) -> None:
        ws, _ = await self.joined()
        ws.send_text('42abc["message-with-ack",1,"2",{"3":[false]}]')
        await closed(ws)
