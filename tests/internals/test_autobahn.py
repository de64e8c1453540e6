"""cocalc_hub/internals/autobahn.py: autobahn still has what the conat transport uses
beyond its public API (see that module's docstring), and a real connection goes through
those internals as expected: small frames by the fast path, fragments by autobahn's
parser and ``onMessageEnd``, the handshake's leftovers dropped, settings held by the
protocol class, the closing handshake timed."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from cocalc_hub.conat.transport.engine import EngineFactory, EngineProtocol, EngineResource
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import Handshake
from cocalc_hub.internals.autobahn import HANDSHAKE_LEFTOVERS, LeanServer
from tests.conat.support import Recorder, open_session, ws_connect
from tests.internals.support import need


class PresenceTests(unittest.SynchronousTestCase):
    def test_protocol_methods(self) -> None:
        need(self, "autobahn", WebSocketProtocol, "processData", [])
        need(self, "autobahn", WebSocketProtocol, "sendCloseFrame", ["code", "reasonUtf8", "isReply"])
        need(self, "autobahn", WebSocketProtocol, "dropConnection", ["abort"])
        need(self, "autobahn", WebSocketProtocol, "_dataReceived", ["data"])
        need(self, "autobahn", WebSocketProtocol, "onMessageEnd", [])
        need(self, "autobahn", WebSocketProtocol, "sendData", ["data", "sync", "chopsize"])
        need(self, "autobahn", WebSocketServerProtocol, "_connectionMade", [])
        need(self, "autobahn", WebSocketServerProtocol, "_onOpen", [])
        need(self, "autobahn", WebSocketServerProtocol, "connectionMade", [])
        need(self, "autobahn", WebSocketClientProtocol, "processData", [])

    def test_constants_and_settings(self) -> None:
        for name in ("STATE_OPEN", "STATE_CLOSING", "STATE_CLOSED", "CLOSE_STATUS_CODE_PROTOCOL_ERROR"):
            need(self, "autobahn", WebSocketProtocol, name)
        attrs = need(self, "autobahn", WebSocketServerProtocol, "CONFIG_ATTRS")
        self.assertIn("maxFramePayloadSize", attrs, "autobahn's CONFIG_ATTRS no longer lists its settings")

    def test_lean_server_overrides_what_it_means_to(self) -> None:
        self.assertIs(LeanServer.parse_read, WebSocketProtocol._dataReceived)


class Probe(EngineProtocol):
    """Records which path each message took and what autobahn kept of the handshake."""

    fast = 0
    slow = 0
    leftovers: dict[str, bool]

    def _onOpen(self) -> None:
        self.leftovers = {name: hasattr(self, name) for name in HANDSHAKE_LEFTOVERS}
        super()._onOpen()

    def _text(self, text: str) -> None:
        self.fast += 1
        super()._text(text)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.slow += 1
        self.fast -= 1  # onMessage hands the message to _text as well
        super().onMessage(payload, isBinary)


class ProbeFactory(EngineFactory):
    protocol = Probe


class RoundTripTests(unittest.TestCase):
    async def session(self) -> tuple[Any, Probe, Recorder, ProbeFactory]:
        recorder = Recorder()
        factory = ProbeFactory(SocketIOServer(recorder), reactor)
        root = Resource()
        root.putChild(b"conat", EngineResource(factory, lambda request: Handshake(client_ip="127.0.0.1")))
        site = Site(root)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]

        async def stop() -> None:
            factory.close_all()
            for proto in list(factory.connections):
                proto.dropConnection(abort=True)
            await port.stopListening()

        self.addCleanup(stop)
        ws = await ws_connect(self, port.getHost().port)
        await open_session(ws)
        [proto] = factory.connections
        assert isinstance(proto, Probe)
        proto.fast = proto.slow = 0  # the namespace's CONNECT came by the fast path
        return ws, proto, recorder, factory

    async def test_connection_internals(self) -> None:
        ws, proto, recorder, factory = await self.session()
        missing = [name for name, had in proto.leftovers.items() if not had]
        self.assertEqual(missing, [], "autobahn no longer keeps these handshake attributes")
        self.assertEqual([name for name in HANDSHAKE_LEFTOVERS if getattr(proto, name) is not None], [])
        self.assertTrue(proto.peer.startswith("tcp4:127.0.0.1:"), proto.peer)
        for name in ("data", "current_frame", "inside_message", "state", "failedByMe"):
            need(self, "autobahn", proto, name)
        # settings are class attributes of the factory's own protocol class, not copied per connection
        self.assertEqual(type(proto).CONFIG_ATTRS, ())
        self.assertNotIn("maxFramePayloadSize", vars(proto))
        self.assertEqual(proto.maxFramePayloadSize, factory.options.max_payload)

    async def test_fast_path_and_autobahns_parser(self) -> None:
        ws, proto, recorder, _ = await self.session()
        arrived = recorder.wait()
        ws.send_text('42["small"]')
        await arrived
        self.assertEqual((proto.fast, proto.slow), (1, 0), "a small frame did not take the fast path")
        arrived = recorder.wait()
        ws.send_frame(0x1, b'42["frag', fin=False)
        ws.send_frame(0x0, b'mented"]')
        await arrived
        self.assertEqual((proto.fast, proto.slow), (1, 1), "a fragmented message did not go through onMessageEnd")
        arrived = recorder.wait()
        big = "x" * 70_000
        ws.send_text(f'42["big","{big}"]')
        await arrived
        self.assertEqual((proto.fast, proto.slow), (1, 2), "a large frame did not go through autobahn's parser")
        arrived = recorder.wait()
        ws.send_text('42["small again"]')  # autobahn's frame state is back to idle: the fast path again
        await arrived
        self.assertEqual((proto.fast, proto.slow), (2, 2), "current_frame/inside_message were not reset")
        self.assertEqual([(name, args) for name, args, _ in recorder.events],
                         [("small", []), ("fragmented", []), ("big", [big]), ("small again", [])])

    async def test_closing_handshake_is_timed(self) -> None:
        ws, proto, _, _ = await self.session()
        proto.close("bye")
        self.assertEqual(proto.state, WebSocketProtocol.STATE_CLOSING)
        self.assertIsNotNone(proto._close_timer, "sendCloseFrame did not start the close timer")
        self.assertEqual(await ws.close_code(), 1000)
