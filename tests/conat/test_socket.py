"""Conat sockets (spec §6.3) over a real broker: in-process clients, and real sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import Client, ConatError, Message, connect
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.socket import ServerSocket, SocketClient, SocketServer
from cocalc_hub.conat.socket.tcp import CMD, SEQ
from tests.support import settings_for, start_hub, until


class SocketCase(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.broker = Broker(reactor)
        self.accepted: list[ServerSocket] = []
        self.server_data: list[Any] = []

    def client(self) -> Client:
        c = Client(reactor, LocalTransport(self.broker))
        self.addCleanup(c.close)
        return c

    async def serve(self, subject: str = "svc.*", server_id: str = "s1", **options: Any) -> SocketServer:
        def on_connection(sock: ServerSocket) -> None:
            self.accepted.append(sock)
            sock.on_data = lambda msg: self.server_data.append(msg.data)

            async def on_request(msg: Message) -> None:
                if msg.data == "fail":
                    await msg.respond(None, headers={"error": "failed on purpose", "code": 500})
                else:
                    await msg.respond({"echo": msg.data, "scope": sock.subject})

            sock.on_request = on_request

        server = SocketServer(self.client(), subject, server_id, on_connection, **options)
        await server.start()
        self.addCleanup(server.close)
        return server

    async def open(self, subject: str = "svc.one", **options: Any) -> SocketClient:
        sock = SocketClient(self.client(), subject, **options)
        self.addCleanup(sock.close)
        await sock.connect()
        return sock


class SocketTests(SocketCase):
    async def test_ordered_data_both_ways_requests_and_acks(self) -> None:
        await self.serve()
        sock = await self.open()
        got: list[Any] = []
        sock.on_data = lambda msg: got.append((msg.data, msg.headers))
        for i in range(50):
            sock.write(i, headers={"n": i} if i == 3 else None)
        await until(lambda: len(self.server_data) == 50)
        self.assertEqual(self.server_data, list(range(50)))
        server_sock = self.accepted[0]
        self.assertEqual((server_sock.subject, server_sock.client_id), ("svc.one", sock.client_id))
        for i in range(20):
            server_sock.write({"i": i})
        await until(lambda: len(got) == 20)
        self.assertEqual(got, [({"i": i}, None) for i in range(20)])
        # everything was acknowledged, so neither side keeps anything
        await until(lambda: not sock.sender.unacked and not server_sock.sender.unacked)
        self.assertEqual((sock.sender.acked, server_sock.sender.acked), (50, 20))
        reply = await sock.request("hi")
        self.assertEqual(reply.data, {"echo": "hi", "scope": "svc.one"})
        reply = await sock.request("fail")
        self.assertEqual(reply.headers, {"error": "failed on purpose", "code": 500})

    async def test_headers_arrive_without_the_sequence_number(self) -> None:
        await self.serve()
        sock = await self.open()
        seen: list[Any] = []
        self.accepted[0].on_data = lambda msg: seen.append((msg.data, msg.headers))
        sock.write("x", headers={"a": 1})
        sock.write("y")
        await until(lambda: len(seen) == 2)
        self.assertEqual(seen, [("x", {"a": 1}), ("y", None)])

    async def test_a_lost_message_is_asked_for_again(self) -> None:
        await self.serve()
        sock = await self.open()
        real = sock.send_data
        dropped: list[int] = []

        def lossy(raw: bytes, encoding: int, headers: dict[str, Any]) -> None:
            if headers.get(SEQ) in (2, 3) and headers[SEQ] not in dropped:
                dropped.append(headers[SEQ])
                return  # lost on the way, the first time
            real(raw, encoding, headers)

        sock.send_data = lossy  # type: ignore[method-assign]
        for i in range(1, 6):
            sock.write(i)
        await until(lambda: self.server_data == [1, 2, 3, 4, 5])
        self.assertEqual(dropped, [2, 3])
        await until(lambda: not sock.sender.unacked)

    async def test_the_last_message_is_resent_until_acknowledged(self) -> None:
        await self.serve()
        sock = await self.open()
        real = sock.send_data
        sent: list[int] = []

        def lossy(raw: bytes, encoding: int, headers: dict[str, Any]) -> None:
            sent.append(headers[SEQ])
            if len(sent) > 1:
                real(raw, encoding, headers)

        sock.send_data = lossy  # type: ignore[method-assign]
        sock.write("only")  # lost; no later message shows the gap: the resend timer does
        await until(lambda: self.server_data == ["only"])
        self.assertEqual(sent[:2], [1, 1])

    async def test_a_gap_the_sender_forgot_resets_the_socket(self) -> None:
        await self.serve()
        sock = await self.open()
        closed: list[str] = []
        server_sock = self.accepted[0]
        server_sock.on_close.append(closed.append)
        real = sock.send_data

        def lossy(raw: bytes, encoding: int, headers: dict[str, Any]) -> None:
            if headers.get(SEQ) == 1:
                sock.sender.unacked.pop(1, None)  # lost and forgotten
                return
            real(raw, encoding, headers)

        sock.send_data = lossy  # type: ignore[method-assign]
        sock.write("a")
        sock.write("b")
        await until(lambda: bool(closed))
        self.assertEqual(self.server_data, [])
        self.assertIn("no longer has data", closed[0])

    async def test_close_reaches_the_other_end(self) -> None:
        await self.serve()
        sock = await self.open()
        ended: list[str] = []
        self.accepted[0].on_close.append(ended.append)
        sock.close()
        await until(lambda: bool(ended))
        self.assertEqual(self.accepted[0].state, "closed")
        with self.assertRaises(ConatError):
            sock.write("after")
        # and the other way round
        sock2 = await self.open("svc.two")
        ended2: list[str] = []
        sock2.on_close.append(ended2.append)
        self.accepted[1].close()
        await until(lambda: bool(ended2))
        self.assertEqual(sock2.state, "closed")

    async def test_an_unknown_client_is_told_to_close(self) -> None:
        server = await self.serve()
        sock = await self.open()
        ended: list[str] = []
        sock.on_close.append(ended.append)
        # the server forgets the socket (as after a restart) without telling the client
        for s in list(server.sockets.values()):
            s.close(notify=False)
        sock.write("anyone?")
        await until(lambda: bool(ended))
        self.assertEqual(self.server_data, [])

    async def test_keepalive_notices_a_vanished_client(self) -> None:
        await self.serve(keep_alive=0.2, keep_alive_timeout=0.2)
        conn = self.client()
        sock = SocketClient(conn, "svc.gone", keep_alive=60)
        await sock.connect()
        ended: list[str] = []
        self.accepted[0].on_close.append(ended.append)
        sock.state = "closed"  # the client vanishes without a word
        sock.sender.stop()
        conn.close()
        await until(lambda: bool(ended))
        self.assertIn("keepalive", ended[0])

    async def test_connect_waits_for_a_server_and_fails_without_one(self) -> None:
        sock = SocketClient(self.client(), "svc.late", connect_timeout=0.0)
        self.addCleanup(sock.close)
        with self.assertRaises(ConatError):  # nobody answers server.status
            await sock.connect()
        opening = SocketClient(self.client(), "svc.late", server_id=_fixed("s1"))
        self.addCleanup(opening.close)
        d = opening.connect()
        # it sends connect and waits for interest in its server's subject
        await until(lambda: any(w.subject.startswith("svc.late.server.s1.") for w in self.broker.waiters),
                    what="the client to wait for its server")
        self.assertFalse(d.called)
        await self.serve()
        await d
        self.assertEqual(opening.state, "ready")

    async def test_unknown_commands_and_bad_socket_commands(self) -> None:
        await self.serve()
        sock = await self.open()
        reply = await sock.client.request(sock.peer, None, headers={CMD: "dance"})
        self.assertEqual(reply.data, {"error": "unknown command - 'dance'"})
        reply = await sock.client.request(sock.peer, "junk", headers={CMD: "socket"})
        self.assertEqual(reply.headers, {"error": "bad socket command"})
        reply = await sock.client.request(sock.peer, {"socket": {"missing": [99]}}, headers={CMD: "socket"})
        self.assertEqual((reply.data, reply.headers), (None, {"error": "nodata"}))
        # data without a sequence number is dropped, the socket carries on
        sock.client.publish_sync(sock.peer, "no seq")
        sock.write("fine")
        await until(lambda: self.server_data == ["fine"])


def _fixed(server_id: str) -> Any:
    async def pick() -> str:
        return server_id
    return pick


class RealSocketTests(unittest.TestCase):
    timeout = 60

    async def test_over_the_hubs_websocket_and_after_a_broker_restart_of_connections(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp()))
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        server_client = connect(reactor, hub.root, cookies={"hub_password": password})
        self.addCleanup(server_client.close)
        client = connect(reactor, hub.root, cookies={"hub_password": password})
        self.addCleanup(client.close)
        await server_client.signed_in()
        await client.signed_in()
        data: list[Any] = []
        server = SocketServer(server_client, "real.*", "r0",
                              lambda s: setattr(s, "on_data", lambda m: data.append(m.data)))
        await server.start()
        self.addCleanup(server.close)
        sock = SocketClient(client, "real.x")
        self.addCleanup(sock.close)
        await sock.connect()
        for i in range(200):
            sock.write(i)
        await until(lambda: len(data) == 200)
        self.assertEqual(data, list(range(200)))
        # every connection drops; the socket comes back and nothing written meanwhile is lost
        assert hub.hub.conat is not None
        hub.hub.conat.close_connections()
        await until(lambda: sock.state == "disconnected" or sock.state == "connecting")
        for i in range(200, 210):
            sock.write(i)
        await until(lambda: sock.state == "ready" and len(data) >= 210)
        self.assertEqual(data, list(range(210)))
