"""The protocol on every hub connection: read each request head, decide where it goes, hand it on.

Project URLs (``BASE_PATH/<uuid>/port|server|raw/…``) take the fast path: the head is
parsed once, authorised, rewritten and sent to a pooled backend connection, and bodies
are streamed as bytes. Every other request is fed, one at a time, to the hub's Site. The
front door is one class made of rooms (see :mod:`.door`): this one reads heads and routes
them; :mod:`.door_site` feeds the Site, :mod:`.door_project` authorises and routes project
requests, :mod:`.door_relay` is the door's end of an exchange with a project.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, task
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolNegotiationFactory,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from cocalc_hub.proxy import pages
from cocalc_hub.proxy.core import Proxy
from cocalc_hub.proxy.door import CLOSED, HEAD, HEAD_TIMEOUT, HUB, IDLE_TIMEOUT, PROXY, RAW, TUNNEL, Door
from cocalc_hub.proxy.door_project import ProjectSide
from cocalc_hub.proxy.door_site import SiteSide
from cocalc_hub.proxy.http1 import MAX_HEAD, HttpError, parse_request
from cocalc_hub.proxy.parse import BadRoute
from cocalc_hub.web.tls import ALPN, HandshakeFailures


@implementer(IProtocolNegotiationFactory)
class FrontDoorFactory(protocol.ServerFactory):
    """Builds FrontDoors; one sweeper enforces every connection's and exchange's deadline
    (a timer per request would cost more than the request). Under TLS it is what declares
    the ALPN protocol (see cocalc_hub.web.tls)."""

    noisy = False
    SWEEP = 0.25

    def __init__(self, site: Any, proxy: Proxy | None, reactor: IReactorTime) -> None:
        self.site = site
        self.proxy = proxy
        self.reactor = reactor
        self.connections: set[Door] = set()
        """What the sweeper visits: every connection but those upgraded to a WebSocket of the Site."""
        self.plain = pages.Context(site.router.base.decode("ascii"))
        """Error pages' context when nothing is known about the request."""
        self._sweeper: task.LoopingCall | None = None
        self._pool_swept = 0.0
        metrics = getattr(site, "metrics", None)
        self.handshake_failures = HandshakeFailures(
            reactor, count=metrics.tls_handshake_failures.inc if metrics is not None else None)

    def acceptableProtocols(self) -> list[bytes]:
        return list(ALPN)

    def buildProtocol(self, addr: Any) -> FrontDoor:
        return FrontDoor(self, addr)

    def startFactory(self) -> None:
        self._sweeper = task.LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(self.SWEEP, now=False)

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def sweep(self) -> None:
        now = self.reactor.seconds()
        if self.proxy is not None and now - self._pool_swept >= 5.0:
            self._pool_swept = now
            self.proxy.pool.expire()
        for conn in list(self.connections):
            if conn.deadline is not None and now >= conn.deadline:
                conn.deadline = None
                conn._timed_out()
            exchange = conn.exchange
            if exchange is not None and exchange.deadline is not None and now >= exchange.deadline:
                exchange.deadline = None
                exchange._timed_out()


@implementer(IHandshakeListener)
class FrontDoor(ProjectSide, SiteSide):
    """One connection: its events, its input by state, and the reading of request heads."""

    # connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
        self.secure = ISSLTransport.providedBy(transport)
        host = getattr(self.addr, "host", None)
        self.client_ip = host.encode() if isinstance(host, str) else b"local"
        self.site.connection_opened(self)
        self.factory.connections.add(self)
        self._arm(IDLE_TIMEOUT)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.secure and not self.handshake_done:
            self.factory.handshake_failures.failed(f"{self.client_ip.decode()}:{getattr(self.addr, 'port', '?')}",
                                                   reason)
        self.state = CLOSED
        self._disarm()
        if self.exchange is not None:
            self.exchange.client_lost()
            self.exchange = None
        if self.tunnel is not None:
            self.tunnel.client_lost()
            self.tunnel = None
            if self.proxy is not None:
                self.proxy.tunnels -= 1
        if self.shim is not None:
            target = self.shim.protocol
            if target is not None:
                target.connectionLost(reason)
            if self.channel is not None and target is not self.channel:
                self.channel.connectionLost(reason)
        self.site.connection_closed(self)
        self.factory.connections.discard(self)

    # input ------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state == RAW:
            assert self.shim is not None
            self.shim.protocol.dataReceived(data)
        elif state == TUNNEL:
            assert self.tunnel is not None
            self.tunnel.client_data(data)
        elif state == PROXY:
            exchange = self.exchange
            if exchange is not None:
                rest = exchange.client_data(data)
                if rest:
                    self.buf += rest
                    self.pause_reading()
            else:
                self.buf += data  # waiting for an authorization decision
                if len(self.buf) > MAX_HEAD:
                    self.pause_reading()
        elif state == HUB:
            self._hub_input(data)
        elif state == HEAD:
            self.buf += data
            self._process()

    def _process(self) -> None:
        """Read each complete request head buffered and send it on: to a project (replayed
        from the memo, or parsed and routed) or to the Site."""
        if self._in_process:
            return
        self._in_process = True
        try:
            while self.state == HEAD and self.buf:
                buf = self.buf
                if buf.startswith(b"\r\n"):
                    self.buf = buf.lstrip(b"\r\n")
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._refuse(431, "The request head is too large.")
                    else:
                        self._arm(HEAD_TIMEOUT)
                    return
                head, self.buf = buf[:end], buf[end + 4:]
                memo = self._memo
                if memo is not None and head == memo.head and self._replay(memo):
                    continue
                try:
                    req = parse_request(head)
                except HttpError as e:
                    self._refuse(e.status, e.message)
                    return
                self._arm(IDLE_TIMEOUT)
                route = None
                if self.proxy is not None and req.target.startswith(b"/"):
                    try:
                        route = self.proxy.route(req.path)
                    except BadRoute as e:
                        self._refuse(400, str(e), req)
                        return
                if route is not None:
                    self._proxy(req, head, route)
                    self._memo = self._pending_memo
                    self._pending_memo = None
                else:
                    self._hub(req, head)
            if self.state == HEAD and not self.buf:
                self.resume_reading()
        finally:
            self._in_process = False
