"""Revocations committed by any process sharing the database, delivered to this one.

The store writes a ``revocations`` row in the same transaction as every change that takes
access away (see :meth:`SqlStore._revoked`). :class:`RevocationFeed` follows that table
from the newest row it saw and hands new rows to a callback, so another hub process or
``cocalc-hub-admin`` reaches this process's open connections too:

* SQLite: the hub reads ``MAX(seq)``-and-newer every ``POLL`` seconds on the injected clock
  (one indexed read, in the store's own worker thread).
* PostgreSQL: a dedicated connection LISTENs on ``cocalc_hub_revocations`` in its own
  thread and wakes the reader at once; a slow poll (``SAFETY_POLL``) covers anything
  missed. While that connection is not established (before the first LISTEN, and from an
  outage until it is back) the reader polls every ``OUTAGE_POLL`` seconds instead, so the
  one-second bound holds through an outage too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from cocalc_hub.db.store import Store
from cocalc_hub.reactors import IReactorTimeThreads

log = Logger()

POLL = 0.25
"""SQLite: seconds between reads of the revocations table."""
SAFETY_POLL = 5.0
"""PostgreSQL: seconds between reads when no notification came."""
OUTAGE_POLL = 0.5
"""PostgreSQL: seconds between reads while the LISTEN connection is not established."""
LISTEN_RETRY = (0.5, 5.0)
"""PostgreSQL listener reconnection backoff, first and longest, seconds."""

Revocation = tuple[str, str]
"""(kind, value): session/hash, account/account_id, key/id, project/project_id."""


class RevocationFeed(service.Service):
    """Calls ``deliver`` with the revocations other writers (and this process) commit."""

    name = "revocations"

    def __init__(self, store: Store, reactor: IReactorTimeThreads, deliver: Callable[[list[Revocation]], None], *,
                 poll: float = POLL) -> None:
        self.store = store
        self.reactor = reactor
        self.deliver = deliver
        self.poll = poll
        self.seq: int | None = None
        self._reading = False
        self._again = False
        self._loop: task.LoopingCall | None = None
        self._listener: _Listener | None = None
        self._failing = False

    def startService(self) -> None:
        """Follow from the newest row (read on the first check: the store opens in this turn)."""
        service.Service.startService(self)
        conninfo = self.store.notification_conninfo()
        if conninfo is None:
            self._poll_every(self.poll)
            return
        self._poll_every(min(self.poll, OUTAGE_POLL))  # until LISTEN is established
        self._listener = _Listener(conninfo, self.reactor, self.check, self._listening)

    def _poll_every(self, interval: float) -> None:
        if self._loop is not None:
            if self._loop.running and self._loop.interval == interval:
                return
            if self._loop.running:
                self._loop.stop()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(interval, now=True).addErrback(lambda f: log.failure("revocations: poll failed", f))

    def _listening(self, up: bool) -> None:
        """The LISTEN connection came up (notifications wake the reader; poll slowly) or went
        down (poll often until it is back)."""
        if self.running:
            self._poll_every(SAFETY_POLL if up else min(self.poll, OUTAGE_POLL))

    def check(self) -> None:
        """Read what is new (at most one read at a time; a request during one runs after it)."""
        if not self.running:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True
        defer.ensureDeferred(self._read()).addErrback(self._failed)

    async def _read(self) -> None:
        if self.seq is None:
            self.seq = await self.store.last_revocation()
        while True:
            self._again = False
            rows = await self.store.revocations_since(self.seq)
            if rows:
                self.seq = rows[-1][0]
                try:
                    self.deliver([(kind, value) for _, kind, value in rows])
                except Exception:
                    log.failure("revocations: delivering failed")
            if not (self._again or len(rows) >= 1000) or not self.running:
                break
        self._reading = False
        if self._failing:
            self._failing = False
            log.info("revocations: reading the database again")

    def _failed(self, failure: Any) -> None:
        self._reading = False
        if not self._failing and self.running:  # one line per outage, not one per poll
            self._failing = True
            log.warn("revocations: cannot read the database ({error}); retrying", error=failure.getErrorMessage())

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        listener, self._listener = self._listener, None
        if listener is None:
            return defer.succeed(None)
        return listener.stop()


class _Listener:
    """LISTEN cocalc_hub_revocations on its own connection and thread; each batch of
    notifications calls ``wake`` on the reactor. Reconnects with backoff; wakes after each
    (re)connection so nothing committed meanwhile is missed. ``listening(True/False)`` is
    called on the reactor when LISTEN is established and when that connection is lost."""

    def __init__(self, conninfo: str, reactor: IReactorFromThreads, wake: Callable[[], None],
                 listening: Callable[[bool], None]) -> None:
        self.conninfo = conninfo
        self.reactor = reactor
        self.wake = wake
        self.listening = listening
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="cocalc-hub-revocations", daemon=True)
        self._thread.start()

    def stop(self) -> defer.Deferred[None]:
        self._stopping.set()
        return threads.deferToThread(self._thread.join)

    def _main(self) -> None:
        import psycopg

        from cocalc_hub.db.postgres import REVOCATIONS_CHANNEL

        delay, complained = LISTEN_RETRY[0], False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                                     application_name="cocalc-hub-revocations") as conn:
                    conn.execute(f"LISTEN {REVOCATIONS_CHANNEL}")
                    if complained:
                        self.reactor.callFromThread(log.info, "revocations: listening again")
                    delay, complained = LISTEN_RETRY[0], False
                    self.reactor.callFromThread(self.listening, True)
                    self.reactor.callFromThread(self.wake)
                    while not self._stopping.is_set():
                        # returns at the first notification, or after 0.2 s to notice stop()
                        for _ in conn.notifies(timeout=0.2, stop_after=1):
                            self.reactor.callFromThread(self.wake)
            except Exception as e:  # psycopg.Error, OSError
                if self._stopping.is_set():
                    return
                if not complained:  # one line per outage, not one per attempt
                    complained = True
                    self.reactor.callFromThread(self.listening, False)
                    self.reactor.callFromThread(
                        log.warn, "revocations: lost the PostgreSQL notification connection ({error}); "
                        "reconnecting (changes are read every {poll:g} s meanwhile)", error=str(e).strip(),
                        poll=OUTAGE_POLL)
                self._stopping.wait(delay)
                delay = min(delay * 2, LISTEN_RETRY[1])
