"""The Socket.IO side of a connection: sockets, events, acknowledgements, handlers.

A :class:`Handler` (the conat broker is one, on the root namespace ``/``) serves one
namespace and sees its clients as :class:`NamespaceSocket` objects: it is told when a client
joins the namespace (with the CONNECT packet's payload in ``socket.auth``), receives every
event with its arguments (binary attachments already put back in place) and an optional
:class:`Ack`, and is told when the socket goes away, whatever the cause. A handler that
also has ``socket_connecting(socket)`` may refuse the client there by raising
:class:`ConnectRefused` (the client gets a CONNECT_ERROR packet), or decide later: it may
return a Deferred or a coroutine, which fails with :class:`ConnectRefused` to refuse. :mod:`.sio` routes the
packets of one connection to the sockets of its namespaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.barriers import CONFIRM, PLAIN

log = Logger()


@dataclass(frozen=True)
class Handshake:
    """What the WebSocket upgrade request said, as far as handlers care."""

    cookies: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[bytes, bytes] = field(default_factory=dict)
    """Lower-case names; repeated headers joined with ``, ``."""
    client_ip: str = ""
    secure: bool = False
    path: str = "/"


class Sender(Protocol):
    """What a socket writes to: the Engine.IO connection underneath."""

    def send_packet(self, text: str, binaries: list[bytes], flow: object = None, order: int = PLAIN) -> None: ...
    def send_raw(self, text: str, binary: bytes, flow: object = None, order: int = PLAIN) -> None: ...
    def close(self) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...


class SioConnection(Protocol):
    """The Socket.IO side of a connection, which holds its namespaces' sockets."""

    def disconnect_socket(self, socket: NamespaceSocket, close: bool) -> None: ...


class Handler(Protocol):
    def socket_connected(self, socket: NamespaceSocket) -> None: ...
    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None: ...
    def socket_disconnected(self, socket: NamespaceSocket, reason: str) -> None: ...


class ConnectRefused(Exception):
    """Raised by a handler's ``socket_connecting``: the client gets
    ``44[/nsp,]{"message": message[, "data": data]}`` and is not connected."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


def nsp_part(nsp: str) -> str:
    """What a packet carries between its type (and attachment count) and its ack id."""
    return "" if nsp == "/" else nsp + ","


class Ack:
    """The acknowledgement a client asked for; only the first call is sent."""

    __slots__ = ("socket", "id", "sent")

    def __init__(self, socket: NamespaceSocket, ack_id: int) -> None:
        self.socket = socket
        self.id = ack_id
        self.sent = False

    def __call__(self, *args: Any) -> None:
        self.send(list(args))

    def confirm(self, *args: Any) -> None:
        """Send the ack as a read barrier the client must have handled before anything
        after it reaches it (:mod:`.barriers`): for acks whose continuation attaches the
        listener that later packets need, such as a subscription's."""
        self.send(list(args), CONFIRM)

    def send(self, args: list[Any], order: int = PLAIN) -> None:
        if self.sent:
            return
        self.sent = True
        socket = self.socket
        if socket.connected:
            if len(args) == 1 and type(args[0]) is dict and packets.is_flat(args[0]):
                # the common answer (``{"count": 1}``, ``{"status": "added"}``): no bytes to take out
                socket.sender.send_packet(f"43{nsp_part(socket.nsp)}{self.id}[{packets.dumps(args[0])}]", [],
                                          None, order)
                return
            text, binaries = packets.encode_parts(packets.ACK, args, nsp=socket.nsp, ack_id=self.id)
            socket.sender.send_packet(text, binaries, None, order)

    def raw(self, json_text: str) -> None:
        """Send an already encoded (JSON array) ack payload without attachments."""
        if self.sent:
            return
        self.sent = True
        socket = self.socket
        if socket.connected:
            socket.sender.send_packet(f"43{nsp_part(socket.nsp)}{self.id}{json_text}", [])


class NamespaceSocket:
    """One client on one namespace (``nsp``) of a connection."""

    __slots__ = ("sid", "sender", "handshake", "connected", "_next_ack", "_acks", "state", "nsp", "_auth", "client",
                 "__weakref__")

    def __init__(self, sid: str, sender: Sender, handshake: Handshake, *, nsp: str = "/",
                 auth: Any = None, client: SioConnection | None = None) -> None:
        self.sid = sid
        self.sender = sender
        self.handshake = handshake
        self.nsp = nsp
        self._auth = auth
        self.client = client
        self.connected = True
        self._next_ack = 0
        self._acks: dict[int, Callable[[list[Any]], None]] = {}
        self.state: Any = None
        """Free for the handler (the broker keeps its connection record here)."""

    @property
    def auth(self) -> Any:
        """The CONNECT packet's payload, the client's ``auth`` option (``{}`` when it had none;
        not kept per socket, as most clients send none)."""
        return self._auth if self._auth is not None else {}

    def emit(self, event: str, *args: Any, callback: Callable[[list[Any]], None] | None = None) -> None:
        """Send an event; ``callback`` receives the client's ack arguments, if it answers."""
        if not self.connected:
            return
        ack_id = None
        if callback is not None:
            ack_id = self._next_ack
            self._next_ack += 1
            self._acks[ack_id] = callback
        text, binaries = packets.encode_parts(packets.EVENT, [event, *args], nsp=self.nsp, ack_id=ack_id)
        self.sender.send_packet(text, binaries)

    def emit_raw(self, text: str, binary: bytes, flow: object = None, order: int = PLAIN) -> None:
        """Send a pre-encoded binary event (``451-[...]``) and its one attachment: the hot path.
        ``flow`` names the listener it feeds and ``order`` says whether it ends the client's
        read (:mod:`.barriers`)."""
        if self.connected:
            if self.nsp != "/":
                head, _, rest = text.partition("-")
                text = f"{head}-{self.nsp},{rest}"
            self.sender.send_raw(text, binary, flow, order)

    def forget_ack(self, ack_id: int) -> None:
        self._acks.pop(ack_id, None)

    @property
    def next_ack_id(self) -> int:
        return self._next_ack

    def got_ack(self, ack_id: int | None, args: list[Any]) -> None:
        if ack_id is None:
            return
        callback = self._acks.pop(ack_id, None)
        if callback is not None:
            try:
                callback(args)
            except Exception:
                log.failure("ack callback failed")

    def disconnect(self, close: bool = True) -> None:
        """Server-side disconnect: ``41[/nsp,]``, then (``close``) the whole connection is
        closed, with the client's other namespaces; else only this namespace is left."""
        if self.connected and self.client is not None:
            self.client.disconnect_socket(self, close)

    def closed(self) -> None:
        self.connected = False
        self._acks.clear()

    def pause_input(self) -> None:
        self.sender.pause_input()

    def resume_input(self) -> None:
        self.sender.resume_input()
