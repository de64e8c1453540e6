"""Retry timing and logging for writers that must never hold anything up.

The hub's project-status records and the project program's info and exec log are
extras: when no persist server answers, the work they describe goes on, and the
writer says so once, waits (growing pauses, never a tight loop) and tries again. An
:class:`Outage` counts failures, hands out the pauses, logs one warning when an outage
begins and one line when writing works again.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


class Outage:
    def __init__(self, reactor: IReactorTime, what: str, *, first: float = 5.0, factor: float = 2.0,
                 maximum: float = 300.0, grace: float = 0.0) -> None:
        self.reactor = reactor
        self.what = what
        """What is not being written, for the log lines."""
        self.first = first
        self.factor = factor
        self.maximum = maximum
        self.grace = grace
        """Seconds after :meth:`begin` in which failures are retried without a warning (a
        persist server in the same process starts a moment after its users)."""
        self.since = reactor.seconds()
        self.failures = 0
        self.warned = False
        self.delay = first
        """The pause after the next failure."""

    def begin(self) -> None:
        self.since = self.reactor.seconds()

    def failed(self, error: Any) -> float:
        """Note a failure; the pause before the next attempt."""
        self.failures += 1
        if not self.warned and self.reactor.seconds() - self.since >= self.grace:
            self.warned = True
            log.warn("{what} is not recorded: persist is unavailable ({e}); carrying on without it, "
                     "trying again now and then", what=self.what, e=error)
        else:
            log.debug("{what}: persist failed again ({e})", what=self.what, e=error)
        delay, self.delay = self.delay, min(self.delay * self.factor, self.maximum)
        return delay

    def ok(self) -> None:
        """A write went through: the outage (if any) is over."""
        if self.warned:
            log.info("{what} is written again", what=self.what)
        self.warned = False
        self.delay = self.first
