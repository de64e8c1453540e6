"""What both ends of an Engine.IO/Socket.IO session do alike.

The hub's server (:mod:`.engine` and :mod:`.sio`) and its Python client (:mod:`.client`)
read Socket.IO packets the same way: a text message is decoded (:func:`.packets.decode`);
one that announces binary attachments waits for them, and the binary messages that
follow are its attachments, in order, until it has them all (then the placeholders are
replaced, :func:`.packets.finish_binary`). A binary message nobody announced, or a text
message while attachments are due, is a protocol error. :class:`PacketReader` is that,
shared; each end says what to do with a complete packet (``_dispatch``) and what a
:class:`~.packets.ProtocolError` costs (both close the connection).

Packets go out the same way too (:func:`.packets.encode_parts`), and the ``open`` packet
that starts a session is written by :func:`open_packet` and read by :func:`read_open`.
What differs stays in each end's module: the server sends pings and times out missing
pongs, the client answers pings and times out a server that stops sending them; the
server writes unmasked frames through its read barriers, the client masked ones.
"""

from __future__ import annotations

import json

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.packets import Packet, ProtocolError


class PacketReader:
    """Mixin: Socket.IO packets from Engine.IO messages, with their binary attachments.

    ``_pending`` (the packet whose attachments are arriving) must be set to None before
    the first message (in ``__init__``, or when the connection is made)."""

    __slots__ = ("_pending",)
    _pending: Packet | None

    def on_message(self, text: str) -> None:
        """An Engine.IO ``message`` (text, after the ``4``): a Socket.IO packet."""
        if self._pending is not None:
            raise ProtocolError("text frame while binary attachments are due")
        packet = packets.decode(text)
        if packet.expected:
            self._pending = packet
        elif packet.type >= packets.BINARY_EVENT:
            self._dispatch(packets.finish_binary(packet))
        else:
            self._dispatch(packet)

    def on_binary(self, data: bytes) -> None:
        """A binary Engine.IO message: the next attachment of the pending packet."""
        pending = self._pending
        if pending is None:
            raise ProtocolError("binary frame without a packet announcing it")
        pending.attachments.append(data)
        if len(pending.attachments) == pending.expected:
            self._pending = None
            self._dispatch(packets.finish_binary(pending))

    def _dispatch(self, packet: Packet) -> None:
        raise NotImplementedError


def open_packet(sid: str, ping_interval: float, ping_timeout: float, max_payload: int) -> str:
    """The Engine.IO ``open`` packet a server sends first (times in seconds)."""
    opened = {"sid": sid, "upgrades": [], "pingInterval": round(ping_interval * 1000),
              "pingTimeout": round(ping_timeout * 1000), "maxPayload": max_payload}
    return "0" + packets.dumps(opened)


def read_open(text: str) -> tuple[float, float]:
    """The ping interval and timeout (seconds) of an ``open`` packet's text (after the
    ``0``), with Engine.IO's defaults. Raises ValueError (not JSON) or AttributeError
    (not an object)."""
    opened = json.loads(text)
    return float(opened.get("pingInterval", 25000)) / 1000, float(opened.get("pingTimeout", 20000)) / 1000
