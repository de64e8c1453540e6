"""Frame boundaries in a relayed WebSocket stream (where a tunnel may put its own close frame)."""

from __future__ import annotations

import os
import struct

from twisted.trial import unittest

from cocalc_hub.proxy.wsframes import FrameEdges, close_frame


def frame(payload: bytes, *, opcode: int = 2, masked: bool = False) -> bytes:
    n = len(payload)
    second = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, second | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, second | 126)) + struct.pack("!H", n)
    else:
        head = bytes((0x80 | opcode, second | 127)) + struct.pack("!Q", n)
    if masked:
        mask = os.urandom(4)
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + payload


class FrameEdgesTests(unittest.TestCase):
    def test_boundaries_whatever_the_chunking(self) -> None:
        frames = [frame(b""), frame(b"x" * 125), frame(b"y" * 126, masked=True), frame(b"z" * 70000),
                  frame(b"ping", opcode=9)]
        stream = b"".join(frames)
        ends = set()
        total = 0
        for f in frames:
            total += len(f)
            ends.add(total)
        for size in (1, 2, 3, 7, 14, 1000, len(stream)):
            edges = FrameEdges()
            for i in range(0, len(stream), size):
                edges.feed(stream[i:i + size])
                at = min(i + size, len(stream))
                self.assertEqual(edges.at_boundary, at in ends or at == 0, (size, at))
            self.assertTrue(edges.at_boundary)

    def test_a_partial_header_is_not_a_boundary(self) -> None:
        edges = FrameEdges()
        edges.feed(frame(b"a" * 300)[:3])
        self.assertFalse(edges.at_boundary)

    def test_close_frame(self) -> None:
        self.assertEqual(close_frame(1008, "access revoked"), b"\x88\x10\x03\xf0access revoked")
        long = close_frame(1008, "é" * 200)  # cut to 125 bytes of payload, on a character boundary
        self.assertEqual(long[1], 2 + 122)
        self.assertEqual(long[4:].decode("utf-8"), "é" * 61)
