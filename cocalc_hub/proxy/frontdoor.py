"""The protocol on every hub connection: read each request head, then proxy it or hand it to the Site.

Project URLs (``BASE_PATH/<uuid>/port|server|raw/…``) take the fast path: the head is
parsed once, authorised, rewritten and sent to a pooled backend connection, and bodies
are streamed as bytes. Every other request is fed, one at a time, to an ordinary
Twisted ``HTTPChannel`` (the hub's Site) through :class:`Shim`, a transport that keeps
the connection in the front door's hands between requests. A WebSocket upgrade handled
by the Site (conat) leaves the connection to that protocol for good.

(Past the ~600-line guide: the split of FrontDoor into parse → route → relay is issue 15.)
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IHandshakeListener, IProtocolNegotiationFactory, ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cocalc_hub.proxy import pages
from cocalc_hub.proxy.access import NOT_LISTENING, Decision, Ports, port_refusal
from cocalc_hub.proxy.backend import BackendConnection, Target, write_now
from cocalc_hub.proxy.core import Proxy
from cocalc_hub.proxy.http1 import MAX_HEAD, BodyFramer, HttpError, RequestHead, parse_request
from cocalc_hub.proxy.parse import BadRoute, Route
from cocalc_hub.proxy.relay import Exchange, Tunnel
from cocalc_hub.proxy.shim import Shim
from cocalc_hub.web.tls import ALPN, HandshakeFailures

log = Logger()

HEAD, HUB, PROXY, TUNNEL, RAW, CLOSED = range(6)
IDLE_TIMEOUT = 120.0
HEAD_TIMEOUT = 30.0


class _Memo:
    """The last proxied request head on a connection and what it was turned into."""

    __slots__ = ("head", "req", "route", "cookie", "authorization", "secure", "decision", "upstream", "backend",
                 "target")

    def __init__(self, head: bytes, req: RequestHead, route: Route, cookie: bytes | None,
                 authorization: bytes | None, secure: bool, decision: Decision) -> None:
        self.head = head
        self.req = req
        self.route = route
        self.cookie = cookie
        self.authorization = authorization
        self.secure = secure
        self.decision = decision
        self.upstream: bytes | None = None
        self.backend: Target | None = None
        self.target: tuple[int, str] | None = None


@implementer(IProtocolNegotiationFactory)
class FrontDoorFactory(protocol.ServerFactory):
    """Builds FrontDoors; one sweeper enforces every connection's and exchange's deadline
    (a timer per request would cost more than the request). Under TLS it is what declares
    the ALPN protocol (see cocalc_hub.web.tls)."""

    noisy = False
    SWEEP = 0.25

    def __init__(self, site: Any, proxy: Proxy | None, reactor: Any) -> None:
        self.site = site
        self.proxy = proxy
        self.reactor = reactor
        self.connections: set[FrontDoor] = set()
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
class FrontDoor(protocol.Protocol):
    def __init__(self, factory: FrontDoorFactory, addr: Any) -> None:
        self.factory = factory
        self.site = factory.site
        self.proxy = factory.proxy
        self.reactor = factory.reactor
        self.addr = addr
        self.state = HEAD
        self.buf = b""
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.shim: Shim | None = None
        self.channel: Any = None
        self.hub_body: BodyFramer | None = None
        self.client_close_after = False
        self.secure = False
        self.handshake_done = False
        self.client_ip = b""
        self._paused = False
        self._in_process = False
        self.deadline: float | None = None
        self._memo: _Memo | None = None
        self._pending_memo: _Memo | None = None

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

    @property
    def draining(self) -> bool:
        return bool(self.site.draining)

    @property
    def busy(self) -> bool:
        return self.state != HEAD or bool(self.buf)

    def client_write(self, data: bytes) -> None:
        if self.transport is not None:
            write_now(self.transport, data)

    def close(self) -> None:
        if self.state != CLOSED and self.transport is not None:
            self.state = CLOSED
            self.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.state = CLOSED
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self, force: bool = False) -> None:
        """Resume if we paused; with ``force`` also if someone else (a consumer) did."""
        if (self._paused or force) and self.transport is not None and self.state != CLOSED:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _arm(self, seconds: float) -> None:
        self.deadline = self.reactor.seconds() + seconds

    def _disarm(self) -> None:
        self.deadline = None

    def _timed_out(self) -> None:
        if self.state == HEAD:
            if self.buf:
                self.client_write(pages.error(408, "The request took too long to arrive.", ctx=self.factory.plain,
                                              close=True))
            self.close()

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

    def _refuse(self, status: int, message: str, req: RequestHead | None = None) -> None:
        self.client_write(pages.error(status, message, ctx=self.factory.plain, close=True))
        self._log(req, status, 0, time.perf_counter(), "proxy" if req is not None else "bad-request")
        self.close()

    # the hub's own requests ---------------------------------------------------------------

    def _hub(self, req: RequestHead, head: bytes) -> None:
        if self.channel is None:
            self.channel = self.site.buildProtocol(self.addr)
            self.channel.embedded_in = self
            self.shim = Shim(self)
            self.shim.protocol = self.channel
            self.channel.makeConnection(self.shim)
            self.channel.setTimeout(None)  # the front door times connections out
        assert self.shim is not None
        self.state = HUB
        self.shim.attach()
        self.hub_body = BodyFramer(req.length or 0, req.chunked)
        self.channel.dataReceived(head + b"\r\n\r\n")
        if self._upgraded():
            return
        if self.state == HUB:
            data, self.buf = self.buf, b""
            self._hub_input(data)

    def _hub_input(self, data: bytes) -> None:
        body = self.hub_body
        if body is None or body.done:
            self.buf += data
            self.pause_reading()
            return
        try:
            n = body.feed(data)
        except HttpError as e:
            self._refuse(e.status, e.message)
            return
        if n:
            self.channel.dataReceived(data[:n])
            if self._upgraded():
                return
        if n < len(data):
            self.buf += data[n:]
            self.pause_reading()

    def _upgraded(self) -> bool:
        """Did the Site hand the connection to another protocol (a WebSocket)?"""
        if self.shim is not None and self.shim.protocol is not self.channel and self.state != CLOSED:
            self.state = RAW
            self._disarm()
            # The Site's channel and its last request (the upgrade, never finished) are done
            # with: told now that their connection is gone, and let go (several KB per idle
            # WebSocket otherwise).
            channel, self.channel, self.hub_body = self.channel, None, None
            channel.connectionLost(protocol.connectionDone)
            # No deadline or exchange from now on: the sweeper need not visit it (with
            # 10 000 idle WebSockets it walked them all four times a second).
            self.factory.connections.discard(self)
            rest, self.buf = self.buf, b""
            if rest:
                self.shim.protocol.dataReceived(rest)
            self.resume_reading()
            return True
        return False

    def hub_request_done(self) -> None:
        """The Site finished a response (called by the embedded channel)."""
        if self.state != HUB:
            return
        assert self.shim is not None
        self.shim.detach()
        self.hub_body = None
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        if self.draining and not self.buf:
            self.close()  # shutting down: an idle connection is not kept (the site waits for it)
            return
        if not self._in_process:
            self._process()
            if self.state == HEAD:
                self.resume_reading()

    # proxied requests ---------------------------------------------------------------------

    def _proxy(self, req: RequestHead, head: bytes, route: Route) -> None:
        proxy = self.proxy
        assert proxy is not None
        self.state = PROXY
        self._disarm()
        cookies = [v for k, v in req.headers if k == b"cookie"]
        cookie = b"; ".join(cookies) if cookies else None
        authorization = req.get(b"authorization")
        secure = proxy.browser_secure(req, self.secure)
        started = time.perf_counter()
        decision = proxy.access.cached(cookie, authorization, route.project_id, secure)
        if decision is not None:
            self._pending_memo = _Memo(head, req, route, cookie, authorization, secure, decision)
            self._authorized(req, route, decision, started)
            return
        self.pause_reading()
        d = defer.ensureDeferred(proxy.access.authorize(cookie, authorization, route.project_id, secure))
        d.addCallback(lambda dec: self._authorized(req, route, dec, started))
        d.addErrback(lambda f: self._internal_error(req, f, started))

    def _internal_error(self, req: RequestHead, f: Failure, started: float) -> None:
        log.failure("proxy authorization failed", f)
        if self.state == PROXY:
            self._respond(req, 500, "Something went wrong on our side. It has been logged.", started, close=True)

    def _authorized(self, req: RequestHead, route: Route, decision: Decision, started: float) -> None:
        if self.state != PROXY or self.transport is None:
            return
        if decision.status:
            extra = [b'www-authenticate: Bearer realm="cocalc"'] if decision.status == 401 else None
            self._respond(req, decision.status, decision.message, started, close=bool(req.length or req.chunked),
                          extra=extra, ctx=pages.refused(self.factory.plain, req.target, decision))
            return
        proxy = self.proxy
        assert proxy is not None
        manager = proxy.manager
        caller = decision.caller
        if req.upgrade == b"websocket" and proxy.cross_site_upgrade(req, self.secure, caller.via) is not None:
            self._respond(req, 403, "A WebSocket into a project with your sign-in cookie is only accepted from "
                          "this site's own pages.", started, ctx=pages.member(self.factory.plain, route, decision))
            return
        target = manager.local_target(route.project_id)
        if target is None:
            self._not_running(req, route, decision, started)
            return
        raw_port, token = target
        if route.kind == "raw":
            # Verified like any port: the request carries the project's secret token, and a
            # dead project's port may have been taken by someone else's server.
            backend = Target(route.project_id, "127.0.0.1", raw_port)
        else:
            assert route.port is not None
            port = route.port
            if port in proxy.hub_ports():
                self._respond(req, 403, "That port belongs to the hub, not to the project.", started,
                              ctx=pages.member(self.factory.plain, route, decision))
                return
            project_id = route.project_id

            def read() -> defer.Deferred[Ports]:
                return defer.ensureDeferred(manager.port_targets(project_id))

            host = proxy.access.ports_cached(project_id, port, read)
            if host is None:
                self.pause_reading()
                d = proxy.access.read_ports(project_id, read)
                d.addCallback(lambda ports: self._owned(req, route, decision, started, port, token, ports))
                d.addErrback(lambda f: self._internal_error(req, f, started))
                return
            refusal = port_refusal(host)
            if refusal is not None:
                self._respond(req, 403, refusal, started, ctx=pages.member(self.factory.plain, route, decision))
                return
            backend = Target(project_id, host, port)
        self._forward(req, route, decision, started, backend, token)
        if caller.account_id is not None:
            manager.touch(route.project_id, caller.account_id)

    def _owned(self, req: RequestHead, route: Route, decision: Decision, started: float, port: int, token: str,
               ports: Ports) -> None:
        if self.state != PROXY or self.transport is None:
            return
        refusal = port_refusal(ports.get(port, NOT_LISTENING))
        if refusal is not None:
            self._respond(req, 403, refusal, started, ctx=pages.member(self.factory.plain, route, decision))
            return
        self._forward(req, route, decision, started, Target(route.project_id, ports[port], port), token)

    def _forward(self, req: RequestHead, route: Route, decision: Decision, started: float, backend: Target,
                 token: str) -> None:
        proxy = self.proxy
        assert proxy is not None
        websocket = req.upgrade == b"websocket" and req.method == b"GET"
        lines = proxy.request_headers(req.headers, cookie=decision.cookie, client_ip=self.client_ip,
                                      secure=self.secure, prefix=route.prefix,
                                      upgrade=b"websocket" if websocket else None,
                                      token=token.encode() if route.kind == "raw" else None, chunked=req.chunked)
        target = route.upstream_path + proxy.clean_query(req.query)
        head = req.method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
        memo = self._pending_memo
        if memo is not None and memo.req is req and not websocket and not req.length and not req.chunked:
            memo.upstream = head
            memo.backend = backend
            memo.target = (backend.port, token) if route.kind == "raw" else proxy.manager.local_target(route.project_id)
        else:
            self._pending_memo = None
        self._start_exchange(req, head, route, backend, started, websocket, decision)

    def _replay(self, memo: _Memo) -> bool:
        """The same request head as the previous one on this connection, with the same
        authorization still fresh: send the same upstream head without re-parsing anything."""
        proxy = self.proxy
        if proxy is None or memo.upstream is None or memo.backend is None:
            return False
        route = memo.route
        if proxy.access.cached(memo.cookie, memo.authorization, route.project_id, memo.secure) is not memo.decision:
            return False
        target = proxy.manager.local_target(route.project_id)
        if route.kind == "raw":
            if target != memo.target:
                return False
        elif target is None or target != memo.target or \
                proxy.access.port_fresh(route.project_id, memo.backend.port) != memo.backend.host:
            return False
        self.state = PROXY
        self._disarm()
        self._start_exchange(memo.req, memo.upstream, route, memo.backend, time.perf_counter(), False, memo.decision)
        caller = memo.decision.caller
        if caller.account_id is not None:
            proxy.manager.touch(route.project_id, caller.account_id)
        return True

    def _start_exchange(self, req: RequestHead, head: bytes, route: Route, backend: Target, started: float,
                        websocket: bool, decision: Decision) -> None:
        exchange = Exchange(self, req, head, backend, route.prefix if route.kind == "server" else None,
                            upgrade=websocket)
        exchange.started = started
        exchange.route, exchange.decision = route, decision  # for an error page's advice
        self.exchange = exchange
        exchange.proxy.exchange_started(self, exchange)
        exchange.start()
        if self.buf and not exchange.finished:
            data, self.buf = self.buf, b""
            rest = exchange.client_data(data)
            if rest:
                self.buf = rest
        if not self.buf or exchange.body.done:
            if self.state == PROXY and not self.buf:
                self.resume_reading()

    def _not_running(self, req: RequestHead, route: Route, decision: Decision, started: float) -> None:
        proxy = self.proxy
        assert proxy is not None
        token = None
        if decision.caller.via == "remember_me" and proxy.csrf_token is not None:
            # The start form posts back with this session's CSRF token.
            cookie = self._session_cookie(req)
            token = proxy.csrf_token(cookie) if cookie else None
        body = pages.not_running(ctx=pages.member(self.factory.plain, route, decision), csrf_token=token,
                                 api_path=f"{proxy.base.decode()}/api/v2/projects/start",
                                 next_url=req.target.decode("latin-1"))
        self.client_write(body)
        self._log(req, 503, len(body), started, "proxy")
        self._after_response(req)

    def _session_cookie(self, req: RequestHead) -> str | None:
        from cocalc_hub.auth.cookies import parse_cookie_header

        assert self.proxy is not None
        cookies = parse_cookie_header(b"; ".join(v for k, v in req.headers if k == b"cookie"))
        cookies = self.proxy.names.effective(cookies, self.proxy.browser_secure(req, self.secure))
        return cookies.get(self.proxy.names.remember_me)

    def _respond(self, req: RequestHead, status: int, message: str, started: float, *, close: bool = False,
                 extra: list[bytes] | None = None, ctx: pages.Context | None = None) -> None:
        body = pages.error(status, message, ctx=ctx or self.factory.plain, close=close or not req.keep_alive,
                           extra=extra)
        self.client_write(body)
        self._log(req, status, len(body), started, "proxy")
        if close:
            self.close()
        else:
            self._after_response(req)

    def _after_response(self, req: RequestHead) -> None:
        self.exchange = None
        if not req.keep_alive or self.draining or req.length or req.chunked:
            # (an unread request body makes the connection unusable)
            self.close()
            return
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        self._process()

    # relay callbacks ------------------------------------------------------------------------

    def respond_error(self, exchange: Exchange, status: int, message: str, *, close: bool) -> None:
        self.exchange = None
        body = pages.error(status, message, ctx=pages.member(self.factory.plain, exchange.route, exchange.decision),
                           close=True)
        self.client_write(body)
        self._log(exchange.req, status, len(body), exchange.started, "proxy")
        self.close()

    def exchange_finished(self, exchange: Exchange) -> None:
        self.exchange = None
        self._log(exchange.req, exchange.status, exchange.sent, exchange.started, "proxy")
        if self.client_close_after or self.state == CLOSED or (self.draining and not self.buf):
            self.close()
            return
        self.state = HEAD
        self._arm(IDLE_TIMEOUT)
        self._process()

    def exchange_aborted(self, exchange: Exchange, why: str) -> None:
        self.exchange = None
        log.info("proxied request aborted: {why}", why=why)
        self._log(exchange.req, exchange.status or 502, exchange.sent, exchange.started, "proxy")
        self.abort()

    def start_tunnel(self, exchange: Exchange, conn: BackendConnection, head: bytes, rest: bytes) -> None:
        assert self.proxy is not None
        self.exchange = None
        self.state = TUNNEL
        self.proxy.tunnels += 1
        self.client_write(head + rest)
        self._log(exchange.req, 101, 0, exchange.started, "proxy-ws")
        self.tunnel = Tunnel(self, conn, exchange, rest)
        rest, self.buf = self.buf, b""
        if rest:
            self.tunnel.client_data(rest)
        self.resume_reading()

    def close_after_tunnel(self, clean: bool) -> None:
        if clean:
            self.close()
        else:
            self.abort()

    # logging ----------------------------------------------------------------------------------

    def _log(self, req: RequestHead | None, status: int, size: int, started: float, route: str) -> None:
        method = req.method.decode("latin-1") if req is not None else "-"
        uri = req.target if req is not None else b"-"
        self.site.log_access(route=route, method=method, uri=uri, code=status, size=size,
                             seconds=time.perf_counter() - started, client=self.client_ip.decode("latin-1"))
