"""The link of a hub process to a conat broker that runs elsewhere (``CONAT_SERVER``).

Processes started with ``--conat-api``, ``--conat-persist`` or ``--proxy-server`` without
``--conat-server`` reach the broker over a socket. :class:`BrokerLink` keeps one client of
its own signed in there (the services' clients share its fate: same broker, same
credentials) and makes the link visible: one warning line when the broker has not answered
within :data:`GRACE` seconds of start (or of losing it), naming the address and the error
and saying that it retries; one line when it is back; ``/healthcheck`` reports the component
``conat-broker`` down (503) meanwhile, and ``/metrics`` has ``cocalc_hub_conat_broker_up``.
Retrying, with jittered exponential backoff up to 15 s, is the client's own.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from twisted.application import service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.client import Client
from cocalc_hub.web.health import Status

log = Logger()

GRACE = 2.0


class BrokerLink(service.Service):
    name = "conat-broker-link"

    def __init__(self, address: str, connect: Callable[[], Client], clock: IReactorTime) -> None:
        self.address = address
        self.connect = connect
        self.clock = clock
        self.client: Client | None = None
        self.up = False
        self.reason = "no answer yet"
        self.down_since = clock.seconds()
        self.reported = False
        """Whether the current outage has been logged (so its end is logged too)."""
        self._grace: IDelayedCall | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.down_since = self.clock.seconds()
        self._arm()
        client = self.client = self.connect()
        client.listeners.append(self._event)

    def stopService(self) -> None:
        service.Service.stopService(self)
        self._disarm()
        if self.client is not None:
            self.client.close()
            self.client = None

    # events ------------------------------------------------------------------------------

    def _event(self, what: str, detail: object) -> None:
        client = self.client
        if client is None:
            return
        if what == "info":
            self._up()
        elif what == "disconnected":
            if client.error is not None:  # signed in, refused, then disconnected by the broker
                self._down(f"the broker refused this hub's credentials ({client.error}); is "
                           "$SECRETS/conat-password the same as the broker's?")
            else:
                self._down(str(detail))

    def _up(self) -> None:
        if self.up:
            return
        self.up = True
        self._disarm()
        if self.reported:
            log.info("conat broker at {address} reachable again after {seconds:.0f} s", address=self.address,
                     seconds=self.clock.seconds() - self.down_since)
        else:
            log.info("connected to the conat broker at {address}", address=self.address)
        self.reported = False

    def _down(self, reason: str) -> None:
        self.reason = " ".join(reason.split()) or "disconnected"
        if self.up:
            self.up = False
            self.down_since = self.clock.seconds()
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._grace = self.clock.callLater(GRACE, self._overdue)

    def _disarm(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = None

    def _overdue(self) -> None:
        self._grace = None
        if self.up or self.reported:
            return
        self.reported = True
        log.warn("conat broker at {address} (CONAT_SERVER) not reachable: {reason}; retrying with backoff "
                 "(every 15 s at most); /healthcheck reports conat-broker down until it answers",
                 address=self.address, reason=self.reason)

    # reporting ------------------------------------------------------------------------------

    def status(self) -> Status:
        if self.up:
            return Status(True, f"connected to {self.address}")
        since = datetime.fromtimestamp(self.down_since, UTC).isoformat(timespec="seconds")
        return Status(False, f"not connected to {self.address} since {since}: {self.reason}")

    def up_value(self) -> float:
        return 1.0 if self.up else 0.0
