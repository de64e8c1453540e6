"""What the conat transport relies on in autobahn beyond its public API.

autobahn does the WebSocket handshake, control frames, fragments, large frames and every
protocol decision; the conat transport takes the common case off its hands. It touches:

:class:`autobahn.websocket.protocol.WebSocketProtocol` (both ends, :class:`FastFrames`):

* ``processData()``: parses the frames in ``data`` (bytes received and not parsed yet);
  returns True when it should be called again. :class:`FastFrames` overrides it and
  falls back to it, and slices ``data`` itself.
* ``current_frame`` (a frame being received), ``inside_message`` (a fragmented message
  under way) and ``state`` with ``STATE_OPEN``, ``STATE_CLOSING`` and ``STATE_CLOSED``.
  ``state`` is also read directly by :mod:`cocalc_hub.conat.transport.engine` and
  ``.client``, for every packet they send (an accessor here would cost a call per packet);
  the constants come from here.
* ``sendCloseFrame(code, reasonUtf8, isReply)``: sends a close frame (``state`` becomes
  ``STATE_CLOSING`` unless it is a reply); overridden to time the closing handshake.
* ``dropConnection(abort)``.

:class:`autobahn.websocket.protocol.WebSocketServerProtocol` (the server, :class:`LeanServer`):

* ``_connectionMade()``: the protocol's set-up, which ``connectionMade`` of autobahn's
  Twisted adapter calls after filling ``_transport_details`` (and ``peer``) in;
* ``_onOpen()``: called once the opening handshake is done (the adapter's reads the
  TLS channel binding there, then calls ``onOpen``);
* ``_dataReceived(data)``: the adapter's ``dataReceived`` minus its debug log;
* ``onMessageEnd()`` with ``failedByMe``, ``message_data`` (the message's payload, a list
  of bytes) and ``message_is_binary``; autobahn's also fires a ``message`` signal;
* ``sendData(data, sync, chopsize)``: how autobahn writes its own frames (close, pong);
* the attributes that keep the opening handshake (:data:`HANDSHAKE_LEFTOVERS`);
* ``CONFIG_ATTRS``: the settings ``_connectionMade`` copies from the factory into every
  connection, unless the protocol (or its class) has them already (:func:`settled_protocol`).

tests/internals/test_autobahn.py checks all of these and fails, naming the missing piece,
if an autobahn release changes them (setup.cfg bounds autobahn's version for that reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.util import peer2str
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IDelayedCall, ISSLTransport

from cocalc_hub.conat.transport.frames import FAST_FRAME_MAX, unmask

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketServerFactory

STATE_OPEN = WebSocketProtocol.STATE_OPEN
STATE_CLOSING = WebSocketProtocol.STATE_CLOSING
STATE_CLOSED = WebSocketProtocol.STATE_CLOSED
CLOSE_PROTOCOL_ERROR = WebSocketProtocol.CLOSE_STATUS_CODE_PROTOCOL_ERROR
CLOSE_TIMEOUT = 2.0

HANDSHAKE_LEFTOVERS = ("http_request_data", "http_response_data", "http_headers", "http_status_line",
                       "http_request_params", "http_request_uri", "websocket_extensions", "websocket_protocols",
                       "_wskey")
"""What autobahn keeps of the opening handshake, unused once the connection is open."""


class FastFrames:
    """Mixin for autobahn protocols: takes complete, unfragmented text and binary frames of
    up to 64 KiB straight out of autobahn's receive buffer (one slice per read instead of
    one per frame, no per-frame masker object) and leaves everything else (control frames,
    fragments, large or partial frames, anything invalid) to autobahn's parser, which
    makes every protocol decision. Subclasses implement ``_text(str)`` and
    ``_binary(bytes)``; ``_masked`` says what the peer must send.

    It also times the closing handshake itself (autobahn's own timers are batched and
    outlive their connections), so the factory sets autobahn's handshake timeouts to 0."""

    _masked = True
    _close_timer: IDelayedCall | None = None
    data: bytes
    state: int
    current_frame: Any
    inside_message: bool
    factory: Any

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)  # type: ignore[misc]
        if not isReply and self._close_timer is None and self.state == STATE_CLOSING:
            self._close_timer = self.factory.clock.callLater(CLOSE_TIMEOUT, self._close_expired)

    def send_close(self, code: int, reason: bytes | None = None) -> None:
        """Start the closing handshake with ``code`` (and a reason of up to 123 bytes)."""
        self.sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)

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


class LeanServer(FastFrames, WebSocketServerProtocol):  # type: ignore[misc]
    """autobahn's server protocol with :class:`FastFrames`, made lighter per connection
    and per message. Subclasses implement ``_release()``: write what they hold back,
    before autobahn writes a frame of its own."""

    parse_read = WebSocketProtocol._dataReceived
    """autobahn's ``dataReceived`` minus a debug log it formats per read."""

    def connectionMade(self) -> None:
        """autobahn's own, minus the TLS channel binding: behind the hub's front door the
        transport is a shim over the TLS connection, from which autobahn cannot read the
        channel id (it raised, so no wss:// client could connect); conat has no use for it."""
        secure = ISSLTransport.providedBy(self.transport)
        self._transport_details = TransportDetails(
            channel_type=TransportDetails.CHANNEL_TYPE_TLS if secure else TransportDetails.CHANNEL_TYPE_TCP,
            channel_framing=TransportDetails.CHANNEL_FRAMING_WEBSOCKET, peer=peer2str(self.transport),  # type: ignore[arg-type]
            is_server=True, is_secure=secure)
        self.peer = self._transport_details.peer
        self._connectionMade()

    def _onOpen(self) -> None:
        # What autobahn kept of the opening handshake (the request's bytes, headers, query,
        # its response…) is not read again once the connection is open: ~2 KB of every idle
        # connection. (What the hub needs of the request is in ``handshake``.)
        for name in HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        self.onOpen()  # without the channel binding (see connectionMade)

    def onMessageEnd(self) -> None:
        # Same as autobahn's, minus the per-message observer signal nobody listens to.
        if not self.failedByMe:
            data = self.message_data
            self.onMessage(data[0] if len(data) == 1 else b"".join(data), self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        self._release()  # autobahn's own frames (close, pong) come after what was written before them
        super().sendData(data, sync, chopsize)

    def _release(self) -> None:
        raise NotImplementedError


def settled_protocol(factory: WebSocketServerFactory, base: type[LeanServer]) -> type[LeanServer]:
    """A subclass of ``base`` holding ``factory``'s current settings as class attributes.

    autobahn copies its ~40 settings from the factory into every new connection's
    ``__dict__`` and pretty-prints them for a debug line, whatever the log level: that was
    a third of the CPU of accepting a connection in a reconnect storm, and ~2 KB of each
    idle connection. As class attributes of a protocol class of the factory's own they are
    read the same way and stored once; with ``CONFIG_ATTRS`` empty autobahn has nothing to
    copy or print."""
    settings: dict[str, Any] = {"CONFIG_ATTRS": ()}
    for name in base.CONFIG_ATTRS:
        value = getattr(factory, name)
        # a function as a class attribute would become a method (perMessageCompressionAccept)
        settings[name] = staticmethod(value) if callable(value) else value
    return cast("type[LeanServer]", type(base.__name__, (base,), settings))
