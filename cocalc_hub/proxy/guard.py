"""Open proxied channels lose access when their caller does.

A WebSocket tunnel or a response still streaming was authorised once, when it began.
:class:`ChannelGuard` hears every revocation this process learns of (its own API calls,
and through cocalc_hub.db.revocations those of other hub processes and the admin CLI),
re-runs the proxy's one authorization function (:meth:`ProxyAccess.recheck`) for each
open channel the change may concern, and closes those that no longer pass: a tunnel
with WebSocket close code 1008, then its backend side; an HTTP exchange by dropping the
connection. Idle keep-alive connections need nothing: their next request is authorised
afresh, the decision cache having been dropped with the revocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from cocalc_hub.proxy.access import Decision, ProxyAccess

log = Logger()

REASON = "access revoked"

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
    def __init__(self, access: ProxyAccess, front_doors: list[set[Any]]) -> None:
        self.access = access
        self.front_doors = front_doors
        self.closed = 0
        """Channels closed on revocation so far."""

    # events (an Authenticator.revocations watcher and a Projects listener) ------------------

    def credentials_changed(self, kind: str, value: Any) -> None:
        self._sweep(credentials_match(kind, value))

    def project_changed(self, project_id: str) -> None:
        self._sweep(lambda d: d.key is not None and d.key[2] == project_id)

    def started(self, front: Any, exchange: Any) -> None:
        """An exchange began: if a revocation came while it waited (for its decision or the
        project's ports) after the sweep had looked, it is re-checked now."""
        decision = exchange.decision
        if decision is not None and decision.key is not None and not self.access.current(decision):
            defer.ensureDeferred(self._recheck([(front, exchange)])).addErrback(
                lambda f: log.failure("proxy: re-checking access after a revocation failed", f))

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
