"""Request/reply for the conat :class:`~cocalc_hub.conat.client.Client`: the inbox,
requests waiting for their reply, their timeouts, ``request_many`` and services.

A client has one inbox subscription (``<inbox>.*``, made when it first signs in, see
:meth:`Client._got_info <cocalc_hub.conat.client.Client._got_info>`); a request publishes
with the header ``CN-Reply: <inbox>.<reply id>`` and waits, with one timer, for a
delivery on that subject (``_replies`` maps it to the waiting request) or for the broker's
ack to say nobody listens (503). :class:`RequestReply` is a mixin of the client, which
holds the state; publishing and subscribing are the client's own (:mod:`.client`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import DEFAULT_TIMEOUT, MSGPACK, Message, Replies, Subscription, Transport
from cocalc_hub.conat.transport.client import DISCONNECTED

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

REPLY_ID_HEX = 32
"""Hex digits of a reply id (128 bits): nobody who has not seen a request can guess where
its reply goes, even knowing the requester's inbox."""


class RequestReply:
    """The client's request/reply methods (a mixin of :class:`~cocalc_hub.conat.client.Client`)."""

    if TYPE_CHECKING:  # what the client provides
        reactor: IReactorTime
        transport: Transport
        inbox: str | None
        closed: bool
        error: ConatError | None
        _sync_running: bool
        _inbox_waiters: list[Deferred[str]]
        _replies: dict[str, Callable[[Message], None]]
        _waiting_replies: set[Deferred[Message]]
        _open_replies: set[Replies]

        @property
        def is_signed_in(self) -> bool: ...
        def _next_id(self, digits: int = 10) -> str: ...
        def _prepare(self, subject: str, data: Any, raw: bytes | None, encoding: int,
                     headers: Any) -> list[list[Any]]: ...
        def _publish_error(self, subject: str, value: dict[str, Any]) -> ConatError: ...
        def publish(self, subject: str, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
                    headers: Any = None, timeout: float = DEFAULT_TIMEOUT,
                    wait_for_interest: bool = False) -> Deferred[int]: ...
        def wait_for_interest(self, subject: str, *, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bool]: ...
        def subscribe(self, subject: str, *, queue: str | None = None,
                      callback: Callable[[Message], Any] | None = None) -> Deferred[Subscription]: ...

    def _inbox_ready(self) -> Deferred[str]:
        if self.error is not None:
            return _failed(self.error)
        if self.inbox is not None and self.is_signed_in and not self._sync_running:
            return succeed(self.inbox)
        d: Deferred[str] = Deferred()
        self._inbox_waiters.append(d)
        return d

    # request / reply -----------------------------------------------------------------------------

    def request(self, subject: str, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
                headers: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                wait_for_interest: bool = False) -> Deferred[Message]:
        """Publish with a reply subject and return the first reply (503 if nobody listens)."""
        if not wait_for_interest and self.inbox is not None and self.is_signed_in and not self._sync_running:
            return self._quick_request(subject, data, raw, encoding, headers, timeout)
        return ensureDeferred(self._request(subject, data, raw, encoding, headers, timeout, wait_for_interest))

    def _quick_request(self, subject: str, data: Any, raw: bytes | None, encoding: int,
                       headers: dict[str, Any] | None, timeout: float) -> Deferred[Message]:
        """:meth:`request` once the inbox is live: the same answers as :meth:`_request`
        with one timer and no coroutines (the path every persist command takes)."""
        reply = f"{self.inbox}.{self._next_id(REPLY_ID_HEX)}"
        try:
            chunks = self._prepare(subject, data, raw, encoding, {**(headers or {}), "CN-Reply": reply})
        except ConatError as e:
            return _failed(e)
        if not chunks:
            return _failed(ConatError(f"request -- no subscribers matching '{subject}'", 503))

        def cancel(d: Deferred[Message]) -> None:
            if self.closed:
                d.errback(ConatError("client is closed"))

        answer: Deferred[Message] = Deferred(cancel)

        def finish(result: Any) -> Any:
            self._replies.pop(reply, None)
            self._waiting_replies.discard(answer)
            if timer.active():
                timer.cancel()
            return result

        def got(msg: Message) -> None:
            if not answer.called:
                answer.callback(msg)

        def acked(result: Any) -> None:
            if answer.called:
                return
            if result is DISCONNECTED:
                answer.errback(ConatError("socket has been disconnected"))
                return
            value = result[0] if isinstance(result, list) and result else result
            if isinstance(value, dict) and value.get("error"):
                answer.errback(self._publish_error(subject, value))
            elif not (isinstance(value, dict) and value.get("count")):
                answer.errback(ConatError(f"request -- no subscribers matching '{subject}'", 503))

        def expired() -> None:
            if not answer.called:
                answer.errback(ConatError("timeout", 408))

        timer = self.reactor.callLater(timeout, expired)
        answer.addBoth(finish)
        self._replies[reply] = got
        self._waiting_replies.add(answer)
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            # every chunk is acknowledged; the last one's count says whether anyone listens
            self.transport.emit("publish", [chunk], acked if i == last else self._chunk_acked(answer, subject))
        return answer

    def _chunk_acked(self, answer: Deferred[Message], subject: str) -> Callable[[Any], None]:
        def acked(result: Any) -> None:
            value = result[0] if isinstance(result, list) and result else result
            if not answer.called and isinstance(value, dict) and value.get("error"):
                answer.errback(self._publish_error(subject, value))
        return acked

    async def _request(self, subject: str, data: Any, raw: bytes | None, encoding: int,
                       headers: dict[str, Any] | None, timeout: float, wait: bool) -> Message:
        """:meth:`request` before the inbox is live, or with ``wait`` (nobody listening yet:
        wait for interest, then send it once more if time is left, as upstream does)."""
        start: float = self.reactor.seconds()

        def left() -> float:
            now: float = self.reactor.seconds()
            return timeout - (now - start)

        await self._inbox_ready()
        try:
            return await self._quick_request(subject, data, raw, encoding, headers, max(left(), 0.001))
        except ConatError as e:
            if not wait or e.code != 503:
                raise
            first = e
        if left() > 0 and await self.wait_for_interest(subject, timeout=left()) and left() > 0.5:
            return await self._quick_request(subject, data, raw, encoding, headers, left())
        raise first

    async def request_many(self, subject: str, data: Any = None, *, raw: bytes | None = None,
                           encoding: int = MSGPACK, headers: dict[str, Any] | None = None,
                           max_wait: float = DEFAULT_TIMEOUT, max_messages: int | None = None) -> Replies:
        """Publish a request and iterate over every reply until ``max_messages`` or ``max_wait``."""
        inbox = await self._inbox_ready()
        reply = f"{inbox}.{self._next_id(REPLY_ID_HEX)}"
        replies = Replies(cast("Client", self), reply, max_messages)
        self._replies[reply] = replies._push
        self._open_replies.add(replies)
        try:
            count = await self.publish(subject, data, raw=raw, encoding=encoding,
                                       headers={**(headers or {}), "CN-Reply": reply}, timeout=max_wait)
        except BaseException:
            replies.close()
            raise
        if not count:
            replies.close()
            raise ConatError(f"requestMany -- no subscribers matching {subject}", 503)
        replies._timer = self.reactor.callLater(max_wait, replies.close)
        return replies

    # services --------------------------------------------------------------------------------------

    def service(self, subject: str, handler: Callable[[str, list[Any], Message], Any], *,
                queue: str = "0") -> Deferred[Subscription]:
        """Answer requests ``[name, args]`` with ``handler(name, args, msg)``'s result; an
        exception becomes an ``error`` header (upstream's ``client.service``)."""

        async def serve(msg: Message) -> None:
            try:
                request = msg.data
                if not isinstance(request, list) or len(request) != 2 or not isinstance(request[0], str):
                    raise ConatError("a service request is [name, args]")
                name, args = request[0], request[1] if isinstance(request[1], list) else []
                result = handler(name, args, msg)
                if isinstance(result, Deferred) or hasattr(result, "__await__"):
                    result = await result
            except Exception as e:
                error = {"error": f"Error: {e}"}
                if isinstance(e, ConatError) and e.code is not None:
                    error["code"] = e.code  # type: ignore[assignment]
                else:
                    if not isinstance(e, ConatError):
                        log.failure("conat service {s}: {n} failed", s=subject, n=msg.subject)
                if msg.is_request():
                    await msg.respond(None, headers=error)
                return
            if msg.is_request():
                await msg.respond(result)

        return self.subscribe(subject, queue=queue, callback=lambda msg: ensureDeferred(serve(msg)))

    async def call(self, subject: str, name: str, *args: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Call a service method; its ``error`` header is raised as a ConatError."""
        reply = await self.request(subject, [name, list(args)], timeout=timeout)
        headers = reply.header_map
        if headers.get("error"):
            raise ConatError(str(headers["error"]), headers.get("code"))
        return reply.data


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


def _timeout(d: Deferred[Any], seconds: float, reactor: IReactorTime, message: str) -> None:
    def expire() -> None:
        if not d.called:
            d.errback(ConatError(message, 408))

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    timer = reactor.callLater(seconds, expire)
    d.addBoth(done)
