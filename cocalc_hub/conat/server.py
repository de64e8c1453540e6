"""The conat server: the broker on the hub's WebSocket, signed in through the hub's auth.

:class:`ConatServer` puts the pieces together: the Engine.IO resource mounted at
``BASE_PATH/conat/``, the broker, "who is calling" for the upgrade request's cookies,
and the watchers that close or trim connections whose credentials or project
memberships change while they are open (upstream keeps such connections as they were).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cocalc_hub.auth.caller import CONAT, Authenticator, Caller
from cocalc_hub.auth.cookies import HOST_PREFIX, CookieNames, parse_cookie_header
from cocalc_hub.conat.broker import Broker, BrokerConfig
from cocalc_hub.conat.connection import Connection, Subscription
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.local import LocalConnection
from cocalc_hub.conat.permissions import HUB_USER, SUB, SYSTEM_USER, Permissions, User, account_user, project_user
from cocalc_hub.conat.transport.engine import EngineFactory, EngineOptions, EngineResource
from cocalc_hub.conat.transport.sio import SocketIOServer
from cocalc_hub.conat.transport.socket import Ack, Handshake, ServerSocket
from cocalc_hub.web.origins import OriginPolicy
from cocalc_hub.web.request import client_ip, is_secure, printable

log = Logger()

IDENTIFY_TRIES = 3
"""Identifications repeated when revocations arrive meanwhile, at most."""
EXPIRY_MARGIN = 0.01
"""Seconds after a credential's expiry that its connections are re-checked."""


class SocketConnection(Connection):
    """A broker connection over a Socket.IO socket."""

    def __init__(self, broker: Broker, socket: ServerSocket) -> None:
        super().__init__(broker, socket.sid)
        self.socket = socket
        self.handshake = socket.handshake
        self.stats["address"] = socket.handshake.client_ip

    def deliver(self, sub: Subscription, msg: Any) -> None:
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

    def socket_connected(self, socket: ServerSocket) -> None:
        conn = SocketConnection(self.broker, socket)
        socket.state = conn
        self.broker.attach(conn, socket.handshake)

    def socket_event(self, socket: ServerSocket, name: str, args: list[Any], ack: Ack | None) -> None:
        socket.state.incoming(name, args, ack)

    def socket_disconnected(self, socket: ServerSocket, reason: str) -> None:
        conn = socket.state
        if conn is not None:
            self.broker.detach(conn)


def user_of(caller: Caller) -> User | None:
    if caller.error is not None:
        return None
    if caller.kind == "account" and caller.account_id:
        return account_user(caller.account_id, caller.is_admin, caller)
    if caller.kind == "project" and caller.project_id:
        return project_user(caller.project_id, caller)
    if caller.kind == "system":
        return SYSTEM_USER
    if caller.kind == "hub":
        return HUB_USER
    return None


class ConatAuth:
    """Upstream's getUser: credentials only from the upgrade request's cookies."""

    def __init__(self, auth: Authenticator, names: CookieNames) -> None:
        self.auth = auth
        self.names = names

    def _names(self) -> str:
        n = self.names
        return f"'{n.hub_password}', '{n.remember_me}', {n.api_key}, '{n.project_secret}' or '{n.project_id}'"

    async def __call__(self, handshake: Handshake) -> User | ConatError:
        if b"cookie" not in handshake.headers:
            return ConatError(f"no auth cookie set; set one of {self._names()}")
        cookies = self.names.effective(handshake.cookies, handshake.secure)
        for _ in range(IDENTIFY_TRIES):
            generation = self.auth.generation
            caller = await self.auth.identify(cookies, None, CONAT)
            if generation == self.auth.generation:
                break  # else a revocation arrived meanwhile: what was read may predate it
        else:
            # revocations keep coming: the last answer stands, re-checked once signed in
            caller = replace(caller, stale=True)
        if caller.error is not None:
            return ConatError(caller.error, 429 if caller.code == 429 else None)
        user = user_of(caller)
        if user is None:
            n = self.names
            return ConatError(f"must set one of the following cookies: '{n.remember_me}', '{n.api_key}', "
                              f"'{n.project_secret}' and '{n.project_id}', or '{n.hub_password}'")
        return user


def handshake_from(request: IRequest, trust_proxy: bool) -> Handshake:
    headers: dict[bytes, bytes] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers[name.lower()] = b", ".join(values)
    cookies = parse_cookie_header(b"; ".join(request.requestHeaders.getRawHeaders(b"cookie") or []))
    return Handshake(cookies=cookies, headers=headers, client_ip=client_ip(request, trust_proxy),  # type: ignore[arg-type]
                     secure=is_secure(request, trust_proxy), path=request.path.decode("latin-1"))  # type: ignore[arg-type]


class OriginCheck:
    """Refuses a WebSocket upgrade carrying a browser session cookie from another site's page
    (see :mod:`cocalc_hub.web.origins`)."""

    def __init__(self, names: CookieNames, policy: OriginPolicy) -> None:
        self.names = names
        self.policy = policy

    def __call__(self, request: IRequest) -> str | None:
        cookies = parse_cookie_header(b"; ".join(request.requestHeaders.getRawHeaders(b"cookie") or []))
        name = self.names.remember_me
        if not (cookies.get(name) or cookies.get(HOST_PREFIX + name)):
            return None
        origin = self.policy.foreign(request)  # type: ignore[arg-type]
        if origin is None:
            return None
        log.info("conat: refused a session-cookie WebSocket from origin {origin}", origin=printable(origin, 200))
        return "a session cookie is only accepted from this site's own pages (see --conat-allowed-origins)"


class ConatServer:
    """Broker + transport + auth wiring for one hub process."""

    def __init__(self, reactor: Any, *, auth: Authenticator | None, names: CookieNames | None,
                 store: Any = None, config: BrokerConfig | None = None, engine: EngineOptions | None = None,
                 trust_proxy: bool = False, membership_ttl: float = 5.0, origins: OriginPolicy | None = None) -> None:
        self.reactor = reactor
        self.auth = auth
        self.names = names
        self.store = store
        self.trust_proxy = trust_proxy
        authenticate = ConatAuth(auth, names) if auth is not None and names is not None else None
        self.authenticate = authenticate
        self.permissions = Permissions(self._is_member if store is not None else None, reactor.seconds,
                                       ttl=membership_ttl)
        self.broker = Broker(reactor, authenticate=authenticate, permissions=self.permissions, config=config)
        self.engine = EngineFactory(SocketIOServer(BrokerHandler(self.broker)), reactor, engine)
        policy = origins if origins is not None else OriginPolicy(trust_proxy=trust_proxy)
        self.origin_check = OriginCheck(names, policy) if names is not None else None
        self.resource = EngineResource(self.engine, lambda request: handshake_from(request, self.trust_proxy),
                                       admit=self.origin_check)
        if auth is not None:
            auth.revocations.append(self.credentials_changed)
            self.broker.on_signed_in = lambda conn: self._watch_user(conn, None)

    async def _is_member(self, project_id: str, account_id: str) -> bool:
        from cocalc_hub.db.store import MEMBER_GROUPS

        exists, group = await self.store.project_group(project_id, account_id)
        return bool(exists and group in MEMBER_GROUPS)

    # changes while connections are open -------------------------------------------------------

    def _watch_user(self, conn: Connection, previous: User | None) -> None:
        """A connection signed in (previous: None) or was re-checked. Its credential may
        expire by itself (a session, an API key with ``expire``): re-check it then. The
        timer is the connection's, cancelled when it closes; a re-check that finds the same
        expiry adds none (one at an expiry since replaced just re-checks once more). A
        caller identified amid revocations (``stale``) is re-checked at once."""
        caller = conn.user.caller if conn.user is not None else None
        if self.auth is None or not isinstance(caller, Caller):
            return
        if caller.stale and not conn.closed:
            ensureDeferred(self._recheck(conn))
        before = previous.caller if previous is not None else None
        if isinstance(before, Caller) and before.expires == caller.expires:
            return
        left = caller.seconds_left(self.auth.now())
        if left is None:
            return

        def expired() -> None:
            if not conn.closed:
                ensureDeferred(self._recheck(conn))

        conn.timers.append(self.reactor.callLater(max(0.0, left) + EXPIRY_MARGIN, expired))

    def credentials_changed(self, kind: str, value: Any) -> None:
        """A session, key or account changed in this process: re-check affected connections."""

        def affected(conn: Connection) -> bool:
            caller = conn.user.caller if conn.user is not None else None
            if caller is None:
                return False
            if kind == "all":
                return True
            if kind == "session":
                return bool(caller.session_hash == value)
            if kind == "account":
                return bool(caller.account_id == value)
            if kind == "key":
                return bool(caller.api_key_id == value)
            return False

        for conn in self.broker.connections_of(affected):
            ensureDeferred(self._recheck(conn))

    async def _recheck(self, conn: Connection) -> None:
        if self.authenticate is None or conn.handshake is None:
            return
        result = await self.authenticate(conn.handshake)
        if conn.closed or conn.user is None:
            return
        if isinstance(result, ConatError):
            self.broker.revoke(conn, result)
        elif (result.kind, result.id) != (conn.user.kind, conn.user.id):
            self.broker.revoke(conn, ConatError("credentials changed"))
        else:
            previous = conn.user
            self.broker.replace_user(conn, result)
            self._watch_user(conn, previous)

    def project_changed(self, project_id: str) -> None:
        """Membership or existence of a project changed: drop what no longer holds."""
        self.permissions.forget_project(project_id)
        for conn in self.broker.connections_of(
                lambda c: c.user is not None and c.user.kind == "project" and c.user.id == project_id):
            ensureDeferred(self._recheck(conn))
        for conn, sub in self.broker.recheck_project(project_id):
            ensureDeferred(self._recheck_subscription(conn, sub))

    async def _recheck_subscription(self, conn: Connection, sub: Subscription) -> None:
        verdict = conn.allowed(sub.pattern, SUB)
        ok = verdict if isinstance(verdict, bool) else await verdict
        if not ok and not conn.closed:
            user = conn.user
            self.broker.drop_subscription(
                conn, sub, f"permission denied subscribing to '{sub.pattern}' from {user.json if user else 'null'}")

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

    def __init__(self, server: ConatServer) -> None:
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

    def __init__(self, server: ConatServer) -> None:
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
