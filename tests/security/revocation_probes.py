"""What a caller who is about to lose access holds open, and how soon each is cut off.

Shared by tests/security/test_revocation.py and benchmarks/bench_revocation.py. A victim's
channels, all opened with the victim's own credentials (a Cookie header):

* ``new HTTP``: a fresh request to the project's backend through the proxy, each time;
* ``keep-alive HTTP``: one persistent connection that had a 200 before the change;
* ``stream``: a response still streaming (the backend's ``/special/slow``);
* ``proxied WS``: a WebSocket through the proxy to the backend's echo;
* ``conat``: a conat WebSocket subscribed to one of the project's subjects.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from cocalc_hub.conat.client import Client, connect
from tests.support import parse_response, raw_http, until

CHANNELS = ("new HTTP", "keep-alive HTTP", "stream", "proxied WS", "conat")


class WsProbe(protocol.Protocol):
    """A browser's WebSocket (client frames masked), noting how and when it ended."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = b""
        self.upgraded: defer.Deferred[int] = defer.Deferred()
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.called:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            status = parse_response(head + b"\r\n\r\n")[0]
            self.upgraded.callback(status)
        while len(self.buf) >= 2:
            size = self.buf[1] & 0x7F
            start = 2 + (2 if size == 126 else 8 if size == 127 else 0)
            if len(self.buf) < start:
                return
            if size == 126:
                size = struct.unpack_from("!H", self.buf, 2)[0]
            elif size == 127:
                size = struct.unpack_from("!Q", self.buf, 2)[0]
            if len(self.buf) < start + size:
                return
            opcode, payload = self.buf[0] & 0x0F, self.buf[start:start + size]
            self.buf = self.buf[start + size:]
            if opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            else:
                self.messages.append(payload)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed_at = reactor.seconds()
        if not self.upgraded.called:
            self.upgraded.callback(0)

    def stop_reading(self) -> None:
        """Stop reading (the hub's buffers toward this browser fill up)."""
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        n = len(payload)
        if n < 126:
            head = bytes((0x82, 0x80 | n))
        elif n < 65536:
            head = bytes((0x82, 0x80 | 126)) + struct.pack("!H", n)
        else:
            head = bytes((0x82, 0x80 | 127)) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.transport.write(head + mask + masked)


class StreamProbe(protocol.Protocol):
    """A GET whose response keeps streaming; notes when the connection ended."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = 0
        self.closed_at: float | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed_at = reactor.seconds()


class KeepAliveProbe(protocol.Protocol):
    """One persistent HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: defer.Deferred[int] | None = None
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if self.waiting is None or b"\r\n\r\n" not in self.buf:
            return
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        status, headers, _ = parse_response(head + b"\r\n\r\n")
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return
        self.buf = rest[length:]
        d, self.waiting = self.waiting, None
        d.callback(status)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(0)

    def status(self, raw: bytes) -> defer.Deferred[int]:
        """The status of one more request on this connection (0: the connection is gone)."""
        if self.closed or self.transport is None:
            return defer.succeed(0)
        self.waiting = defer.Deferred()
        self.transport.write(raw)
        return self.waiting


def _head(method: str, path: str, cookie: str, *extra: str, close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: hub.test", f"Cookie: {cookie}", *extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ws_upgrade(path: str, cookie: str) -> bytes:
    """A browser's WebSocket upgrade request."""
    key = base64.b64encode(os.urandom(16)).decode()
    return _head("GET", path, cookie, "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13")


async def _connect(port: int, proto: protocol.Protocol) -> Any:
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(lambda: proto))


class Channels:
    """One victim's open channels to one project, on one hub."""

    def __init__(self, hub_port: int, base: str, backend: str, cookie: str, conat_cookies: dict[str, str],
                 subject: str, publisher: Client, *, slow: str = "/special/slow") -> None:
        self.port = hub_port
        self.base = base  # http://127.0.0.1:port[/base]
        self.backend = backend  # /base/<project>/server/<port>
        self.cookie = cookie
        self.conat_cookies = conat_cookies
        self.subject = subject
        self.publisher = publisher
        self.slow = slow  # the streaming response's path (the backend's)
        self.ws: WsProbe | None = None
        self.stream: StreamProbe | None = None
        self.keep: KeepAliveProbe | None = None
        self.conat: Client | None = None

    async def open(self) -> None:
        """Open every channel and check that each works now."""
        self.ws = WsProbe(ws_upgrade(f"{self.backend}/ws", self.cookie))
        await _connect(self.port, self.ws)
        status = await self.ws.upgraded
        assert status == 101, f"the WebSocket was refused before the change ({status})"
        self.ws.send(b"ping")
        ws = self.ws
        await until(lambda: b"ping" in ws.messages, what="the WebSocket echo")
        self.keep = KeepAliveProbe()
        await _connect(self.port, self.keep)
        status = await self.keep.status(self.http_request())
        assert status == 200, f"keep-alive request refused before the change ({status})"
        assert await self.new_http() == 200
        self.stream = StreamProbe(_head("GET", f"{self.backend}{self.slow}", self.cookie))
        await _connect(self.port, self.stream)
        stream = self.stream
        await until(lambda: stream.received > 0, what="the stream to begin")
        self.conat = connect(reactor, self.base, cookies=self.conat_cookies, reconnect=False)
        await self.conat.signed_in(timeout=30)
        await self.conat.subscribe(self.subject)
        assert await self.publisher.publish(self.subject, "before") == 1, "conat subscription not live"

    def http_request(self, close: bool = False) -> bytes:
        return _head("GET", f"{self.backend}/hello", self.cookie, close=close)

    async def new_http(self) -> int:
        raw = await raw_http(self.port, self.http_request(close=True))
        return parse_response(raw)[0] if raw else 0

    async def cut_off(self, since: float, timeout: float) -> dict[str, float | None]:
        """Seconds from ``since`` until each channel was closed or refused (None: not within
        ``timeout`` seconds of ``since``)."""
        found: dict[str, float | None] = dict.fromkeys(CHANNELS)
        ws, stream, keep = self.ws, self.stream, self.keep
        assert ws is not None and stream is not None and keep is not None

        async def all_cut_off() -> bool:
            for name, probe in (("proxied WS", ws), ("stream", stream)):
                if found[name] is None and probe.closed_at is not None:
                    found[name] = max(0.0, probe.closed_at - since)
            if found["new HTTP"] is None and await self.new_http() != 200:
                found["new HTTP"] = reactor.seconds() - since
            if found["keep-alive HTTP"] is None and await keep.status(self.http_request()) != 200:
                found["keep-alive HTTP"] = reactor.seconds() - since
            if found["conat"] is None and await self.publisher.publish(self.subject, "after") == 0:
                found["conat"] = reactor.seconds() - since
            return all(v is not None for v in found.values())

        try:
            await until(all_cut_off, timeout=max(0.0, since + timeout - reactor.seconds()), what="revocation")
        except AssertionError:
            pass  # reported per channel below
        return {k: (v if v is not None and v <= timeout else None) for k, v in found.items()}

    def close(self) -> None:
        for probe in (self.ws, self.stream, self.keep):
            if probe is not None and probe.transport is not None:
                probe.transport.abortConnection()  # type: ignore[attr-defined]
        if self.conat is not None:
            self.conat.close()
