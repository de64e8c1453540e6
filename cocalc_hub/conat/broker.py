"""The conat broker: subjects, interest, delivery, limits, and the per-connection pipeline.

Every connection (a WebSocket client or an in-process one) has a FIFO of incoming events.
Nothing is processed before the connection's credentials are checked, and an event that
needs the database (a membership question) holds the events behind it, so a client's
publishes are routed in the order it sent them. Delivery is one event per matching
(pattern, queue group): the event name is the pattern, the payload ``{subject, data}``,
and the message bytes travel as the one binary attachment. ``count`` is the number of
deliveries except those to the pattern ``>``.

Chunks of one multi-chunk message go to the same member of a queue group (upstream picks
a member per chunk, which splits and loses such messages).

(Just past the ~600-line guide, on purpose: the per-connection pipeline (sign-in, publish,
subscribe, wait-for-interest, revocation) reads as one unit; the hub-side hooks are already
out (cocalc_hub/bus/). Routing across nodes (issue 18) is where it splits: local delivery
apart from the routing table.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from random import random
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.connection import BrokerSubscription, Connection, Interest, Routed, Waiter, owns_reply
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.patterns import Index, is_valid_subject, is_valid_subject_without_wildcards, matches
from cocalc_hub.conat.permissions import OPEN_USER, PUB, SUB, Permissions, User, project_of
from cocalc_hub.conat.transport.packets import RESERVED_EVENTS
from cocalc_hub.conat.transport.packets import headers_json as headers_text
from cocalc_hub.conat.transport.socket import Ack

log = Logger()

MAX_WAITERS = 1000
"""Open wait-for-interest requests per connection."""
MAX_STICKY = 1000
MAX_INTEREST_TIMEOUT = 90.0
_COUNT_ACKS = tuple(f'[{{"count":{n}}}]' for n in range(64))
"""A publish's ack as a socket sends it (``{"count": n}``), written once."""


@dataclass
class BrokerConfig:
    server_id: str = "0"
    cluster_name: str | None = None
    address: str = "http://127.0.0.1:5000"
    """What the ``cluster`` event answers: where clients can reach this broker."""
    max_payload: int = 8_000_000
    max_subscriptions_per_client: int = 500
    max_subscriptions_per_hub: int = 15000
    max_connections_per_user: int = 100
    max_connections: int = 10000
    info_ack_timeout: float = 7.5
    info_retry: float = 6.5
    info_retry_factor: float = 1.3
    info_retry_cap: float = 30.0
    info_give_up: float = 120.0
    auth_failure_delay: float = 0.025


Authenticate = Callable[[Any], Awaitable[User | ConatError]]


class Broker:
    """Interest, routing and the conat events; transports feed it connections."""

    def __init__(self, reactor: IReactorTime, *, authenticate: Authenticate | None = None,
                 permissions: Permissions | None = None, config: BrokerConfig | None = None) -> None:
        self.reactor = reactor
        self.config = config or BrokerConfig()
        self.authenticate = authenticate
        self.permissions = permissions or Permissions(None, reactor.seconds)
        self.index: Index[Interest] = Index()
        self.connections: dict[str, Connection] = {}
        self.per_user: dict[str, int] = {}
        self.total = 0
        self.waiters: set[Waiter] = set()
        self.on_signed_in: Callable[[Connection], None] | None = None  # (the hub: expiry timers)
        self.messages_routed = 0
        self.deliveries = 0
        self.invalid_messages = 0
        self.subscriptions = 0
        self._handlers: dict[str, Callable[[Connection, list[Any], Any], Deferred[Any] | None]] = {
            "publish": self._publish,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "subscriptions": self._subscriptions,
            "wait-for-interest": self._wait_for_interest,
            "stats": self._stats,
            "cluster": self._cluster,
        }

    # connections -----------------------------------------------------------------------------

    def attach(self, conn: Connection, credentials: Any) -> None:
        """A new connection: authenticate it, then open its pipeline (or turn it away)."""
        self.connections[conn.id] = conn
        if self.authenticate is None:
            self._signed_in(conn, OPEN_USER)
            return

        async def run() -> None:
            assert self.authenticate is not None
            try:
                result = await self.authenticate(credentials)
            except Exception as e:
                log.failure("conat: authentication failed unexpectedly")
                result = ConatError(str(e) or "authentication failed")
            if isinstance(result, ConatError):
                self._reject(conn, result)
            else:
                self._signed_in(conn, result)

        ensureDeferred(run())

    def info(self, user_info: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"max_payload": self.config.max_payload, "id": self.config.server_id}
        if self.config.cluster_name:
            out["clusterName"] = self.config.cluster_name
        out["user"] = user_info
        return out

    def _reject(self, conn: Connection, error: ConatError) -> None:
        if conn.closed:
            return
        conn.rejected = True
        conn.queue.clear()
        log.debug("conat: refused {id} from {addr}: {error}", id=conn.id, addr=conn.stats["address"], error=str(error))
        user = {"error": f"Error: {error}"}
        if error.code is not None:
            user["code"] = error.code  # type: ignore[assignment]
        conn.emit("info", self.info(user))
        conn.timers.append(self.reactor.callLater(self.config.auth_failure_delay, conn.disconnect))

    def attach_signed_in(self, conn: Connection, user: User) -> None:
        """An in-process connection whose user is known; internal, so not counted."""
        self.connections[conn.id] = conn
        self._signed_in(conn, user, count=False)

    def _signed_in(self, conn: Connection, user: User, count: bool = True) -> None:
        if conn.closed:
            return
        cfg = self.config
        key = user.limit_key
        if count:
            if self.total >= cfg.max_connections:
                self._reject(conn, ConatError(
                    f"There is a global limit of {cfg.max_connections} connections to CoCalc.   "
                    "Please close browser tabs or files or come back later.", 429))
                return
            if self.per_user.get(key, 0) >= cfg.max_connections_per_user:
                self._reject(conn, ConatError(
                    f"There is a per user limit of {cfg.max_connections_per_user} connections to CoCalc.   "
                    "Please close browser tabs or files or come back later.", 429))
                return
            self.per_user[key] = self.per_user.get(key, 0) + 1
            self.total += 1
            conn.counted = key
        conn.user = user
        log.debug("conat: {id} signed in from {addr} as {user}", id=conn.id, addr=conn.stats["address"],
                  user=key)  # limit_key is the user's JSON: not encoded twice per connection
        self._send_info(conn, self.reactor.seconds(), cfg.info_retry)
        conn.unblock()
        if self.on_signed_in is not None:
            self.on_signed_in(conn)

    def _send_info(self, conn: Connection, started: float, delay: float) -> None:
        if conn.closed or conn.info_acked or conn.user is None:
            return
        cfg = self.config

        def acked(_: list[Any]) -> None:
            conn.info_acked = True

        conn.emit("info", self.info(conn.user.info), acked)

        def check() -> None:
            if conn.closed or conn.info_acked:
                return
            if self.reactor.seconds() - started + delay > cfg.info_give_up:
                return
            conn.timers.append(self.reactor.callLater(
                delay, self._send_info, conn, started,
                max(5.0, min(cfg.info_retry_cap, delay * cfg.info_retry_factor))))

        conn.timers.append(self.reactor.callLater(cfg.info_ack_timeout, check))

    def detach(self, conn: Connection) -> None:
        """The connection is gone, whatever the cause: forget everything about it."""
        if conn.closed:
            return
        conn.closed = True
        conn.queue.clear()
        self.connections.pop(conn.id, None)
        for timer in conn.timers:
            if timer.active():
                timer.cancel()
        conn.timers.clear()
        for waiter in list(conn.waiters):
            self._drop_waiter(waiter)
        for sub in list(conn.subs.values()):
            self._remove(sub)
        conn.subs.clear()
        conn.sticky.clear()
        if conn.counted is not None:
            n = self.per_user.get(conn.counted, 0) - 1
            if n > 0:
                self.per_user[conn.counted] = n
            else:
                self.per_user.pop(conn.counted, None)
            self.total -= 1
            conn.counted = None

    def replace_user(self, conn: Connection, user: User) -> None:
        """The same connection, re-checked: new admin flag or the like."""
        conn.user = user
        conn.forget_cache()

    def revoke(self, conn: Connection, error: ConatError) -> None:
        """A signed-in connection whose credentials stopped working: tell it and close it."""
        if conn.closed:
            return
        log.info("conat: closing connection {id} of {user}: {error}", id=conn.id,
                 user=conn.user.json if conn.user else "?", error=str(error))
        for sub in list(conn.subs.values()):
            self._remove(sub)
        conn.subs.clear()
        self._reject(conn, error)

    # events -------------------------------------------------------------------------------------

    def handle(self, conn: Connection, name: str, args: list[Any], ack: Any) -> Deferred[Any] | None:
        handler = self._handlers.get(name)
        if handler is None:
            return None
        conn.stats["active"] = int(time.time() * 1000)
        try:
            return handler(conn, args, ack)
        except Exception:
            log.failure("conat: {event} failed", event=name)
            if ack is not None:
                ack({"error": "Error: internal error"})
            return None

    def _invalid(self, conn: Connection, subject: Any, ack: Any, what: str) -> None:
        """A chunk the broker cannot route: the error goes to the sender's ack, and a debug
        line says who sent what (a publish without an ack has nobody else to be told)."""
        self.invalid_messages += 1
        log.debug("conat: {what} from {conn} to {subject!r} not routed", what=what, conn=conn.id,
                  subject=subject if isinstance(subject, str) else type(subject).__name__)
        if ack is not None:
            ack({"error": f"Error: {what}"})

    def _publish(self, conn: Connection, args: list[Any], ack: Any) -> Deferred[Any] | None:
        data = args[0] if args else None
        if not isinstance(data, list) or len(data) < 6:
            self._invalid(conn, None, ack, "invalid message")
            return None
        subject = data[0]
        user = conn.user
        assert user is not None
        if not user.is_hub:
            hit = conn.pub_cache.get(subject) if isinstance(subject, str) else None
            if hit is None or not (hit[1] < 0 or hit[1] == self.permissions.generation):
                if not is_valid_subject_without_wildcards(subject):
                    self._invalid(conn, subject, ack, "invalid subject")
                    return None
            verdict = conn.allowed(subject, PUB)
            if verdict is False:
                self._deny(conn, subject, PUB, ack)
                return None
            if verdict is not True:
                def decided(ok: bool) -> None:
                    if ok:
                        self._route_and_ack(conn, data, ack)
                    else:
                        self._deny(conn, subject, PUB, ack)

                return verdict.addCallback(decided)
        elif not is_valid_subject_without_wildcards(subject):
            self._invalid(conn, subject, ack, "invalid subject")
            return None
        self._route_and_ack(conn, data, ack)
        return None

    def _route_and_ack(self, conn: Connection, data: list[Any], ack: Any) -> None:
        subject, mid, seq, done, encoding, raw = data[0], data[1], data[2], data[3], data[4], data[5]
        headers = data[6] if len(data) > 6 else None
        # index 7 (cluster targets) is never trusted from a client.
        # Headers are any JSON value (upstream forwards "x", 7, [1,2], true unchanged).
        if (not isinstance(raw, bytes) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0
                or not isinstance(encoding, int) or not isinstance(mid, (str, int))):
            self._invalid(conn, subject, ack, "invalid message")
            return
        stats = conn.stats["send"]
        stats["bytes"] += len(raw)
        if done:
            stats["messages"] += 1
        headers_json = None
        if headers is not None:
            try:
                headers_json = headers_text(headers)  # once here, not once per delivery
            except (RecursionError, ValueError):
                self._invalid(conn, subject, ack, "invalid message headers")
                return
        count = self.route(conn, subject, mid, seq, done, encoding, raw, headers, headers_json)
        if ack is not None:
            if type(ack) is Ack:
                ack.raw(_COUNT_ACKS[count] if count < len(_COUNT_ACKS) else f'[{{"count":{count}}}]')
            else:
                ack({"count": count})

    def route(self, conn: Connection | None, subject: str, mid: Any, seq: int, done: Any, encoding: int,
              raw: bytes, headers: Any, headers_json: str | None = None) -> int:
        """Deliver one chunk to one member of every (matching pattern, queue group)."""
        interests = self.index.match(subject)
        self.messages_routed += 1
        if not interests:
            return 0
        msg = Routed(subject, mid, seq, done, encoding, raw, headers, headers_json)
        reply = headers.get("CN-Reply") if type(headers) is dict else None
        if isinstance(reply, str) and conn is not None and not owns_reply(conn.user, reply):
            reply = None  # delivered, but answerable only by the inbox's owner
        single = seq == 0 and bool(done)
        count = 0
        deliveries = 0
        for interest in interests:
            for queue, members in list(interest.groups.items()):
                n = len(members)
                if n == 1:
                    target = members[0]
                elif single or conn is None:
                    target = members[int(random() * n)]
                else:
                    target = self._sticky(conn, mid, interest, queue, members, bool(done))
                target.conn.deliver(target, msg)
                target.conn.may_answer(reply)
                deliveries += 1
                if not interest.silent:
                    count += 1
        self.deliveries += deliveries
        return count

    @staticmethod
    def _sticky(conn: Connection, mid: Any, interest: Interest, queue: str, members: list[BrokerSubscription],
                done: bool) -> BrokerSubscription:
        key = (mid, id(interest), queue)
        chosen = conn.sticky.get(key)
        if chosen is None or chosen not in members:
            chosen = members[int(random() * len(members))]
            if len(conn.sticky) >= MAX_STICKY:
                conn.sticky.clear()
            conn.sticky[key] = chosen
        if done:
            conn.sticky.pop(key, None)
        return chosen

    def _deny(self, conn: Connection, subject: Any, kind: str, ack: Any = None) -> dict[str, Any]:
        """403: the ``permission`` event first (clients cache it), then the ack."""
        user = conn.user
        verb = "publishing to" if kind == PUB else "subscribing to"
        message = f"permission denied {verb} '{subject}' from {user.json if user else 'null'}"
        conn.emit("permission", {"message": message, "subject": subject, "type": kind})
        error = {"error": f"Error: {message}", "code": 403}
        if ack is not None:
            ack(error)
        return error

    # subscriptions ---------------------------------------------------------------------------------

    def _subscribe(self, conn: Connection, args: list[Any], ack: Any) -> Deferred[Any] | None:
        spec = args[0] if args else None
        if isinstance(spec, list):
            async def many() -> None:
                results = []
                for item in spec:
                    result = self.subscribe_one(conn, item)
                    if isinstance(result, Deferred):
                        result = await result
                    results.append(result)
                if ack is not None:
                    _ack_subscribed(ack, results, any(r.get("status") == "added" for r in results))

            return ensureDeferred(many())
        result = self.subscribe_one(conn, spec)
        if isinstance(result, Deferred):
            return result.addCallback(
                lambda r: _ack_subscribed(ack, r, r.get("status") == "added") if ack is not None else None)
        if ack is not None:
            _ack_subscribed(ack, result, result.get("status") == "added")
        return None

    def subscribe_one(self, conn: Connection, spec: Any) -> dict[str, Any] | Deferred[dict[str, Any]]:
        if not isinstance(spec, dict):
            return {"error": "Error: invalid subscription"}
        subject, queue = spec.get("subject"), spec.get("queue")
        if isinstance(subject, str) and subject in conn.subs:
            return {"status": "already-added"}
        if not isinstance(queue, str):
            return {"error": "Error: queue must be defined"}
        if not is_valid_subject(subject):
            return {"error": "Error: invalid subject"}
        assert isinstance(subject, str)
        if subject in RESERVED_EVENTS:
            return {"error": f"Error: '{subject}' is reserved by socket.io and cannot be delivered"}
        verdict = conn.allowed(subject, SUB)
        if verdict is True:
            return self._add_checked(conn, subject, queue)
        if verdict is False:
            return self._deny(conn, subject, SUB)

        def decided(ok: bool) -> dict[str, Any]:
            if conn.closed:
                return {"error": "Error: disconnected"}
            if subject in conn.subs:
                return {"status": "already-added"}
            return self._add_checked(conn, subject, queue) if ok else self._deny(conn, subject, SUB)

        return verdict.addCallback(decided)

    def _add_checked(self, conn: Connection, subject: str, queue: str) -> dict[str, Any]:
        user = conn.user
        limit = (self.config.max_subscriptions_per_hub if user is not None and user.is_hub
                 else self.config.max_subscriptions_per_client)
        if len(conn.subs) >= limit:
            return {"error": f"Error: there is a limit of at most {limit} subscriptions and you currently have "
                             f"{len(conn.subs)} subscriptions -- subscription to '{subject}' denied",
                    "code": 429}
        self.add(conn, subject, queue)
        return {"status": "added"}

    def add(self, conn: Connection, pattern: str, queue: str) -> BrokerSubscription:
        """Register a subscription (already validated and authorised)."""
        sub = BrokerSubscription(conn, pattern, queue)
        conn.subs[pattern] = sub
        conn.stats["subs"] = len(conn.subs)
        interest = self.index.get(pattern)
        new = interest is None
        if interest is None:
            interest = Interest(pattern)
            self.index.add(pattern, interest)
        sub.interest = interest
        self.subscriptions += 1
        group = interest.groups.get(queue)
        if group is None:
            interest.groups[queue] = [sub]
        else:
            group.append(sub)
        if new and self.waiters:
            for waiter in [w for w in self.waiters if matches(pattern, w.subject)]:
                waiter.ack(True)
                self._drop_waiter(waiter)
        return sub

    def _remove(self, sub: BrokerSubscription) -> None:
        interest = sub.interest
        if interest is None:
            return
        sub.interest = None
        self.subscriptions -= 1
        group = interest.groups.get(sub.queue)
        if group is not None:
            try:
                group.remove(sub)
            except ValueError:
                pass
            if not group:
                del interest.groups[sub.queue]
        if not interest.groups:
            self.index.remove(interest.pattern)

    def unsubscribe(self, conn: Connection, pattern: Any) -> None:
        sub = conn.subs.pop(pattern, None) if isinstance(pattern, str) else None
        if sub is not None:
            self._remove(sub)
            conn.stats["subs"] = len(conn.subs)

    def _unsubscribe(self, conn: Connection, args: list[Any], ack: Any) -> None:
        spec = args[0] if args else None
        if isinstance(spec, list):
            for item in spec:
                if isinstance(item, dict):
                    self.unsubscribe(conn, item.get("subject"))
            if ack is not None:
                ack([None] * len(spec))
            return
        if isinstance(spec, dict):
            self.unsubscribe(conn, spec.get("subject"))
        if ack is not None:
            ack(None)

    def _subscriptions(self, conn: Connection, args: list[Any], ack: Any) -> None:
        if ack is not None:
            ack(list(conn.subs))

    # wait for interest ------------------------------------------------------------------------

    def _wait_for_interest(self, conn: Connection, args: list[Any], ack: Any) -> Deferred[Any] | None:
        if ack is None:
            return None
        spec = args[0] if args else None
        if not isinstance(spec, dict):
            ack({"error": "invalid subject"})
            return None
        subject = spec.get("subject")
        timeout = spec.get("timeout", 90000)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout != timeout:
            timeout = 90000
        if not is_valid_subject_without_wildcards(subject):
            ack({"error": "invalid subject"})
            return None
        assert isinstance(subject, str)
        verdict = conn.allowed(subject, PUB)

        def decided(ok: bool) -> None:
            if not ok:
                user = conn.user
                ack({"error": f"permission denied waiting for interest in '{subject}' from "
                              f"{user.json if user else 'null'}", "code": 403})
                return
            self._start_waiting(conn, subject, min(float(timeout) / 1000, MAX_INTEREST_TIMEOUT), ack)

        if isinstance(verdict, bool):
            decided(verdict)
            return None
        # Waiting must not hold the pipeline: only the permission question does.
        return verdict.addCallback(decided)

    def _start_waiting(self, conn: Connection, subject: str, timeout: float, ack: Any) -> None:
        if conn.closed:
            return
        if self.index.has_match(subject):
            ack(True)
            return
        if timeout <= 0:
            ack(False)
            return
        if len(conn.waiters) >= MAX_WAITERS:
            ack({"error": "Error: too many pending wait-for-interest requests", "code": 429})
            return
        waiter = Waiter(conn, subject, ack)
        # On expiry the waiter is dropped without an answer: the client's own timer reports
        # the timeout (an early "timeout" answer would read as a truthy result).
        waiter.timer = self.reactor.callLater(timeout, self._drop_waiter, waiter)
        conn.waiters.add(waiter)
        self.waiters.add(waiter)

    def _drop_waiter(self, waiter: Waiter) -> None:
        self.waiters.discard(waiter)
        waiter.conn.waiters.discard(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    # stats, cluster ------------------------------------------------------------------------------

    def _stats(self, conn: Connection, args: list[Any], ack: Any) -> None:
        spec = args[0] if args else None
        recv = spec.get("recv0") if isinstance(spec, dict) else None
        if isinstance(recv, dict):
            messages, size = recv.get("messages"), recv.get("bytes")
            if isinstance(messages, (int, float)) and isinstance(size, (int, float)):
                conn.stats["recv"] = {"messages": messages, "bytes": size}

    def _cluster(self, conn: Connection, args: list[Any], ack: Any) -> None:
        if ack is not None:
            ack([self.config.address])

    # introspection (the sys service, metrics) -----------------------------------------------------

    def connection_stats(self) -> dict[str, Any]:
        out = {}
        for conn in self.connections.values():
            if conn.user is None:
                continue
            out[conn.id] = {"user": conn.user.info, **conn.stats}
        return {self.config.server_id: out}

    def usage(self) -> dict[str, Any]:
        return {self.config.server_id: {"total": self.total, "perUser": dict(self.per_user)}}

    def disconnect_ids(self, ids: list[str]) -> int:
        n = 0
        for conn_id in ids:
            conn = self.connections.get(conn_id)
            if conn is not None:
                conn.disconnect()
                n += 1
        return n

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            conn.disconnect()

    # revocation ----------------------------------------------------------------------------------

    def connections_of(self, predicate: Callable[[Connection], bool]) -> list[Connection]:
        return [c for c in self.connections.values() if c.user is not None and not c.rejected and predicate(c)]

    def recheck_project(self, project_id: str) -> list[tuple[Connection, BrokerSubscription]]:
        """Subscriptions whose permission depends on this project's membership."""
        out = []
        for conn in self.connections.values():
            user = conn.user
            if user is None or user.kind != "account" or conn.rejected:
                continue
            for sub in list(conn.subs.values()):
                if project_of(sub.pattern) == project_id:
                    out.append((conn, sub))
        return out

    def drop_subscription(self, conn: Connection, sub: BrokerSubscription, message: str) -> None:
        if conn.subs.get(sub.pattern) is sub:
            del conn.subs[sub.pattern]
            self._remove(sub)
            conn.stats["subs"] = len(conn.subs)
            conn.emit("permission", {"message": message, "subject": sub.pattern, "type": SUB})


def _ack_subscribed(ack: Any, result: Any, added: bool) -> None:
    """A subscribe ack after which the client attaches the subscription's listener: when a
    subscription was added it is a read barrier (:mod:`cocalc_hub.conat.transport.barriers`),
    so no delivery for it shares the ack's read and finds no listener yet."""
    confirm = getattr(ack, "confirm", None) if added else None
    if confirm is not None:
        confirm(result)
    else:
        ack(result)
