"""Read barriers: a packet that ends a client-side wait reaches the client in a read of its own.

Socket.IO clients built on Node's ``ws`` handle every frame of one TCP read synchronously
and only then run the continuations of promises those frames resolved. The upstream conat
client attaches some listeners in such continuations: a subscription's message listener
after its subscribe ack, the persist changefeed's listener after the reply to
``changefeed``. A delivery that rides in the same read as that ack or reply finds no
listener and is dropped (the first call to a new service hangs; the first changefeed
update is lost). Twisted writes everything queued for a connection during one reactor turn
in one ``send()``, so without care those packets do share a read.

A *barrier* packet therefore closes the current read for what follows it:

``BARRIER`` (a reply delivered on an inbox): a delivery for another *flow* (another
subscription) written before the barrier has left in a write of its own (see
:class:`Turns`) starts a hold.

``CONFIRM`` (a subscribe ack): everything written after it is held, whatever the turn.

A hold sends an Engine.IO ping right behind the barrier and keeps every later packet, in
order, until the client's pong comes back. The client answers the ping while it handles
the read that carried the ping, which comes no earlier than the barrier's read; the held
packets leave only after that, so they arrive in a later read, after the continuations of
the barrier's read have run. Ordinary traffic (acks, deliveries of the barrier's own flow,
anything in a later turn) is not held, so batching stays where it is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime

PLAIN: Final = 0
BARRIER: Final = 1
CONFIRM: Final = 2

_NO_FLOW: Final = object()
"""No barrier open."""


class Turns:
    """Counts reactor turns, lazily: ticks are scheduled only while a barrier needs them.

    A packet written during turn N leaves in the ``send()`` of turn N+1's poll, and that
    same poll may first run reads of other connections that write more to it; from turn
    N+2 on, it has left. One counter serves all connections of a factory, so a barrier
    costs an integer comparison rather than a timer per packet."""

    __slots__ = ("clock", "turn", "holds", "_until", "_call")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.turn = 0
        self.holds = 0
        """Holds started by the connections sharing this counter (a figure for /metrics)."""
        self._until = 0
        self._call: IDelayedCall | None = None

    def mark(self) -> int:
        """This turn's number; ticks go on until the packets written now have left."""
        self._until = self.turn + 2
        if self._call is None:
            self._call = self.clock.callLater(0, self._tick)
        return self.turn

    def left(self, turn: int) -> bool:
        """Have the packets written in ``turn`` left in a write of their own?"""
        return self.turn >= turn + 2

    def _tick(self) -> None:
        self._call = None
        self.turn += 1
        if self.turn < self._until:
            self._call = self.clock.callLater(0, self._tick)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


class ReadBarriers:
    """One connection's output, with the holds described in the module docstring.

    ``write`` takes bytes for the transport; ``ping`` sends an Engine.IO ping and returns
    its number (1, 2, … in sending order); :meth:`answered` is told how many pongs have
    come back. ``overflow`` is called when held bytes pass ``limit``."""

    __slots__ = ("_write", "_ping", "_turns", "_overflow", "_limit", "_flow", "_turn", "_held",
                 "_held_bytes", "_release_at")

    def __init__(self, write: Callable[[bytes], None], ping: Callable[[], int], turns: Turns,
                 overflow: Callable[[int], None], limit: int) -> None:
        self._write = write
        self._ping = ping
        self._turns = turns
        self._overflow = overflow
        self._limit = limit
        self._flow: object = _NO_FLOW
        self._turn = -1
        self._held: list[tuple[bytes, object, int]] | None = None
        self._held_bytes = 0
        self._release_at = 0

    @property
    def holding(self) -> bool:
        return self._held is not None

    def send(self, data: bytes, flow: object = None, order: int = PLAIN) -> None:
        held = self._held
        if held is not None:
            held.append((data, flow, order))
            self._held_bytes += len(data)
            if self._held_bytes > self._limit:
                self._overflow(self._held_bytes)
            return
        if (flow is not None and self._flow is not _NO_FLOW and flow is not self._flow
                and not self._turns.left(self._turn)):
            self._hold_from((data, flow, order))
            return
        self._write(data)
        if order == CONFIRM:
            self._hold_from(None)
        elif order == BARRIER:
            self._flow = flow
            self._turn = self._turns.mark()

    def _hold_from(self, first: tuple[bytes, object, int] | None) -> None:
        self._turns.holds += 1
        self._flow = _NO_FLOW
        self._release_at = self._ping()
        self._held = [] if first is None else [first]
        self._held_bytes = 0 if first is None else len(first[0])

    def answered(self, pongs: int) -> None:
        """``pongs`` pongs have come back in all: release the hold its ping started."""
        held = self._held
        if held is None or pongs < self._release_at:
            return
        self._held = None
        self._held_bytes = 0
        for data, flow, order in held:
            self.send(data, flow, order)

    def flush(self) -> None:
        """Write whatever is held (the connection is closing: nothing is lost to a hold)."""
        held, self._held = self._held, None
        self._held_bytes = 0
        self._flow = _NO_FLOW
        if held:
            self._write(b"".join(data for data, _, _ in held))

    def drop(self) -> None:
        self._held = None
        self._held_bytes = 0
