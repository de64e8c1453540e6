"""What the hub relies on in Twisted beyond its interfaces.

:class:`twisted.internet.tcp.Connection` (the TCP transport at the bottom of every
connection's stack, under TLS and the front door's shim):

* ``doWrite()`` (:class:`~twisted.internet.interfaces.IWriteDescriptor`, but called here
  outside the reactor's poll): sends what ``write`` buffered, as far as the kernel takes
  it, and returns None, or a failure reason when the socket failed (:func:`flush`);
  ``write`` itself only buffers until the reactor's next poll.
* the buffer's state: ``dataBuffer`` and ``offset`` (what is still to send of it),
  ``_tempDataBuffer`` (writes not yet joined into it), and the flags ``connected``,
  ``disconnecting``, ``_writeDisconnected``, ``_aborting`` and ``TLS`` (:func:`idle`);
* ``socket``: the connected socket object, written to with ``send`` (:func:`send_now`).

The conat transport (:mod:`cocalc_hub.conat.transport.flush` and ``.direct``) and the
proxy's writes to a backend (:func:`cocalc_hub.proxy.backend.write_now`) use these: Twisted
always queues a write and sends it on the next writable event, which costs a reactor round
and two epoll changes per small write on those hot paths; sending directly keeps bytes in
order only while nothing is queued, which only these attributes tell.

:data:`twisted.internet.process.reapProcessHandlers` (read only): the dict (pid → process)
of the children ``spawnProcess`` started and has not reaped yet (:func:`twisted_children`).
The project program is a subreaper (:mod:`cocalc_hub.project_agent.process`): orphaned
descendants of its commands become its children, and Twisted's SIGCHLD handling reaps only
the children in that dict. The program reaps the others itself and must leave Twisted's own
alone (reaping one would lose its exit status and ``processEnded``).

tests/internals/test_twisted.py fails, naming the missing piece, if Twisted changes them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import process, tcp


def tcp_connection(transport: object) -> tcp.Connection | None:
    """The TCP connection under ``transport`` (itself, or a few ``.transport`` links down)."""
    for _ in range(4):
        if isinstance(transport, tcp.Connection):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def is_plain(conn: tcp.Connection) -> bool:
    """Bytes written to ``conn`` go to its socket as they are (TLS is not started on it)."""
    return not conn.TLS


def idle(conn: tcp.Connection | None) -> bool:
    """Can bytes go straight to this connection's socket (open, TLS off, nothing buffered)?"""
    return (conn is not None and bool(conn.connected) and not conn.disconnecting and not conn._writeDisconnected
            and not conn._aborting and not conn.TLS and not conn._tempDataBuffer
            and conn.offset == len(conn.dataBuffer))


def flush(transport: object) -> None:
    """Send what is buffered for ``transport`` now, as far as the kernel takes it; the
    rest stays buffered for the reactor, as before."""
    conn = tcp_connection(transport)
    if conn is None or not conn.connected or conn.disconnecting:
        return
    if conn.doWrite() is not None:  # the socket failed: let Twisted tear it down as usual
        conn.abortConnection()


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


def twisted_children() -> set[int]:
    """The pids of children Twisted spawned and will reap itself."""
    return set(process.reapProcessHandlers)
