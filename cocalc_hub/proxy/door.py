"""What every room of the front door shares: one connection's state, its writes, flow
control, deadline and access log.

The front door (:mod:`.frontdoor`) is one protocol instance per connection, assembled from
rooms that each do one thing: reading request heads and choosing where each goes
(:mod:`.frontdoor`), the hub's own requests (:mod:`.door_site`), a project's requests
authorised and routed (:mod:`.door_project`), and the front door's end of a relayed
exchange or tunnel (:mod:`.door_relay`). The rooms are base classes of one class, not
objects of their own: a request costs no extra allocation or hop for being split this way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet import protocol

from cocalc_hub.proxy import pages
from cocalc_hub.proxy.backend import write_now
from cocalc_hub.proxy.http1 import BodyFramer, RequestHead

if TYPE_CHECKING:
    from cocalc_hub.proxy.core import Proxy
    from cocalc_hub.proxy.door_project import Memo
    from cocalc_hub.proxy.frontdoor import FrontDoorFactory
    from cocalc_hub.proxy.relay import Exchange, Tunnel
    from cocalc_hub.proxy.shim import Shim

HEAD, HUB, PROXY, TUNNEL, RAW, CLOSED = range(6)
"""What a connection is doing: reading a request head, feeding one to the Site, relaying one
to a project, tunnelling a project's WebSocket, handed to the Site's WebSocket for good, closed."""
IDLE_TIMEOUT = 120.0
HEAD_TIMEOUT = 30.0


class Door(protocol.Protocol):
    """One connection's state and the small operations every room uses."""

    def __init__(self, factory: FrontDoorFactory, addr: Any) -> None:
        self.factory = factory
        self.site = factory.site
        self.proxy: Proxy | None = factory.proxy
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
        self._memo: Memo | None = None
        self._pending_memo: Memo | None = None

    def _process(self) -> None:
        """Read the request heads buffered (the front door's own: :class:`.FrontDoor`)."""
        raise NotImplementedError

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
        """The connection's deadline passed (told by :meth:`.FrontDoorFactory.sweep`)."""
        if self.state == HEAD:
            if self.buf:
                self.client_write(pages.error(408, "The request took too long to arrive.", ctx=self.factory.plain,
                                              close=True))
            self.close()

    def _refuse(self, status: int, message: str, req: RequestHead | None = None) -> None:
        self.client_write(pages.error(status, message, ctx=self.factory.plain, close=True))
        self._log(req, status, 0, time.perf_counter(), "proxy" if req is not None else "bad-request")
        self.close()

    def _log(self, req: RequestHead | None, status: int, size: int, started: float, route: str) -> None:
        method = req.method.decode("latin-1") if req is not None else "-"
        uri = req.target if req is not None else b"-"
        self.site.log_access(route=route, method=method, uri=uri, code=status, size=size,
                             seconds=time.perf_counter() - started, client=self.client_ip.decode("latin-1"))
