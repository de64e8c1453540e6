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

What this needs of Twisted's TCP connection beyond its interfaces (its buffer's state,
its socket) is in :mod:`cocalc_hub.internals.twisted`, which :func:`idle` and
:func:`send_now` come from.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from cocalc_hub.internals.twisted import idle, is_plain, send_now

__all__ = ["idle", "plain_tcp", "send_now"]


def plain_tcp(transport: Any) -> tcp.Connection | None:
    """The TCP connection that is ``transport`` or directly under the front door's shim,
    if nothing (such as TLS) transforms the bytes between; else None."""
    front = getattr(transport, "front", None)
    if front is not None:
        transport = getattr(front, "transport", None)
    if isinstance(transport, tcp.Connection) and is_plain(transport):
        return transport
    return None
