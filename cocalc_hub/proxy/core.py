"""The proxy's shared parts: configuration, access, backend pool, header rewriting, logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.projects.manager import ProjectManager
from cocalc_hub.proxy import headers
from cocalc_hub.proxy.access import ProxyAccess
from cocalc_hub.proxy.backend import BackendConnection, BackendPool, Target
from cocalc_hub.proxy.credentials import CredentialFinder
from cocalc_hub.proxy.http1 import Headers, RequestHead
from cocalc_hub.proxy.parse import Route, parse_route
from cocalc_hub.reactors import IReactorTimeTCP

log = Logger()

ForeignOrigin = Callable[[bytes | None, bytes | None, bool], str | None]
COOKIE_VIAS = frozenset({"remember_me", "api_key"})
"""Credentials a browser sends on its own, from any site's page (cookies)."""


class Proxy:
    def __init__(self, *, reactor: IReactorTimeTCP, base_path: str, access: ProxyAccess, manager: ProjectManager,
                 names: CookieNames, hub_secret: str | None, trust_proxy: bool, timeout: float,
                 hub_ports: Callable[[], set[int]], csrf_token: Callable[[str], str] | None = None,
                 system_secret: str | None = None, foreign_origin: ForeignOrigin | None = None) -> None:
        self.reactor = reactor
        self.base = b"" if base_path == "/" else base_path.encode("ascii")
        self.base_path = base_path
        self.access = access
        self.manager = manager
        self.names = names
        self.hub_secret = hub_secret.encode() if hub_secret else None
        self.credentials = CredentialFinder([hub_secret, system_secret])
        self.trust_proxy = trust_proxy
        self.timeout = timeout
        self.hub_ports = hub_ports
        self.csrf_token = csrf_token
        self.foreign_origin = foreign_origin
        """(Origin header, Host the browser used, HTTPS?) → the Origin if it is another
        site's and not allowed (cocalc_hub.web.origins.OriginPolicy), else None."""
        self.pool = BackendPool(reactor, verify=self.verify)
        self.tunnels = 0
        self.front_doors: list[set[Any]] = []
        """Each front door factory's open connections (cocalc_hub.proxy.guard looks in them)."""
        self.guard: Any = None
        """The ChannelGuard (cocalc_hub.proxy.guard), told of each exchange that starts."""

    def exchange_started(self, front: Any, exchange: Any) -> None:
        if self.guard is not None:
            self.guard.started(front, exchange)

    def verify(self, target: Target, conn: BackendConnection) -> defer.Deferred[str | None]:
        """Did a new backend connection reach the project's own socket? (None: yes)."""
        transport: Any = conn.transport
        here = transport.getHost() if transport is not None else None
        if here is None:
            return defer.succeed("the connection is gone")

        def judged(why: str | None) -> str | None:
            if why is not None:
                log.warn("proxy refused a connection to {host} port {port} for project {project_id}: {why}",
                         host=target.host, port=target.port, project_id=target.project_id, why=why)
            return why

        d = defer.ensureDeferred(self.manager.verify_connection(target.project_id, (target.host, target.port),
                                                                (here.host, here.port)))
        return d.addCallback(judged)

    def route(self, path: bytes) -> Route | None:
        """Raises BadRoute for malformed project URLs."""
        return parse_route(path, self.base)

    def request_headers(self, hdrs: Headers, *, cookie: bytes | None, client_ip: bytes, secure: bool,
                        prefix: bytes, upgrade: bytes | None, token: bytes | None, chunked: bool) -> list[bytes]:
        lines = headers.request_headers(
            [(k, v) for k, v in hdrs if k != b"cookie"], reserved=self.names.is_reserved, hub_secret=self.credentials,
            trust_proxy=self.trust_proxy, client_ip=client_ip, proto=b"https" if secure else b"http", prefix=prefix,
            upgrade=upgrade, token=token)
        if cookie:
            lines.append(b"cookie: " + cookie)
        if chunked:
            lines.append(b"transfer-encoding: chunked")
        return lines

    def response_headers(self, hdrs: Headers, port: int, prefix: bytes | None,
                         keep: frozenset[bytes] = frozenset(), own_host: bytes | None = None,
                         secure: bool = False, status: int = 302) -> list[bytes]:
        """Raises headers.OffSite for a redirect to another site."""
        return headers.response_headers(hdrs, reserved=self.names.is_reserved, backend_port=port,
                                        public_prefix=prefix, keep=keep, own_host=own_host, secure=secure,
                                        status=status)

    def clean_query(self, query: bytes) -> bytes:
        """The query string without parameters that carry a hub credential."""
        return self.credentials.clean_query(query)

    def browser_host(self, req: RequestHead) -> bytes | None:
        """The host the browser asked for (X-Forwarded-Host only from a trusted proxy)."""
        if self.trust_proxy:
            forwarded = req.get(b"x-forwarded-host")
            if forwarded:
                return forwarded.split(b",")[0].strip()
        return req.get(b"host")

    def browser_secure(self, req: RequestHead, transport_secure: bool) -> bool:
        """Did the browser use HTTPS (TLS here, or X-Forwarded-Proto from a trusted proxy)?"""
        if transport_secure:
            return True
        if self.trust_proxy:
            proto = req.get(b"x-forwarded-proto")
            return proto is not None and proto.split(b",")[0].strip().lower() == b"https"
        return False

    def cross_site_upgrade(self, req: RequestHead, transport_secure: bool, via: str) -> str | None:
        """The other site's Origin of a WebSocket upgrade authenticated by a cookie the
        browser sends whatever page opens it (session or ``api_key``), else None."""
        if self.foreign_origin is None or via not in COOKIE_VIAS:
            return None
        origin = self.foreign_origin(req.get(b"origin"), self.browser_host(req),
                                     self.browser_secure(req, transport_secure))
        if origin is not None:
            log.info("proxy: refused a cookie-authenticated WebSocket into a project from origin {origin!r}",
                     origin=origin[:200])
        return origin

    def close(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        self.pool.close_all()


class ProxyService(service.Service):
    """Closes pooled backend connections when the hub stops."""

    name = "proxy"

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def stopService(self) -> Any:
        service.Service.stopService(self)
        self.proxy.close()
        return None
