"""The hub's Request: routing facts, timing, client address and scheme."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from cocalc_hub.web.errors import error_page, json_error

log = Logger()

SERVER_HEADER = b"cocalc-hub"
# The hub's own endpoints never need more; proxied requests do not pass through Site.
MAX_REQUEST_BODY = 16 * 1024 * 1024


class HubRequest(server.Request):
    """A request that knows which route class it belongs to and when it started."""

    route: str = "other"
    rel_path: bytes = b""
    """The raw (percent-encoded) path below the base path, starting with '/'."""
    mount_rest: bytes = b""
    """The raw path below the matched mount point ('' or starting with '/')."""
    json_errors: bool = False
    trust_proxy: bool = False
    base_prefix: bytes = b""
    """BASE_PATH without its trailing slash (``b""`` for ``/``), for links on error pages."""
    sitepath: list[bytes]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self._body_bytes = 0

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """Every ``Server`` header is the hub's bare name: Twisted's own (``TwistedWeb/<version>``,
        set before routing and on its ``OPTIONS *`` answer) would tell attackers the version."""
        if (name.lower() if isinstance(name, str) else name.lower().decode("latin-1")) == "server":
            value = SERVER_HEADER
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        """Refuse an oversized body before reading it (413, then close)."""
        if length is not None and length > MAX_REQUEST_BODY:
            self._refuse_body()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_REQUEST_BODY:
            self._refuse_body()
            return
        super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.loseConnection()

    def processingFailed(self, reason: Failure) -> Any:
        """Log the failure and answer with our own 500 page (never a traceback)."""
        log.failure("error while handling {method} {route}", reason, method=self.method, route=self.route)
        if self.finished or self.startedWriting:
            if not self.finished:
                self.loseConnection()
            return None
        self.responseHeaders.removeHeader(b"content-length")
        if self.json_errors:
            body = json_error(self, 500, "internal server error")
        else:
            body = error_page(self, 500, "Something went wrong on our side. It has been logged.")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.write(body)
        self.finish()
        return reason


def peer_host(request: http.Request) -> str:
    addr = request.getClientAddress()
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return "local"


def client_ip(request: http.Request, trust_proxy: bool) -> str:
    """The caller's address; X-Forwarded-For is believed only with --trust-proxy."""
    if trust_proxy:
        header = request.getHeader(b"x-forwarded-for")
        if header:
            # The right-most entry was added by our trusted proxy.
            candidate = header.split(b",")[-1].strip().decode("latin-1")
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
    return peer_host(request)


def is_secure(request: http.Request, trust_proxy: bool) -> bool:
    """HTTPS on our own socket, or (trusted proxies only) X-Forwarded-Proto: https."""
    if request.isSecure():
        return True
    if trust_proxy:
        proto = request.getHeader(b"x-forwarded-proto")
        if proto is not None and proto.split(b",")[0].strip().lower() == b"https":
            return True
    return False


def printable(value: bytes | str, limit: int = 2000) -> str:
    """Render request input for a log line: bounded, control characters escaped."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
    if len(text) > limit:
        text = text[:limit] + "…"
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
                   for c in text)
