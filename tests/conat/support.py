"""A raw WebSocket client for frame-exact conat tests, and small servers to point it at."""

from __future__ import annotations

import base64
import os
import struct
from collections import deque
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from cocalc_hub.conat.transport.engine import EngineFactory, EngineOptions, EngineResource
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import Ack, Handshake, NamespaceSocket
from tests.support import WAIT, until


class RawWS(protocol.Protocol):
    """Speaks RFC 6455 by hand: exact frames in, exact frames out."""

    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers
        self.buf = b""
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.response_body = b""
        self.frames: deque[tuple[int, bytes]] = deque()
        self.waiting: defer.Deferred[tuple[int, bytes]] | None = None
        self.handshake_done: defer.Deferred[int] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.is_closed = False

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {self.path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.status is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.response_headers[k.strip().lower()] = v.strip()
            self.handshake_done.callback(self.status)
            if self.status != 101:
                self.response_body = self.buf
                return
        if self.status != 101:
            self.response_body += data
            return
        self._parse()

    def _parse(self) -> None:
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n = b1 & 0x7F
            i = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n = struct.unpack("!H", self.buf[2:4])[0]
                i = 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n = struct.unpack("!Q", self.buf[2:10])[0]
                i = 10
            if b1 & 0x80:
                raise AssertionError("server frames must not be masked")
            if len(self.buf) < i + n:
                return
            payload, self.buf = self.buf[i:i + n], self.buf[i + n:]
            assert b0 & 0x80, "this client does not expect fragmented frames"
            self._push((b0 & 0x0F, payload))

    def _push(self, item: tuple[int, bytes]) -> None:
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(item)
        else:
            self.frames.append(item)

    def connectionLost(self, reason: Any = None) -> None:
        self.is_closed = True
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(ConnectionError("closed"))
        self.closed.callback(None)

    async def body(self) -> bytes:
        """The body of a refused handshake (waits for Content-Length bytes)."""
        length = int(self.response_headers.get("content-length", "0"))
        await until(lambda: len(self.response_body) >= length or self.is_closed, what="the response body")
        return self.response_body

    # sending
    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True) -> None:
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            head = bytes((b0, (0x80 if mask else 0) | n))
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, key)
            head += key
        assert self.transport is not None
        self.transport.write(head + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        self.send_frame(0x2, data)

    # receiving
    def next_frame(self, timeout: float = WAIT) -> defer.Deferred[tuple[int, bytes]]:
        if self.frames:
            return defer.succeed(self.frames.popleft())
        if self.is_closed:
            return defer.fail(ConnectionError("closed"))
        d: defer.Deferred[tuple[int, bytes]] = defer.Deferred()
        self.waiting = d
        return d.addTimeout(timeout, reactor)

    async def text(self, timeout: float = WAIT) -> str:
        """The next frame, which must be a text frame."""
        opcode, payload = await self.next_frame(timeout)
        assert opcode == 0x1, f"expected a text frame, got opcode {opcode}: {payload[:80]!r}"
        return payload.decode("utf-8")

    async def binary(self, timeout: float = WAIT) -> bytes:
        opcode, payload = await self.next_frame(timeout)
        assert opcode == 0x2, f"expected a binary frame, got opcode {opcode}: {payload[:80]!r}"
        return payload

    async def text_skipping_pings(self, timeout: float = WAIT) -> str:
        while True:
            text = await self.text(timeout)
            if text != "2":
                return text

    async def close_code(self, timeout: float = WAIT) -> int | None:
        """Wait for the server's close frame; its status code (None if it had none)."""
        while True:
            opcode, payload = await self.next_frame(timeout)
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def _xor(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


async def ws_connect(case: unittest.TestCase, port: int, path: str = "/conat/?EIO=4&transport=websocket",
                     headers: dict[str, str] | None = None, *, expect: int = 101) -> RawWS:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    ws = await endpoint.connect(protocol.Factory.forProtocol(lambda: RawWS(path, headers or {})))

    def cleanup() -> defer.Deferred[None] | None:
        if ws.is_closed:
            return None
        assert ws.transport is not None
        ws.transport.abortConnection()  # type: ignore[attr-defined]
        return ws.closed

    case.addCleanup(cleanup)
    status = await ws.handshake_done.addTimeout(WAIT, reactor)
    case.assertEqual(status, expect, ws.response_headers)
    return ws


async def open_session(ws: RawWS) -> dict[str, Any]:
    """Read the Engine.IO open packet and join the root namespace; the two server packets."""
    import json

    opened = await ws.text()
    assert opened.startswith("0"), opened
    ws.send_text("40")
    joined = await ws.text_skipping_pings()
    assert joined.startswith("40{"), joined
    return {"open": json.loads(opened[1:]), "connect": json.loads(joined[2:])}


class Recorder:
    """A Socket.IO handler that records everything and can be told how to answer."""

    def __init__(self) -> None:
        self.sockets: list[NamespaceSocket] = []
        self.events: list[tuple[str, list[Any], Ack | None]] = []
        self.gone: list[str] = []
        self.arrived: defer.Deferred[None] | None = None
        self.auto_ack = True

    def socket_connected(self, socket: NamespaceSocket) -> None:
        self.sockets.append(socket)

    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None:
        self.events.append((name, args, ack))
        if ack is not None and self.auto_ack:
            ack({"got": name, "args": args})
        if self.arrived is not None:
            d, self.arrived = self.arrived, None
            d.callback(None)

    def socket_disconnected(self, socket: NamespaceSocket, reason: str) -> None:
        self.gone.append(reason)

    def wait(self, timeout: float = WAIT) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.arrived = d
        return d.addTimeout(timeout, reactor)


def serve_engine(case: unittest.TestCase, handler: Any, options: EngineOptions | None = None,
                 handshake: Any = None, clock: Any = reactor) -> tuple[int, EngineFactory]:
    """A plain Site with only the Engine.IO resource at /conat/; its port. The engine's
    timers run on ``clock`` (a test may pass a ``task.Clock`` it advances). ``handler`` is
    the Socket.IO handler of the root namespace, or an Engine.IO handler (which has
    ``engine_connected``), such as a :class:`SocketIOServer` with several namespaces."""
    engine_handler = handler if hasattr(handler, "engine_connected") else SocketIOServer(handler)
    factory = EngineFactory(engine_handler, clock, options)
    resource = EngineResource(factory, handshake or (lambda request: Handshake(client_ip="127.0.0.1")))
    root = Resource()
    root.putChild(b"conat", resource)
    site = Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    async def stop() -> None:
        factory.close_all()
        for proto in list(factory.connections):
            proto.dropConnection(abort=True)
        await port.stopListening()

    case.addCleanup(lambda: defer.ensureDeferred(stop()))
    return port.getHost().port, factory


def sockets(broker: Any) -> list[Any]:
    """The broker's connections over WebSockets (not the hub's own in-process clients)."""
    from cocalc_hub.conat.node import SocketConnection

    return [c for c in broker.connections.values() if isinstance(c, SocketConnection)]
