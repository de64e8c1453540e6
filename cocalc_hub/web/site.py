"""The hub's HTTP site: one router for every URL, access log, metrics, graceful drain.

Routing is done once, on the raw path, so no part of the hub sees a path that
Twisted's per-segment traversal has already decoded. Each part plugs in with
:meth:`Router.mount` (a first path segment under the base path), :meth:`Router.match`
(a predicate on that segment, e.g. project UUIDs) or :meth:`Router.add_root`
(host-root paths such as the health checks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.util import Redirect

from cocalc_hub.logs import redact
from cocalc_hub.reactors import IReactorListen
from cocalc_hub.web.errors import error_page
from cocalc_hub.web.metrics import HubMetrics
from cocalc_hub.web.request import SERVER_HEADER, HubRequest, peer_host, printable
from cocalc_hub.web.tls import ReloadableTLS, TlsConfigError, server_endpoint

log = Logger()
access_log = Logger(namespace="cocalc_hub.access")


@dataclass(frozen=True)
class Mount:
    resource: IResource
    route: str
    json_errors: bool = False


class NotFound(Resource):
    """A 404 that does not echo the URL (whatever the method)."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return error_page(request, 404, "There is nothing here.")


_NOT_FOUND = Mount(NotFound(), "notfound")


class Router:
    """Maps raw request paths to resources; see the module docstring."""

    def __init__(self, base_path: str) -> None:
        self.base = b"" if base_path == "/" else base_path.encode("ascii")
        self._root: dict[bytes, Mount] = {}
        self._mounts: dict[bytes, Mount] = {}
        self._matchers: list[tuple[Callable[[bytes], bool], Mount]] = []
        self._index: Mount | None = None

    def add_root(self, path: bytes, resource: IResource, route: str) -> None:
        """An exact path at the host root, outside the base path (health checks)."""
        self._root[path] = Mount(resource, route)

    def mount(self, segment: str, resource: IResource, route: str, *, json_errors: bool = False) -> None:
        """Everything under ``BASE_PATH/<segment>``."""
        self._mounts[segment.encode("ascii")] = Mount(resource, route, json_errors)

    def match(self, predicate: Callable[[bytes], bool], resource: IResource, route: str) -> None:
        """Everything whose first segment satisfies ``predicate`` (tried after mounts)."""
        self._matchers.append((predicate, Mount(resource, route)))

    def set_index(self, resource: IResource, route: str = "index") -> None:
        """``BASE_PATH/`` itself."""
        self._index = Mount(resource, route)

    def resolve(self, path: bytes) -> tuple[Mount, bytes, bytes]:
        """(mount, path below the base, path below the mount) for a raw request path."""
        root = self._root.get(path)
        if root is not None:
            return root, path, b""
        if self.base:
            if path == self.base:
                return Mount(Redirect(self.base + b"/"), "redirect"), b"", b""
            if not path.startswith(self.base + b"/"):
                return _NOT_FOUND, path, b""
            rel = path[len(self.base):]
        else:
            if not path.startswith(b"/"):
                return _NOT_FOUND, path, b""
            rel = path
        if rel == b"/":
            return (self._index or _NOT_FOUND), rel, b""
        first, sep, rest = rel[1:].partition(b"/")
        mount = self._mounts.get(first)
        if mount is None:
            for predicate, candidate in self._matchers:
                if predicate(first):
                    mount = candidate
                    break
        if mount is None:
            return _NOT_FOUND, rel, b""
        return mount, rel, sep + rest

    def route(self, request: HubRequest) -> IResource:
        mount, rel, rest = self.resolve(request.path)
        request.route = mount.route
        request.rel_path = rel
        request.mount_rest = rest
        request.json_errors = mount.json_errors
        request.base_prefix = self.base
        request.prepath = []
        request.postpath = []
        request.setHeader(b"server", SERVER_HEADER)
        return mount.resource


class HubHTTPChannel(http.HTTPChannel):
    """The Site's HTTP/1.1 channel; it lives inside a front-door connection, which it tells
    when a response is complete so the connection can carry the next request."""

    site: HubSite
    embedded_in: Any = None

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.embedded_in is not None and self.transport is not None and not self.requests:
            self.embedded_in.hub_request_done()


class HubSite(server.Site):
    """Site with the hub's router, access log, metrics and connection tracking."""

    requestFactory = HubRequest
    # HTTP/1.1 only: we do not advertise h2, so Twisted's h2-switching wrapper is not needed.
    protocol = HubHTTPChannel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 120

    access_level = LogLevel.info
    """Access lines below this level are not even formatted (set from --log-level)."""

    def __init__(self, router: Router, metrics: HubMetrics, reactor: IReactorTime, *,
                 trust_proxy: bool = False) -> None:
        super().__init__(NotFound(), reactor=reactor, timeout=self.timeout)
        self.router = router
        self.metrics = metrics
        self.trust_proxy = trust_proxy
        self.draining = False
        self._connections: set[Any] = set()
        self._all_closed: list[Deferred[None]] = []
        metrics.open_connections.set_function(lambda: float(len(self._connections)))

    def getResourceFor(self, request: IRequest) -> IResource:
        hub_request = cast(HubRequest, request)
        hub_request.site = self
        hub_request.sitepath = []
        hub_request.trust_proxy = self.trust_proxy
        return self.router.route(hub_request)

    # connection tracking (front-door connections) -----------------------------

    def connection_opened(self, conn: Any) -> None:
        self._connections.add(conn)

    def connection_closed(self, conn: Any) -> None:
        self._connections.discard(conn)
        if not self._connections:
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    def all_closed(self) -> Deferred[None]:
        """Fires once no front-door connection is open (cancel it to stop waiting)."""
        if not self._connections:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._all_closed.remove(d))
        self._all_closed.append(d)
        return d

    def open_connections(self) -> list[Any]:
        return list(self._connections)

    def close_idle(self) -> int:
        """Close every connection with no request in flight; return how many remain busy."""
        busy = 0
        for conn in self.open_connections():
            if conn.busy:
                busy += 1
            else:
                conn.close()
        return busy

    def abort_all(self) -> None:
        for conn in self.open_connections():
            conn.abort()

    # logging ---------------------------------------------------------------

    def log(self, request: http.Request) -> None:
        hub_request = cast(HubRequest, request)
        self.log_access(route=hub_request.route, method=request.method.decode("latin-1"), uri=request.uri,
                        code=int(request.code), size=request.sentLength,
                        seconds=time.perf_counter() - hub_request.started, client=peer_host(request))

    def log_access(self, *, route: str, method: str, uri: bytes, code: int, size: int, seconds: float,
                   client: str) -> None:
        """One access-log line and the request metrics (Site requests and proxied ones)."""
        self.metrics.observe_request(route, method, code, seconds)
        level = LogLevel.debug if route == "health" else LogLevel.info
        if level < self.access_level:
            return
        access_log.emit(
            level,
            "{client} {method} {uri} {code} {size}B {ms:.1f}ms",
            client=client,
            method=printable(method, 16),
            uri=printable(redact(uri.decode("latin-1"))),
            code=code,
            size=size,
            ms=seconds * 1000,
            route=route,
        )


class ListenError(Exception):
    """The listener could not be started; str() names the endpoint and the reason."""


class WebService(service.Service):
    """Owns the listening port; stops by draining connections within a grace period."""

    name = "web"

    def __init__(self, reactor: IReactorListen, site: HubSite, description: str, *, grace: float,
                 public_url: Callable[[IListeningPort], str], on_drain: Callable[[], None] | None = None,
                 factory: Any = None) -> None:
        self.reactor = reactor
        self.on_drain = on_drain
        self.site = site
        self.factory = factory if factory is not None else site
        self.description = description
        self.grace = grace
        self.public_url = public_url
        self.port: IListeningPort | None = None
        self.tls: ReloadableTLS | None = None
        """The listener's certificate, for ``ssl:`` endpoints (reloaded on SIGHUP)."""

    def privilegedStartService(self) -> None:
        if self.port is None:
            self.listen()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.listen()
        service.Service.startService(self)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return self.stop()

    def listen(self) -> None:
        """Start listening now, raising ListenError if that fails synchronously."""
        try:
            endpoint, self.tls = server_endpoint(self.reactor, self.description)
        except TlsConfigError as e:
            raise ListenError(str(e)) from None
        results: list[Any] = []
        d = endpoint.listen(self.factory)
        d.addBoth(results.append)
        if not results:
            # Endpoints that listen asynchronously: log a late failure.
            d.addErrback(lambda f: log.failure("cannot listen on {where}", f, where=self.description))
            d.addCallback(self._listening)
            return
        result = results[0]
        if isinstance(result, Failure):
            # Twisted's unix Port starts the factory before bind() and does not stop it when
            # bind fails (e.g. a path past the 107-byte AF_UNIX limit): undo that start, or
            # the front door's sweeper runs on in a process that is about to exit.
            if self.factory.numPorts:
                self.factory.doStop()
            raise ListenError(f"cannot listen on {self.description}: {result.getErrorMessage()}")
        self._listening(result)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("cocalc-hub listening on {addr} ({url})", addr=describe_address(port), url=self.public_url(port))
        if self.tls is not None:
            self.tls.describe()

    def stop(self) -> Deferred[None]:
        """Stop accepting, let busy connections finish for up to ``grace`` seconds, then abort.

        Draining, a connection closes as soon as its request is done; idle ones close at once."""
        self.site.draining = True
        if self.on_drain is not None:
            self.on_drain()
        d: Deferred[None] = Deferred()
        stopped = self.port.stopListening() if self.port is not None else None
        self.port = None
        deadline = self.reactor.seconds() + self.grace

        def drain() -> None:
            self.site.close_idle()
            closed = self.site.all_closed()
            timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), closed.cancel)

            def done(_: Any) -> None:
                if timer.active():
                    timer.cancel()
                busy = sum(1 for conn in self.site.open_connections() if conn.busy)
                if busy:
                    log.warn("shutdown grace period over; aborting {n} busy connection(s)", n=busy)
                self.site.abort_all()
                d.callback(None)

            closed.addBoth(done)

        if isinstance(stopped, Deferred):
            stopped.addBoth(lambda _: drain())
        else:
            drain()
        return d


def describe_address(port: IListeningPort) -> str:
    host = port.getHost()
    name = getattr(host, "name", None)
    if name is not None:
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    h = getattr(host, "host", "?")
    if getattr(host, "type", "") == "TCP" and ":" in h:
        h = f"[{h}]"
    return f"{h}:{getattr(host, 'port', '?')}"


def listening_port_number(port: IListeningPort) -> int | None:
    return getattr(port.getHost(), "port", None)

