"""WebSocket frames on the hot path, alongside autobahn.

:class:`FastFrames` takes complete, unfragmented text and binary frames of up to 64 KiB
straight out of autobahn's receive buffer (one slice per read instead of one per frame,
no per-frame masker object) and leaves everything else (control frames, fragments,
large or partial frames, anything invalid) to autobahn's parser, which makes every
protocol decision. The outgoing helpers build frames whole, so a packet and its binary
attachment are written to the transport in one call.
"""

from __future__ import annotations

import struct
from random import getrandbits
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

STATE_OPEN = WebSocketProtocol.STATE_OPEN
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


CLOSE_TIMEOUT = 2.0


class FastFrames:
    """Mixin for autobahn protocols: see the module docstring. Subclasses implement
    ``_text(str)`` and ``_binary(bytes)``; ``_masked`` says what the peer must send.

    It also times the closing handshake itself (autobahn's own timers are batched and
    outlive their connections), so the factory sets autobahn's handshake timeouts to 0."""

    _masked = True
    _close_timer: Any = None
    data: bytes
    state: int
    current_frame: Any
    inside_message: bool
    factory: Any

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)  # type: ignore[misc]
        if not isReply and self._close_timer is None and self.state == WebSocketProtocol.STATE_CLOSING:
            self._close_timer = self.factory.clock.callLater(CLOSE_TIMEOUT, self._close_expired)

    def _close_expired(self) -> None:
        self._close_timer = None
        self.dropConnection(abort=True)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        timer, self._close_timer = self._close_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        super().connectionLost(reason)  # type: ignore[misc]

    def _text(self, text: str) -> None:
        raise NotImplementedError

    def _binary(self, payload: bytes) -> None:
        raise NotImplementedError

    def processData(self) -> bool:
        if self.current_frame is not None or self.inside_message or self.state != STATE_OPEN:
            return bool(super().processData())  # type: ignore[misc]
        data = self.data
        n = len(data)
        pos = 0
        masked = self._masked
        mask_len = 4 if masked else 0
        while n - pos >= 2 + mask_len:
            b0 = data[pos]
            b1 = data[pos + 1]
            if (b0 != 0x81 and b0 != 0x82) or (b1 >= 0x80) != masked:
                break  # control frame, fragment, RSV bits or wrong masking: autobahn decides
            length = b1 & 0x7F
            if length < 126:
                head = 2 + mask_len
            elif length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    break  # not minimally encoded: a protocol error autobahn reports
                head = 4 + mask_len
            else:
                break
            end = pos + head + length
            if end > n:
                if pos == 0 and length <= FAST_FRAME_MAX:
                    return False  # wait for the rest of this frame
                break
            payload = data[pos + head:end]
            if masked:
                payload = unmask(payload, data[pos + head - 4:pos + head])
            if b0 == 0x81:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # autobahn fails the connection with the right code
                pos = end
                self._text(text)
            else:
                pos = end
                self._binary(payload)
            if self.state != STATE_OPEN:
                self.data = data[pos:]
                return False
        if pos:
            self.data = data[pos:]
            return bool(self.data)
        return bool(super().processData())  # type: ignore[misc]
