"""The ordered, acknowledged data layer of a conat socket (spec §6.3 "TCP layer").

Both ends use the same two halves: a :class:`Sender` that numbers every write
(``CN-SocketSeq`` 1, 2, 3…), keeps it until the peer says it has emitted it, resends the
newest unacknowledged one when acks stop coming, and answers the peer's requests for
missing numbers; and a :class:`Receiver` that emits strictly in order, asks for gaps and
acknowledges what it emitted. Both talk through a :class:`Link` (the socket).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import MSGPACK, Message

log = Logger()

SEQ = "CN-SocketSeq"
CMD = "CN-SocketCmd"
MAX_QUEUE = 1000
RESEND_FIRST, RESEND_FACTOR, RESEND_MAX, RESEND_GIVE_UP = 0.5, 1.3, 15.0, 120.0
ACK_EVERY = 0.0  # acks are coalesced into one per reactor turn


class Link(Protocol):
    reactor: IReactorTime

    def send_data(self, raw: bytes, encoding: int, headers: dict[str, Any]) -> None: ...
    def send_control(self, data: Any) -> Deferred[Message]: ...
    def reset(self, reason: str) -> None: ...


class Sender:
    """Numbers writes and keeps them until acknowledged."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.seq = 0
        self.unacked: dict[int, tuple[bytes, int, dict[str, Any]]] = {}
        self.acked = 0
        self.ready = False
        self.queued: list[tuple[bytes, int, dict[str, Any]]] = []
        self._resend: IDelayedCall | None = None
        self._delay = RESEND_FIRST
        self._stalled_since: float | None = None

    def write(self, raw: bytes, encoding: int = MSGPACK, headers: dict[str, Any] | None = None) -> None:
        if not self.ready:
            if len(self.queued) >= MAX_QUEUE:
                raise ConatError("ENOBUFS: too many writes queued while the socket is not ready", "ENOBUFS")
            self.queued.append((raw, encoding, dict(headers or {})))
            return
        self.seq += 1
        h = {**(headers or {}), SEQ: self.seq}
        self.unacked[self.seq] = (raw, encoding, h)
        self.link.send_data(raw, encoding, h)
        self._arm()

    def set_ready(self) -> None:
        self.ready = True
        queued, self.queued = self.queued, []
        for raw, encoding, headers in queued:
            self.write(raw, encoding, headers)

    def emitted(self, upto: int) -> None:
        """The peer emitted everything up to ``upto``: forget it."""
        if upto <= self.acked:
            return
        for s in [s for s in self.unacked if s <= upto]:
            del self.unacked[s]
        self.acked = upto
        self._delay = RESEND_FIRST
        self._stalled_since = None
        if not self.unacked:
            self._disarm()
        else:
            self._disarm()
            self._arm()

    def missing(self, seqs: list[int]) -> list[dict[str, Any]] | None:
        """What the peer asks for again; None when any of it is gone (the peer then resets)."""
        out = []
        for s in seqs:
            item = self.unacked.get(s) if isinstance(s, int) else None
            if item is None:
                return None
            raw, encoding, headers = item
            out.append({"encoding": encoding, "raw": raw, "headers": headers})
        return out

    def _arm(self) -> None:
        if self._resend is None or not self._resend.active():
            self._resend = self.link.reactor.callLater(self._delay, self._resend_last)

    def _disarm(self) -> None:
        if self._resend is not None and self._resend.active():
            self._resend.cancel()
        self._resend = None

    def _resend_last(self) -> None:
        """No ack for a while: send the newest unacknowledged write again, which makes the
        peer notice any gap before it and ask for it."""
        self._resend = None
        if not self.unacked:
            return
        now = self.link.reactor.seconds()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since > RESEND_GIVE_UP:
            self.link.reset("no acknowledgement for 2 minutes")
            return
        last = max(self.unacked)
        raw, encoding, headers = self.unacked[last]
        self.link.send_data(raw, encoding, headers)
        self._delay = min(self._delay * RESEND_FACTOR, RESEND_MAX)
        self._arm()

    def stop(self) -> None:
        self._disarm()


class Receiver:
    """Emits data strictly in sequence order; asks for gaps; acknowledges."""

    def __init__(self, link: Link, emit: Callable[[Message], None]) -> None:
        self.link = link
        self.emit = emit
        self.last = 0
        self.pending: dict[int, Message] = {}
        self._ack: Any = None
        self._asked: set[int] = set()

    def receive(self, msg: Message) -> None:
        seq = msg.header_map.get(SEQ)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            log.warn("conat socket: discarded a data message without a valid sequence number on {s}",
                     s=msg.subject)
            return
        if seq <= self.last or seq in self.pending:
            return  # a resend of something already here
        self.pending[seq] = msg
        self._flush()
        if self.pending:
            wanted = [s for s in range(self.last + 1, max(self.pending)) if s not in self.pending
                      and s not in self._asked]
            if wanted:
                self._ask(wanted)

    def _flush(self) -> None:
        progressed = False
        while self.last + 1 in self.pending:
            self.last += 1
            msg = self.pending.pop(self.last)
            self._asked.discard(self.last)
            headers = {k: v for k, v in msg.header_map.items() if k != SEQ}
            msg.headers = headers or None
            progressed = True
            try:
                self.emit(msg)
            except Exception:
                log.failure("conat socket: data handler failed")
        if progressed and (self._ack is None or not self._ack.active()):
            self._ack = self.link.reactor.callLater(ACK_EVERY, self._send_ack)

    def _send_ack(self) -> None:
        self._ack = None
        d = self.link.send_control({"socket": {"emitted": self.last}})
        d.addErrback(lambda f: None)  # a lost ack is made good by the sender's resend

    def _ask(self, seqs: list[int]) -> None:
        self._asked.update(seqs)

        def got(reply: Message) -> None:
            if reply.header_map.get("error") == "nodata" or not isinstance(reply.data, list):
                self.link.reset("the peer no longer has data we missed")
                return
            for item in reply.data:
                if not isinstance(item, dict) or not isinstance(item.get("raw"), bytes):
                    continue
                self.receive(Message(reply.client, reply.subject, item["raw"], int(item.get("encoding", 0)),
                                     item.get("headers")))

        def failed(f: Any) -> None:
            self._asked.difference_update(seqs)

        self.link.send_control({"socket": {"missing": seqs}}).addCallbacks(got, failed)

    def stop(self) -> None:
        if self._ack is not None and self._ack.active():
            self._ack.cancel()
        self._ack = None
