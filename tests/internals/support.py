"""Checks that a library still has the private internals the hub relies on."""

from __future__ import annotations

import inspect
import socket as pysocket
from importlib.metadata import version
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

MISSING = object()


def need(case: unittest.TestCase, lib: str, owner: Any, name: str, params: list[str] | None = None) -> Any:
    """``owner.name`` must exist (and, given ``params``, take those parameters first, after
    ``self``); otherwise the test fails, naming what cocalc_hub/internals/<lib>.py lost."""
    where = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', type(owner).__name__)}.{name}"
    installed = f"{lib} {version(lib)}"
    value = inspect.getattr_static(owner, name, MISSING) if isinstance(owner, type) else getattr(owner, name, MISSING)
    if value is MISSING:
        case.fail(f"{installed} has no {where}, which cocalc_hub/internals/{lib.lower()}.py relies on "
                  "(see its docstring; setup.cfg bounds the version for this reason)")
    if params is not None:
        got = list(inspect.signature(getattr(owner, name)).parameters)
        if got[:1] == ["self"]:
            got = got[1:]
        if got[:len(params)] != params:
            case.fail(f"{installed}: {where} takes ({', '.join(got)}), cocalc_hub/internals/{lib.lower()}.py "
                      f"calls it with ({', '.join(params)})")
    return value


class TcpPairCase(unittest.SynchronousTestCase):
    """A real :class:`twisted.internet.tcp.Connection` (``self.conn``) on one end of a
    socket pair, not registered with the reactor, and the other end (``self.peer``) to read
    what it sent: for checks of what Twisted's TCP transport does with its buffers."""

    def setUp(self) -> None:
        ours, self.peer = pysocket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.conn = tcp.Connection(ours, Protocol(), reactor)
        self.conn.connected = 1

        def close() -> None:
            self.conn.stopWriting()
            ours.close()
            self.peer.close()

        self.addCleanup(close)

    def received(self) -> bytes:
        try:
            return self.peer.recv(65536)
        except BlockingIOError:
            return b""
