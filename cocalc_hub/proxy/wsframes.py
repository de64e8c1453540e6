"""Where WebSocket frames end in a byte stream the proxy relays without decoding it.

A tunnel only needs to know whether the bytes sent to the browser so far end on a frame
boundary, so that a close frame of its own (code 1008 when access is revoked) can go in
between two of the backend's frames; payloads are skipped, never copied or unmasked.
"""

from __future__ import annotations

import struct

MAX_HEADER = 14  # 2 + 8 (64-bit length) + 4 (mask)


def _header(data: bytes) -> tuple[int, int] | None:
    """(header length, payload length) of the frame starting ``data``; None if incomplete."""
    if len(data) < 2:
        return None
    second = data[1]
    size = second & 0x7F
    extra = 2 if size == 126 else 8 if size == 127 else 0
    length = 2 + extra + (4 if second & 0x80 else 0)
    if len(data) < length:
        return None
    if extra == 2:
        size = struct.unpack_from("!H", data, 2)[0]
    elif extra == 8:
        size = struct.unpack_from("!Q", data, 2)[0]
    return length, size


class FrameEdges:
    """Follows frame boundaries in one direction of a WebSocket connection."""

    __slots__ = ("_head", "_left")

    def __init__(self) -> None:
        self._head = b""  # an incomplete frame header
        self._left = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self._left and not self._head

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            have = len(self._head)
            head = self._head + data[i:i + MAX_HEADER - have]
            parsed = _header(head)
            if parsed is None:
                self._head = head
                return
            self._head = b""
            i += parsed[0] - have
            self._left = parsed[1]


def close_frame(code: int, reason: str) -> bytes:
    """An unmasked (server to client) close frame."""
    text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")  # whole characters only
    payload = struct.pack("!H", code) + text
    return bytes((0x88, len(payload))) + payload


POLICY_VIOLATION = 1008
