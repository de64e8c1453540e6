"""Connections to projects' backends on loopback, kept alive and reused per project and address.

A new connection to a project's port is handed out only after ``verify`` confirmed that
the socket it reached is the project's own (see cocalc_hub.projects.sockets); pooled
connections are reused only for the same project, address and port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, protocol, tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.python.failure import Failure

from cocalc_hub.internals.twisted import idle as nothing_queued
from cocalc_hub.reactors import IReactorTimeTCP


def write_now(transport: Any, data: bytes) -> None:
    """Send at once when nothing is queued (saves the reactor a poll round and two epoll
    changes per write on the proxy's hot path); otherwise queue as usual.

    Twisted's transports always queue and send on the next writable event; for a proxy that
    writes one small head per request that doubles the cost of a write. The check uses the
    plain TCP transport's buffers (:func:`cocalc_hub.internals.twisted.idle`), so TLS and
    anything else fall back to ``write``.
    """
    if isinstance(transport, tcp.Connection) and nothing_queued(transport):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # let the normal path see and report the error
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


@dataclass(frozen=True)
class Target:
    project_id: str
    host: str
    """127.0.0.1 or ::1: where the project itself listens."""
    port: int
    verify: bool = True
    """Check each new connection's peer before anything is sent (every route does: even the
    raw server's port, checked at start, may have changed hands since)."""


class Refused(Exception):
    """A new connection reached a socket that is not the project's; it was closed unused."""


Verify = Callable[[Target, "BackendConnection"], defer.Deferred[str | None]]


class Handler(Protocol):
    """Whoever currently uses a backend connection."""

    def backend_data(self, data: bytes) -> None: ...

    def backend_lost(self, reason: Failure) -> None: ...


class BackendConnection(protocol.Protocol):
    def __init__(self, pool: BackendPool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.handler: Handler | None = None
        self.closed = False
        self.reused = 0
        self.idle_since = 0.0
        self.memo: Any = None
        """The last response head seen here and how it was rewritten (see relay.Exchange)."""

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.backend_data(data)
        else:
            # Bytes from an idle backend connection: it is not in a sane state.
            self.abort()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.pool.discard(self)
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.backend_lost(reason)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        write_now(self.transport, data)

    def abort(self) -> None:
        self.handler = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, pool: BackendPool, target: Target, ready: Callable[[BackendConnection], None],
                 failed: Callable[[Failure], None]) -> None:
        self.pool = pool
        self.target = target
        self.ready = ready
        self.failed = failed

    def buildProtocol(self, addr: Any) -> BackendConnection:
        conn = BackendConnection(self.pool, self.target)
        ready = self.ready
        self.reactor_call(lambda: ready(conn))
        return conn

    def reactor_call(self, fn: Callable[[], None]) -> None:
        self.pool.reactor.callLater(0, fn)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed(reason)


class BackendPool:
    """Idle keep-alive connections per target (never shared between requests)."""

    def __init__(self, reactor: IReactorTimeTCP, *, max_idle: int = 64, idle_timeout: float = 60.0,
                 connect_timeout: float = 5.0, verify: Verify | None = None) -> None:
        self.reactor = reactor
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.verify = verify
        self._idle: dict[Target, list[BackendConnection]] = {}
        self._all: set[BackendConnection] = set()

    def get(self, target: Target, ready: Callable[[BackendConnection], None], failed: Callable[[Failure], None],
            *, fresh: bool = False) -> None:
        """Call ``ready`` with a connection (reused if one is idle) or ``failed`` with why not
        (a Refused failure if the new connection reached a socket not the project's)."""
        if not fresh:
            idle = self._idle.get(target)
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    conn.reused += 1
                    ready(conn)
                    return
        self.reactor.connectTCP(target.host, target.port, _Factory(self, target, self._track(ready, failed), failed),
                                timeout=self.connect_timeout)

    def _track(self, ready: Callable[[BackendConnection], None],
               failed: Callable[[Failure], None]) -> Callable[[BackendConnection], None]:
        def deliver(conn: BackendConnection) -> None:
            if conn.closed:
                failed(Failure(ConnectionDone("the backend closed the connection at once")))
                return
            ready(conn)

        def verified(why: str | None, conn: BackendConnection) -> None:
            if why is None:
                deliver(conn)
                return
            conn.abort()
            failed(Failure(Refused(why)))

        def tracked(conn: BackendConnection) -> None:
            if conn.closed:
                failed(Failure(ConnectionDone("the backend closed the connection at once")))
                return
            self._all.add(conn)
            if conn.target.verify and self.verify is not None:
                d = self.verify(conn.target, conn)
                d.addErrback(lambda f: f"its owner could not be checked ({f.getErrorMessage()})")
                d.addCallback(verified, conn)
                return
            deliver(conn)

        return tracked

    def put(self, conn: BackendConnection) -> None:
        """Return a connection whose exchange ended cleanly."""
        conn.handler = None
        if conn.closed:
            return
        idle = self._idle.setdefault(conn.target, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self.reactor.seconds()
        idle.append(conn)

    def expire(self) -> None:
        """Close connections idle longer than ``idle_timeout`` (called periodically)."""
        cutoff = self.reactor.seconds() - self.idle_timeout
        for target, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since > cutoff and not c.closed]
            for conn in idle:
                if conn not in keep and conn.transport is not None and not conn.closed:
                    conn.transport.loseConnection()
            if keep:
                self._idle[target] = keep
            else:
                del self._idle[target]

    def discard(self, conn: BackendConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.target)
        if idle and conn in idle:
            idle.remove(conn)

    def close_all(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    def count(self) -> int:
        return len(self._all)
