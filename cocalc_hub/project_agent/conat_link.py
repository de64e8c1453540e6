"""The project's connection to the hub's conat broker, kept up for the project's lifetime.

The project signs in as itself (cookies ``<bp>project_id`` and ``<bp>project_secret``, its
per-start secret), answers its API (:mod:`.api`) and publishes its state. Conat is an
extra: when the broker is unreachable the project keeps serving raw files and exec over
HTTP, logs why, and tries again with backoff. The link reconnects itself rather than
relying on the client's transport, because a broker that goes away on purpose (a hub
restart) sends a socket.io disconnect, after which socket.io clients do not reconnect.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.conat.client import Client, ConatError, connect
from cocalc_hub.reactors import IReactorTimeTCP
from cocalc_hub.subjects import api_subject, state_subject

log = Logger()

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConatLink:
    def __init__(self, reactor: IReactorTimeTCP, *, address: str, project_id: str, secret: str, base_path: str,
                 handler: Callable[[str, list[Any], Any], Any], started: float, delay: float = 0.5,
                 max_delay: float = 20.0, sign_in_timeout: float = 30.0) -> None:
        self.reactor = reactor
        self.address = address
        self.project_id = project_id
        names = CookieNames.for_base_path(base_path)
        # Only the project's own credentials: never anything of the hub's.
        self.cookies = {names.project_id: project_id, names.project_secret: secret}
        self.handler = handler
        self.started = started
        self.delay = delay
        self.max_delay = max_delay
        self.sign_in_timeout = sign_in_timeout
        self.client: Client | None = None
        self.attempts = 0
        self.joins = 0
        self.stopped = False
        self._timer: Any = None
        self._joined: Client | None = None
        self.listeners: list[Callable[[str], None]] = []
        """Told "joined" or "left" (tests and logs)."""

    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        self._timer = None
        if self.stopped:
            return
        host = urlsplit(self.address if "://" in self.address else f"http://{self.address}").hostname
        try:
            client = connect(self.reactor, self.address, cookies=self.cookies, reconnect=False,
                             verify_tls=host not in LOOPBACK)  # the hub's own port, often self-signed
        except ValueError as e:
            log.error("conat: CONAT_SERVER {address!r} is unusable ({e}); the project runs without conat",
                      address=self.address, e=e)
            return
        self.client = client
        client.listeners.append(lambda what, detail: self._event(client, what, detail))
        ensureDeferred(self._join(client))

    async def _join(self, client: Client) -> None:
        try:
            await client.signed_in(timeout=self.sign_in_timeout)
            await client.service(api_subject(self.project_id), self.handler)
        except ConatError as e:
            if client is self.client:
                self._retry(client, f"cannot join: {e}")
            return
        if client is not self.client:
            return
        self.attempts = 0
        self.joins += 1
        self._joined = client
        log.info("conat: project {project_id} joined {address}; answering {subject}", project_id=self.project_id,
                 address=self.address, subject=api_subject(self.project_id))
        self.publish_state("running")
        self._tell("joined")

    def _event(self, client: Client, what: str, detail: Any) -> None:
        if what == "disconnected" and client is self.client:
            self._retry(client, f"refused: {client.error}" if client.error else f"disconnected ({detail})")

    def _retry(self, client: Client, why: str) -> None:
        if client is not self.client or self.stopped:
            return
        self.client = None
        was_joined, self._joined = self._joined is client, None
        client.close()
        wait = min(self.max_delay, self.delay * (2 ** self.attempts)) * (0.5 + random.random())
        self.attempts += 1
        log.warn("conat: {why} ({address}); raw files and exec over HTTP keep working; retrying in {wait:.1f} s",
                 why=why, address=self.address, wait=wait)
        self._timer = self.reactor.callLater(wait, self._connect)
        if was_joined:
            self._tell("left")

    def _tell(self, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(what)
            except Exception:
                log.failure("conat link listener failed")

    def publish_state(self, state: str, timeout: float = 10.0) -> Deferred[Any] | None:
        """Tell subscribers (the hub, collaborators) about this process; failures only logged."""
        client = self.client
        if client is None or not client.is_signed_in:
            return None
        event = {"state": state, "source": "project", "project_id": self.project_id, "compute_server_id": 0,
                 "pid": os.getpid(), "start_ts": int(self.started * 1000),
                 "time": datetime.now(UTC).isoformat()}
        d = client.publish(state_subject(self.project_id), event, timeout=timeout)
        d.addErrback(lambda f: log.warn("conat: publishing state {state} failed: {e}", state=state,
                                        e=f.getErrorMessage()))
        return d

    async def stop(self) -> None:
        """Say "stopping" (briefly: the hub is waiting for us to exit), then disconnect."""
        if self.stopped:
            return
        d = self.publish_state("stopping", timeout=0.5)
        if d is not None:
            await d
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.client is not None:
            self.client.close()
            self.client = None


def start_link(reactor: IReactorTimeTCP, env: Mapping[str, str], secret: str,
               handler: Callable[[str, list[Any], Any], Any], started: float) -> ConatLink | None:
    """The link if the hub said where its broker is (``CONAT_SERVER``), else None (logged)."""
    address = env.get("CONAT_SERVER", "")
    if not address:
        log.warn("conat: CONAT_SERVER is not set; the project runs without conat (raw files and exec over "
                 "HTTP only)")
        return None
    link = ConatLink(reactor, address=address, project_id=env["COCALC_PROJECT_ID"],
                     secret=secret, base_path=env.get("BASE_PATH", "/") or "/",
                     handler=handler, started=started)
    link.start()
    return link
