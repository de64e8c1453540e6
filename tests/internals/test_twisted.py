"""cocalc_hub/internals/twisted.py: Twisted's TCP connection still has what the conat
transport uses beyond Twisted's interfaces (see that module's docstring), and behaves as
it expects: ``write`` buffers until the reactor's poll, ``doWrite`` sends now, and the
socket can be written to directly while nothing is buffered."""

from __future__ import annotations

import socket as pysocket

from twisted.internet import tcp

from cocalc_hub.internals.twisted import flush, idle, is_plain, send_now, tcp_connection
from tests.internals.support import TcpPairCase, need


class TcpConnectionTests(TcpPairCase):
    def test_the_methods_are_there(self) -> None:
        need(self, "Twisted", tcp.Connection, "doWrite", [])
        need(self, "Twisted", tcp.Connection, "abortConnection", [])
        need(self, "Twisted", tcp.Connection, "TLS")

    def test_the_attributes_are_there(self) -> None:
        for name in ("connected", "disconnecting", "_writeDisconnected", "_aborting", "TLS", "_tempDataBuffer",
                     "offset", "dataBuffer", "socket"):
            need(self, "Twisted", self.conn, name)
        self.assertIsInstance(self.conn.socket, pysocket.socket)
        self.assertIsInstance(self.conn._tempDataBuffer, list)
        self.assertIsInstance(self.conn.dataBuffer, bytes)

    def test_round_trip(self) -> None:
        conn = self.conn
        self.assertIs(tcp_connection(conn), conn)
        self.assertTrue(is_plain(conn))
        self.assertTrue(idle(conn), "a fresh connection should be idle")
        send_now(conn, conn, b"direct")
        self.assertEqual(self.received(), b"direct", "send_now did not reach the socket at once")
        self.assertTrue(idle(conn))
        conn.write(b"buffered")
        self.assertEqual(self.received(), b"", "Twisted's write no longer waits for the reactor")
        self.assertFalse(idle(conn), "idle() does not see what write() buffered")
        flush(conn)
        self.assertEqual(self.received(), b"buffered", "doWrite() did not send what write() buffered")
        self.assertTrue(idle(conn), "idle() does not see the buffer emptied by doWrite()")
        conn.TLS = True
        self.assertFalse(is_plain(conn))
        self.assertFalse(idle(conn))
