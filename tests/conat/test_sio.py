"""The Socket.IO layer (transport/sio.py) over real sockets: several namespaces on one
connection, the CONNECT payload, refused connects, and the Engine.IO layer on its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cocalc_hub.conat.transport.engine import EngineOptions, EngineProtocol
from cocalc_hub.conat.transport.packets import ProtocolError
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import ConnectRefused, NamespaceSocket
from tests.conat.support import RawWS, Recorder, serve_engine, ws_connect
from tests.conat.test_interop import NODE_DIR, require_node, require_python_socketio, run_script
from tests.support import until


class Gatekeeper(Recorder):
    """Refuses clients whose CONNECT payload has no ``"token": "ok"``."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Any] = []

    def socket_connecting(self, socket: NamespaceSocket) -> None:
        self.asked.append(socket.auth)
        if socket.auth.get("token") != "ok":
            raise ConnectRefused("not authorized", {"token": socket.auth.get("token")})


class NamespaceTests(unittest.TestCase):
    async def serve(self, options: EngineOptions | None = None, clock: Any = None) -> RawWS:
        self.root, self.custom, self.gated = Recorder(), Recorder(), Gatekeeper()
        server = SocketIOServer(self.root, {"/custom": self.custom})
        server.namespace("/gated", self.gated)
        kwargs = {"clock": clock} if clock is not None else {}
        port, self.factory = serve_engine(self, server, options, **kwargs)
        ws = await ws_connect(self, port)
        await ws.text()
        return ws

    async def join(self, ws: RawWS, nsp: str, payload: str = "") -> str:
        ws.send_text(f"40{nsp},{payload}" if nsp != "/" else f"40{payload}")
        text = await ws.text()
        prefix = "40" if nsp == "/" else f"40{nsp},"
        self.assertTrue(text.startswith(prefix + "{"), text)
        return str(json.loads(text[len(prefix):])["sid"])

    async def test_each_namespace_has_its_own_socket_handler_and_events(self) -> None:
        ws = await self.serve()
        root_sid = await self.join(ws, "/")
        custom_sid = await self.join(ws, "/custom", '{"k":1}')
        self.assertNotEqual(root_sid, custom_sid)
        self.assertEqual([s.sid for s in self.root.sockets], [root_sid])
        self.assertEqual([(s.sid, s.nsp, s.auth) for s in self.custom.sockets], [(custom_sid, "/custom", {"k": 1})])
        self.assertEqual(self.root.sockets[0].auth, {})
        ws.send_text('42/custom,5["hi",1]')
        self.assertEqual(await ws.text(), '43/custom,5[{"got":"hi","args":[1]}]')
        ws.send_text('421["hi",2]')
        self.assertEqual(await ws.text(), '431[{"got":"hi","args":[2]}]')
        self.assertEqual([e[:2] for e in self.custom.events], [("hi", [1])])
        self.assertEqual([e[:2] for e in self.root.events], [("hi", [2])])

    async def test_binary_events_and_acks_are_routed_by_namespace(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/custom")
        ws.send_text('451-/custom,3["blob",{"_placeholder":true,"num":0}]')
        ws.send_binary(b"\x00\x01")
        self.assertEqual(await ws.text(), '461-/custom,3[{"got":"blob","args":[{"_placeholder":true,"num":0}]}]')
        self.assertEqual(await ws.binary(), b"\x00\x01")
        sock = self.custom.sockets[0]
        answers: list[Any] = []
        sock.emit("q", b"\xff", callback=answers.append)
        self.assertEqual(await ws.text(), '451-/custom,0["q",{"_placeholder":true,"num":0}]')
        self.assertEqual(await ws.binary(), b"\xff")
        sock.emit_raw('451-["raw",{"_placeholder":true,"num":0}]', b"r")
        self.assertEqual(await ws.text(), '451-/custom,["raw",{"_placeholder":true,"num":0}]')
        self.assertEqual(await ws.binary(), b"r")
        ws.send_text('430["not for custom"]')  # an ack on the root namespace: custom's id 0 stays due
        ws.send_text('43/custom,0["back"]')
        ws.send_text('42/custom,["sync"]')
        await until(lambda: len(self.custom.events) == 2, what="the sync event")
        self.assertEqual(answers, [["back"]])

    async def test_leaving_one_namespace_keeps_the_others_and_the_connection(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/")
        await self.join(ws, "/custom")
        ws.send_text("41/custom,")
        ws.send_text('42/custom,1["dropped"]')  # no longer in /custom: ignored
        ws.send_text('421["still here"]')
        self.assertEqual(await ws.text(), '431[{"got":"still here","args":[]}]')
        self.assertEqual((self.custom.gone, self.root.gone), (["client namespace disconnect"], []))
        self.assertEqual(self.custom.events, [])
        await self.join(ws, "/custom")  # and back
        self.assertEqual(len(self.custom.sockets), 2)

    async def test_server_leaves_a_namespace_or_closes_the_connection(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/")
        await self.join(ws, "/custom")
        self.custom.sockets[0].disconnect(close=False)
        self.assertEqual(await ws.text(), "41/custom,")
        ws.send_text('421["after"]')
        self.assertEqual(await ws.text(), '431[{"got":"after","args":[]}]')
        await self.join(ws, "/custom")
        self.root.sockets[0].disconnect()
        self.assertEqual(await ws.text(), "41")
        self.assertEqual(await ws.close_code(), 1000)
        await until(lambda: not self.factory.connections, what="the connection to close")
        self.assertEqual(self.root.gone, ["server namespace disconnect"])
        self.assertEqual(self.custom.gone, ["server namespace disconnect", "server namespace disconnect"])

    async def test_closing_the_connection_tells_every_namespace(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/")
        await self.join(ws, "/custom")
        ws.send_text("1")
        await until(lambda: bool(self.root.gone and self.custom.gone), what="both handlers to hear of it")
        self.assertEqual((self.root.gone, self.custom.gone), (["transport close"], ["transport close"]))
        self.assertFalse(self.root.sockets[0].connected or self.custom.sockets[0].connected)

    async def test_unknown_namespace_is_refused_and_the_others_work(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/custom")
        ws.send_text('40/nobody,{"token":"x"}')
        self.assertEqual(await ws.text(), '44/nobody,{"message":"Invalid namespace"}')
        ws.send_text('42/custom,1["ok"]')
        self.assertEqual(await ws.text(), '43/custom,1[{"got":"ok","args":[]}]')

    async def test_a_handler_refuses_a_connect_with_connect_error(self) -> None:
        clock = task.Clock()
        ws = await self.serve(EngineOptions(connect_timeout=1.0), clock)
        ws.send_text('40/gated,{"token":"bad"}')
        self.assertEqual(await ws.text(), '44/gated,{"message":"not authorized","data":{"token":"bad"}}')
        ws.send_text("40/gated,")
        self.assertEqual(await ws.text(), '44/gated,{"message":"not authorized","data":{"token":null}}')
        self.assertEqual(self.gated.asked, [{"token": "bad"}, {}])
        self.assertEqual(self.gated.sockets, [])
        clock.advance(1.0)  # a refused connect is no connect: the connect timeout still applies
        self.assertEqual(await ws.close_code(), 1000)
        self.assertEqual(self.gated.gone, [])

    async def test_an_accepted_connect_goes_on_as_usual(self) -> None:
        ws = await self.serve()
        sid = await self.join(ws, "/gated", '{"token":"ok"}')
        self.assertEqual([(s.sid, s.auth) for s in self.gated.sockets], [(sid, {"token": "ok"})])
        ws.send_text('42/gated,2["x"]')
        self.assertEqual(await ws.text(), '43/gated,2[{"got":"x","args":[]}]')

    async def test_a_second_connect_to_a_joined_namespace_is_ignored(self) -> None:
        ws = await self.serve()
        await self.join(ws, "/custom")
        ws.send_text("40/custom,")
        ws.send_text('42/custom,1["x"]')
        self.assertEqual(await ws.text(), '43/custom,1[{"got":"x","args":[]}]')
        self.assertEqual(len(self.custom.sockets), 1)

    async def test_a_payload_that_is_not_an_object_is_a_protocol_error(self) -> None:
        ws = await self.serve()
        ws.send_text('40/custom,"token"')
        self.assertEqual(await ws.close_code(), 1002)
        self.assertEqual(self.custom.sockets, [])


class LaterGatekeeper(Recorder):
    """Decides on each CONNECT when the test says so (``decisions``, one Deferred each)."""

    def __init__(self) -> None:
        super().__init__()
        self.decisions: list[defer.Deferred[None]] = []

    def socket_connecting(self, socket: NamespaceSocket) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.decisions.append(d)
        return d


class AsyncGatekeeper(Recorder):
    """A coroutine that refuses ``bad`` after a turn of the reactor."""

    async def socket_connecting(self, socket: NamespaceSocket) -> None:
        await task.deferLater(reactor, 0, lambda: None)
        if socket.auth.get("token") == "bad":
            raise ConnectRefused("no", "later")


class LaterDecisionTests(unittest.TestCase):
    async def serve(self) -> RawWS:
        self.later, self.coro = LaterGatekeeper(), AsyncGatekeeper()
        port, self.factory = serve_engine(self, SocketIOServer(None, {"/later": self.later, "/coro": self.coro}))
        ws = await ws_connect(self, port)
        await ws.text()
        return ws

    async def test_a_deferred_decision_accepts_or_refuses(self) -> None:
        ws = await self.serve()
        ws.send_text('40/later,{"n":1}')
        await until(lambda: len(self.later.decisions) == 1, what="the handler to be asked")
        ws.send_text('40/later,{"n":2}')  # ignored while the first is being decided
        ws.send_text('42/later,1["early"]')  # dropped: not connected yet
        ws.send_text("40/nobody,")  # a marker: everything before it has been read
        self.assertEqual(await ws.text(), '44/nobody,{"message":"Invalid namespace"}')
        self.assertEqual(len(self.later.decisions), 1)
        self.later.decisions[0].errback(ConnectRefused("wait", {"retry": True}))
        self.assertEqual(await ws.text(), '44/later,{"message":"wait","data":{"retry":true}}')
        ws.send_text('40/later,{"n":3}')
        await until(lambda: len(self.later.decisions) == 2, what="the handler to be asked again")
        self.later.decisions[1].callback(None)
        self.assertTrue((await ws.text()).startswith('40/later,{"sid":'))
        self.assertEqual([s.auth for s in self.later.sockets], [{"n": 3}])
        ws.send_text('42/later,2["now"]')
        self.assertEqual(await ws.text(), '43/later,2[{"got":"now","args":[]}]')
        self.assertEqual([e[0] for e in self.later.events], ["now"])

    async def test_a_coroutine_decides(self) -> None:
        ws = await self.serve()
        ws.send_text('40/coro,{"token":"bad"}')
        self.assertEqual(await ws.text(), '44/coro,{"message":"no","data":"later"}')
        ws.send_text('40/coro,{"token":"good"}')
        self.assertTrue((await ws.text()).startswith('40/coro,{"sid":'))

    async def test_the_connection_closes_before_the_decision(self) -> None:
        ws = await self.serve()
        ws.send_text("40/later,")
        await until(lambda: len(self.later.decisions) == 1, what="the handler to be asked")
        ws.send_text("1")
        await ws.closed
        await until(lambda: not self.factory.connections, what="the server to close")
        self.later.decisions[0].callback(None)
        self.assertEqual((self.later.sockets, self.later.gone), ([], []))


class Upper:
    """An Engine.IO-only handler: text comes back upper-cased, bytes reversed; ``bye``
    refuses the message (a protocol error)."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def engine_connected(self, engine: EngineProtocol) -> Upper.Receiver:
        engine.established()
        return Upper.Receiver(self, engine)

    class Receiver:
        def __init__(self, owner: Upper, engine: EngineProtocol) -> None:
            self.owner = owner
            self.engine = engine

        def on_message(self, text: str) -> None:
            if text == "bye":
                raise ProtocolError("bye")
            self.engine.send_message(text.upper())

        def on_binary(self, data: bytes) -> None:
            self.engine.send_message(data[::-1])

        def on_close(self, reason: str) -> None:
            self.owner.closed.append(reason)


class EngineOnlyTests(unittest.TestCase):
    async def test_messages_that_are_not_socket_io_packets_reach_the_handler(self) -> None:
        handler = Upper()
        port, _ = serve_engine(self, handler)
        ws = await ws_connect(self, port)
        await ws.text()
        ws.send_text("4hello")
        self.assertEqual(await ws.text(), "4HELLO")
        ws.send_binary(b"\x01\x02\x03")
        self.assertEqual(await ws.binary(), b"\x03\x02\x01")
        ws.send_text("4")  # an empty message is a message
        self.assertEqual(await ws.text(), "4")
        ws.send_text("4bye")
        self.assertEqual(await ws.close_code(), 1002)
        await until(lambda: bool(handler.closed), what="the handler to hear of the close")
        self.assertEqual(handler.closed, ["parse error"])

    async def test_established_stops_the_connect_timeout(self) -> None:
        clock = task.Clock()
        handler = Upper()
        port, factory = serve_engine(self, handler, EngineOptions(connect_timeout=1.0, ping_interval=100),
                                     clock=clock)
        ws = await ws_connect(self, port)
        await ws.text()
        clock.advance(5)
        ws.send_text("4still open")
        self.assertEqual(await ws.text(), "4STILL OPEN")


class Asker(Recorder):
    """Answers ``ask`` by asking the client a ``question`` (with an ack) first."""

    def socket_connected(self, socket: NamespaceSocket) -> None:
        super().socket_connected(socket)
        socket.emit("auth", socket.auth)

    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Any) -> None:
        if name == "ask" and ack is not None:
            socket.emit("question", args[0], callback=lambda answer: ack(answer[0], answer[1].hex()))
        elif name == "echo" and ack is not None:
            ack(*args)
        self.events.append((name, args, ack))


class GatedAsker(Asker, Gatekeeper):
    pass


class NodeClientTests(unittest.TestCase):
    async def test_socket_io_client_uses_several_namespaces_with_auth_over_one_connection(self) -> None:
        node = require_node()
        root, custom, gated = Asker(), Asker(), GatedAsker()
        port, factory = serve_engine(self, SocketIOServer(root, {"/custom": custom, "/gated": gated}))
        r = await run_script(self, [node, str(NODE_DIR / "namespaces.js"), json.dumps({"url": f"http://127.0.0.1:{port}"})])
        self.assertEqual(r["auth"], {"root": {"token": "root-token"}, "custom": {"token": "abc", "n": 1}})
        self.assertTrue(r["ids_differ"])
        self.assertEqual(r["refused"], {"message": "not authorized", "data": {"token": "bad"}, "connected": False})
        self.assertEqual(r["echo"], {"root": ["r", 1], "custom": [{"hex": "010203"}, {"k": "v"}]})
        self.assertEqual(r["server_ack"], [42, "6f6b"])
        self.assertEqual(r["gated_ok"], ["gated"])
        self.assertEqual(r["after_leaving_custom"], ["still"])
        self.assertEqual((r["engines"], r["root_connected"]), (1, True))
        self.assertEqual(gated.asked, [{"token": "bad"}, {"token": "ok"}])
        self.assertEqual(custom.gone, ["client namespace disconnect"])
        self.assertEqual([s.nsp for s in custom.sockets + root.sockets + gated.sockets], ["/custom", "/", "/gated"])
        await until(lambda: not factory.connections, what="the client to close its connection")


class PythonClientTests(unittest.TestCase):
    """python-socketio and python-engineio clients (subprocesses: they block)."""

    script = str(Path(__file__).resolve().parent / "sio_namespaces_client.py")

    async def test_python_socketio_joins_two_namespaces_with_auth(self) -> None:
        require_python_socketio()
        root, custom = Asker(), Asker()
        port, factory = serve_engine(self, SocketIOServer(root, {"/custom": custom}))
        r = await run_script(self, [sys.executable, self.script, "socketio", f"http://127.0.0.1:{port}"])
        self.assertEqual(r["auth"], {"/": {"token": "py"}, "/custom": {"token": "py"}})
        self.assertTrue(r["sids_differ"])
        self.assertEqual((r["echo_root"], r["echo_custom"]), (["r", 1], "0102"))
        await until(lambda: not factory.connections, what="the client to close its connection")
        # python-socketio sends 41 for each namespace and closes its transport without waiting
        # for them to be written: either reason, once for each namespace
        for handler in (root, custom):
            self.assertEqual(len(handler.gone), 1)
            self.assertIn(handler.gone[0], ("client namespace disconnect", "transport close"))

    async def test_python_engineio_messages_reach_an_engine_io_handler(self) -> None:
        require_python_socketio()
        handler = Upper()
        port, _ = serve_engine(self, handler)
        r = await run_script(self, [sys.executable, self.script, "engineio", f"http://127.0.0.1:{port}"])
        self.assertEqual(r, {"text": "HELLO", "binary": "030201"})
        await until(lambda: bool(handler.closed), what="the handler to hear of the close")
