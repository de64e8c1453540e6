"""One conat broker node: the broker behind an Engine.IO/Socket.IO WebSocket resource, and
upstream's ``sys`` services on it.

:class:`ConatNode` puts the generic pieces together: the broker, its permissions, the
Engine.IO resource (mounted by the application at ``BASE_PATH/conat/``) whose sockets become
broker connections. Who a client is, whether an account is a project's member and which
WebSocket upgrades to refuse are the application's hooks (``authenticate``, ``is_member``,
``handshake``, ``admit``); the hub's are in :mod:`cocalc_hub.bus.gateway`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from cocalc_hub.conat.broker import Authenticate, Broker, BrokerConfig
from cocalc_hub.conat.connection import BrokerSubscription, Connection
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.local import LocalConnection
from cocalc_hub.conat.permissions import SYSTEM_USER, Membership, Permissions
from cocalc_hub.conat.transport.engine import EngineFactory, EngineOptions, EngineResource
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import Ack, Handshake, NamespaceSocket


class SocketConnection(Connection):
    """A broker connection over a Socket.IO socket."""

    def __init__(self, broker: Broker, socket: NamespaceSocket) -> None:
        super().__init__(broker, socket.sid)
        self.socket = socket
        self.handshake = socket.handshake
        self.stats["address"] = socket.handshake.client_ip

    def deliver(self, sub: BrokerSubscription, msg: Any) -> None:
        self.socket.emit_raw(sub.prefix + msg.body(), msg.raw, sub, sub.order)

    def emit(self, event: str, payload: Any, callback: Any = None) -> None:
        self.socket.emit(event, payload, callback=callback)

    def disconnect(self) -> None:
        self.socket.disconnect()

    def pause_input(self) -> None:
        self.socket.pause_input()

    def resume_input(self) -> None:
        self.socket.resume_input()


class BrokerHandler:
    """Socket.IO handler: sockets become broker connections."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def socket_connected(self, socket: NamespaceSocket) -> None:
        conn = SocketConnection(self.broker, socket)
        socket.state = conn
        self.broker.attach(conn, socket.handshake)

    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None:
        socket.state.incoming(name, args, ack)

    def socket_disconnected(self, socket: NamespaceSocket, reason: str) -> None:
        conn = socket.state
        if conn is not None:
            self.broker.detach(conn)


class ConatNode:
    """Broker + permissions + transport for one process; the application supplies the hooks."""

    def __init__(self, reactor: IReactorTime, *, handshake: Callable[[IRequest], Handshake],
                 authenticate: Authenticate | None = None, is_member: Membership | None = None,
                 admit: Callable[[IRequest], str | None] | None = None, config: BrokerConfig | None = None,
                 engine: EngineOptions | None = None, membership_ttl: float = 5.0) -> None:
        self.reactor = reactor
        self.authenticate = authenticate
        self.permissions = Permissions(is_member, reactor.seconds, ttl=membership_ttl)
        self.broker = Broker(reactor, authenticate=authenticate, permissions=self.permissions, config=config)
        self.engine = EngineFactory(SocketIOServer(BrokerHandler(self.broker)), reactor, engine)
        self.resource = EngineResource(self.engine, handshake, admit=admit)

    def close_connections(self) -> None:
        self.engine.close_all()

    def report(self, metrics: Any) -> None:
        """Conat's figures on the hub's /metrics."""
        b, e = self.broker, self.engine
        metrics.gauge("cocalc_hub_conat_websockets", "Conat WebSocket connections open", lambda: len(e.connections))
        metrics.gauge("cocalc_hub_conat_clients", "Conat clients signed in (counted against the limits)",
                      lambda: b.total)
        metrics.gauge("cocalc_hub_conat_subscriptions", "Conat subscriptions", lambda: b.subscriptions)
        metrics.gauge("cocalc_hub_conat_patterns", "Distinct subscription patterns", lambda: len(b.index))
        metrics.counter("cocalc_hub_conat_messages", "Published chunks routed", lambda: b.messages_routed)
        metrics.counter("cocalc_hub_conat_deliveries", "Chunks delivered to subscribers", lambda: b.deliveries)
        metrics.counter("cocalc_hub_conat_invalid_messages", "Published chunks refused as malformed",
                        lambda: b.invalid_messages)
        metrics.counter("cocalc_hub_conat_read_barrier_holds",
                        "Packets held behind a subscribe ack or reply until the client's pong",
                        lambda: e.turns.holds)
        metrics.counter("cocalc_hub_conat_protocol_errors", "Connections closed for malformed frames",
                        lambda: e.protocol_errors)
        metrics.counter("cocalc_hub_conat_slow_consumers", "Connections dropped for not reading",
                        lambda: e.slow_consumers)


class SysService:
    """Upstream's ``sys`` services on the broker (admin tools use them): ``stats``, ``usage``
    and ``disconnect`` on ``sys.conat.<cluster>`` (every node answers) and on
    ``sys.conat.<cluster>.<id>`` (this node). Only admins and hubs may reach ``sys.``."""

    def __init__(self, server: ConatNode) -> None:
        self.server = server
        self.client: Any = None

    def start(self) -> None:
        from cocalc_hub.conat.client import Client
        from cocalc_hub.conat.local import LocalTransport

        broker = self.server.broker
        cluster = broker.config.cluster_name or "default"
        node = broker.config.server_id
        self.client = Client(self.server.reactor, LocalTransport(broker, SYSTEM_USER))
        # upstream's queue for the all-nodes service is literally "<clusterName>-<id>"
        self.client.service(f"sys.conat.{cluster}", lambda n, a, m: self.call(n, a, False),
                            queue=f"{broker.config.cluster_name}-{node}" if broker.config.cluster_name
                            else f"undefined-{node}")
        self.client.service(f"sys.conat.{cluster}.{node}", lambda n, a, m: self.call(n, a, True), queue="0")

    def call(self, name: str, args: list[Any], this_node: bool) -> Any:
        broker = self.server.broker
        if name == "stats":
            return broker.connection_stats()
        if name == "usage":
            return broker.usage()
        if name == "disconnect":
            ids = args[0] if args else []
            ids = [ids] if isinstance(ids, str) else ids
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ConatError("disconnect takes a socket id or a list of them", 400)
            return broker.disconnect_ids(ids)
        if name in ("join", "unjoin", "clusterTopology", "clusterAddresses"):
            if not this_node:
                raise ConatError("wrong service")
            if name == "clusterAddresses":
                return [broker.config.address]
            if name == "clusterTopology":
                return {}
            raise ConatError("this broker does not form clusters")
        raise ConatError(f"no such method: {name[:100]}", 404)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class ConatService(service.Service):
    """Runs the sys services and stops the broker's connections with the hub."""

    name = "conat"

    def __init__(self, server: ConatNode) -> None:
        self.server = server
        self.sys = SysService(server)

    def startService(self) -> None:
        service.Service.startService(self)
        self.sys.start()

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        broker = self.server.broker
        # in-process clients hear about it on a later reactor turn: stopped once they have
        told = [c.transport.gone for c in broker.connections.values() if isinstance(c, LocalConnection)]
        self.sys.stop()
        self.server.close_connections()
        broker.close_all()
        return gatherResults(told).addCallback(lambda _: None)
