"""Engine.IO v4 and Socket.IO v5 packets as they travel over a WebSocket.

Engine.IO: each WebSocket message is one packet; a text frame starts with the packet
type (``0`` open … ``6`` noop), a binary frame is a binary ``message`` with no type byte.
Socket.IO (inside ``4`` messages): ``<type>[<attachments>-][<nsp>,][<ack id>][<JSON>]``,
binary data replaced by ``{"_placeholder":true,"num":N}`` and sent as the following
binary frames. JSON is compact and keys keep their order, as the reference encoder's;
non-ASCII characters are written as ``\\u`` escapes (the same JSON value).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Engine.IO packet types
EIO_OPEN, EIO_CLOSE, EIO_PING, EIO_PONG, EIO_MESSAGE, EIO_UPGRADE, EIO_NOOP = "0123456"

# Socket.IO packet types
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(7)

MAX_ATTACHMENTS = 10
RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting", "newListener",
                             "removeListener"})

# ASCII output: a lone surrogate a client smuggled in through a JSON escape stays an
# escape instead of becoming invalid UTF-8 in someone else's text frame.
# NaN and infinities are not JSON: refused here too, not only when parsing (packets.decode).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


class ProtocolError(Exception):
    """A malformed or unexpected packet: the connection must be closed."""


def dumps(value: Any) -> str:
    return _dumps(value)


class Packet:
    """One Socket.IO packet; ``expected`` counts the binary attachments announced."""

    __slots__ = ("type", "nsp", "data", "id", "attachments", "expected")

    def __init__(self, type: int, nsp: str = "/", data: Any = None, id: int | None = None,
                 attachments: list[bytes] | None = None, expected: int = 0) -> None:
        self.type = type
        self.nsp = nsp
        self.data = data
        self.id = id
        self.attachments = attachments if attachments is not None else []
        self.expected = expected

    def __repr__(self) -> str:
        return f"Packet(type={self.type}, nsp={self.nsp!r}, id={self.id}, data={self.data!r})"


def _placeholder(num: int) -> dict[str, Any]:
    return {"_placeholder": True, "num": num}


_SCALARS = frozenset({str, int, float, bool, type(None)})


def is_flat(value: dict[Any, Any]) -> bool:
    """A dict of strings to scalars: JSON as it is, nothing binary inside."""
    for k, v in value.items():
        if type(k) is not str or type(v) not in _SCALARS:
            return False
    return True


_ENCODE_STR = json.encoder.encode_basestring_ascii


def headers_json(headers: Any) -> str:
    """The JSON of a message's headers, as :func:`dumps` writes it; the usual request
    headers (``{"CN-Reply": subject}``) without the encoder's set-up per call."""
    if type(headers) is dict and len(headers) == 1:
        reply = headers.get("CN-Reply")
        if type(reply) is str:
            return '{"CN-Reply":' + _ENCODE_STR(reply) + "}"
    return _dumps(headers)


def deconstruct(value: Any, buffers: list[bytes]) -> Any:
    """Replace bytes anywhere in ``value`` by placeholders, collecting them in order.
    (Scalars are passed over without a call: this runs for every message sent.)"""
    t = type(value)
    if t in _SCALARS:
        return value
    if t is list or t is tuple:
        return [v if type(v) in _SCALARS else deconstruct(v, buffers) for v in value]
    if t is dict:
        return {k: v if type(v) in _SCALARS else deconstruct(v, buffers) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(bytes(value))
        return _placeholder(len(buffers) - 1)
    if isinstance(value, (list, tuple)):
        return [deconstruct(v, buffers) for v in value]
    if isinstance(value, dict):
        return {k: deconstruct(v, buffers) for k, v in value.items()}
    return value


def reconstruct(value: Any, buffers: list[bytes]) -> Any:
    """Put the attachments back where their placeholders are (in place).

    The walk stops once every attachment has been placed, so a conat ``publish`` (whose
    placeholder precedes the headers) costs a few steps whatever its headers hold."""
    left = [len(buffers)]
    if not left[0]:
        return value
    if left[0] == 1 and type(value) is list and len(value) == 2 and type(value[1]) is list:
        # ["publish", [subject, id, seq, done, encoding, <placeholder>, headers?]]
        chunk = value[1]
        if len(chunk) > 5 and type(chunk[5]) is dict and _is_placeholder(chunk[5]):
            t = _SCALARS
            if (type(chunk[0]) in t and type(chunk[1]) in t and type(chunk[2]) in t and type(chunk[3]) in t
                    and type(chunk[4]) in t):
                chunk[5] = _attachment(chunk[5], buffers)
                return value
    if type(value) is dict and _is_placeholder(value):
        return _attachment(value, buffers)
    if type(value) in (list, dict):
        _fill(value, buffers, left)
    return value


def _is_placeholder(value: dict[str, Any]) -> bool:
    return value.get("_placeholder") is True and len(value) == 2


def _attachment(value: dict[str, Any], buffers: list[bytes]) -> bytes:
    num = value.get("num")
    if type(num) is not int or not 0 <= num < len(buffers):
        raise ProtocolError("placeholder refers to a missing attachment")
    return buffers[num]


def _fill(container: Any, buffers: list[bytes], left: list[int]) -> None:
    items = enumerate(container) if type(container) is list else container.items()
    for key, v in items:
        t = type(v)
        if t is dict:
            if _is_placeholder(v):
                container[key] = _attachment(v, buffers)
                left[0] -= 1
            else:
                _fill(v, buffers, left)
        elif t is list:
            _fill(v, buffers, left)
        else:
            continue
        if left[0] <= 0:
            return


def encode(packet_type: int, data: Any = None, *, nsp: str = "/", ack_id: int | None = None) -> list[bytes | str]:
    """The WebSocket messages (text first, then binary attachments) for one Socket.IO packet."""
    text, buffers = encode_parts(packet_type, data, nsp=nsp, ack_id=ack_id)
    return [text, *buffers]


def encode_parts(packet_type: int, data: Any = None, *, nsp: str = "/",
                 ack_id: int | None = None) -> tuple[str, list[bytes]]:
    """One Socket.IO packet as its text message and its binary attachments (what
    :func:`encode` returns, apart)."""
    buffers: list[bytes] = []
    if packet_type in (BINARY_EVENT, BINARY_ACK):
        packet_type -= 3  # the binary type is chosen below, from the data
    if data is not None and packet_type in (EVENT, ACK):
        data = deconstruct(data, buffers)
        if buffers:
            packet_type = BINARY_EVENT if packet_type == EVENT else BINARY_ACK
    out = "4" + str(packet_type)
    if buffers:
        out += f"{len(buffers)}-"
    if nsp != "/":
        out += nsp + ","
    if ack_id is not None:
        out += str(ack_id)
    if data is not None:
        out += _dumps(data)
    return out, buffers


_HEAD = re.compile(r"([0-6])(?:([0-9]{1,3})-)?(/[^,]*(?:,|\Z))?([0-9]{1,15})?")


def _finite(literal: str) -> float:
    # Python would read 1e400 as inf and later write it as ``Infinity``, which no
    # JavaScript peer can parse (forwarding it would break every receiver's connection).
    value = float(literal)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_loads = json.JSONDecoder(parse_float=_finite, parse_constant=_not_json).decode


def decode(text: str) -> Packet:
    """Parse the Socket.IO packet in an Engine.IO message payload (without the leading ``4``)."""
    m = _HEAD.match(text)
    if m is None:
        raise ProtocolError("not a socket.io packet")
    packet_type = ord(text[0]) - 48
    count, nsp, ack = m.group(2, 3, 4)
    expected = 0
    if packet_type >= BINARY_EVENT:
        if count is None:
            raise ProtocolError("malformed attachment count")
        expected = int(count)
        if expected > MAX_ATTACHMENTS:
            raise ProtocolError("too many attachments")
    elif count is not None:
        raise ProtocolError("attachments on a packet that cannot have them")
    if nsp is None:
        nsp = "/"
    elif nsp[-1:] == ",":
        nsp = nsp[:-1]
    i = m.end()
    data: Any = None
    if i < len(text):
        try:
            data = _loads(text[i:] if i else text)
        except (ValueError, RecursionError):
            raise ProtocolError("invalid JSON in packet") from None
        if data is None and packet_type <= DISCONNECT:
            raise ProtocolError("CONNECT/DISCONNECT payload must be an object or absent")
    if packet_type == EVENT or packet_type == BINARY_EVENT:
        if type(data) is not list or not data:
            raise ProtocolError("EVENT payload must be a non-empty array")
        name = data[0]
        if type(name) is str:
            if name in RESERVED_EVENTS:
                raise ProtocolError("reserved event name")
        elif not isinstance(name, (int, float)) or isinstance(name, bool):
            raise ProtocolError("event name must be a string")
    else:
        _validate(packet_type, data)
    return Packet(packet_type, nsp, data, None if ack is None else int(ack), None, expected)


def _validate(packet_type: int, data: Any) -> None:
    if packet_type == CONNECT:
        if data is not None and not isinstance(data, dict):
            raise ProtocolError("CONNECT payload must be an object")
    elif packet_type == DISCONNECT:
        if data is not None:
            raise ProtocolError("DISCONNECT takes no payload")
    elif packet_type in (EVENT, BINARY_EVENT):
        if not isinstance(data, list) or not data:
            raise ProtocolError("EVENT payload must be a non-empty array")
        name = data[0]
        if isinstance(name, str):
            if name in RESERVED_EVENTS:
                raise ProtocolError("reserved event name")
        elif not isinstance(name, (int, float)) or isinstance(name, bool):
            raise ProtocolError("event name must be a string")
    elif packet_type in (ACK, BINARY_ACK):
        if not isinstance(data, list):
            raise ProtocolError("ACK payload must be an array")
    elif packet_type == CONNECT_ERROR:
        if not isinstance(data, (str, dict)):
            raise ProtocolError("CONNECT_ERROR payload must be a string or an object")


def finish_binary(packet: Packet) -> Packet:
    """All attachments received: substitute the placeholders."""
    try:
        packet.data = reconstruct(packet.data, packet.attachments)
    except RecursionError:
        raise ProtocolError("packet nested too deeply") from None
    packet.type = EVENT if packet.type == BINARY_EVENT else ACK
    return packet
