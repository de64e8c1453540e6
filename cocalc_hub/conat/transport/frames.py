"""WebSocket frames on the hot path, alongside autobahn.

The outgoing helpers build frames whole, so a packet and its binary attachment are
written to the transport in one call. The incoming fast path, which takes small complete
frames out of autobahn's receive buffer, is
:class:`cocalc_hub.internals.autobahn.FastFrames` (it works on autobahn's internals).
"""

from __future__ import annotations

import struct
from random import getrandbits

FAST_FRAME_MAX = 65535
_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack


def header(opcode: int, n: int, mask: int = 0) -> bytes:
    """The header of a final frame with ``n`` payload bytes (``mask`` = 0x80 for clients)."""
    if n < 126:
        return bytes((0x80 | opcode, mask | n))
    if n < 65536:
        return _H16(0x80 | opcode, mask | 126, n)
    return _H64(0x80 | opcode, mask | 127, n)


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked frame (server to client)."""
    return header(opcode, len(payload)) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` (as one big integer: fast in C)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n] if n != 4 else mask
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame (client to server). The key only has to defeat caching proxies
    that browsers' scripts could poison, so a fast PRNG is enough for a non-browser client."""
    mask = getrandbits(32).to_bytes(4, "little")
    return header(opcode, len(payload), 0x80) + mask + unmask(payload, mask)
