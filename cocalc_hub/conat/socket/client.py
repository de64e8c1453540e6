"""The client end of a conat socket (spec §6.3, "Client side")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import Subscription, random_id
from cocalc_hub.conat.socket.base import COMMAND_TIMEOUT, KEEP_ALIVE, KEEP_ALIVE_TIMEOUT, ConatSocket
from cocalc_hub.conat.socket.tcp import CMD

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

CONNECT_FIRST, CONNECT_FACTOR, CONNECT_MAX = 0.5, 1.3, 10.0
RECONNECT_DELAY = 0.5


class SocketClient(ConatSocket):
    """Connects to the server listening on ``subject``. ``server_id`` picks the server
    (persist's load balancer); without it the server is asked on ``<subject>.server.status``.
    With ``reconnection`` a lost socket starts over (new server socket, same client id)."""

    role = "client"

    def __init__(self, client: Client, subject: str, *, client_id: str | None = None,
                 server_id: Callable[[], Awaitable[str]] | None = None, reconnection: bool = True,
                 keep_alive: float = KEEP_ALIVE, keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
                 connect_timeout: float = 120.0) -> None:
        super().__init__(client, subject, keep_alive=keep_alive, keep_alive_timeout=keep_alive_timeout)
        self.client_id = client_id or random_id()
        self.local = f"{subject}.client.{self.client_id}"
        self._server_id = server_id
        self.reconnection = reconnection
        self.connect_timeout = connect_timeout
        self._sub: Subscription | None = None
        self._reconnecting: IDelayedCall | None = None
        self._listener = self._client_event
        client.listeners.append(self._listener)

    def connect(self) -> Deferred[None]:
        """Fires once the server said "connected"."""
        return ensureDeferred(self._connect())

    async def _connect(self) -> None:
        start = self.reactor.seconds()
        if self._server_id is not None:
            server_id = await self._server_id()
        else:
            reply = await self.client.request(f"{self.subject}.server.status", None, timeout=COMMAND_TIMEOUT)
            found = reply.data.get("id") if isinstance(reply.data, dict) else None
            if not isinstance(found, str):
                raise ConatError(f"no conat socket server id for {self.subject}")
            server_id = found
        self.peer = f"{self.subject}.server.{server_id}.{self.client_id}"
        if self._sub is None:
            self._sub = await self.client.subscribe(self.local, callback=self.handle)
        delay = CONNECT_FIRST
        while True:
            if self.state == "closed":
                raise ConatError("socket closed while connecting")
            try:
                reply = await self.client.request(self.peer, None, headers={CMD: "connect", "id": self.client_id},
                                                  timeout=COMMAND_TIMEOUT, wait_for_interest=True)
            except ConatError as e:
                if self.reactor.seconds() - start > self.connect_timeout:
                    raise
                log.debug("conat socket {s}: connect failed ({e}); retrying", s=self.subject, e=e)
                await task.deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * CONNECT_FACTOR, CONNECT_MAX)
                continue
            if reply.data == "connected":
                break
            error = reply.data.get("error") if isinstance(reply.data, dict) else None
            raise ConatError(str(error or f"unexpected answer to connect: {reply.data!r}"))
        self.set_ready()

    def _client_event(self, what: str, detail: Any) -> None:
        if what == "disconnected" and self.state == "ready":
            self.state = "disconnected"
            if not self.reconnection:
                self.close(f"conat client disconnected: {detail}", notify=False)
        elif what == "info" and self.state == "disconnected" and self.reconnection:
            if self._reconnecting is None or not self._reconnecting.active():
                self._reconnecting = self.reactor.callLater(RECONNECT_DELAY, self._reconnect)

    def _reconnect(self) -> None:
        self._reconnecting = None
        if self.state != "disconnected":
            return
        self.state = "connecting"
        self.sender.ready = False
        self.connect().addErrback(lambda f: self.close(f"could not reconnect: {f.getErrorMessage()}"))

    def close(self, reason: str = "closed", *, notify: bool = True) -> None:
        if self.state == "closed":
            return
        super().close(reason, notify=notify)
        if self._reconnecting is not None and self._reconnecting.active():
            self._reconnecting.cancel()
        self._reconnecting = None
        if self._listener in self.client.listeners:
            self.client.listeners.remove(self._listener)
        if self._sub is not None:
            self._sub.close()
            self._sub = None

