"""Is a plain TCP transport's send buffer empty? (Twisted private internals.)

Touches, on :class:`twisted.internet.tcp.Connection` (from
:class:`twisted.internet.abstract.FileDescriptor`), read only:

- ``dataBuffer`` and ``offset``: the bytes ``write`` queued and how many of them were sent;
- ``_tempDataBuffer``: writes not yet joined into ``dataBuffer`` (an instance attribute);
- ``_writeDisconnected``: the write side was shut down.

Why: Twisted's transports always queue a write and send it on the next writable event.
The proxy writes one small head per request; sending it at once when nothing is queued
(:func:`cocalc_hub.proxy.backend.write_now`) saves a reactor round and two epoll changes
per write on its hot path. Sending directly is only correct when nothing is queued (or
bytes would be reordered), which only these attributes tell.

tests/test_internals_twisted.py checks that they exist on a real connection and mean
what this module assumes.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from twisted.internet import tcp

PROBED = ("dataBuffer", "offset", "_tempDataBuffer", "_writeDisconnected")
"""The private attributes read here (the test checks each)."""


def nothing_queued(transport: Any) -> TypeGuard[tcp.Connection]:
    """A connected plain TCP transport with nothing waiting to be sent (so a direct
    ``transport.socket.send`` keeps bytes in order). TLS and anything else: False."""
    return bool(isinstance(transport, tcp.Connection) and transport.connected and not transport._writeDisconnected
                and not transport._tempDataBuffer and len(transport.dataBuffer) == transport.offset)
