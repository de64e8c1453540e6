"""A conat client for Twisted: publish, subscribe, request/reply, services.

It speaks to a broker through a transport: :class:`~.transport.client.SocketTransport`
(a socket.io connection, with reconnection) or :class:`~.local.LocalTransport` (the
broker in this process). Behaviour follows the upstream client: one inbox subscription
per client for replies, messages larger than the broker's ``max_payload`` split into
chunks and put back together, subscriptions restored after a reconnect, permission
denials remembered for 60 s, and the same errors (503 when nobody is subscribed, 408 on
timeouts, 403 when refused).

Usage (in an ``async def`` run with ``ensureDeferred``)::

    client = connect(reactor, "http://127.0.0.1:5000", cookies={"hub_password": pw})
    await client.signed_in()
    sub = await client.subscribe("greetings.*")
    await client.publish("greetings.en", {"text": "hello"})
    async for msg in sub:
        print(msg.subject, msg.data)

Request/reply (the inbox, requests waiting for their reply, ``request_many``, services)
is in :mod:`.requests`, a mixin of :class:`Client`; this module holds the connection
state, publishing and subscriptions.
"""

from __future__ import annotations

from collections.abc import Callable
from os import urandom
from typing import Any

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import (
    DEFAULT_TIMEOUT,
    JSON,
    MAX_CHUNK_TIME,
    MAX_HEADER_SIZE,
    MAX_INTEREST_TIMEOUT,
    MSGPACK,
    PERMISSION_CACHE,
    Message,
    Replies,
    Subscription,
    Transport,
    decode,
    encode,
    random_id,
)
from cocalc_hub.conat.patterns import is_valid_subject, is_valid_subject_without_wildcards
from cocalc_hub.conat.requests import RequestReply, _failed, _timeout
from cocalc_hub.conat.transport.client import DISCONNECTED, SocketTransport
from cocalc_hub.reactors import IReactorTimeTCP

__all__ = ["JSON", "MSGPACK", "Client", "ConatError", "Message", "Replies", "Subscription", "connect", "decode",
           "encode"]

log = Logger()

ID_BATCH = 256
INBOX_ID_LENGTH = 22
"""Characters of an inbox's random part (62 symbols each: 131 bits). Every responder sees a
requester's inbox, so what keeps a spoofed reply out is the randomness of the reply id."""


class _ServerSub:
    """One server-side subscription (a pattern), shared by local Subscription objects."""

    __slots__ = ("pattern", "queue", "listeners", "partial")

    def __init__(self, pattern: str, queue: str) -> None:
        self.pattern = pattern
        self.queue = queue
        self.listeners: list[Subscription] = []
        self.partial: dict[Any, tuple[float, int, list[bytes]]] = {}


class Client(RequestReply):
    """See the module docstring."""

    def __init__(self, reactor: IReactorTime, transport: Transport, *, inbox_prefix: str | None = None) -> None:
        if inbox_prefix is not None and not inbox_prefix.startswith("_INBOX"):
            raise ValueError("the inbox prefix must start with _INBOX")
        self.reactor = reactor
        self.transport = transport
        self.inbox_prefix = inbox_prefix
        self.info: dict[str, Any] | None = None
        self.error: ConatError | None = None
        self.closed = False
        self.inbox: str | None = None
        self._subs: dict[str, _ServerSub] = {}
        self._replies: dict[str, Callable[[Message], None]] = {}
        self._waiting_replies: set[Deferred[Message]] = set()
        """Requests waiting for their reply: cancelled when the client closes."""
        self._open_replies: set[Replies] = set()
        """``request_many`` replies still open: ended when the client closes."""
        self._denied: dict[tuple[str, str], tuple[float, str]] = {}
        self._signin_waiters: list[Deferred[dict[str, Any]]] = []
        self._inbox_waiters: list[Deferred[str]] = []
        self._sync_running = False
        self._backoff: Deferred[None] | None = None
        """The wait before the next subscription sync attempt (cancelled at close)."""
        self._last_gc = 0.0
        self._id_pool = ""
        self._id_pos = 0
        self.listeners: list[Callable[[str, Any], None]] = []
        """Called with ("connected" | "info" | "disconnected", detail)."""
        transport.start(self)

    # connection state -----------------------------------------------------------------------

    @property
    def user(self) -> Any:
        return self.info.get("user") if self.info else None

    @property
    def is_signed_in(self) -> bool:
        return bool(self.transport.connected and self.info is not None and self.error is None)

    def signed_in(self, timeout: float | None = 30.0) -> Deferred[dict[str, Any]]:
        """Fires with ``info`` once signed in; fails with the server's error if refused."""
        if self.error is not None:
            return _failed(self.error)
        if self.is_signed_in:
            assert self.info is not None
            return succeed(self.info)
        d: Deferred[dict[str, Any]] = Deferred(lambda _: self._signin_waiters.remove(d))
        self._signin_waiters.append(d)
        if timeout is not None:
            _timeout(d, timeout, self.reactor, "timeout waiting to sign in")
        return d

    def _notify(self, what: str, detail: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(what, detail)
            except Exception:
                log.failure("conat client listener failed")

    def transport_connected(self) -> None:
        self._notify("connected", None)

    def transport_disconnected(self, reason: str, reconnecting: bool) -> None:
        self.info = None
        self._notify("disconnected", reason)
        if not reconnecting:
            error = self.error or ConatError(f"disconnected: {reason}")
            for d in self._drain(self._signin_waiters):
                d.errback(error)
            for d2 in self._drain(self._inbox_waiters):
                d2.errback(error)

    @staticmethod
    def _drain(waiters: list[Deferred[Any]]) -> list[Deferred[Any]]:
        """Waiters still waiting (timed-out ones have fired already)."""
        out = [d for d in waiters if not d.called]
        waiters.clear()
        return out

    def transport_event(self, name: str, args: list[Any], ack: Callable[..., None] | None) -> None:
        payload = args[0] if args else None
        sub = self._subs.get(name)
        if sub is not None and isinstance(payload, dict) and "data" in payload and "subject" in payload:
            self._deliver(sub, payload)
            return
        if name == "info":
            if ack is not None:
                ack()
            self._got_info(args[0] if args else None)
        elif name == "permission":
            p = args[0] if args else None
            if isinstance(p, dict) and isinstance(p.get("subject"), str) and p.get("type") in ("pub", "sub"):
                self._denied[(p["type"], p["subject"])] = (self.reactor.seconds() + PERMISSION_CACHE,
                                                          str(p.get("message", "permission denied")))

    def _got_info(self, info: Any) -> None:
        if not isinstance(info, dict):
            return
        user = info.get("user")
        if isinstance(user, dict) and user.get("error"):
            self.error = ConatError(str(user["error"]), user.get("code"))
            self.info = info
            for d in self._drain(self._signin_waiters):
                d.errback(self.error)
            for d2 in self._drain(self._inbox_waiters):
                d2.errback(self.error)
            return
        first = self.inbox is None
        self.info = info
        self.error = None
        if first:
            self.inbox = f"{self.inbox_prefix or default_inbox_prefix(user)}.{random_id(INBOX_ID_LENGTH)}"
            self._subs[f"{self.inbox}.*"] = _ServerSub(f"{self.inbox}.*", random_id())
        self._notify("info", info)
        for d in self._drain(self._signin_waiters):
            d.callback(info)
        ensureDeferred(self._sync())

    async def _sync(self) -> None:
        """Make the server's subscriptions match ours (after every sign-in)."""
        if self._sync_running:
            return
        self._sync_running = True
        try:
            delay = 1.0
            while not self.closed and self.is_signed_in:
                try:
                    have = await self._call("subscriptions", [None], 10.0)
                    server = set(have[0]) if have and isinstance(have[0], list) else set()
                    wanted = set(self._subs)
                    missing = [{"subject": p, "queue": self._subs[p].queue} for p in wanted - server]
                    extra = [{"subject": p} for p in server - wanted]
                    if missing:
                        results = await self._call("subscribe", [missing], 60.0)
                        for spec, result in zip(missing, results[0] if results else [], strict=False):
                            if isinstance(result, dict) and result.get("error"):
                                self._lost_subscription(spec["subject"], ConatError(str(result["error"]),
                                                                                   result.get("code")))
                    if extra:
                        self.transport.emit("unsubscribe", [extra])
                    if not missing and not extra:
                        break
                except ConatError as e:
                    if self.closed or not self.transport.connected:
                        break
                    log.debug("conat client: subscription sync failed: {e}", e=e)
                    self._backoff = task.deferLater(self.reactor, delay, lambda: None)
                    try:
                        await self._backoff
                    except CancelledError:
                        break
                    finally:
                        self._backoff = None
                    delay = min(15.0, delay * 2)
            if self.inbox is not None and f"{self.inbox}.*" in self._subs:
                for d in self._drain(self._inbox_waiters):
                    d.callback(self.inbox)
        finally:
            self._sync_running = False

    def _lost_subscription(self, pattern: str, error: ConatError) -> None:
        sub = self._subs.pop(pattern, None)
        if sub is None:
            return
        log.warn("conat client: subscription to {p} lost: {e}", p=pattern, e=error)
        for listener in sub.listeners:
            listener._end(error)

    # emitting ------------------------------------------------------------------------------------

    def _call(self, event: str, args: list[Any], timeout: float) -> Deferred[list[Any]]:
        """Emit with an acknowledgement; ConatError 408 after ``timeout`` seconds."""
        d: Deferred[list[Any]] = Deferred()
        state = {"done": False}

        def on_ack(result: Any) -> None:
            if state["done"]:
                return
            state["done"] = True
            if timer.active():
                timer.cancel()
            if result is DISCONNECTED:
                d.errback(ConatError("socket has been disconnected"))
            else:
                d.callback(result if isinstance(result, list) else [result])

        def expired() -> None:
            if not state["done"]:
                state["done"] = True
                d.errback(ConatError("timeout - Error: operation has timed out", 408))

        timer = self.reactor.callLater(timeout, expired)
        self.transport.emit(event, args, on_ack)
        return d

    def _check_denied(self, kind: str, subject: str) -> None:
        hit = self._denied.get((kind, subject))
        if hit is not None:
            if hit[0] > self.reactor.seconds():
                raise ConatError(hit[1], 403)
            del self._denied[(kind, subject)]

    def _chunks(self, subject: str, raw: bytes, encoding: int,
                headers: Any) -> list[list[Any]]:
        max_payload = int(self.info.get("max_payload", 1_000_000)) if self.info else 1_000_000
        size = max(1000, max_payload - MAX_HEADER_SIZE)
        mid = self._next_id()
        n = len(raw)
        out = []
        for seq, start in enumerate(range(0, n, size)):
            done = 1 if start + size >= n else 0
            chunk = [subject, mid, seq, done, encoding, raw[start:start + size]]
            if done and headers:
                chunk.append(headers)
            out.append(chunk)
        return out

    def _next_id(self, digits: int = 10) -> str:
        """A message id (10 hex digits, the shape of upstream's 10 alphanumerics) or a reply id
        (REPLY_ID_HEX digits). Responders see our reply subjects, so the ids come from
        os.urandom, not from the predictable ``random`` module; drawn in batches, since this
        runs for every message."""
        if self._id_pos + digits > len(self._id_pool):
            self._id_pool, self._id_pos = urandom(ID_BATCH * 5).hex(), 0
        start = self._id_pos
        self._id_pos += digits
        return self._id_pool[start:start + digits]

    def _prepare(self, subject: str, data: Any, raw: bytes | None, encoding: int,
                 headers: Any) -> list[list[Any]]:
        """``headers``: any JSON value (usually an object; upstream forwards others unchanged)."""
        if self.closed:
            raise ConatError("client is closed")
        if not is_valid_subject_without_wildcards(subject):
            raise ConatError(f"invalid publish subject {subject!r}")
        self._check_denied("pub", subject)
        if raw is None:
            raw = encode(data, encoding)
        return self._chunks(subject, raw, encoding, headers)

    def publish_sync(self, subject: str, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
                     headers: Any = None) -> None:
        """Fire and forget."""
        for chunk in self._prepare(subject, data, raw, encoding, headers):
            self.transport.emit("publish", [chunk])

    def publish(self, subject: str, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
                headers: Any = None, timeout: float = DEFAULT_TIMEOUT,
                wait_for_interest: bool = False) -> Deferred[int]:
        """Publish and return how many subscribers the broker delivered it to."""
        try:
            chunks = self._prepare(subject, data, raw, encoding, headers)
        except ConatError as e:
            return _failed(e)
        return ensureDeferred(self._publish(subject, chunks, timeout, wait_for_interest))

    async def _publish(self, subject: str, chunks: list[list[Any]], timeout: float, wait: bool) -> int:
        if not chunks:
            return 0  # an empty message is not sent at all (as upstream)
        start = self.reactor.seconds()
        count = await self._send_chunks(chunks, timeout)
        if count or not wait:
            return count
        left = timeout - (self.reactor.seconds() - start)
        if left > 0 and await self.wait_for_interest(subject, timeout=left):
            left = timeout - (self.reactor.seconds() - start)
            if left > 0.5:
                return await self._send_chunks(chunks, left)
        return count

    async def _send_chunks(self, chunks: list[list[Any]], timeout: float) -> int:
        results = [self._call("publish", [chunk], timeout) for chunk in chunks]
        count = 0
        for d in results:
            answer = await d
            value = answer[0] if answer else None
            if isinstance(value, dict) and value.get("error"):
                raise self._publish_error(chunks[0][0], value)
            if isinstance(value, dict) and isinstance(value.get("count"), int):
                count = max(count, value["count"])
        return count

    def wait_for_interest(self, subject: str, *, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bool]:
        """True once someone subscribes to a pattern matching ``subject``."""
        if not is_valid_subject_without_wildcards(subject):
            return _failed(ConatError(f"invalid subject {subject!r}"))
        timeout = min(max(timeout, 0.0), MAX_INTEREST_TIMEOUT)

        def answered(result: list[Any]) -> bool:
            value = result[0] if result else None
            if isinstance(value, dict) and value.get("error"):
                raise ConatError(str(value["error"]), value.get("code"))
            return bool(value)

        return self._call("wait-for-interest", [{"subject": subject, "timeout": int(timeout * 1000)}],
                          timeout or 10.0).addCallback(answered)

    # subscribing ---------------------------------------------------------------------------------

    def subscribe(self, subject: str, *, queue: str | None = None,
                  callback: Callable[[Message], Any] | None = None) -> Deferred[Subscription]:
        """Subscribe (wildcards allowed); the Deferred fires once the broker has it live."""
        return ensureDeferred(self._subscribe(subject, queue, callback))

    async def _subscribe(self, subject: str, queue: str | None,
                         callback: Callable[[Message], Any] | None) -> Subscription:
        if self.closed:
            raise ConatError("client is closed")
        if not is_valid_subject(subject):
            raise ConatError(f"invalid subscribe subject {subject!r}")
        self._check_denied("sub", subject)
        existing = self._subs.get(subject)
        if existing is not None:
            sub = Subscription(self, subject, existing.queue, callback)
            existing.listeners.append(sub)
            return sub
        server = self._subs[subject] = _ServerSub(subject, queue if queue is not None else random_id())
        sub = Subscription(self, subject, server.queue, callback)
        server.listeners.append(sub)
        try:
            answer = await self._call("subscribe", [{"subject": subject, "queue": server.queue}], 60.0)
        except ConatError:
            if self._subs.get(subject) is server:
                del self._subs[subject]
            raise
        value = answer[0] if answer else None
        if isinstance(value, dict) and value.get("error"):
            if self._subs.get(subject) is server:
                del self._subs[subject]
            if value.get("code") == 403:
                self._denied[("sub", subject)] = (self.reactor.seconds() + PERMISSION_CACHE,
                                                  str(value["error"]).removeprefix("Error: "))
            raise ConatError(str(value["error"]), value.get("code"))
        return sub

    def _release(self, sub: Subscription) -> None:
        server = self._subs.get(sub.pattern)
        if server is None:
            return
        if sub in server.listeners:
            server.listeners.remove(sub)
        if not server.listeners and sub.pattern != (f"{self.inbox}.*" if self.inbox else None):
            del self._subs[sub.pattern]
            if not self.closed:
                self.transport.emit("unsubscribe", [{"subject": sub.pattern}])

    def _deliver(self, server: _ServerSub, payload: dict[str, Any]) -> None:
        subject = payload.get("subject")
        data = payload.get("data")
        if not isinstance(subject, str) or not isinstance(data, list) or len(data) < 5:
            return
        mid, seq, done, encoding, raw = data[0], data[1], data[2], data[3], data[4]
        headers = data[5] if len(data) > 5 else None
        if not isinstance(raw, bytes):
            return
        if seq == 0 and done:
            self._dispatch(server, Message(self, subject, raw, encoding, headers))
            return
        now = self.reactor.seconds()
        if now - self._last_gc > 60:
            self._last_gc = now
            for s in self._subs.values():
                for key in [k for k, v in s.partial.items() if now - v[0] > MAX_CHUNK_TIME]:
                    del s.partial[key]
        key = (subject, mid)
        partial = server.partial.get(key)
        if seq == 0:
            partial = server.partial[key] = (now, 0, [raw])
        elif partial is None or seq != partial[1] + 1:
            server.partial.pop(key, None)
            log.warn("conat client: dropped an incomplete chunked message on {s}", s=subject)
            return
        else:
            partial[2].append(raw)
            partial = server.partial[key] = (partial[0], seq, partial[2])
        if done:
            del server.partial[key]
            self._dispatch(server, Message(self, subject, b"".join(partial[2]), encoding, headers))

    def _dispatch(self, server: _ServerSub, msg: Message) -> None:
        if self.inbox is not None and server.pattern == f"{self.inbox}.*":
            handler = self._replies.get(msg.subject)
            if handler is not None:
                handler(msg)
            return
        for listener in list(server.listeners):
            listener._push(msg)

    def _publish_error(self, subject: str, value: dict[str, Any]) -> ConatError:
        code = value.get("code")
        if code == 403:
            self._denied[("pub", subject)] = (self.reactor.seconds() + PERMISSION_CACHE,
                                              str(value["error"]).removeprefix("Error: "))
        return ConatError(str(value["error"]), code)

    # shutting down ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._backoff is not None:
            self._backoff.cancel()
        for pattern in list(self._subs):
            self.transport.emit("unsubscribe", [{"subject": pattern}])
        for server in self._subs.values():
            for listener in server.listeners:
                listener._end(None)
        self._subs.clear()
        for waiting in list(self._waiting_replies):
            waiting.cancel()
        for replies in list(self._open_replies):
            replies.close()
        self.transport.close()


def default_inbox_prefix(user: Any) -> str:
    """The per-user inbox prefix real clients use, so that accounts and projects may
    subscribe to it (``_INBOX.account-<id>``, ``_INBOX.project-<id>``, ``_INBOX.hub-hub``)."""
    if isinstance(user, dict):
        if isinstance(user.get("account_id"), str):
            return f"_INBOX.account-{user['account_id']}"
        if isinstance(user.get("project_id"), str):
            return f"_INBOX.project-{user['project_id']}"
        if user.get("hub_id") == "hub":
            return "_INBOX.hub-hub"
    return "_INBOX"


def connect(reactor: IReactorTimeTCP, address: str, *, cookies: dict[str, str] | None = None,
            inbox_prefix: str | None = None, **options: Any) -> Client:
    """A client of the conat server at ``address`` (``http[s]://host:port[/base]``)."""
    return Client(reactor, SocketTransport(reactor, address, cookies=cookies, **options), inbox_prefix=inbox_prefix)
