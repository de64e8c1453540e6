"""Unit tests of cocalc_hub.projects.sockets: /proc/net/tcp parsing and where the proxy may connect."""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from twisted.trial import unittest

from cocalc_hub.projects import sockets
from cocalc_hub.projects.sockets import Entry, Owner

HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"


def line(local: str, remote: str, state: str, uid: int, inode: int) -> str:
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid} 0 {inode} 1 0 100 0 0 10 0"


def owner(*, uid: int | None = None, inodes: set[int] = frozenset()) -> Owner:  # type: ignore[assignment]
    o = Owner(root_pid=None, uid=uid)
    o.inodes = set(inodes)
    return o


def listener(host: str, port: int, uid: int = 0, inode: int = 0) -> Entry:
    return Entry(host, port, "0.0.0.0" if ":" not in host else "::", 0, sockets.LISTEN, uid, inode)


class ParseTests(unittest.TestCase):
    def test_addresses(self) -> None:
        entries = sockets.parse([
            HEAD,
            line("0100007F:1F90", "00000000:0000", "0A", 1000, 11),
            line("0200007F:1F90", "00000000:0000", "0A", 1000, 12),
            line("00000000000000000000000001000000:1F90", "00000000000000000000000000000000:0000", "0A", 5, 13),
            line("0000000000000000FFFF00000100007F:0050", "0000000000000000FFFF00000100007F:C000", "01", 7, 0),
            "garbage",
        ])
        self.assertEqual([(e.local, e.port, e.uid, e.inode) for e in entries],
                         [("127.0.0.1", 8080, 1000, 11), ("127.0.0.2", 8080, 1000, 12), ("::1", 8080, 5, 13),
                          ("127.0.0.1", 80, 7, 0)])
        self.assertEqual((entries[3].remote, entries[3].remote_port, entries[3].state), ("127.0.0.1", 0xC000, 1))


class ChooseTests(unittest.TestCase):
    def test_own_exact_or_wildcard_listener(self) -> None:
        mine = owner(inodes={1})
        self.assertEqual(sockets.choose([listener("127.0.0.1", 80, inode=1)], mine, 80), "127.0.0.1")
        self.assertEqual(sockets.choose([listener("0.0.0.0", 80, inode=1)], mine, 80), "127.0.0.1")
        self.assertEqual(sockets.choose([listener("::", 80, inode=1)], mine, 80), "::1")
        self.assertEqual(sockets.choose([listener("::1", 80, inode=1)], mine, 80), "::1")
        self.assertIsNone(sockets.choose([listener("127.0.0.2", 80, inode=1)], mine, 80))
        self.assertIsNone(sockets.choose([listener("127.0.0.1", 81, inode=1)], mine, 80))

    def test_not_where_someone_else_could_answer(self) -> None:
        mine = owner(inodes={1})
        theirs = listener("127.0.0.1", 80, inode=2)
        self.assertIsNone(sockets.choose([listener("127.0.0.2", 80, inode=1), theirs], mine, 80))
        self.assertEqual(sockets.choose([listener("::1", 80, inode=1), theirs], mine, 80), "::1")
        # A shared port (SO_REUSEPORT) or a foreign dual-stack wildcard could take the connection.
        self.assertIsNone(sockets.choose([listener("127.0.0.1", 80, inode=1), theirs], mine, 80))
        self.assertIsNone(sockets.choose([listener("0.0.0.0", 80, inode=1), listener("::", 80, inode=3)], mine, 80))

    def test_multi_user_owns_by_uid(self) -> None:
        mine = owner(uid=70000)
        self.assertEqual(sockets.choose([listener("127.0.0.1", 80, uid=70000, inode=9)], mine, 80), "127.0.0.1")
        self.assertIsNone(sockets.choose([listener("127.0.0.1", 80, uid=70001, inode=9)], mine, 80))
        self.assertFalse(mine.owns(listener("127.0.0.1", 80, uid=0)))
        self.assertFalse(owner(inodes={0}).owns(listener("127.0.0.1", 80, inode=0)))  # no inode: nobody's


class KernelTests(unittest.TestCase):
    """sock_diag answers agree with /proc/net/tcp."""

    def listen(self, family: int, host: str) -> tuple[socket.socket, int]:
        s = socket.socket(family)
        self.addCleanup(s.close)
        s.bind((host, 0))
        s.listen(4)
        return s, s.getsockname()[1]

    def test_listeners_and_connections(self) -> None:
        _, port4 = self.listen(socket.AF_INET, "127.0.0.1")
        server6, port6 = self.listen(socket.AF_INET6, "::")
        mine = {(e.local, e.port, e.uid, e.inode) for e in sockets.listeners() if e.port in (port4, port6)}
        proc = {(e.local, e.port, e.uid, e.inode) for e in sockets.table()
                if e.state == sockets.LISTEN and e.port in (port4, port6)}
        self.assertEqual(mine, proc)
        self.assertEqual({(h, p) for h, p, _, _ in mine}, {("127.0.0.1", port4), ("::", port6)})
        client = socket.create_connection(("127.0.0.1", port6))  # taken by the IPv6 wildcard (v4-mapped)
        self.addCleanup(client.close)
        here = client.getsockname()
        found = sockets.connection(("127.0.0.1", port6), here)
        assert found is not None
        self.assertEqual((found.local, found.port, found.remote, found.remote_port), ("127.0.0.1", port6, *here))
        self.assertEqual(found.inode, 0, "not accepted yet")
        accepted, _ = server6.accept()
        self.addCleanup(accepted.close)
        found = sockets.connection(("127.0.0.1", port6), here)
        assert found is not None
        self.assertEqual(found.inode, os.fstat(accepted.fileno()).st_ino)
        self.assertIsNone(sockets.connection(("127.0.0.1", port4), ("127.0.0.1", 9)), "not the listener")


class _TruncatedNetlink:
    """A netlink socket whose answers are cut short (a kernel or filter gone wrong)."""

    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> _TruncatedNetlink:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, size: int) -> bytes:
        payload = bytes([socket.AF_INET, sockets.LISTEN, 0, 0]) + b"\0" * 6  # far short of an answer
        return struct.pack("=IHHII", 16 + len(payload), 20, 0, 1, 0) + payload


class MalformedNetlinkTests(unittest.TestCase):
    """A short sock_diag answer falls back to /proc/net/tcp instead of failing the check."""

    def test_truncated_answer_falls_back_to_proc(self) -> None:
        server = socket.socket(socket.AF_INET)
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        self.patch(socket, "socket", _TruncatedNetlink)
        self.assertIn(("127.0.0.1", port), {(e.local, e.port) for e in sockets.listeners()})
        found = sockets.connection(("127.0.0.1", port), client.getsockname())
        assert found is not None
        self.assertEqual(found.remote_port, client.getsockname()[1])
