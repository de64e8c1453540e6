"""The hub's door into its conat broker: clients signed in through the hub's auth.

:class:`HubConatNode` is a :class:`~cocalc_hub.conat.node.ConatNode` whose hooks are the
hub's: "who is calling" for the upgrade request's cookies (:class:`ConatAuth`), project
membership from the database, the Origin policy of :mod:`cocalc_hub.web.origins`
(:class:`OriginCheck`), and the watchers that close or trim connections whose credentials or
project memberships change while they are open (upstream keeps such connections as they were).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from cocalc_hub.auth.caller import CONAT, Authenticator, Caller
from cocalc_hub.auth.cookies import HOST_PREFIX, CookieNames, parse_cookie_header
from cocalc_hub.conat.broker import BrokerConfig
from cocalc_hub.conat.connection import BrokerSubscription, Connection
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.node import ConatNode
from cocalc_hub.conat.permissions import HUB_USER, SUB, SYSTEM_USER, User, account_user, project_user
from cocalc_hub.conat.transport.engine import EngineOptions
from cocalc_hub.conat.transport.socket import Handshake
from cocalc_hub.web.origins import OriginPolicy
from cocalc_hub.web.request import client_ip, is_secure, printable

log = Logger()

IDENTIFY_TRIES = 3
"""Identifications repeated when revocations arrive meanwhile, at most."""
EXPIRY_MARGIN = 0.01
"""Seconds after a credential's expiry that its connections are re-checked."""


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


class HubConatNode(ConatNode):
    """The broker node of a hub process, signing clients in through the hub's authenticator."""

    def __init__(self, reactor: IReactorTime, *, auth: Authenticator | None, names: CookieNames | None,
                 store: Any = None, config: BrokerConfig | None = None, engine: EngineOptions | None = None,
                 trust_proxy: bool = False, membership_ttl: float = 5.0, origins: OriginPolicy | None = None) -> None:
        self.auth = auth
        self.names = names
        self.store = store
        self.trust_proxy = trust_proxy
        authenticate = ConatAuth(auth, names) if auth is not None and names is not None else None
        policy = origins if origins is not None else OriginPolicy(trust_proxy=trust_proxy)
        self.origin_check = OriginCheck(names, policy) if names is not None else None
        super().__init__(reactor, handshake=lambda request: handshake_from(request, self.trust_proxy),
                         authenticate=authenticate, is_member=self._is_member if store is not None else None,
                         admit=self.origin_check, config=config, engine=engine, membership_ttl=membership_ttl)
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

    async def _recheck_subscription(self, conn: Connection, sub: BrokerSubscription) -> None:
        verdict = conn.allowed(sub.pattern, SUB)
        ok = verdict if isinstance(verdict, bool) else await verdict
        if not ok and not conn.closed:
            user = conn.user
            self.broker.drop_subscription(
                conn, sub, f"permission denied subscribing to '{sub.pattern}' from {user.json if user else 'null'}")
