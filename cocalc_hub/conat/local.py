"""In-process conat clients: the hub's own services on the broker, without a socket.

A :class:`LocalTransport` is a broker connection whose events are handed over as Python
objects instead of frames. Semantics are the socket's: the same pipeline, permission
checks (for non-hub users), queue groups and counts; everything the broker sends is
delivered on a later reactor turn, in order, never re-entrantly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.connection import BrokerSubscription, Connection, Routed
from cocalc_hub.conat.permissions import HUB_USER, User
from cocalc_hub.conat.transport.client import DISCONNECTED, Owner

_ids = itertools.count(1)
log = Logger()


class LocalConnection(Connection):
    def __init__(self, broker: Broker, transport: LocalTransport) -> None:
        super().__init__(broker, f"local-{next(_ids)}")
        self.transport = transport
        self.stats["address"] = "in-process"

    def deliver(self, sub: BrokerSubscription, msg: Routed) -> None:
        self.transport.push(sub.pattern, [{"subject": msg.subject, "data": msg.data()}], None)

    def emit(self, event: str, payload: Any, callback: Callable[[list[Any]], None] | None = None) -> None:
        ack = None
        if callback is not None:
            def ack(*args: Any) -> None:
                callback(list(args))
        self.transport.push(event, [payload], ack)

    def disconnect(self) -> None:
        self.transport.server_disconnect()


class LocalTransport:
    """A client transport straight into a broker in this process."""

    def __init__(self, broker: Broker, user: User = HUB_USER) -> None:
        self.broker = broker
        self.reactor = broker.reactor
        self.user = user
        self.owner: Owner | None = None
        self.conn: LocalConnection | None = None
        self.connected = False
        self.closed = False
        self._outbox: list[tuple[str, list[Any], Any]] = []
        self._scheduled = False
        self._acks: set[Callable[..., None]] = set()
        """Acknowledgements the client still waits for: told DISCONNECTED at close."""
        self.gone: Deferred[None] = Deferred()
        """Fires once closed and the client has been told (its acks and its disconnection)."""

    def start(self, owner: Owner) -> None:
        self.owner = owner
        conn = self.conn = LocalConnection(self.broker, self)
        self.connected = True
        self.reactor.callLater(0, owner.transport_connected)
        self.broker.attach_signed_in(conn, self.user)

    # broker -> client --------------------------------------------------------------------

    def push(self, name: str, args: list[Any], ack: Any) -> None:
        self._outbox.append((name, args, ack))
        if not self._scheduled:
            self._scheduled = True
            self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        items, self._outbox = self._outbox, []
        owner = self.owner
        if owner is None:
            return
        for name, args, ack in items:
            if self.closed:
                return
            if name == "\0ack":
                if args[0] in self._acks:
                    self._acks.discard(args[0])
                    args[0](args[1])
                continue
            owner.transport_event(name, args, ack)

    def server_disconnect(self) -> None:
        if self.closed:
            return
        self._teardown("io server disconnect")

    # client -> broker --------------------------------------------------------------------

    def emit(self, event: str, args: list[Any], ack: Callable[..., None] | None = None) -> None:
        conn = self.conn
        if conn is None or self.closed:
            if ack is not None:
                self.reactor.callLater(0, ack, DISCONNECTED)
            return
        wrapped = None
        if ack is not None:
            self._acks.add(ack)

            def wrapped(*values: Any) -> None:
                self.push("\0ack", [ack, list(values)], None)
        conn.incoming(event, args, wrapped)

    def close(self) -> None:
        if not self.closed:
            self._teardown("io client disconnect")

    def _teardown(self, reason: str) -> None:
        self.closed = True
        self.connected = False
        if self.conn is not None:
            self.broker.detach(self.conn)
        self.conn = None
        acks, self._acks = self._acks, set()
        self.reactor.callLater(0, self._tell, reason, acks)

    def _tell(self, reason: str, acks: set[Callable[..., None]]) -> None:
        """(a later reactor turn) The client hears that it is disconnected."""
        for ack in acks:
            _safely(ack, DISCONNECTED)
        if self.owner is not None:
            _safely(self.owner.transport_disconnected, reason, False)
        self.gone.callback(None)


def _safely(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.failure("conat: an in-process client failed to take its disconnection")
