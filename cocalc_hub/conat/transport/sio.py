"""Socket.IO v5 on top of the Engine.IO layer (:mod:`.engine`): namespaces and their sockets.

A :class:`SocketIOServer` is an Engine.IO handler: it gives every Engine.IO connection a
:class:`SocketIOClient` (the reference server's "client"), which parses the Socket.IO
packets of that connection's messages and routes them by namespace. A server has one
:class:`~.socket.Handler` per namespace (the conat broker is the handler of ``/``); a
client may join several namespaces over one connection, each with its own
:class:`~.socket.NamespaceSocket`, and leave them one by one (``41/nsp,``) while the
connection stays open. A CONNECT to a namespace nobody serves gets
``44/nsp,{"message":"Invalid namespace"}``, as from the reference server.

Anything that is not a valid Socket.IO packet (unknown type, bad JSON, a binary message
nobody announced, a text message while attachments are due) raises
:class:`~.packets.ProtocolError`, which makes the Engine.IO connection close with 1002.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.conat.transport import packets
from cocalc_hub.conat.transport.engine import new_sid
from cocalc_hub.conat.transport.packets import ProtocolError
from cocalc_hub.conat.transport.session import PacketReader
from cocalc_hub.conat.transport.socket import Ack, ConnectRefused, Handler, NamespaceSocket, nsp_part

if TYPE_CHECKING:
    from cocalc_hub.conat.transport.engine import EngineProtocol

log = Logger()


class SocketIOServer:
    """The namespaces a server offers and their handlers; an Engine.IO handler."""

    def __init__(self, root: Handler | None = None, namespaces: dict[str, Handler] | None = None) -> None:
        self.handlers: dict[str, Handler] = dict(namespaces or {})
        if root is not None:
            self.handlers["/"] = root

    def namespace(self, name: str, handler: Handler) -> None:
        """Serve namespace ``name`` (``/`` or ``/something``) with ``handler``."""
        if not name.startswith("/"):
            raise ValueError(f"a namespace starts with '/': {name!r}")
        self.handlers[name] = handler

    def engine_connected(self, engine: EngineProtocol) -> SocketIOClient:
        return SocketIOClient(self, engine)


class SocketIOClient(PacketReader):
    """The Socket.IO side of one Engine.IO connection (an Engine.IO message receiver).

    The root namespace's socket has an attribute of its own (``socket``): it is the only
    one conat uses, and its events take the shortest path."""

    __slots__ = ("server", "engine", "socket", "others", "joining", "gone")  # and PacketReader's

    def __init__(self, server: SocketIOServer, engine: EngineProtocol) -> None:
        self.server = server
        self.engine = engine
        self.socket: NamespaceSocket | None = None
        self.others: dict[str, NamespaceSocket] | None = None
        self.joining: set[str] | None = None
        """Namespaces whose handler is still deciding on a CONNECT (``socket_connecting``)."""
        self.gone = False
        self._pending: packets.Packet | None = None

    # Engine.IO messages ---------------------------------------------------------------

    # ``on_message`` and ``on_binary`` are PacketReader's (as in the client).

    def on_close(self, reason: str) -> None:
        self.gone = True
        self._pending = None
        for socket in self.sockets():
            self._gone(socket, reason)

    # Socket.IO packets ------------------------------------------------------------------

    def sockets(self) -> list[NamespaceSocket]:
        out = [] if self.socket is None else [self.socket]
        if self.others:
            out.extend(self.others.values())
        return out

    def _dispatch(self, packet: packets.Packet) -> None:
        t = packet.type
        nsp = packet.nsp
        if nsp == "/":
            socket = self.socket
        else:
            socket = self.others.get(nsp) if self.others is not None else None
        if t == packets.EVENT:
            if socket is None:
                return  # not (or no longer) in that namespace: dropped, as by the reference server
            data = packet.data
            name = data[0]
            if not isinstance(name, str):
                return
            ack = Ack(socket, packet.id) if packet.id is not None else None
            try:
                self.server.handlers[nsp].socket_event(socket, name, data[1:], ack)
            except Exception:
                log.failure("socket.io: event handler failed")
        elif t == packets.ACK:
            if socket is not None:
                socket.got_ack(packet.id, packet.data)
        elif t == packets.CONNECT:
            if socket is None:
                self._connect(nsp, packet.data)
        elif t == packets.DISCONNECT:
            if socket is not None:
                self._gone(socket, "client namespace disconnect")
        else:  # CONNECT_ERROR is server to client only
            raise ProtocolError("unexpected packet type from a client")

    def _connect(self, nsp: str, auth: Any) -> None:
        handler = self.server.handlers.get(nsp)
        if handler is None:
            self._refuse(nsp, {"message": "Invalid namespace"})
            return
        if self.joining is not None and nsp in self.joining:
            return  # its handler is still deciding
        engine = self.engine
        socket = NamespaceSocket(new_sid(), engine, engine.handshake, nsp=nsp, auth=auth, client=self)
        connecting = getattr(handler, "socket_connecting", None)
        if connecting is None:
            self._accept(handler, socket)
            return
        try:
            decided = connecting(socket)
        except Exception:
            self._refused(socket, Failure())
            return
        if inspect.iscoroutine(decided):
            decided = ensureDeferred(decided)
        if not isinstance(decided, Deferred):
            self._accept(handler, socket)
            return
        # An asynchronous decision: the namespace's packets are dropped until it is made
        # (clients send nothing before the CONNECT answer), a second CONNECT is ignored.
        if self.joining is None:
            self.joining = set()
        self.joining.add(nsp)

        def decided_(result: Any, accepted: bool) -> None:
            if self.joining is not None:
                self.joining.discard(nsp)
            if self.gone:
                socket.closed()
            elif accepted:
                self._accept(handler, socket)
            else:
                self._refused(socket, result)

        decided.addCallbacks(decided_, decided_, callbackArgs=(True,), errbackArgs=(False,))

    def _accept(self, handler: Handler, socket: NamespaceSocket) -> None:
        nsp = socket.nsp
        if nsp == "/":
            self.socket = socket
        else:
            if self.others is None:
                self.others = {}
            self.others[nsp] = socket
        engine = self.engine
        engine.established()
        engine.send_packet(f'40{nsp_part(nsp)}{{"sid":"{socket.sid}"}}', [])
        try:
            handler.socket_connected(socket)
        except Exception:
            log.failure("socket.io: connect handler failed")

    def _refused(self, socket: NamespaceSocket, failure: Failure) -> None:
        socket.closed()
        if failure.check(ConnectRefused):
            self._refuse(socket.nsp, failure.value.payload())  # type: ignore[union-attr]
        else:
            log.failure("socket.io: connect handler failed", failure)
            self._refuse(socket.nsp, {"message": "server error"})

    def _refuse(self, nsp: str, payload: dict[str, Any]) -> None:
        self.engine.send_packet(f"44{nsp_part(nsp)}{packets.dumps(payload)}", [])

    def _gone(self, socket: NamespaceSocket, reason: str) -> None:
        nsp = socket.nsp
        if nsp == "/":
            if self.socket is not socket:
                return
            self.socket = None
        elif self.others is None or self.others.pop(nsp, None) is not socket:
            return
        socket.closed()
        try:
            self.server.handlers[nsp].socket_disconnected(socket, reason)
        except Exception:
            log.failure("socket.io: disconnect handler failed")

    def disconnect_socket(self, socket: NamespaceSocket, close: bool) -> None:
        """The server leaves ``socket``'s namespace (``41``); ``close`` closes the connection."""
        if not socket.connected:
            return
        self.engine.send_packet(f"41{nsp_part(socket.nsp)}", [])
        self._gone(socket, "server namespace disconnect")
        if close:
            self.engine.close("server namespace disconnect")
