"""The one authorization function for proxied HTTP requests and WebSocket upgrades.

Allowed: the project's owner and collaborators (remember_me session, ``api_key`` cookie,
or Bearer/Basic API key of theirs), a key scoped to this very project, and admins.
Everyone else gets 401 (no or bad credentials) or 403 (signed in, not a member), and
the backend sees nothing. Decisions are cached for half a second and dropped at once
when access is revoked (by this process, another hub or the admin CLI: see
cocalc_hub.db.revocations); :meth:`ProxyAccess.recheck` decides again, uncached, for the
connections that stay open (cocalc_hub.proxy.guard).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from cocalc_hub.auth.caller import HTTP, Authenticator, Caller
from cocalc_hub.auth.cookies import CookieNames, parse_cookie_header
from cocalc_hub.cache import LRU
from cocalc_hub.db.store import MEMBER_GROUPS, Store
from cocalc_hub.projects.sockets import ELSEWHERE
from cocalc_hub.proxy.headers import strip_cookies

DECISION_TTL = 0.5
PORTS_TTL = 1.0
PORTS_STALE = 10.0
"""A port seen listening recently is still believed while a fresh reading is taken."""
MAX_ENTRIES = 20000
DECIDE_TRIES = 3
"""Decisions made again when revocations arrive meanwhile, at most (then: not cached)."""
NOT_LISTENING = "-"
Ports = dict[int, str]
"""A project's listening ports -> the address the proxy connects to (or ELSEWHERE)."""


T = TypeVar("T")
_Key = tuple[bytes | None, bytes | None, str, bool]
"""(Cookie header, Authorization header, project id, whether the browser used HTTPS)."""


def _follow(source: defer.Deferred[T]) -> defer.Deferred[T]:
    """A new Deferred with ``source``'s result, leaving ``source`` usable by others."""
    waiter: defer.Deferred[T] = defer.Deferred()

    def ok(value: T) -> T:
        waiter.callback(value)
        return value

    def bad(failure: Any) -> None:
        waiter.errback(failure)

    source.addCallbacks(ok, bad)
    return waiter


@dataclass(frozen=True)
class Decision:
    status: int
    """0 when allowed, else the HTTP status to answer."""
    message: str
    caller: Caller
    cookie: bytes | None
    """The request's Cookie header with the hub's cookies removed (None: send none)."""
    key: _Key | None = None
    """What it was decided for (see _Key)."""
    generation: int = -1
    """ProxyAccess's generation when it was decided (see :meth:`ProxyAccess.current`)."""


class ProxyAccess:
    def __init__(self, auth: Authenticator, store: Store, names: CookieNames, clock: IReactorTime, *,
                 ttl: float = DECISION_TTL) -> None:
        self.auth = auth
        self.store = store
        self.names = names
        self.clock = clock
        self.ttl = ttl
        # (deadline, decision); looked up with peek: an entry ages from when it was decided.
        self._decisions: LRU[_Key, tuple[float, Decision]] = LRU(MAX_ENTRIES)
        self._pending: dict[_Key, defer.Deferred[Decision]] = {}
        self._ports: dict[str, tuple[float, Ports]] = {}
        self._reading: dict[str, defer.Deferred[Ports]] = {}
        self._generation = 0
        """Bumped when decisions are dropped: one being made before that is not cached."""

    def cached(self, cookie: bytes | None, authorization: bytes | None, project_id: str,
               secure: bool = False) -> Decision | None:
        """The decision if it is fresh (the proxy's fast path never awaits)."""
        hit = self._decisions.peek((cookie, authorization, project_id, secure))
        if hit is not None and hit[0] > self.clock.seconds():
            expires = hit[1].caller.expires
            if expires is None or expires > self.auth.now():  # (not past the credential's expiry)
                return hit[1]
        return None

    async def authorize(self, cookie: bytes | None, authorization: bytes | None, project_id: str,
                        secure: bool = False) -> Decision:
        hit = self.cached(cookie, authorization, project_id, secure)
        if hit is not None:
            return hit
        key = (cookie, authorization, project_id, secure)
        pending = self._pending.get(key)
        if pending is None:
            # Concurrent requests with the same credentials share one decision.
            pending = defer.ensureDeferred(self._decide_and_cache(key))
            self._pending[key] = pending
            pending.addBoth(self._settled, key, pending)
        return await _follow(pending)

    def _settled(self, result: Any, key: _Key, pending: Any) -> Any:
        if self._pending.get(key) is pending:
            del self._pending[key]
        return result

    def current(self, decision: Decision) -> bool:
        """No revocation arrived since ``decision`` was made (one that waited, e.g. for the
        project's ports, may have been overtaken)."""
        if decision.generation == self._generation:
            return True
        hit = self._decisions.peek(decision.key) if decision.key is not None else None
        return hit is not None and hit[1] is decision  # (a revocation would have dropped it)

    async def recheck(self, decision: Decision) -> Decision:
        """Decide again what ``decision`` was decided for, ignoring (and refreshing) the cache."""
        assert decision.key is not None
        return await self._decide_and_cache(decision.key)

    async def _decide_and_cache(self, key: _Key) -> Decision:
        for _ in range(DECIDE_TRIES):
            generation = self._generation
            decision = replace(await self._decide(*key), key=key, generation=generation)
            if generation == self._generation:
                break
            # Access was revoked while deciding: what was read may predate it, decide again.
        else:
            # Revocations keep coming: answer with the last decision, uncached and marked as
            # made before the newest (the ChannelGuard re-checks a channel opened on it).
            return decision
        self._decisions.put(key, (self.clock.seconds() + self.ttl, decision))
        return decision

    async def _decide(self, cookie: bytes | None, authorization: bytes | None, project_id: str,
                      secure: bool) -> Decision:
        cookies = self.names.effective(parse_cookie_header(cookie), secure)
        caller = await self.auth.identify(cookies, authorization, HTTP)
        stripped = strip_cookies(cookie, self.names.is_reserved) if cookie else b""
        cookie_out = stripped or None
        if caller.error is not None:
            return Decision(401, "Your sign-in is not valid any more; please sign in again.", caller, cookie_out)
        if not caller.signed_in:
            return Decision(401, "Please sign in to use this project's servers.", caller, cookie_out)
        if caller.kind == "project":
            ok = caller.project_id == project_id
            return Decision(0 if ok else 403, "" if ok else "This key is for another project.", caller, cookie_out)
        if caller.is_hub:
            return Decision(0, "", caller, cookie_out)
        assert caller.account_id is not None
        exists, group = await self.store.project_group(project_id, caller.account_id)
        if exists and (group in MEMBER_GROUPS or caller.is_admin):
            return Decision(0, "", caller, cookie_out)
        if not exists and caller.is_admin:
            return Decision(404, "There is no such project.", caller, cookie_out)
        # Non-members get the same answer whether or not the project exists.
        return Decision(403, "Only the owner and collaborators of this project may use its servers.", caller,
                        cookie_out)

    def forget_project(self, project_id: str) -> None:
        self._generation += 1
        self._decisions.drop_if(lambda key, _: key[2] == project_id)
        for key in [k for k in self._pending if k[2] == project_id]:
            del self._pending[key]  # a request from now on must not join a decision begun before
        self._ports.pop(project_id, None)

    def forget_all(self) -> None:
        self._generation += 1
        self._decisions.clear()
        self._pending.clear()

    # port ownership -----------------------------------------------------------------------

    def ports_cached(self, project_id: str, port: int, read: Callable[[], defer.Deferred[Ports]]) -> str | None:
        """Where to connect for the port (or NOT_LISTENING / ELSEWHERE) without waiting when
        the answer is known, None if it must be read.

        A port seen listening less than PORTS_STALE ago counts while a fresh reading is
        taken in the background (the proxy's hot path never waits for the process table;
        every new backend connection is checked afterwards, see Proxy.verify).
        """
        hit = self._ports.get(project_id)
        if hit is None:
            return None
        taken, ports = hit
        age = self.clock.seconds() - taken
        if age < PORTS_TTL:
            return ports.get(port, NOT_LISTENING)
        host = ports.get(port)
        if host and age < PORTS_STALE:
            self.read_ports(project_id, read)
            return host
        return None

    def port_fresh(self, project_id: str, port: int) -> str | None:
        """The address to connect to, only if a reading younger than PORTS_TTL gave one."""
        hit = self._ports.get(project_id)
        if hit is None or self.clock.seconds() - hit[0] >= PORTS_TTL:
            return None
        return hit[1].get(port) or None

    def read_ports(self, project_id: str, read: Callable[[], defer.Deferred[Ports]]) -> defer.Deferred[Ports]:
        """A fresh reading (one at a time per project); callers get their own Deferred."""
        reading = self._reading.get(project_id)
        if reading is None:
            reading = read()
            self._reading[project_id] = reading

            def store(ports: Ports) -> Ports:
                self._reading.pop(project_id, None)
                self._ports[project_id] = (self.clock.seconds(), ports)
                return ports

            def failed(f: Any) -> Any:
                self._reading.pop(project_id, None)
                return f

            reading.addCallbacks(store, failed)
        return _follow(reading)


def port_refusal(host: str) -> str | None:
    """The message for a port the proxy must not connect to (None: ``host`` is an address)."""
    if host == NOT_LISTENING:
        return "The project does not listen on that port."
    if host == ELSEWHERE:
        return ("The project listens on that port, but not on 127.0.0.1, ::1 or all interfaces, or not alone: "
                "the proxy only connects to the project's own server there.")
    return None
