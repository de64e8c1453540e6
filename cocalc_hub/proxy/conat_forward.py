"""``BASE_PATH/conat/`` in a hub process that does not run the broker: splice WebSocket
upgrades through to the one named by ``CONAT_SERVER`` (upstream's proxy-conat).

The client's request head goes to the broker unchanged except for the path (the broker's
base path), ``Host`` and the ``X-Forwarded-*`` headers; cookies are kept, because they
are the credentials the broker signs clients in with. After that the two connections are
spliced byte for byte, each side pausing the other when its buffers fill. Run the broker
with ``--trust-proxy`` so it believes the forwarded client address.

An upgrade with a browser session cookie from another site's page is refused here (403,
as the broker would: see :mod:`cocalc_hub.web.origins`); once this process has checked
``Origin`` against the host the browser used, it does not forward the header, since the
broker would compare it with its own address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import endpoints, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cocalc_hub.reactors import IReactorTimeTCP
from cocalc_hub.web.request import HubRequest, client_ip, is_secure

log = Logger()

HOP_BY_HOP = frozenset({b"host", b"origin", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                        b"x-real-ip", b"content-length", b"transfer-encoding"})
MAX_EARLY = 1 << 20
"""Bytes a client may send before the broker connection is up."""


class _Backend(protocol.Protocol):
    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def connectionMade(self) -> None:
        self.splice.backend_up(self)

    def dataReceived(self, data: bytes) -> None:
        client = self.splice.transport
        if client is not None:
            client.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.splice.backend_down()


class Splice(protocol.Protocol):
    """Takes over the client's connection and pipes it to the broker."""

    def __init__(self, reactor: IReactorTimeTCP, endpoint: Any, head: bytes, where: str) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.head = head
        self.where = where
        self.early: list[bytes] = []
        self.early_size = 0
        self.backend: _Backend | None = None
        self.done = False

    def connectionMade(self) -> None:
        d = self.endpoint.connect(protocol.Factory.forProtocol(lambda: _Backend(self)))
        d.addErrback(self._failed)

    def _failed(self, f: Failure) -> None:
        log.warn("conat: cannot reach the conat server at {where}: {why}", where=self.where, why=f.getErrorMessage())
        if self.transport is not None and not self.done:
            body = b"The conat server is not reachable.\n"
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.loseConnection()
        self.done = True

    def backend_up(self, backend: _Backend) -> None:
        if self.done:
            backend.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.backend = backend
        bt, ct = backend.transport, self.transport
        assert bt is not None and ct is not None
        bt.write(self.head + b"".join(self.early))
        self.early.clear()
        # Each side pauses reading from the other when its own write buffer is full.
        bt.registerProducer(ct, True)  # type: ignore[attr-defined]
        ct.registerProducer(bt, True)  # type: ignore[attr-defined]
        ct.resumeProducing()  # type: ignore[attr-defined]

    def backend_down(self) -> None:
        if not self.done:
            self.done = True
            if self.transport is not None:
                self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        backend = self.backend
        if backend is not None and backend.transport is not None:
            backend.transport.write(data)
            return
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > MAX_EARLY and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done = True
        backend = self.backend
        if backend is not None and backend.transport is not None:
            backend.transport.loseConnection()


class ConatForwardResource(Resource):
    """Forwards WebSocket upgrades under ``BASE_PATH/conat`` to ``address``."""

    isLeaf = True

    def __init__(self, reactor: IReactorTimeTCP, address: str, *, trust_proxy: bool = False, verify_tls: bool = True,
                 admit: Callable[[Any], str | None] | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.address = address
        url = urlsplit(address)
        self.tls = url.scheme == "https"
        host = url.hostname or "127.0.0.1"
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = url.port or (443 if self.tls else 80)
        self.base = url.path.rstrip("/").encode("ascii", "replace")
        self.host_header = url.netloc.encode("idna") if url.netloc else self.host.encode()
        self.trust_proxy = trust_proxy
        self.verify_tls = verify_tls
        self.admit = admit

    def _endpoint(self) -> Any:
        endpoint: Any = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=10)
        if self.tls:
            from twisted.internet import ssl

            options = ssl.optionsForClientTLS(self.host) if self.verify_tls else ssl.CertificateOptions(verify=False)
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        return endpoint

    def render(self, request: HubRequest) -> Any:
        from cocalc_hub.conat.transport.engine import EngineResource

        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket" or request.method != b"GET":
            return EngineResource._error(request, 3, "Bad request")
        refused = self.admit(request) if self.admit is not None else None
        if refused is not None:
            return EngineResource._error(request, 4, f"Forbidden: {refused}", status=403)
        rest = getattr(request, "mount_rest", b"/") or b"/"
        query = request.uri.partition(b"?")[2]
        target = self.base + b"/conat" + rest + (b"?" + query if query else b"")
        lines = [b"GET " + target + b" HTTP/1.1", b"host: " + self.host_header]
        forwarded_for = client_ip(request, self.trust_proxy).encode("latin-1", "replace")
        for name, values in request.requestHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"x-forwarded-for" and self.trust_proxy:
                    forwarded_for = b", ".join(values) + b", " + forwarded_for
                continue
            for value in values:
                lines.append(lower + b": " + value)
        lines.append(b"x-forwarded-for: " + forwarded_for)
        lines.append(b"x-forwarded-proto: " + (b"https" if is_secure(request, self.trust_proxy) else b"http"))
        head = b"\r\n".join(lines) + b"\r\n\r\n"

        transport: Any = request.channel.transport
        try:
            transport.unregisterProducer()  # the HTTP channel hands the connection over
        except Exception:
            pass
        request.channel.transport = None
        splice = Splice(self.reactor, self._endpoint(), head, self.address)
        transport.protocol = splice
        splice.makeConnection(transport)
        transport.pauseProducing()  # until the broker connection is up
        return NOT_DONE_YET
