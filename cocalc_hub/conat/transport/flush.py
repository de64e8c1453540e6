"""Writes that leave at the end of the read that caused them, as a Node server's do.

Twisted keeps what a protocol writes in the transport's buffer until the reactor's next
poll. Under load one poll hands the hub many ready connections, so an ack written while
handling the first of them waited until every other one had been handled too: a publish's
ack took ~190 ms with four busy streams on the same hub (benchmarks/bench_barriers.py,
``acks``), and clients closed with acks outstanding (upstream's socket/basic test). Node
writes to the socket at once. :func:`flush` sends a connection's buffered bytes now; the
engine calls it for every connection it wrote to while handling one read, at the end of
that read, so the packets one read produces still leave together.

This is the one place that relies on Twisted beyond its interfaces: the TCP transport at
the bottom of a connection's stack (under TLS and the front door's shim, each of which
writes through at once) is a :class:`twisted.internet.tcp.Connection`, whose ``doWrite``
(:class:`~twisted.internet.interfaces.IWriteDescriptor`) the reactor would otherwise call
on its next poll. tests/conat/test_flush.py fails if that stops being so.
"""

from __future__ import annotations

from twisted.internet import tcp


def socket_transport(transport: object) -> tcp.Connection | None:
    """The TCP connection under ``transport`` (itself, or a few ``.transport`` links down)."""
    for _ in range(4):
        if isinstance(transport, tcp.Connection):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def flush(transport: object) -> None:
    """Send what is buffered for ``transport`` now, as far as the kernel takes it; the
    rest stays buffered for the reactor, as before."""
    conn = socket_transport(transport)
    if conn is None or not conn.connected or conn.disconnecting:
        return
    if conn.doWrite() is not None:  # the socket failed: let Twisted tear it down as usual
        conn.abortConnection()
