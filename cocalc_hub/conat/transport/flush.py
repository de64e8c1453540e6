"""Writes that leave at the end of the read that caused them, as a Node server's do.

Twisted keeps what a protocol writes in the transport's buffer until the reactor's next
poll. Under load one poll hands the hub many ready connections, so an ack written while
handling the first of them waited until every other one had been handled too: a publish's
ack took ~190 ms with four busy streams on the same hub (benchmarks/bench_barriers.py,
``acks``), and clients closed with acks outstanding (upstream's socket/basic test). Node
writes to the socket at once. :func:`flush` sends a connection's buffered bytes now; the
engine calls it for every connection it wrote to while handling one read, at the end of
that read, so the packets one read produces still leave together.

This relies on Twisted beyond its interfaces: the TCP transport at the bottom of a
connection's stack (under TLS and the front door's shim, each of which writes through at
once) is a :class:`twisted.internet.tcp.Connection`, whose ``doWrite``
(:class:`~twisted.internet.interfaces.IWriteDescriptor`) the reactor would otherwise call
on its next poll. That access lives in :mod:`cocalc_hub.internals.twisted`;
tests/conat/test_flush.py and tests/internals/test_twisted.py fail if it stops being so.
"""

from __future__ import annotations

from cocalc_hub.internals.twisted import flush

__all__ = ["flush"]
