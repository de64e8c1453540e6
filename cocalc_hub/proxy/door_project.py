"""The front door's room for project URLs (``BASE_PATH/<uuid>/port|server|raw/…``): the
request is authorised (from the cache when it can be), its backend chosen and checked
(the project runs here, the port is the project's own), and its head rewritten for the
backend; :mod:`.door_relay` then starts the exchange. The same head again on a connection,
with the same authorization still fresh, is replayed from a memo without re-parsing."""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.proxy import pages
from cocalc_hub.proxy.access import NOT_LISTENING, Decision, Ports, port_refusal
from cocalc_hub.proxy.backend import Target
from cocalc_hub.proxy.door import PROXY
from cocalc_hub.proxy.door_relay import RelaySide
from cocalc_hub.proxy.http1 import RequestHead
from cocalc_hub.proxy.parse import Route

log = Logger(namespace="cocalc_hub.proxy.frontdoor")
"""(The namespace the front door's log lines had before it was split into rooms.)"""


class Memo:
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


class ProjectSide(RelaySide):
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
            self._pending_memo = Memo(head, req, route, cookie, authorization, secure, decision)
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

    def _replay(self, memo: Memo) -> bool:
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
