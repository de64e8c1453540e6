"""The Twisted private internals the proxy and the project program rely on
(cocalc_hub/internals/twisted.py: a TCP connection's send buffer, Twisted's own children)
still exist in the installed Twisted and still mean what that module assumes. When one of these fails,
Twisted changed: update the module named in the message (and setup.cfg's bound), do not
weaken the test."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, process, protocol, reactor, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from cocalc_hub.internals import twisted as internals
from cocalc_hub.internals.twisted import idle
from cocalc_hub.proxy.backend import write_now
from tests.support import until

PROBED = ("dataBuffer", "offset", "_tempDataBuffer", "_writeDisconnected", "disconnecting", "_aborting", "TLS")

CHANGED = "the installed Twisted ({version}) changed an internal that {module} relies on: {what}"


def changed(module: Any, what: str) -> str:
    import twisted

    return CHANGED.format(version=twisted.__version__, module=module.__name__, what=what)


class _Sink(protocol.Protocol):
    """Collects what arrives until ``expected`` bytes have."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(bytes(self.received))


class TcpBufferProbe(unittest.TestCase):
    timeout = 30

    async def connection(self, expected: int) -> tuple[Any, _Sink]:
        sink = _Sink(expected)
        factory = protocol.Factory.forProtocol(lambda: sink)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                                       protocol.Protocol())
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport else None)
        return client.transport, sink

    async def test_attributes_exist_on_a_real_connection(self) -> None:
        transport, _ = await self.connection(0)
        self.assertIsInstance(transport, tcp.Connection,
                              changed(internals, "a plain TCP client transport is no longer a tcp.Connection"))
        for name in PROBED:
            self.assertTrue(hasattr(transport, name), changed(internals, f"tcp.Connection has no {name!r}"))
        self.assertTrue(hasattr(transport, "socket"), changed(internals, "tcp.Connection has no 'socket'"))

    async def test_the_probe_tells_an_empty_buffer_from_a_full_one(self) -> None:
        big = b"x" * (8 * 1024 * 1024)
        transport, sink = await self.connection(len(big) + len(b"hello") + len(b"tail"))
        self.assertTrue(idle(transport), changed(internals, "an idle connection looks busy"))
        write_now(transport, b"hello")
        self.assertTrue(idle(transport),
                        changed(internals, "a small direct send left something queued"))
        transport.write(big)  # queued: Twisted sends on the next writable event
        self.assertFalse(idle(transport),
                         changed(internals, "bytes queued by write() are not seen (a direct send would reorder)"))
        write_now(transport, b"tail")  # must queue behind them
        received = await sink.done
        self.assertEqual(received, b"hello" + big + b"tail",
                         changed(internals, "bytes were reordered or lost around a queued write"))

        await until(lambda: idle(transport), what="the send buffer to drain")
        transport.loseWriteConnection()  # done on the next writable event

        def shut() -> bool:
            return bool(getattr(transport, "_writeDisconnected", False))

        await until(shut, timeout=10, what=changed(internals, "_writeDisconnected is never set by a half-close"))
        self.assertFalse(idle(transport),
                         changed(internals, "a connection whose write side is shut down looks writable"))


class _Ends(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class ProcessReapingProbe(unittest.TestCase):
    timeout = 30

    def test_the_dict_exists(self) -> None:
        self.assertIsInstance(getattr(process, "reapProcessHandlers", None), dict,
                              changed(internals, "twisted.internet.process.reapProcessHandlers is gone"))

    async def test_a_spawned_child_is_listed_until_twisted_reaped_it(self) -> None:
        ends = _Ends()
        transport = reactor.spawnProcess(ends, sys.executable, [sys.executable, "-c", "import sys; sys.stdin.read()"],
                                         env=None)
        pid = transport.pid
        self.assertIn(pid, internals.twisted_children(),
                      changed(internals, "a child spawnProcess started is not in reapProcessHandlers"))
        transport.closeStdin()
        await ends.ended
        self.assertNotIn(pid, internals.twisted_children(),
                         changed(internals, "a child Twisted reaped is still in reapProcessHandlers"))
