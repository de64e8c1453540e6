"""The client side of Engine.IO v4 + Socket.IO v5 over a WebSocket, with reconnection.

:class:`SocketTransport` behaves like socket.io-client with ``transports: ["websocket"]``:
it connects to ``<url>/conat/?EIO=4&transport=websocket`` with the caller's cookies in
the upgrade request, joins the root namespace, answers pings (and gives up on a server
that stops sending them), buffers emits while disconnected and sends them, in order,
once connected again, and reconnects with jittered exponential backoff unless the server
said ``41`` (a deliberate disconnect) or the owner closed it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from random import random
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.frames import masked_frame
from cocalc_hub.conat.transport.packets import ProtocolError
from cocalc_hub.conat.transport.session import PacketReader, read_open
from cocalc_hub.internals.autobahn import STATE_OPEN, FastFrames
from cocalc_hub.reactors import IReactorTimeTCP

log = Logger()

DISCONNECTED = object()
"""Passed to ack callbacks whose answer will never come (the connection was lost)."""
MAX_BUFFERED = 100_000


class Owner(Protocol):
    """What a transport reports to (the conat client)."""

    def transport_connected(self) -> None: ...
    def transport_event(self, name: str, args: list[Any], ack: Callable[..., None] | None) -> None: ...
    def transport_disconnected(self, reason: str, reconnecting: bool) -> None: ...


def conat_url(address: str) -> tuple[str, str, int, bool]:
    """``http[s]://host[:port][/base]`` → (WebSocket URL, host, port, tls)."""
    parts = urlsplit(address if "://" in address else f"http://{address}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"conat server address must be http(s)://host[:port][/base], not {address!r}")
    tls = parts.scheme in ("https", "wss")
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"  # localhost may resolve to ::1 first
    port = parts.port or (443 if tls else 80)
    base = parts.path.rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    url = f"{'wss' if tls else 'ws'}://{netloc}:{port}{base}/conat/?EIO=4&transport=websocket"
    return url, host, port, tls


class EngineClientProtocol(PacketReader, FastFrames, WebSocketClientProtocol):  # type: ignore[misc]
    _masked = False
    factory: _Factory
    _liveness: IDelayedCall | None = None
    _timeout = 45.0

    def connectionMade(self) -> None:
        self._pending = None
        super().connectionMade()
        self._arm(20.0)  # the WebSocket handshake, the open packet and the namespace connect

    def onOpen(self) -> None:
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        except (AttributeError, OSError):
            pass
        self._next_ack = 0
        self._acks: dict[int, Callable[..., None]] = {}
        self.joined = False
        self._arm(20.0)  # the open packet and the namespace connect must come soon

    def _arm(self, seconds: float) -> None:
        if self._liveness is not None and self._liveness.active():
            self._liveness.reset(seconds)
        else:
            self._liveness = self.factory.reactor.callLater(seconds, self._dead)

    def _dead(self) -> None:
        self._liveness = None
        self.factory.reason = "ping timeout" if self.joined else "connect timeout"
        self.dropConnection(abort=True)

    # input ---------------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._binary(payload)
        else:
            self._text(payload.decode("utf-8"))

    def _binary(self, payload: bytes) -> None:
        try:
            self.on_binary(payload)
        except ProtocolError as e:
            self._fail(str(e))

    def _text(self, text: str) -> None:
        try:
            if self._pending is not None:
                raise ProtocolError("text frame while binary attachments are due")
            kind = text[:1]
            if kind == "4":
                self.on_message(text[1:])
            elif kind == "2":
                self._write_raw(masked_frame(0x1, b"3"))
                self._arm(self._timeout)
            elif kind == "0":
                interval, timeout = read_open(text[1:])
                self._timeout = interval + timeout
                self._arm(self._timeout)
                self._write_raw(masked_frame(0x1, b"40"))
            elif kind == "1":
                self.factory.reason = "transport close"
                self.sendClose(1000)
            elif kind == "6":
                pass
            else:
                raise ProtocolError("unknown engine.io packet type")
        except (ProtocolError, ValueError, AttributeError) as e:
            self._fail(str(e))

    def _dispatch(self, packet: packets.Packet) -> None:
        if packet.nsp != "/":
            return
        t = packet.type
        owner = self.factory.owner
        if t == packets.EVENT:
            data = packet.data
            ack = None
            if packet.id is not None:
                ack = self._responder(packet.id)
            owner.event(str(data[0]), data[1:], ack)
        elif t == packets.ACK:
            callback = self._acks.pop(packet.id, None) if packet.id is not None else None
            if callback is not None:
                callback(packet.data)
        elif t == packets.CONNECT:
            if isinstance(packet.data, dict) and "sid" in packet.data:
                self.joined = True
                owner.joined(self)
            else:
                self._fail("connect without a session id")
        elif t == packets.DISCONNECT:
            self.factory.reason = "io server disconnect"
            self.factory.server_disconnect = True
            self.sendClose(1000)
        elif t == packets.CONNECT_ERROR:
            self.factory.reason = f"connect error: {packet.data}"
            self.factory.server_disconnect = True
            self.sendClose(1000)

    def _responder(self, ack_id: int) -> Callable[..., None]:
        sent = [False]

        def respond(*args: Any) -> None:
            if sent[0]:
                return
            sent[0] = True
            text, binaries = packets.encode_parts(packets.ACK, list(args), ack_id=ack_id)
            self.send_packet(text, binaries)

        return respond

    def _fail(self, reason: str) -> None:
        log.warn("conat client: protocol error from server: {reason}", reason=reason)
        self.factory.reason = f"parse error: {reason}"
        self.dropConnection(abort=True)

    # output -----------------------------------------------------------------------------------

    def _write_raw(self, data: bytes) -> None:
        if self.state == STATE_OPEN:
            self.transport.write(data)  # type: ignore[union-attr]

    def send_packet(self, text: str, binaries: list[bytes]) -> None:
        if self.state != STATE_OPEN:
            return
        out = [masked_frame(0x1, text.encode("utf-8"))]
        for b in binaries:
            out.append(masked_frame(0x2, b))
        self.transport.write(b"".join(out))  # type: ignore[union-attr]

    def emit(self, event: str, args: list[Any], ack: Callable[..., None] | None) -> None:
        ack_id = None
        if ack is not None:
            ack_id = self._next_ack
            self._next_ack += 1
            self._acks[ack_id] = ack
        text, binaries = packets.encode_parts(packets.EVENT, [event, *args], ack_id=ack_id)
        self.send_packet(text, binaries)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._liveness is not None and self._liveness.active():
            self._liveness.cancel()
        self._liveness = None
        acks, self._acks = getattr(self, "_acks", {}), {}
        for callback in acks.values():
            try:
                callback(DISCONNECTED)
            except Exception:
                log.failure("conat client: ack callback failed")
        self.factory.owner.lost(self, self.factory.reason or (reason or "transport close"))


class _Factory(WebSocketClientFactory):
    protocol = EngineClientProtocol  # type: ignore[assignment]

    def __init__(self, owner: SocketTransport, url: str, headers: dict[str, str]) -> None:
        super().__init__(url, headers=headers)
        self.owner = owner
        self.reactor = self.clock = owner.reactor
        self.reason = ""
        self.server_disconnect = False
        self.setProtocolOptions(
            maxFramePayloadSize=owner.max_payload, maxMessagePayloadSize=owner.max_payload,
            autoPingInterval=0, perMessageCompressionOffers=[], openHandshakeTimeout=0,
            closeHandshakeTimeout=0, tcpNoDelay=True)
        self.noisy = False


class SocketTransport:
    """A reconnecting Socket.IO connection to a conat server."""

    def __init__(self, reactor: IReactorTimeTCP, address: str, *, cookies: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, reconnect: bool = True, verify_tls: bool = True,
                 delay: float = 0.5, max_delay: float = 15.0, max_payload: int = 16_000_000) -> None:
        self.reactor = reactor
        self.address = address
        self.url, self.host, self.port, self.tls = conat_url(address)
        hdrs = dict(headers or {})
        if cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={quote(v, safe='')}" for k, v in cookies.items())
        self.headers = hdrs
        self.reconnect = reconnect
        self.verify_tls = verify_tls
        self.delay = delay
        self.max_delay = max_delay
        self.max_payload = max_payload
        self.owner: Owner | None = None
        self.proto: EngineClientProtocol | None = None
        self.connected = False
        self.closed = False
        self.attempts = 0
        self._buffer: deque[tuple[str, list[Any], Callable[..., None] | None]] = deque()
        self._retry: IDelayedCall | None = None
        self._connecting: Deferred[Any] | None = None

    def start(self, owner: Owner) -> None:
        self.owner = owner
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self.closed:
            return
        factory = _Factory(self, self.url, self.headers)
        endpoint: IStreamClientEndpoint = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=20)
        if self.tls:
            from twisted.internet import ssl

            if self.verify_tls:
                options = ssl.optionsForClientTLS(self.host)
            else:
                options = ssl.CertificateOptions(verify=False)
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        d = endpoint.connect(factory)
        self._connecting = d

        def failed(f: Failure) -> None:
            self._connecting = None
            self._gone(f"cannot connect to {self.address}: {f.getErrorMessage()}", server_disconnect=False)

        d.addCallbacks(lambda _: setattr(self, "_connecting", None), failed)

    # from the protocol ---------------------------------------------------------------------------

    def joined(self, proto: EngineClientProtocol) -> None:
        self.proto = proto
        self.connected = True
        self.attempts = 0
        buffered, self._buffer = self._buffer, deque()
        for event, args, ack in buffered:
            proto.emit(event, args, ack)
        if self.owner is not None:
            self.owner.transport_connected()

    def event(self, name: str, args: list[Any], ack: Callable[..., None] | None) -> None:
        if self.owner is not None:
            self.owner.transport_event(name, args, ack)

    def lost(self, proto: EngineClientProtocol, reason: str) -> None:
        if self.proto is not None and proto is not self.proto:
            return
        self._gone(reason, server_disconnect=proto.factory.server_disconnect)

    def _gone(self, reason: str, *, server_disconnect: bool) -> None:
        was = self.connected
        self.proto = None
        self.connected = False
        again = self.reconnect and not self.closed and not server_disconnect
        if was or not again or self.attempts == 0:
            log.debug("conat client: disconnected from {addr}: {reason}", addr=self.address, reason=reason)
        if again:
            wait = min(self.max_delay, self.delay * (2 ** self.attempts)) * (0.5 + random())
            self.attempts += 1
            self._retry = self.reactor.callLater(wait, self._connect)
        if self.owner is not None:
            self.owner.transport_disconnected(reason, again)

    # for the owner --------------------------------------------------------------------------------

    def emit(self, event: str, args: list[Any], ack: Callable[..., None] | None = None) -> None:
        proto = self.proto
        if proto is not None and self.connected:
            proto.emit(event, args, ack)
            return
        if len(self._buffer) >= MAX_BUFFERED:
            if ack is not None:
                ack(DISCONNECTED)
            return
        self._buffer.append((event, args, ack))

    def close(self) -> None:
        """Disconnect for good (``41``, then close)."""
        self.closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        proto = self.proto
        if proto is not None:
            proto.send_packet("41", [])
            proto.sendClose(1000)
        for _, _, ack in self._buffer:
            if ack is not None:
                ack(DISCONNECTED)
        self._buffer.clear()
