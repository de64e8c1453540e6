"""Open proxied channels lose access when their caller does.

A WebSocket tunnel or a response still streaming was authorised once, when it began.
:class:`ChannelGuard` hears every revocation this process learns of (its own API calls,
and through cocalc_hub.db.revocations those of other hub processes and the admin CLI),
re-runs the proxy's one authorization function (:meth:`ProxyAccess.recheck`) for each
open channel the change may concern, and closes those that no longer pass: a tunnel
with WebSocket close code 1008, then its backend side; an HTTP exchange by dropping the
connection. Idle keep-alive connections need nothing: their next request is authorised
afresh, the decision cache having been dropped with the revocation.

A credential that simply expires (a session, an API key with ``expire``) writes no
revocation: the guard keeps one timer, on the injected clock, at the earliest expiry of
the open channels' callers, and re-checks those whose credential has expired then.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cocalc_hub.proxy.access import Decision, ProxyAccess

log = Logger()

REASON = "access revoked"
EXPIRY_MARGIN = 0.01
"""Seconds after a credential's expiry that it is re-checked (so it has expired by then)."""

Match = Callable[[Decision], bool]


def credentials_match(kind: str, value: Any) -> Match:
    """Which decisions a change of kind session/account/key/all touches."""
    if kind == "session":
        return lambda d: d.caller.session_hash == value
    if kind == "account":
        return lambda d: d.caller.account_id == value
    if kind == "key":
        return lambda d: d.caller.api_key_id == value
    return lambda d: kind == "all"


class ChannelGuard:
    def __init__(self, access: ProxyAccess, front_doors: list[set[Any]], clock: IReactorTime) -> None:
        self.access = access
        self.front_doors = front_doors
        self.clock = clock
        """Where the expiry timer runs (the hub's reactor)."""
        self.closed = 0
        """Channels closed on revocation so far."""
        self._timer: IDelayedCall | None = None
        """When the next open channel's credential expires (see :meth:`_expired`)."""
        self._renewed: dict[Any, datetime | None] = {}
        """Decision key -> its credential's expiry found by a re-check (a renewed session)."""

    # events (an Authenticator.revocations watcher and a Projects listener) ------------------

    def credentials_changed(self, kind: str, value: Any) -> None:
        self._sweep(credentials_match(kind, value))

    def project_changed(self, project_id: str) -> None:
        self._sweep(lambda d: d.key is not None and d.key[2] == project_id)

    def started(self, front: Any, exchange: Any) -> None:
        """An exchange began: if a revocation came while it waited (for its decision or the
        project's ports) after the sweep had looked, it is re-checked now."""
        decision = exchange.decision
        if decision is None or decision.key is None:
            return
        if not self.access.current(decision):
            defer.ensureDeferred(self._recheck([(front, exchange)])).addErrback(
                lambda f: log.failure("proxy: re-checking access after a revocation failed", f))
        self._expect(self._expiry(decision))

    def stop(self) -> None:
        """The proxy stops: no more expiry checks."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # credentials that expire --------------------------------------------------------------------

    def _expiry(self, decision: Decision) -> datetime | None:
        if decision.key in self._renewed:
            return self._renewed[decision.key]
        return decision.caller.expires

    def _expect(self, when: datetime | None) -> None:
        """Make sure the expiry timer fires by ``when`` (plus the margin)."""
        if when is None:
            return
        clock = self.clock
        delay = max(0.0, (when - self.access.auth.now()).total_seconds()) + EXPIRY_MARGIN
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= clock.seconds() + delay:
                return
            timer.cancel()
        self._timer = clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        """Re-check the channels whose credential has expired; wait for the next expiry."""
        self._timer = None
        now = self.access.auth.now()
        due: dict[Any, list[tuple[Any, Any]]] = {}
        later: list[datetime] = []
        keys = set()
        for front, channel in self.open_channels():
            decision = channel.decision
            if decision is None or decision.key is None:
                continue
            keys.add(decision.key)
            when = self._expiry(decision)
            if when is not None and when <= now:
                due.setdefault(decision.key, []).append((front, channel))
            elif when is not None:
                later.append(when)
        for key in [k for k in self._renewed if k not in keys]:
            del self._renewed[key]
        for channels in due.values():
            defer.ensureDeferred(self._recheck(channels)).addErrback(
                lambda f: log.failure("proxy: re-checking an expired credential failed", f))
        if later:
            self._expect(min(later))

    # the work ----------------------------------------------------------------------------------

    def open_channels(self) -> list[tuple[Any, Any]]:
        """(front door, tunnel or exchange) for every proxied channel open now."""
        found = []
        for doors in self.front_doors:
            for front in doors:
                tunnel = front.tunnel
                if tunnel is not None and not tunnel.closed:
                    found.append((front, tunnel))
                    continue
                exchange = front.exchange
                if exchange is not None and not exchange.finished:
                    found.append((front, exchange))
        return found

    def _sweep(self, match: Match) -> None:
        groups: dict[Any, list[tuple[Any, Any]]] = {}
        for front, channel in self.open_channels():
            decision = channel.decision
            if decision is not None and decision.key is not None and match(decision):
                groups.setdefault(decision.key, []).append((front, channel))
        for channels in groups.values():
            defer.ensureDeferred(self._recheck(channels)).addErrback(
                lambda f: log.failure("proxy: re-checking access after a revocation failed", f))

    async def _recheck(self, channels: list[tuple[Any, Any]]) -> None:
        decision = await self.access.recheck(channels[0][1].decision)
        if decision.status == 0:
            # still allowed, perhaps until another time (a session renewed, a key's expire changed)
            self._renewed[decision.key] = decision.caller.expires
            self._expect(decision.caller.expires)
            return
        for front, channel in channels:
            self._close(front, channel, decision)

    def _close(self, front: Any, channel: Any, decision: Decision) -> None:
        caller = decision.caller
        log.info("proxy: closing a {what} of {who} to project {project}: access revoked ({status})",
                 what="request" if channel is front.exchange else "WebSocket", status=decision.status,
                 who=caller.account_id or caller.project_id or "anonymous", project=decision.key[2] if decision.key
                 else "?")
        self.closed += 1
        tunnel = front.tunnel
        if tunnel is not None and tunnel.decision is channel.decision:  # (an exchange may have become one)
            tunnel.revoke(REASON)
        elif channel is front.exchange and not channel.finished:
            front.abort()
