"""What the broker keeps per client and per message.

A :class:`Connection` is one client (socket or in-process) with its subscriptions and
its FIFO of incoming events; :class:`Interest` is everyone subscribed to one pattern, by
queue group; :class:`Routed` is a published chunk on its way out, encoded for sockets
at most once however many subscribers receive it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from cocalc_hub.conat.permissions import PUB, User, decide
from cocalc_hub.conat.transport.barriers import BARRIER, PLAIN
from cocalc_hub.conat.transport.packets import dumps

if TYPE_CHECKING:
    from cocalc_hub.conat.broker import Broker

log = Logger()

MAX_QUEUED = 2000
"""Events waiting in one connection's pipeline before its input is paused."""

_subject_json: dict[str, str] = {}


def subject_json(subject: str) -> str:
    """Subjects repeat: their JSON is remembered (a bounded cache)."""
    out = _subject_json.get(subject)
    if out is None:
        if len(_subject_json) > 20000:
            _subject_json.clear()
        out = _subject_json[subject] = dumps(subject)
    return out


class Routed:
    """One published chunk on its way to subscribers; encoded at most once."""

    __slots__ = ("subject", "id", "seq", "done", "encoding", "raw", "headers", "headers_json", "_body")

    def __init__(self, subject: str, mid: Any, seq: int, done: Any, encoding: int, raw: bytes,
                 headers: Any, headers_json: str | None = None) -> None:
        self.subject = subject
        self.id = mid
        self.seq = seq
        self.done = done
        self.encoding = encoding
        self.raw = raw
        self.headers = headers
        self.headers_json = headers_json
        self._body: str | None = None

    def body(self) -> str:
        """``{"subject":…,"data":[…]}]``: what follows the event name in a delivery."""
        body = self._body
        if body is None:
            mid = self.id
            mid_json = f'"{mid}"' if type(mid) is str and mid.isalnum() and mid.isascii() else dumps(mid)
            done = self.done
            done_json = str(done) if type(done) is int else dumps(done)
            if self.headers is None:
                tail = ""
            else:
                tail = "," + (self.headers_json if self.headers_json is not None else dumps(self.headers))
            body = self._body = (
                f'{{"subject":{subject_json(self.subject)},"data":[{mid_json},{self.seq},{done_json},'
                f'{self.encoding},{{"_placeholder":true,"num":0}}{tail}]}}]')
        return body

    def data(self) -> list[Any]:
        out = [self.id, self.seq, self.done, self.encoding, self.raw]
        if self.headers is not None:
            out.append(self.headers)
        return out


class BrokerSubscription:
    """One subscription of one connection, as the broker routes it (the client side has
    :class:`cocalc_hub.conat.message.Subscription`)."""

    __slots__ = ("conn", "pattern", "queue", "prefix", "interest", "order")

    def __init__(self, conn: Connection, pattern: str, queue: str) -> None:
        self.conn = conn
        self.pattern = pattern
        self.queue = queue
        self.prefix = f"451-[{dumps(pattern)},"
        self.interest: Interest | None = None
        self.order = BARRIER if pattern.startswith("_INBOX") else PLAIN
        """A delivery on an inbox is a reply: the client may attach listeners for other
        subjects once it has it (the persist changefeed does), so it ends the client's read."""


class Interest:
    """Everyone subscribed to one pattern, by queue group."""

    __slots__ = ("pattern", "groups", "silent")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.groups: dict[str, list[BrokerSubscription]] = {}
        self.silent = pattern == ">"


MAX_REPLIES = 2000
"""Reply subjects remembered per connection (requests it may still answer); past it the
expired ones go, then the least recently used."""
REPLY_TTL = 600.0
"""Seconds a request delivered here stays answerable while unanswered."""
REPLY_IDLE = 60.0
"""Seconds a reply subject stays answerable after each reply published to it. The broker
cannot tell ``request`` from ``requestMany`` (upstream marks neither), so a stream of
replies keeps its subject alive and a single reply lets it lapse soon after."""


def owns_reply(user: User | None, reply: str) -> bool:
    """May a request from ``user`` name ``reply`` as its reply subject? Only its own inbox
    (``_INBOX.<kind>-<id>.``, the one the subscription rules let it read), unless it is
    the hub or the system."""
    if user is None or user.is_hub:
        return True
    return reply.startswith(f"_INBOX.{user.kind}-{user.id}.")


class Connection:
    """A client of the broker; subclasses say how events reach it."""

    address = ""

    def __init__(self, broker: Broker, conn_id: str) -> None:
        self.broker = broker
        self.id = conn_id
        self.user: User | None = None
        self.handshake: Any = None
        self.subs: dict[str, BrokerSubscription] = {}
        self.queue: deque[tuple[str, list[Any], Any]] = deque()
        self.blocked = True
        """True until signed in, and while an event waits for the database."""
        self.rejected = False
        self.closed = False
        self.paused = False
        self.counted: str | None = None
        self.info_acked = False
        self.timers: list[IDelayedCall] = []
        self.waiters: set[Waiter] = set()
        self.sticky: dict[tuple[Any, int, str], BrokerSubscription] = {}
        self.pub_cache: dict[str, tuple[bool, int]] = {}
        self.sub_cache: dict[str, tuple[bool, int]] = {}
        self.replies: OrderedDict[str, float] = OrderedDict()
        """Reply subjects (``CN-Reply``) of requests delivered here, each with the time it
        lapses: the only other clients' inboxes this client may publish to."""
        self.replies_pruned = 0.0
        now = time.time()
        self.stats: dict[str, Any] = {
            "send": {"messages": 0, "bytes": 0}, "recv": {"messages": 0, "bytes": 0}, "subs": 0,
            "connected": int(now * 1000), "active": int(now * 1000), "address": ""}

    # what subclasses provide
    def deliver(self, sub: BrokerSubscription, msg: Routed) -> None:
        raise NotImplementedError

    def emit(self, event: str, payload: Any, callback: Callable[[list[Any]], None] | None = None) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        raise NotImplementedError

    def pause_input(self) -> None:
        pass

    def resume_input(self) -> None:
        pass

    # the pipeline ------------------------------------------------------------------------

    def incoming(self, name: str, args: list[Any], ack: Callable[..., None] | None) -> None:
        if self.closed or self.rejected:
            return
        if self.blocked or self.queue:
            self.queue.append((name, args, ack))
            if len(self.queue) > MAX_QUEUED and not self.paused:
                self.paused = True
                self.pause_input()
            return
        result = self.broker.handle(self, name, args, ack)
        if result is not None:
            self._wait(result)

    def _wait(self, d: Deferred[Any]) -> None:
        self.blocked = True
        d.addErrback(lambda f: log.failure("conat: event failed", f))
        d.addBoth(lambda _: self.unblock())

    def unblock(self) -> None:
        self.blocked = False
        handle = self.broker.handle
        queue = self.queue
        while queue and not self.blocked and not self.closed and not self.rejected:
            name, args, ack = queue.popleft()
            result = handle(self, name, args, ack)
            if result is not None:
                self._wait(result)
        if self.paused and len(queue) < MAX_QUEUED // 4:
            self.paused = False
            self.resume_input()

    # permissions, cached per connection ---------------------------------------------------------

    def allowed(self, subject: str, kind: str) -> bool | Deferred[bool]:
        user = self.user
        assert user is not None
        if user.is_hub:
            return True
        if kind == PUB and subject.startswith("_INBOX."):
            # Upstream lets anyone publish to any inbox; here only to one's own, or as the
            # answer to a request this connection was given (no spoofed replies).
            return subject.startswith(f"_INBOX.{user.kind}-{user.id}.") or self._answering(subject)
        perms = self.broker.permissions
        cache = self.pub_cache if kind == PUB else self.sub_cache
        hit = cache.get(subject)
        if hit is not None and (hit[1] < 0 or hit[1] == perms.generation):
            return hit[0]
        if len(cache) > 2000:
            cache.clear()
        verdict = perms.allowed(user, subject, kind)
        if isinstance(verdict, bool):
            static = isinstance(decide(user, subject, kind), bool)
            cache[subject] = (verdict, -1 if static else perms.generation)
            return verdict
        generation = perms.generation

        def remember(ok: bool) -> bool:
            cache[subject] = (ok, generation)
            return ok

        return verdict.addCallback(remember)

    def may_answer(self, reply: Any) -> None:
        """A request with this reply subject was delivered here (its publisher owns it)."""
        if isinstance(reply, str) and self.user is not None and not self.user.is_hub:
            now = self.broker.reactor.seconds()
            replies = self.replies
            replies[reply] = now + REPLY_TTL
            replies.move_to_end(reply)
            if len(replies) > MAX_REPLIES:
                if now - self.replies_pruned >= 1.0:
                    self.replies_pruned = now
                    for subject in [s for s, lapses in replies.items() if lapses <= now]:
                        del replies[subject]
                while len(replies) > MAX_REPLIES:
                    replies.popitem(last=False)

    def _answering(self, subject: str) -> bool:
        """May this client reply on ``subject`` now? If so it has REPLY_IDLE more seconds."""
        lapses = self.replies.get(subject)
        if lapses is None:
            return False
        now = self.broker.reactor.seconds()
        if lapses <= now:
            del self.replies[subject]
            return False
        self.replies[subject] = now + REPLY_IDLE
        self.replies.move_to_end(subject)
        return True

    def forget_cache(self) -> None:
        self.pub_cache.clear()
        self.sub_cache.clear()


class Waiter:
    __slots__ = ("conn", "subject", "ack", "timer")

    def __init__(self, conn: Connection, subject: str, ack: Callable[..., None]) -> None:
        self.conn = conn
        self.subject = subject
        self.ack = ack
        self.timer: IDelayedCall | None = None
