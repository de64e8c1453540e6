"""What both ends of a conat socket share: commands, keepalive, data and requests.

A conat socket (spec §6.3) is an ordered, acknowledged conversation between one client and
one server over pub/sub. Each end subscribes to its own subject and publishes to the
other's; control messages carry the ``CN-SocketCmd`` header, data messages
``CN-SocketSeq`` (see :mod:`.tcp`), and anything else with a reply subject is an
application request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import MSGPACK, Message, encode
from cocalc_hub.conat.socket.tcp import CMD, Receiver, Sender

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

KEEP_ALIVE = 45.0
KEEP_ALIVE_TIMEOUT = 30.0
COMMAND_TIMEOUT = 10.0


class ConatSocket:
    """One end. ``on_data(msg)`` gets data in order; ``on_request(msg)`` gets requests
    (answer with ``msg.respond``); ``on_close(reason)`` runs once when it ends."""

    role = "socket"

    def __init__(self, client: Client, subject: str, *, keep_alive: float = KEEP_ALIVE,
                 keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT) -> None:
        self.client = client
        self.reactor = client.reactor
        self.subject = subject
        self.peer: str = ""
        self.state = "connecting"
        self.keep_alive = keep_alive
        self.keep_alive_timeout = keep_alive_timeout
        self.sender = Sender(self)
        self.receiver = Receiver(self, self._emit_data)
        self.on_data: Callable[[Message], Any] | None = None
        self.on_request: Callable[[Message], Any] | None = None
        self.on_close: list[Callable[[str], None]] = []
        self.last_activity = self.reactor.seconds()
        self._ping: IDelayedCall | None = None
        self._pinging = False

    # sending ------------------------------------------------------------------------------------

    def write(self, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
              headers: dict[str, Any] | None = None) -> None:
        """Ordered, acknowledged data to the other end."""
        if self.state == "closed":
            raise ConatError("socket is closed", "EPIPE")
        self.sender.write(encode(data, encoding) if raw is None else raw, encoding, headers)

    def send_data(self, raw: bytes, encoding: int, headers: dict[str, Any]) -> None:
        if self.state != "closed" and not self.client.closed:
            self.client.publish_sync(self.peer, raw=raw, encoding=encoding, headers=headers)

    def send_control(self, data: Any) -> Deferred[Message]:
        if self.state == "closed":
            return fail(ConatError("socket is closed", "EPIPE"))
        return self.client.request(self.peer, data, headers={CMD: "socket"}, timeout=COMMAND_TIMEOUT)

    def request(self, data: Any = None, *, headers: dict[str, Any] | None = None, raw: bytes | None = None,
                encoding: int = MSGPACK, timeout: float = 30.0) -> Deferred[Message]:
        """An application request to the other end (not part of the ordered data)."""
        if self.state == "closed":
            return fail(ConatError("socket is closed", "EPIPE"))
        return self.client.request(self.peer, data, headers=headers, raw=raw, encoding=encoding, timeout=timeout)

    # receiving ----------------------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Everything that arrives for this end."""
        if self.state == "closed":
            return
        self.last_activity = self.reactor.seconds()
        headers = msg.header_map
        cmd = headers.get(CMD)
        if cmd is not None:
            self._command(cmd, msg)
        elif msg.is_request():
            if self.on_request is None:
                _answer(msg, None, {"error": "this socket does not take requests", "code": 404})
            else:
                self._run(self.on_request, msg)
        else:
            self._schedule_ping()
            self.receiver.receive(msg)

    def _command(self, cmd: Any, msg: Message) -> None:
        if cmd == "socket":
            self._socket_command(msg)
        elif cmd == "ping":
            if self.state == "ready":
                _answer(msg, None)
        elif cmd == "close":
            self.close("closed by the other end", notify=False)
            if msg.is_request():
                _answer(msg, "closed")
        else:
            self.other_command(cmd, msg)

    def other_command(self, cmd: Any, msg: Message) -> None:
        if msg.is_request():
            _answer(msg, {"error": f"unknown command - '{cmd}'"})

    def _socket_command(self, msg: Message) -> None:
        try:
            body = msg.data
        except Exception:
            body = None
        control = body.get("socket") if isinstance(body, dict) else None
        if not isinstance(control, dict):
            if msg.is_request():
                _answer(msg, None, {"error": "bad socket command"})
            return
        if "missing" in control:
            seqs = control["missing"]
            found = self.sender.missing(seqs) if isinstance(seqs, list) else None
            if msg.is_request():
                _answer(msg, found, None if found is not None else {"error": "nodata"})
        elif "emitted" in control:
            upto = control["emitted"]
            if isinstance(upto, int) and not isinstance(upto, bool):
                self.sender.emitted(upto)
            if msg.is_request():
                _answer(msg, {"emitted": upto})

    def _emit_data(self, msg: Message) -> None:
        if self.on_data is not None:
            self._run(self.on_data, msg)

    def _run(self, fn: Callable[[Message], Any], msg: Message) -> None:
        try:
            result = fn(msg)
            if hasattr(result, "__await__") and not isinstance(result, Deferred):
                result = ensureDeferred(result)
            if isinstance(result, Deferred):
                result.addErrback(self._handler_failed)
        except Exception:
            log.failure("conat socket {s}: handler failed", s=self.subject)

    def _handler_failed(self, f: Any) -> None:
        if f.check(ConatError):  # e.g. the requester went away before the answer
            log.warn("conat socket {s}: {e}", s=self.subject, e=f.getErrorMessage())
        else:
            log.failure("conat socket {s}: handler failed", f, s=self.subject)

    # keepalive and the end ----------------------------------------------------------------------

    def set_ready(self) -> None:
        self.state = "ready"
        self.sender.set_ready()
        self._schedule_ping(0.0)

    def _schedule_ping(self, delay: float | None = None) -> None:
        if self.state != "ready" or self._pinging:
            return
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = self.reactor.callLater(self.keep_alive if delay is None else delay, self._send_ping)

    def _send_ping(self) -> None:
        self._ping = None
        if self.state != "ready":
            return
        self._pinging = True
        d = self.client.request(self.peer, None, headers={CMD: "ping"}, timeout=self.keep_alive_timeout,
                                wait_for_interest=True)

        def answered(_: Any) -> None:
            self._pinging = False
            self._schedule_ping()

        def failed(f: Any) -> None:
            self._pinging = False
            if self.state == "ready":
                self.lost(f"keepalive ping failed: {f.getErrorMessage()}")

        d.addCallbacks(answered, failed)

    def lost(self, reason: str) -> None:
        """The other end stopped answering."""
        self.close(reason)

    def reset(self, reason: str) -> None:
        log.warn("conat socket {s}: resetting: {r}", s=self.subject, r=reason)
        self.close(reason)

    def close(self, reason: str = "closed", *, notify: bool = True) -> None:
        """End this socket; tell the other end unless it told us."""
        if self.state == "closed":
            return
        was_ready = self.state == "ready"
        self.state = "closed"
        if notify and was_ready and not self.client.closed and self.peer:
            self.client.publish_sync(self.peer, None, headers={CMD: "close"})
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        self._ping = None
        self.sender.stop()
        self.receiver.stop()
        for fn in list(self.on_close):
            try:
                fn(reason)
            except Exception:
                log.failure("conat socket {s}: close handler failed", s=self.subject)


def _answer(msg: Message, data: Any, headers: dict[str, Any] | None = None) -> None:
    d = msg.respond(data, headers=headers, timeout=COMMAND_TIMEOUT)
    d.addErrback(lambda f: log.debug("conat socket: could not answer {s}: {e}", s=msg.subject,
                                     e=f.getErrorMessage()))
