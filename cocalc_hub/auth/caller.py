"""Who is calling: one function that turns credentials into a :class:`Caller`.

The JSON API, the project proxy and the conat broker all call :meth:`Authenticator.identify`;
they differ only in which schemes they accept and in what order (``HTTP`` and ``CONAT``).
A scheme that finds its credential decides: a wrong credential is an error, never a
silent fall-through to a weaker one. Results are cached for at most ``ttl`` seconds and
dropped at once when this process signs a session out or changes an account.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

from cocalc_hub.auth import apikeys, project_tokens
from cocalc_hub.auth.cookies import CookieNames, remember_me_hash
from cocalc_hub.auth.passwords import LegacyHashError
from cocalc_hub.cache import LRU
from cocalc_hub.db.store import MEMBER_GROUPS, Store, is_uuid, normalize_uuid, utcnow

log = Logger()

# Scheme names, in the order they are tried.
HTTP = ("bearer", "remember_me", "api_key_cookie")
CONAT = ("sys", "hub_password", "api_key_cookie", "project_secret", "remember_me")


@dataclass(frozen=True)
class Caller:
    kind: str = "anonymous"
    """anonymous, account, project, hub or system."""
    account_id: str | None = None
    project_id: str | None = None
    is_admin: bool = False
    via: str = "none"
    session_hash: str | None = None
    api_key_id: int | None = None
    error: str | None = None
    """Set when a credential was presented and rejected."""
    code: int | None = None
    expires: datetime | None = None
    """When the credential (session, API key) stops working by itself (None: never).
    Whoever keeps a connection open on it re-checks it then (proxy guard, conat server)."""
    stale: bool = False
    """Identified while revocations kept arriving (it may predate one): whoever keeps a
    connection open on it re-checks it once the connection is open."""

    def seconds_left(self, now: datetime) -> float | None:
        """Seconds from ``now`` until the credential expires (None: it does not)."""
        return None if self.expires is None else (self.expires - now).total_seconds()

    @property
    def signed_in(self) -> bool:
        return self.kind != "anonymous" and self.error is None

    @property
    def is_account(self) -> bool:
        return self.kind == "account" and self.error is None

    @property
    def is_hub(self) -> bool:
        return self.kind in ("hub", "system") and self.error is None

    def conat_user(self) -> dict[str, Any]:
        """The ``user`` object the conat ``info`` event carries."""
        if self.error is not None:
            out: dict[str, Any] = {"error": f"Error: {self.error}"}
            if self.code is not None:
                out["code"] = self.code
            return out
        if self.kind == "account":
            return {"account_id": self.account_id}
        if self.kind == "project":
            return {"project_id": self.project_id}
        if self.kind in ("hub", "system"):
            return {"hub_id": "system" if self.kind == "system" else "hub"}
        return {"error": "Error: not signed in"}


ANONYMOUS = Caller()


def _failed(message: str, via: str, code: int = 401) -> Caller:
    return Caller(kind="anonymous", via=via, error=message, code=code)


def parse_authorization(header: bytes | str | None) -> str | None:
    """The API key in ``Bearer <key>`` or ``Basic base64(<key>:<anything>)``."""
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.split(":", 1)[0] or None
    return None


class Authenticator:
    """Resolves credentials against the store, with short-lived caches."""

    def __init__(self, store: Store, names: CookieNames, *, ttl: float = 1.0,
                 clock: Callable[[], float] | None = None, now: Callable[[], datetime] = utcnow,
                 hub_password: str | None = None, system_password: str | None = None,
                 touch_interval: float = 60.0) -> None:
        import time

        self.store = store
        self.names = names
        self.ttl = ttl
        self.clock = clock or time.monotonic
        self.now = now
        self.hub_password = hub_password
        self.system_password = system_password
        self.touch_interval = touch_interval
        self._hashes: LRU[str, str] = LRU(20000)          # cookie value -> session hash (pure function)
        self._sessions: LRU[str, tuple[float, Caller]] = LRU(20000)   # session hash -> (deadline, caller)
        self._keys: LRU[str, tuple[float, Caller]] = LRU(20000)       # api key -> (deadline, caller)
        self._verified: LRU[str, str] = LRU(20000)        # api key -> stored hash it matched
        self._touched: LRU[int, float] = LRU(20000)
        self._generation = 0
        """Bumped when caches are dropped: an answer looked up before that is not cached."""
        self.listeners: list[Callable[[], None]] = []
        """Called whenever cached decisions are dropped (sign-out, password, ban…)."""
        self.revocations: list[Callable[[str, Any], None]] = []
        """Called with what changed: ("session", hash), ("account", account_id), ("key", key_id)
        or ("all", None); long-lived connections use it to re-check their callers."""

    # the entry points -------------------------------------------------------------

    async def identify(self, cookies: Mapping[str, str], authorization: bytes | str | None,
                       schemes: Sequence[str] = HTTP) -> Caller:
        """The caller these credentials prove, trying ``schemes`` in order."""
        n = self.names
        for scheme in schemes:
            if scheme == "sys" and n.sys in cookies:
                return self._password(cookies[n.sys], self.system_password, "system", "sys",
                                      "invalid system account password")
            if scheme == "hub_password" and cookies.get(n.hub_password):
                return self._password(cookies[n.hub_password], self.hub_password, "hub", "hub_password",
                                      "invalid hub password")
            if scheme == "bearer" and authorization:
                key = parse_authorization(authorization)
                if key is not None and self.hub_password and \
                        hmac.compare_digest(key.encode(), self.hub_password.encode()):
                    # The hub's own secret (SECRETS/conat-password): admin tools on this machine.
                    return Caller(kind="hub", via="hub_password", is_admin=True)
                if key is not None and key.startswith(("sk-", "sk_")):
                    return await self.api_key(key, via="bearer")
                # Not a hub credential (e.g. an app's own Basic auth behind the proxy): ignore it.
            if scheme == "api_key_cookie" and cookies.get(n.api_key):
                return await self.api_key(cookies[n.api_key], via="api_key")
            if scheme == "project_secret" and cookies.get(n.project_secret):
                return await self.project_secret(cookies.get(n.project_id), cookies[n.project_secret])
            if scheme == "remember_me" and cookies.get(n.remember_me):
                return await self.session(cookies[n.remember_me])
        return ANONYMOUS

    # schemes ----------------------------------------------------------------------

    def _password(self, presented: str, expected: str | None, kind: str, via: str, message: str) -> Caller:
        if expected and hmac.compare_digest(presented.encode(), expected.encode()):
            return Caller(kind=kind, via=via)
        return _failed(message, via)

    async def session(self, cookie_value: str) -> Caller:
        """A remember_me cookie → the signed-in account, or an error caller."""
        session_hash = self._hashes.get(cookie_value)
        if session_hash is None:
            try:
                session_hash = await threads.deferToThread(remember_me_hash, cookie_value)
            except LegacyHashError:
                return _failed("badly formatted remember_me cookie", "remember_me")
            self._hashes.put(cookie_value, session_hash)
        cached = self._sessions.get(session_hash)
        if cached is not None and cached[0] > self.clock() and self._unexpired(cached[1]):
            return cached[1]
        generation = self._generation
        caller = await self._resolve_session(session_hash)
        if generation == self._generation:
            self._sessions.put(session_hash, (self.clock() + self.ttl, caller))
        return caller

    def _unexpired(self, caller: Caller) -> bool:
        """A cached caller is not used past its credential's expiry."""
        return caller.expires is None or caller.expires > self.now()

    async def _resolve_session(self, session_hash: str) -> Caller:
        expired = _failed("remember me cookie expired", "remember_me")
        session = await self.store.get_session(session_hash)
        if session is None or session.expire <= self.now():
            return expired
        account = await self.store.get_account(session.account_id)
        if account is None or account.banned or account.deleted:
            return expired
        return Caller(kind="account", account_id=account.account_id, is_admin=account.is_admin,
                      via="remember_me", session_hash=session_hash, expires=session.expire)

    async def api_key(self, secret: str, *, via: str = "api_key") -> Caller:
        """An API key (header or cookie) → an account or project caller, or an error caller."""
        cached = self._keys.get(secret)
        if cached is not None and cached[0] > self.clock() and self._unexpired(cached[1]):
            # The same key may come as a header or as a cookie: say how it came this time.
            return cached[1] if cached[1].via == via else replace(cached[1], via=via)
        generation = self._generation
        caller = await self._resolve_key(secret, via)
        if generation == self._generation:
            self._keys.put(secret, (self.clock() + self.ttl, caller))
        return caller

    async def _resolve_key(self, secret: str, via: str) -> Caller:
        invalid = _failed("api key no longer valid", via)
        if not apikeys.looks_like_key(secret):
            return invalid
        legacy = await self.store.get_account_by_legacy_api_key(secret)
        if legacy is not None:
            if legacy.banned or legacy.deleted:
                return invalid
            return Caller(kind="account", account_id=legacy.account_id, is_admin=legacy.is_admin, via=via)
        key_id = apikeys.key_id(secret)
        if key_id is None:
            return invalid
        row = await self.store.get_api_key(key_id)
        if row is None or not row.hash:
            return invalid
        if self._verified.get(secret) != row.hash:
            if not await threads.deferToThread(apikeys.matches, row.hash, secret):
                return invalid
            self._verified.put(secret, row.hash)
        owner = await self.store.get_account(row.account_id)
        if owner is None or owner.banned or owner.deleted:
            return invalid
        if row.expire is not None and row.expire <= self.now():
            await self.store.delete_api_key(row.id)
            return invalid
        if row.project_id is not None:
            exists, group = await self.store.project_group(row.project_id, row.account_id)
            if not exists or group not in MEMBER_GROUPS:
                # Upstream: a project key whose creator left the project is deleted.
                await self.store.delete_api_key(row.id)
                return invalid
        await self._touch_key(row.id)
        if row.project_id is not None:
            return Caller(kind="project", project_id=row.project_id, via=via, api_key_id=row.id, expires=row.expire)
        return Caller(kind="account", account_id=owner.account_id, is_admin=owner.is_admin, via=via,
                      api_key_id=row.id, expires=row.expire)

    async def _touch_key(self, key_id: int) -> None:
        last = self._touched.get(key_id)
        now = self.clock()
        if last is None or now - last >= self.touch_interval:
            self._touched.put(key_id, now)
            try:
                await self.store.touch_api_key(key_id, self.now())
            except Exception:
                log.failure("could not record API key use")

    async def project_secret(self, project_id: str | None, token: str) -> Caller:
        """A project's own credential: its id plus the per-start secret token."""
        if not project_id:
            return _failed(f"must specify project_id in the cookie {self.names.project_id}", "project_secret")
        if not is_uuid(project_id):
            return _failed(f"no project {project_id[:64]}", "project_secret")
        project = await self.store.get_project(normalize_uuid(project_id))
        if project is None or project.deleted:
            return _failed(f"no project {normalize_uuid(project_id)}", "project_secret")
        if not project_tokens.verify(project.secret_token, token):
            return _failed("invalid secret token for project", "project_secret")
        return Caller(kind="project", project_id=project.project_id, via="project_secret")

    # invalidation -----------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Changes whenever cached credentials are dropped: a caller identified across a
        change may predate it (whoever keeps one for long should identify again)."""
        return self._generation

    def _changed(self, kind: str, value: Any) -> None:
        self._generation += 1
        for listener in list(self.listeners):
            listener()
        for watcher in list(self.revocations):
            try:
                watcher(kind, value)
            except Exception:
                log.failure("revocation watcher failed")

    def forget_session(self, session_hash: str) -> None:
        self._sessions.pop(session_hash)
        self._changed("session", session_hash)

    def forget_account(self, account_id: str) -> None:
        """Drop every cached decision about this account (sign-out all, password, ban, admin)."""
        self._sessions.drop_if(lambda _, v: v[1].account_id == account_id)
        self._keys.drop_if(lambda _, v: v[1].account_id == account_id)
        self._changed("account", account_id)

    def forget_key(self, key_id: int) -> None:
        self._keys.drop_if(lambda _, v: v[1].api_key_id == key_id)
        self._changed("key", key_id)

    def forget_project(self, project_id: str) -> None:
        """A project's members changed: its project-scoped keys are looked up again (one whose
        creator left is deleted then). Who uses them hears from the project's own listeners."""
        self._generation += 1
        self._keys.drop_if(lambda _, v: v[1].project_id == project_id)

    def forget_all(self) -> None:
        self._sessions.clear()
        self._keys.clear()
        self._changed("all", None)
