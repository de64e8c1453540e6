"""The server end of conat sockets: one listener, many client sockets (spec §6.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from cocalc_hub.conat.message import Message, Subscription
from cocalc_hub.conat.socket.base import KEEP_ALIVE, KEEP_ALIVE_TIMEOUT, ConatSocket, _answer
from cocalc_hub.conat.socket.tcp import CMD

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

INTEREST_WAIT = 5.0
IDLE_FACTOR = 2.5


class ServerSocket(ConatSocket):
    """A connected client, as the server sees it. ``subject`` is the concrete socket subject
    (e.g. ``persist.project-<id>``), ``client_id`` the client's last token."""

    role = "server"

    def __init__(self, server: SocketServer, subject: str, client_id: str, peer: str) -> None:
        super().__init__(server.client, subject, keep_alive=server.keep_alive,
                         keep_alive_timeout=server.keep_alive_timeout)
        self.server = server
        self.client_id = client_id
        self.peer = peer
        self.last_command = self.reactor.seconds()

    def handle(self, msg: Message) -> None:
        if msg.header_map.get(CMD) is not None:
            self.last_command = self.reactor.seconds()
        super().handle(msg)

    def other_command(self, cmd: Any, msg: Message) -> None:
        if cmd == "connect":
            if msg.is_request():
                _answer(msg, "connected")
            return
        super().other_command(cmd, msg)

    def close(self, reason: str = "closed", *, notify: bool = True) -> None:
        super().close(reason, notify=notify)
        self.server._forget(self)


class SocketServer:
    """Listens on ``<subject>.server.<id>.*`` (``subject`` may hold ``*``) and answers
    ``<subject>.server.status``. ``on_connection(socket)`` runs for each new client."""

    def __init__(self, client: Client, subject: str, server_id: str,
                 on_connection: Callable[[ServerSocket], Any], *, keep_alive: float = KEEP_ALIVE,
                 keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT) -> None:
        self.client = client
        self.reactor = client.reactor
        self.subject = subject
        self.id = server_id
        self.on_connection = on_connection
        self.keep_alive = keep_alive
        self.keep_alive_timeout = keep_alive_timeout
        self.sockets: dict[str, ServerSocket] = {}
        self._subs: list[Subscription] = []
        self._reaper: IDelayedCall | None = None
        self.closed = False

    async def start(self) -> None:
        self._subs.append(await self.client.subscribe(f"{self.subject}.server.status", callback=self._status))
        self._subs.append(await self.client.subscribe(f"{self.subject}.server.{self.id}.*", callback=self._handle))
        self._reaper = self.reactor.callLater(self.keep_alive, self._reap)

    def _status(self, msg: Message) -> None:
        if msg.is_request():
            _answer(msg, {"id": self.id})

    def _handle(self, msg: Message) -> None:
        if self.closed:
            return
        tokens = msg.subject.split(".")
        if len(tokens) < 4:
            return
        client_id = tokens[-1]
        sock = self.sockets.get(msg.subject)
        if sock is not None:
            sock.handle(msg)
            return
        cmd = msg.header_map.get(CMD)
        peer = ".".join([*tokens[:-3], "client", client_id])
        if cmd == "close":
            return
        if cmd != "connect":
            # a client we do not know (e.g. after a server restart): tell it to start over
            self.client.publish_sync(peer, None, headers={CMD: "close"})
            return
        sock = ServerSocket(self, ".".join(tokens[:-3]), client_id, peer)
        self.sockets[msg.subject] = sock
        ensureDeferred(self._accept(sock, msg)).addErrback(
            lambda f: log.failure("conat socket server {s}: accepting a client failed", f, s=self.subject))

    async def _accept(self, sock: ServerSocket, msg: Message) -> None:
        try:
            await self.client.wait_for_interest(sock.peer, timeout=INTEREST_WAIT)
        except Exception as e:
            log.debug("conat socket server: no interest in {p}: {e}", p=sock.peer, e=e)
        if sock.state == "closed":
            return
        sock.set_ready()
        self.on_connection(sock)
        sock.handle(msg)

    def _forget(self, sock: ServerSocket) -> None:
        key = f"{sock.subject}.server.{self.id}.{sock.client_id}"
        if self.sockets.get(key) is sock:
            del self.sockets[key]

    def _reap(self) -> None:
        """Sockets whose client sent no command for 2.5 keepalive intervals are gone."""
        self._reaper = None
        if self.closed:
            return
        now = self.reactor.seconds()
        for sock in list(self.sockets.values()):
            if now - sock.last_command > IDLE_FACTOR * self.keep_alive:
                sock.close("the client went quiet")
        self._reaper = self.reactor.callLater(self.keep_alive, self._reap)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        for sock in list(self.sockets.values()):
            sock.close("the server is shutting down")
        for sub in self._subs:
            sub.close()
