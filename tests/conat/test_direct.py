"""cocalc_hub/conat/transport/direct.py: what one read wrote leaves in one send(2), without
Twisted's write buffer (no epoll_ctl pair, no doWrite), in the order it was written.

Like tests/conat/test_flush.py, these call a connection's ``dataReceived`` directly and
peek at the client's kernel buffer."""

from __future__ import annotations

import socket as pysocket
from typing import Any

from twisted.internet import tcp
from twisted.trial import unittest

from cocalc_hub.conat.transport.direct import idle, plain_tcp, send_now
from cocalc_hub.conat.transport.frames import masked_frame
from tests.conat.support import Recorder, open_session, serve_engine, ws_connect
from tests.internals.support import TcpPairCase


def peek(transport: Any) -> bytes | None:
    try:
        return bytes(transport.getHandle().recv(65536, pysocket.MSG_PEEK | pysocket.MSG_DONTWAIT))
    except BlockingIOError:
        return None


class Front:
    def __init__(self, transport: Any) -> None:
        self.transport = transport


class Shim:
    """Like the front door's shim: the real transport is ``front.transport``."""

    def __init__(self, transport: Any) -> None:
        self.front = Front(transport)


class PlainTcpTests(TcpPairCase):
    def test_found_directly_or_under_the_shim_never_under_tls(self) -> None:
        self.assertIs(plain_tcp(self.conn), self.conn)
        self.assertIs(plain_tcp(Shim(self.conn)), self.conn)
        self.assertIsNone(plain_tcp(Shim(Front(self.conn))))  # something (TLS?) in between
        self.assertIsNone(plain_tcp(object()))
        self.conn.TLS = True
        self.assertIsNone(plain_tcp(self.conn))
        self.assertFalse(idle(self.conn))

    def test_send_now_or_through_the_buffer(self) -> None:
        self.assertTrue(idle(self.conn))
        send_now(self.conn, self.conn, b"one")
        self.assertEqual(self.peer.recv(100), b"one")
        self.conn.write(b"queued,")  # something in Twisted's buffer: what follows goes behind it
        self.assertFalse(idle(self.conn))
        send_now(self.conn, self.conn, b"two")
        self.assertEqual(self.peer.recv(100), b"queued,two")  # (send_now flushed the buffer)
        self.conn._aborting = True  # as abortConnection() leaves it until the connection is lost
        self.assertFalse(idle(self.conn))


class EngineDirectTests(unittest.TestCase):
    async def session(self) -> tuple[Any, Any]:
        port, factory = serve_engine(self, Recorder())
        ws = await ws_connect(self, port)
        await open_session(ws)
        [proto] = factory.connections
        return ws, proto

    async def test_an_ack_leaves_without_twisteds_write_buffer(self) -> None:
        ws, proto = await self.session()
        conn = proto._tcp
        self.assertIsInstance(conn, tcp.Connection)
        started: list[int] = []
        original = conn.startWriting
        conn.startWriting = lambda: (started.append(1), original())[1]
        proto.dataReceived(masked_frame(0x1, b'421["hello"]'))
        data = peek(ws.transport)
        self.assertIsNotNone(data, "the ack has not left")
        assert data is not None
        self.assertIn(b'431[{"got":"hello","args":[]}]', data)
        self.assertEqual(started, [], "the ack went through Twisted's write buffer")

    async def test_autobahns_own_frames_come_after_what_was_written_before_them(self) -> None:
        ws, proto = await self.session()
        factory = proto.factory
        factory.reading += 1
        try:
            proto._write(b"\x81\x0242")  # a packet, held for the end of the read
            proto.sendData(b"\x81\x0246")  # written by autobahn itself meanwhile
        finally:
            factory.reading -= 1
            factory.flush_written()
        self.assertEqual(peek(ws.transport), b"\x81\x0242\x81\x0246")
