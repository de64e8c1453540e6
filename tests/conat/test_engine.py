"""The Engine.IO/Socket.IO server over real sockets, frame by frame."""

from __future__ import annotations

import json
import re
import socket as pysocket
import struct
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from cocalc_hub.conat.transport.engine import EngineOptions
from tests.conat.support import Recorder, open_session, serve_engine, ws_connect
from tests.support import parse_response, raw_get, raw_http, until

FAST = EngineOptions(ping_interval=0.2, ping_timeout=0.3, connect_timeout=0.3)


class HandshakeTests(unittest.TestCase):
    async def test_open_packet_comes_first_and_is_exact(self) -> None:
        port, _ = serve_engine(self, Recorder())
        ws = await ws_connect(self, port)
        text = await ws.text()
        m = re.fullmatch(r'0\{"sid":"([A-Za-z0-9_-]{20})","upgrades":\[\],"pingInterval":25000,'
                         r'"pingTimeout":20000,"maxPayload":8000000\}', text)
        self.assertIsNotNone(m, text)

    async def test_namespace_connect_gets_a_distinct_socket_id(self) -> None:
        rec = Recorder()
        port, _ = serve_engine(self, rec)
        ws = await ws_connect(self, port)
        session = await open_session(ws)
        sid = session["connect"]["sid"]
        self.assertRegex(sid, r"^[A-Za-z0-9_-]{20}$")
        self.assertNotEqual(sid, session["open"]["sid"])
        self.assertEqual([s.sid for s in rec.sockets], [sid])

    async def test_unknown_namespace_is_refused_and_the_connection_stays(self) -> None:
        rec = Recorder()
        port, _ = serve_engine(self, rec)
        ws = await ws_connect(self, port)
        await ws.text()
        ws.send_text("40/admin,")
        self.assertEqual(await ws.text(), '44/admin,{"message":"Invalid namespace"}')
        self.assertEqual(rec.sockets, [])
        ws.send_text("40")
        self.assertTrue((await ws.text()).startswith('40{"sid":'))

    async def test_requests_that_are_not_engine_io_websockets_get_upstreams_json_errors(self) -> None:
        port, _ = serve_engine(self, Recorder())
        cases = [("/conat/?EIO=4&transport=websocket", 3, "Bad request"),
                 ("/conat/?EIO=3&transport=websocket", 5, "Unsupported protocol version"),
                 ("/conat/?EIO=4&transport=polling", 0, "Transport unknown"),
                 ("/conat/", 5, "Unsupported protocol version")]
        for path, code, message in cases:
            status, headers, body = parse_response(await raw_http(port, raw_get(path)))
            self.assertEqual(status, 400, path)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(json.loads(body), {"code": code, "message": message}, path)
        ws = await ws_connect(self, port, "/conat/?EIO=3&transport=websocket", expect=400)
        self.assertEqual(json.loads(await ws.body()), {"code": 5, "message": "Unsupported protocol version"})

    async def test_permessage_deflate_is_declined(self) -> None:
        port, _ = serve_engine(self, Recorder())
        ws = await ws_connect(self, port, headers={
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        self.assertNotIn("sec-websocket-extensions", ws.response_headers)
        await open_session(ws)

    async def test_tcp_nodelay_is_set_on_the_connection(self) -> None:
        port, factory = serve_engine(self, Recorder())
        ws = await ws_connect(self, port)
        await open_session(ws)
        (proto,) = factory.connections
        handle = proto.transport.getHandle()
        self.assertEqual(handle.getsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY), 1)


class PacketTests(unittest.TestCase):
    async def connected(self, rec: Recorder, options: EngineOptions | None = None) -> Any:
        port, factory = serve_engine(self, rec, options)
        ws = await ws_connect(self, port)
        await open_session(ws)
        self.factory = factory
        return ws

    async def test_event_with_ack(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        ws.send_text('421["hello",{"a":1},"x"]')
        self.assertEqual(await ws.text(), '431[{"got":"hello","args":[{"a":1},"x"]}]')
        self.assertEqual(rec.events[0][:2], ("hello", [{"a": 1}, "x"]))

    async def test_event_without_ack_gets_no_answer(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        ws.send_text('42["quiet"]')
        ws.send_text('427["loud"]')
        self.assertEqual(await ws.text(), '437[{"got":"loud","args":[]}]')
        self.assertEqual([e[0] for e in rec.events], ["quiet", "loud"])
        self.assertIsNone(rec.events[0][2])

    async def test_binary_event_with_attachments_anywhere_and_a_binary_ack(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        ws.send_text('452-3["x",{"_placeholder":true,"num":0},{"k":[1,{"_placeholder":true,"num":1}]}]')
        ws.send_binary(b"\x00first")
        ws.send_binary(b"second\xff")
        text = await ws.text()
        self.assertEqual(text, '462-3[{"got":"x","args":[{"_placeholder":true,"num":0},'
                               '{"k":[1,{"_placeholder":true,"num":1}]}]}]')
        self.assertEqual(await ws.binary(), b"\x00first")
        self.assertEqual(await ws.binary(), b"second\xff")
        self.assertEqual(rec.events[0][1], [b"\x00first", {"k": [1, b"second\xff"]}])

    async def test_server_emits_and_receives_acks_text_and_binary(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        answers: list[list[Any]] = []
        sock = rec.sockets[0]
        sock.emit("q", 1, callback=answers.append)
        sock.emit("blob", b"\x01\x02", {"n": 2}, callback=answers.append)
        self.assertEqual(await ws.text(), '420["q",1]')
        self.assertEqual(await ws.text(), '451-1["blob",{"_placeholder":true,"num":0},{"n":2}]')
        self.assertEqual(await ws.binary(), b"\x01\x02")
        ws.send_text('430["answer"]')
        ws.send_text('461-1[{"_placeholder":true,"num":0}]')
        ws.send_binary(b"bytes back")
        ws.send_text('42["sync"]')
        await rec.wait()
        self.assertEqual(answers, [["answer"], [b"bytes back"]])

    async def test_client_disconnect_and_server_disconnect(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        ws.send_text("41")
        await until(lambda: bool(rec.gone), what="the server to hear of the disconnection")
        self.assertEqual(rec.gone, ["client namespace disconnect"])
        self.assertFalse(rec.sockets[0].connected)
        ws.send_text("40")
        await ws.text()
        rec.sockets[1].disconnect()
        self.assertEqual(await ws.text(), "41")
        self.assertEqual(await ws.close_code(), 1000)
        self.assertEqual(rec.gone, ["client namespace disconnect", "server namespace disconnect"])

    async def test_many_packets_in_one_read_arrive_in_order(self) -> None:
        rec = Recorder()
        rec.auto_ack = False
        ws = await self.connected(rec)
        frames = []
        for i in range(1000):
            frames.append(f'42["n",{i}]')
        for text in frames:
            ws.send_text(text)  # written back to back: the server reads many per recv
        ws.send_text('421["end"]')
        while len(rec.events) < 1001:
            await rec.wait()
        self.assertEqual([e[1][0] for e in rec.events[:1000]], list(range(1000)))

    async def test_a_frame_split_across_many_reads(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        payload = b'421["slow","' + b"z" * 300 + b'"]'
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        raw = bytes((0x81, 0x80 | 126)) + struct.pack("!H", len(payload)) + mask + masked
        (server,) = self.factory.connections
        read = [0]
        receive = server.dataReceived

        def counting(data: bytes) -> None:
            read[0] += len(data)
            receive(data)

        self.patch(server, "dataReceived", counting)
        for i in range(0, len(raw), 7):
            ws.transport.write(raw[i:i + 7])
            # the server has read this piece before the next is written: one read per piece
            await until(lambda i=i: read[0] >= min(i + 7, len(raw)), what="the server to read the piece")
        self.assertEqual(await ws.text(), '431[{"got":"slow","args":["' + "z" * 300 + '"]}]')

    async def test_fragmented_messages_and_control_frames(self) -> None:
        rec = Recorder()
        ws = await self.connected(rec)
        ws.send_frame(0x1, b'421["fr', fin=False)
        ws.send_frame(0x9, b"ping!")  # a control frame between fragments
        ws.send_frame(0x0, b'ag",2]', fin=True)
        self.assertEqual(await ws.next_frame(), (0xA, b"ping!"))
        self.assertEqual(await ws.text(), '431[{"got":"frag","args":[2]}]')

    async def test_a_large_attachment_up_to_max_payload(self) -> None:
        rec = Recorder()
        rec.auto_ack = False
        ws = await self.connected(rec)
        blob = bytes(range(256)) * (8_000_000 // 256) + b"x" * (8_000_000 % 256)
        ws.send_text('451-["big",{"_placeholder":true,"num":0}]')
        ws.send_binary(blob)
        await rec.wait(timeout=30)
        self.assertEqual(len(rec.events[0][1][0]), 8_000_000)
        self.assertEqual(rec.events[0][1][0], blob)


class ProtocolErrorTests(unittest.TestCase):
    """Anything malformed closes that connection (1002 unless the WebSocket layer says
    otherwise); the server keeps serving everyone else."""

    async def check_closed(self, text_frames: list[str], binary: list[bytes] | None = None,
                           code: int | None = 1002, *, join: bool = True) -> Recorder:
        rec = Recorder()
        port, factory = serve_engine(self, rec)
        ws = await ws_connect(self, port)
        if join:
            await open_session(ws)
        else:
            await ws.text()
        for text in text_frames:
            ws.send_text(text)
        for blob in binary or []:
            ws.send_binary(blob)
        self.assertEqual(await ws.close_code(), code)
        await ws.closed
        self.assertEqual(factory.connections, set())
        if join:
            self.assertEqual(len(rec.gone), 1)
        other = await ws_connect(self, port)
        await open_session(other)
        return rec

    async def test_unknown_engine_io_type(self) -> None:
        await self.check_closed(["9hello"])

    async def test_client_ping(self) -> None:
        rec = await self.check_closed(["2"])
        self.assertEqual(rec.gone, ["parse error"])

    async def test_bad_json(self) -> None:
        await self.check_closed(['42["a",'])

    async def test_reserved_event_name(self) -> None:
        await self.check_closed(['42["disconnect"]'])

    async def test_binary_frame_nobody_announced(self) -> None:
        await self.check_closed([], [b"surprise"])

    async def test_text_while_attachments_are_due(self) -> None:
        await self.check_closed(['452-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
                                 '42["too early"]'])

    async def test_too_many_attachments(self) -> None:
        await self.check_closed(['4511-["x"]'])

    async def test_placeholder_beyond_the_attachments(self) -> None:
        await self.check_closed(['451-["x",{"_placeholder":true,"num":3}]'], [b"one"])

    async def test_connect_error_from_a_client(self) -> None:
        await self.check_closed(['44{"message":"no"}'])

    async def test_invalid_utf8(self) -> None:
        rec = Recorder()
        port, _ = serve_engine(self, rec)
        ws = await ws_connect(self, port)
        await open_session(ws)
        ws.send_frame(0x1, b'42["\xff\xfe"]')
        self.assertEqual(await ws.close_code(), 1007)

    async def test_rsv_bits_and_unmasked_frames(self) -> None:
        for kwargs in ({"rsv": 4}, {"mask": False}):
            port, _ = serve_engine(self, Recorder())
            ws = await ws_connect(self, port)
            await open_session(ws)
            ws.send_frame(0x1, b'42["x"]', **kwargs)
            self.assertEqual(await ws.close_code(), 1002, kwargs)

    async def test_oversized_message(self) -> None:
        rec = Recorder()
        port, _ = serve_engine(self, rec)
        ws = await ws_connect(self, port)
        await open_session(ws)
        ws.send_text('451-["big",{"_placeholder":true,"num":0}]')
        ws.send_binary(b"y" * 8_000_001)
        self.assertEqual(await ws.close_code(timeout=30), 1009)
        self.assertEqual(rec.events, [])


class TimerTests(unittest.TestCase):
    """The engine's timers run on a clock the test advances, so no step races real time."""

    async def handled(self, ws: Any) -> None:
        """Everything sent so far has been handled, and nothing else sent back before this answer."""
        ws.send_text('429["sync"]')
        self.assertEqual(await ws.text(), '439[{"got":"sync","args":[]}]')

    async def test_server_pings_and_closes_when_pongs_stop(self) -> None:
        rec = Recorder()
        clock = task.Clock()
        port, factory = serve_engine(self, rec, FAST, clock=clock)
        ws = await ws_connect(self, port)
        opened = json.loads((await ws.text())[1:])
        self.assertEqual((opened["pingInterval"], opened["pingTimeout"]), (200, 300))
        ws.send_text("40")
        await ws.text()
        clock.advance(0.19)
        await self.handled(ws)  # no ping before the interval
        clock.advance(0.01)
        self.assertEqual(await ws.text(), "2")
        ws.send_text("3")
        await self.handled(ws)
        clock.advance(0.19)
        await self.handled(ws)
        clock.advance(0.01)
        self.assertEqual(await ws.text(), "2")  # the next ping, an interval after the pong
        # no pong this time
        clock.advance(0.29)
        await self.handled(ws)  # not yet timed out
        clock.advance(0.01)
        await ws.closed.addTimeout(30, reactor)
        self.assertEqual(rec.gone, ["ping timeout"])
        self.assertEqual(factory.connections, set())

    async def test_a_client_that_never_joins_is_closed(self) -> None:
        rec = Recorder()
        clock = task.Clock()
        port, factory = serve_engine(self, rec, FAST, clock=clock)
        ws = await ws_connect(self, port)
        await ws.text()
        clock.advance(0.3)
        self.assertEqual(await ws.close_code(), 1000)
        self.assertEqual(rec.sockets, [])

    async def test_a_slow_consumer_is_dropped(self) -> None:
        rec = Recorder()
        port, factory = serve_engine(self, rec, EngineOptions(max_backlog=2_000_000))
        ws = await ws_connect(self, port)
        await open_session(ws)
        ws.transport.pauseProducing()  # stop reading: the server's buffers fill up
        blob = b"b" * 100_000
        for _ in range(400):
            if not rec.sockets[0].connected:
                break
            rec.sockets[0].emit("data", blob)
            await task.deferLater(reactor, 0, lambda: None)
        self.assertFalse(rec.sockets[0].connected)
        self.assertEqual(factory.slow_consumers, 1)
        self.assertEqual(rec.gone, ["slow consumer"])
