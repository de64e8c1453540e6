"""Engine.IO v4 over an autobahn WebSocket (the WebSocket transport only).

The server speaks first (the ``open`` packet), pings every ``ping_interval`` seconds and
closes a connection whose pong does not come back within ``ping_timeout``; a connection
its handler has not called :meth:`EngineProtocol.established` for within
``connect_timeout`` is closed too (for Socket.IO: no namespace joined).

The layer is usable on its own: an :class:`EngineHandler` gets a receiver for each new
connection, which is given every message (``4…`` text, or a binary frame) and told once
when the connection goes; it answers with :meth:`EngineProtocol.send_message`. The
Socket.IO server (:mod:`.sio`) is one such handler. Anything malformed at the Engine.IO
level (unknown packet type, a client ping), and anything a receiver refuses by raising
:class:`~.packets.ProtocolError`, closes the connection with 1002: a protocol error costs
the offender its connection, never the server its state.

permessage-deflate is declined: Node clients and browsers offer it, and accepting it
makes a broker spend most of its CPU in zlib for no gain on loopback or LAN links
(upstream accepts it with a 1 GiB threshold and still pays for it). Declining is part
of RFC 7692; clients then send plain frames.

Small data frames take the fast path of :class:`~cocalc_hub.internals.autobahn.FastFrames`;
autobahn does the handshake, control frames, fragments, large frames and every protocol
decision. What the engine relies on in autobahn beyond its public API is in
:mod:`cocalc_hub.internals.autobahn` (:class:`~cocalc_hub.internals.autobahn.LeanServer`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.barriers import PLAIN, ReadBarriers, Turns
from cocalc_hub.conat.transport.direct import idle, plain_tcp, send_now
from cocalc_hub.conat.transport.flush import flush
from cocalc_hub.conat.transport.frames import frame, header
from cocalc_hub.conat.transport.packets import ProtocolError
from cocalc_hub.conat.transport.session import open_packet
from cocalc_hub.conat.transport.socket import Handshake
from cocalc_hub.internals.autobahn import (
    CLOSE_PROTOCOL_ERROR,
    STATE_CLOSED,
    STATE_OPEN,
    LeanServer,
    settled_protocol,
)

log = Logger()

MAX_PAYLOAD = 8_000_000


def new_sid() -> str:
    """20 URL-safe characters, like engine.io's ids."""
    return secrets.token_urlsafe(15)


class EngineOptions:
    """Timing and size settings (seconds and bytes); tests shorten the timers."""

    def __init__(self, *, ping_interval: float = 25.0, ping_timeout: float = 20.0,
                 connect_timeout: float = 45.0, max_payload: int = MAX_PAYLOAD,
                 max_backlog: int = 64 * 1024 * 1024) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.max_payload = max_payload
        self.max_backlog = max_backlog
        """Bytes a connection may have queued, beyond what the kernel takes, before it is
        dropped as a slow consumer."""


class Receiver(Protocol):
    """What an Engine.IO handler attaches to one connection: it gets the messages.

    ``on_message`` gets a text message's data (after the ``4``), ``on_binary`` a binary
    message; either may raise :class:`~.packets.ProtocolError` to close the connection
    (1002). ``on_close`` is called once, whatever the cause."""

    def on_message(self, text: str) -> None: ...
    def on_binary(self, data: bytes) -> None: ...
    def on_close(self, reason: str) -> None: ...


class EngineHandler(Protocol):
    """Engine.IO server side: one :class:`Receiver` per new connection."""

    def engine_connected(self, engine: EngineProtocol) -> Receiver: ...


class _Gone:
    """The receiver of a connection once its own has been told it closed."""

    def on_message(self, text: str) -> None:
        pass

    def on_binary(self, data: bytes) -> None:
        pass

    def on_close(self, reason: str) -> None:
        pass


GONE = _Gone()


@implementer(IPushProducer)
class EngineProtocol(LeanServer):
    """One Engine.IO connection (WebSocket transport only); ``receiver`` gets its messages."""

    factory: EngineFactory
    handshake: Handshake = Handshake()
    receiver: Receiver = GONE
    _timer: IDelayedCall | None = None
    _connect_timer: IDelayedCall | None = None
    _awaiting_pong = False
    _heartbeat_ping = 0
    _pings = 0
    _pongs = 0
    _out: ReadBarriers | None = None
    _dirty = False
    _tcp: tcp.Connection | None = None
    _unsent: list[bytes] | None = None
    """What the current read wrote, sent at its end (:mod:`.direct`)."""
    _paused = False
    _backlog = 0
    _closing_reason = "transport close"
    opened = False

    # handshake --------------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        return None  # accept; no subprotocol, no extra headers

    def onOpen(self) -> None:
        # autobahn tries to set TCP_NODELAY before its options are copied and fails silently.
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:  # e.g. UNIX sockets
                pass
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            try:
                register(self, True)
            except RuntimeError:
                log.debug("conat: transport already has a producer; slow consumers are not detected")
        self.opened = True
        self._tcp = plain_tcp(self.transport)
        self.sid = new_sid()
        opts = self.factory.options
        self._out = ReadBarriers(self._write, self._send_ping, self.factory.turns, self._held_too_much,
                                 opts.max_backlog)
        opened = open_packet(self.sid, opts.ping_interval, opts.ping_timeout, opts.max_payload)
        self._write(frame(0x1, opened.encode()))
        clock = self.factory.clock
        self._timer = clock.callLater(opts.ping_interval, self._ping)
        self._connect_timer = clock.callLater(opts.connect_timeout, self._no_connect)
        self.factory.opened(self)

    # heartbeat ----------------------------------------------------------------------

    def _ping(self) -> None:
        self._timer = None
        if self.state != STATE_OPEN:
            return
        self._awaiting_pong = True
        self._heartbeat_ping = self._send_ping()
        self._timer = self.factory.clock.callLater(self.factory.options.ping_timeout, self._ping_timeout)

    def _send_ping(self) -> int:
        """Send an Engine.IO ping; returns its number. Clients answer pings in order (a pong
        carries no id), so the n-th pong answers the n-th ping."""
        self._write(b"\x81\x012")
        self._pings += 1
        return self._pings

    def _pong(self) -> None:
        if self._pongs >= self._pings:
            return  # unsolicited: ignored
        self._pongs += 1
        if self._out is not None:
            self._out.answered(self._pongs)
        if not self._awaiting_pong or self._pongs < self._heartbeat_ping:
            return
        self._awaiting_pong = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.clock.callLater(self.factory.options.ping_interval, self._ping)

    def _ping_timeout(self) -> None:
        self._timer = None
        self._close("ping timeout", abort=True)

    def _no_connect(self) -> None:
        self._connect_timer = None
        self._close("connect timeout")

    def established(self) -> None:
        """The handler accepts this connection: the connect timeout no longer applies."""
        timer = self._connect_timer
        if timer is not None:
            self._connect_timer = None
            if timer.active():
                timer.cancel()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._connect_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._connect_timer = None

    # input ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Handle one read; then send at once what it wrote to any connection (:mod:`.flush`)."""
        factory = self.factory
        factory.reading += 1
        try:
            self.parse_read(data)  # autobahn's dataReceived, minus a debug log it formats per read
        finally:
            factory.reading -= 1
            if not factory.reading:
                factory.flush_written()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._binary(payload)
        else:
            self._text(payload.decode("utf-8"))  # autobahn has validated it

    def _binary(self, payload: bytes) -> None:
        try:
            self.receiver.on_binary(payload)
        except ProtocolError as e:
            self._protocol_error(str(e))

    def _text(self, text: str) -> None:
        try:
            kind = text[:1]
            if kind == "4":
                self.receiver.on_message(text[1:])
            elif kind == "3":
                self._pong()
            elif kind == "6":
                pass
            elif kind == "1":
                self._close("transport close")
            elif kind == "2":
                raise ProtocolError("invalid heartbeat direction")
            else:
                raise ProtocolError("unknown engine.io packet type")
        except ProtocolError as e:
            self._protocol_error(str(e))

    def _gone(self, reason: str) -> None:
        """Tell the receiver (once) that the connection is closing or closed."""
        receiver, self.receiver = self.receiver, GONE
        try:
            receiver.on_close(reason)
        except Exception:
            log.failure("engine.io: close handler failed")

    def _protocol_error(self, reason: str) -> None:
        log.debug("conat: closing {peer}: {reason}", peer=self.handshake.client_ip, reason=reason)
        self.factory.protocol_errors += 1
        self._closing_reason = "parse error"
        if self.state == STATE_OPEN:
            self.send_close(CLOSE_PROTOCOL_ERROR, reason.encode()[:120])
        self._gone("parse error")

    # output (Sender) ---------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.factory.options.max_backlog:
                log.warn("conat: dropping {peer}, a slow consumer with {n} bytes queued",
                         peer=self.handshake.client_ip, n=self._backlog)
                self.factory.slow_consumers += 1
                self._close("slow consumer", abort=True)
                return
        if self._unsent is not None:
            self._unsent.append(data)
        elif self.factory.reading and idle(self._tcp):
            self._unsent = [data]  # sent at the end of this read (:mod:`.direct`)
        else:
            self.transport.write(data)  # type: ignore[union-attr]
        if not self._dirty and self.factory.reading:
            self._dirty = True
            self.factory.written.append(self)

    def _release(self) -> None:
        """What the current read wrote goes to the transport (before anything else does)."""
        held, self._unsent = self._unsent, None
        if held is not None and self.transport is not None:
            self.transport.write(b"".join(held))

    def _held_too_much(self, n: int) -> None:
        log.warn("conat: dropping {peer}, which has not answered a ping with {n} bytes held for it",
                 peer=self.handshake.client_ip, n=n)
        self.factory.slow_consumers += 1
        self._close("slow consumer", abort=True)

    def send_packet(self, text: str, binaries: list[bytes], flow: object = None, order: int = PLAIN) -> None:
        """Write one packet; ``flow`` and ``order`` are :mod:`.barriers`' (who the packet
        feeds, and whether it must end the client's read)."""
        if self.state != STATE_OPEN or self._out is None:
            return
        data = text.encode("utf-8")
        if binaries:
            out = [header(0x1, len(data)), data]
            for b in binaries:
                out.append(header(0x2, len(b)))
                out.append(b)
            self._out.send(b"".join(out), flow, order)
        else:
            self._out.send(header(0x1, len(data)) + data, flow, order)

    def send_raw(self, text: str, binary: bytes, flow: object = None, order: int = PLAIN) -> None:
        if self.state != STATE_OPEN or self._out is None:
            return
        data = text.encode("utf-8")
        self._out.send(b"".join((header(0x1, len(data)), data, header(0x2, len(binary)), binary)), flow, order)

    def send_message(self, data: str | bytes) -> None:
        """An Engine.IO message: ``4`` + text in a text frame, or bytes in a binary frame."""
        if isinstance(data, str):
            self.send_packet("4" + data, [])
        elif self.state == STATE_OPEN and self._out is not None:
            self._out.send(frame(0x2, bytes(data)), None, PLAIN)

    def close(self, reason: str = "server shutting down") -> None:
        self._close(reason)

    def _close(self, reason: str, abort: bool = False) -> None:
        self._closing_reason = reason
        self._gone(reason)
        out = self._out
        if out is not None:
            if abort:
                out.drop()
            elif self.state == STATE_OPEN:
                out.flush()  # what a hold kept goes out before the close frame
        if abort:
            self.dropConnection(abort=True)
        elif self.state == STATE_OPEN:
            self.send_close(1000)
        elif self.state != STATE_CLOSED:
            self.dropConnection(abort=False)

    def pause_input(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_input(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    # IPushProducer: the transport tells us when its write buffer is full
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self._paused = False

    # teardown ------------------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_timers()
        self._unsent = None
        if self._out is not None:
            self._out.drop()
        self._gone(self._closing_reason)
        if self.opened:
            self.opened = False
            self.factory.closed(self)


class EngineFactory(WebSocketServerFactory):
    """Builds :class:`EngineProtocol` connections for one Engine.IO handler (for Socket.IO,
    a :class:`~.sio.SocketIOServer`)."""

    protocol = EngineProtocol  # type: ignore[assignment]

    def __init__(self, handler: EngineHandler, clock: IReactorTime, options: EngineOptions | None = None) -> None:
        super().__init__(server="cocalc-hub")  # the hub's Server header, not autobahn's name and version
        self.handler = handler
        self.clock = clock
        self.options = options or EngineOptions()
        self.connections: set[EngineProtocol] = set()
        self.turns = Turns(clock)
        self.reading = 0
        """Reads being handled (nested when a handler reads another connection's data)."""
        self.written: list[EngineProtocol] = []
        """Connections written to during the current read."""
        self.protocol_errors = 0
        self.slow_consumers = 0
        self._pending_handshake: Handshake | None = None
        self.setProtocolOptions(
            maxFramePayloadSize=self.options.max_payload,
            maxMessagePayloadSize=self.options.max_payload,
            autoPingInterval=0,
            perMessageCompressionAccept=lambda offers: None,
            openHandshakeTimeout=0,  # the front door times out slow request heads
            closeHandshakeTimeout=0,  # timed by FastFrames
            tcpNoDelay=True,
            failByDrop=False,
        )
        self.noisy = False

    # autobahn's settings become class attributes of a protocol class of this factory's
    # own (cocalc_hub.internals.autobahn.settled_protocol says why).

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        super().setProtocolOptions(**options)
        self._settle_options()

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._settle_options()

    def _settle_options(self) -> None:
        base: type[EngineProtocol] = type(self).protocol  # the class's, e.g. a subclass's own protocol
        self.protocol = cast("type[EngineProtocol]", settled_protocol(self, base))

    def buildProtocol(self, addr: Any) -> Any:
        proto: EngineProtocol = super().buildProtocol(addr)  # type: ignore[assignment]
        if self._pending_handshake is not None:
            proto.handshake = self._pending_handshake
        return proto

    def flush_written(self) -> None:
        written, self.written = self.written, []
        for proto in written:
            proto._dirty = False
            held, proto._unsent = proto._unsent, None
            if proto.transport is None:
                continue
            if held is not None:
                send_now(proto._tcp, proto.transport, held[0] if len(held) == 1 else b"".join(held))
            else:
                flush(proto.transport)

    def opened(self, proto: EngineProtocol) -> None:
        self.connections.add(proto)
        proto.receiver = self.handler.engine_connected(proto)

    def closed(self, proto: EngineProtocol) -> None:
        self.connections.discard(proto)

    def close_all(self) -> None:
        for proto in list(self.connections):
            proto.close()
        self.turns.stop()


class EngineResource(WebSocketResource):
    """The HTTP side: checks the Engine.IO query, then hands the connection to autobahn.

    Plain requests and wrong versions get upstream's JSON errors (HTTP 400)."""

    isLeaf = True

    def __init__(self, factory: EngineFactory, handshake: Callable[[IRequest], Handshake],
                 admit: Callable[[IRequest], str | None] | None = None) -> None:
        super().__init__(factory)
        self.engine = factory
        self.make_handshake = handshake
        self.admit = admit
        """Says why an upgrade is refused (403, engine.io's "Forbidden"), or None to let it in."""

    def render(self, request: IRequest) -> Any:
        query = parse_qs(request.uri.partition(b"?")[2].decode("latin-1"))
        transport = query.get("transport", [""])[0]
        if query.get("EIO", [""])[0] != "4":
            return self._error(request, 5, "Unsupported protocol version")
        if transport != "websocket":
            return self._error(request, 0, "Transport unknown")
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket" or request.method != b"GET":
            return self._error(request, 3, "Bad request")
        refused = self.admit(request) if self.admit is not None else None
        if refused is not None:
            return self._error(request, 4, f"Forbidden: {refused}", status=403)
        channel_transport = request.channel.transport  # type: ignore[attr-defined]
        if channel_transport is not None and hasattr(channel_transport, "unregisterProducer"):
            # The HTTP channel stops being the transport's producer: the WebSocket takes over.
            try:
                channel_transport.unregisterProducer()
            except Exception:
                pass
        self.engine._pending_handshake = self.make_handshake(request)
        try:
            return super().render(request)
        finally:
            self.engine._pending_handshake = None

    @staticmethod
    def _error(request: IRequest, code: int, message: str, status: int = 400) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return packets.dumps({"code": code, "message": message}).encode()
