"""The proxy's shared parts: configuration, access, backend pool, header rewriting, logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service

from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.projects.manager import ProjectManager
from cocalc_hub.proxy import headers
from cocalc_hub.proxy.access import ProxyAccess
from cocalc_hub.proxy.backend import BackendPool
from cocalc_hub.proxy.http1 import Headers
from cocalc_hub.proxy.parse import Route, parse_route


class Proxy:
    def __init__(self, *, reactor: Any, base_path: str, access: ProxyAccess, manager: ProjectManager,
                 names: CookieNames, hub_secret: str | None, trust_proxy: bool, timeout: float,
                 hub_ports: Callable[[], set[int]], csrf_token: Callable[[str], str] | None = None) -> None:
        self.reactor = reactor
        self.base = b"" if base_path == "/" else base_path.encode("ascii")
        self.base_path = base_path
        self.access = access
        self.manager = manager
        self.names = names
        self.hub_secret = hub_secret.encode() if hub_secret else None
        self.trust_proxy = trust_proxy
        self.timeout = timeout
        self.hub_ports = hub_ports
        self.csrf_token = csrf_token
        self.pool = BackendPool(reactor)
        self.tunnels = 0
        self.front_doors: list[set[Any]] = []
        """Each front door factory's open connections (cocalc_hub.proxy.guard looks in them)."""
        self.guard: Any = None
        """The ChannelGuard (cocalc_hub.proxy.guard), told of each exchange that starts."""

    def exchange_started(self, front: Any, exchange: Any) -> None:
        if self.guard is not None:
            self.guard.started(front, exchange)

    def route(self, path: bytes) -> Route | None:
        """Raises BadRoute for malformed project URLs."""
        return parse_route(path, self.base)

    def request_headers(self, hdrs: Headers, *, cookie: bytes | None, client_ip: bytes, secure: bool,
                        prefix: bytes, upgrade: bytes | None, token: bytes | None, chunked: bool) -> list[bytes]:
        lines = headers.request_headers(
            [(k, v) for k, v in hdrs if k != b"cookie"], reserved=self.names.is_reserved, hub_secret=self.hub_secret,
            trust_proxy=self.trust_proxy, client_ip=client_ip, proto=b"https" if secure else b"http", prefix=prefix,
            upgrade=upgrade, token=token)
        if cookie:
            lines.append(b"cookie: " + cookie)
        if chunked:
            lines.append(b"transfer-encoding: chunked")
        return lines

    def response_headers(self, hdrs: Headers, port: int, prefix: bytes | None,
                         keep: frozenset[bytes] = frozenset()) -> list[bytes]:
        return headers.response_headers(hdrs, reserved=self.names.is_reserved, backend_port=port,
                                        public_prefix=prefix, keep=keep)

    def close(self) -> None:
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
