"""What one read wrote, sent with one ``send(2)`` and without Twisted's write buffer.

:mod:`.flush` sends a connection's buffered bytes at the end of the read that wrote them.
Each ``transport.write`` still costs an ``epoll_ctl`` to start watching for writability
and another to stop, and ``doWrite``'s bookkeeping; for a request/reply exchange that is
a good part of the hub's work per packet. When the connection is plain TCP (directly or
under the front door's shim, never under TLS) and nothing is buffered in Twisted, the
engine keeps what one read writes in a list of its own and :func:`send_now` sends it at
the end of the read with one ``send``; what the kernel does not take, and every case
that is not that simple, goes through ``transport.write`` (and :func:`.flush.flush`).
The engine hands its list to ``transport.write`` before anything else writes to the
transport (autobahn's own frames), so the order of the bytes never changes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from cocalc_hub.conat.transport.flush import flush


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """The TCP connection that is ``transport`` or directly under the front door's shim,
    if nothing (such as TLS) transforms the bytes between; else None."""
    front = getattr(transport, "front", None)
    if front is not None:
        transport = getattr(front, "transport", None)
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport
    return None


def idle(conn: tcp.Connection | None) -> bool:
    """Can bytes go straight to this connection's socket (open, TLS off, nothing buffered)?"""
    return (conn is not None and bool(conn.connected) and not conn.disconnecting and not conn._writeDisconnected
            and not conn._aborting and not conn.TLS and not conn._tempDataBuffer
            and conn.offset == len(conn.dataBuffer))


def send_now(conn: tcp.Connection | None, transport: Any, data: bytes) -> None:
    """Send ``data`` on ``conn``'s socket now if it is :func:`idle`; what is left (all of
    it otherwise) goes through ``transport.write`` and is flushed."""
    sent = 0
    if idle(conn):
        assert conn is not None
        try:
            sent = conn.socket.send(data)
        except OSError:
            sent = 0  # would block, or the socket failed: Twisted's write path finds out
    if sent < len(data):
        transport.write(data[sent:] if sent else data)
        flush(transport)
