"""Messages and subscriptions as a conat client hands them out, and the payload codecs.

Encoding 0 is MessagePack (binary as ``bin``, datetimes as the timestamp extension),
encoding 1 is JSON, exactly the two the upstream client speaks.
"""

from __future__ import annotations

import json
import string
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from random import SystemRandom
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.transport.client import Owner

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

MSGPACK, JSON = 0, 1
MAX_HEADER_SIZE = 100_000
MAX_CHUNK_TIME = 120.0
PERMISSION_CACHE = 60.0
DEFAULT_TIMEOUT = 30.0
MAX_INTEREST_TIMEOUT = 90.0
_ALPHABET = string.ascii_letters + string.digits


_system_random = SystemRandom()


def random_id(n: int = 10) -> str:
    """Inbox, socket and queue ids: from os.urandom, since others see them."""
    return "".join(_system_random.choices(_ALPHABET, k=n))


def encode(value: Any, encoding: int = MSGPACK) -> bytes:
    if encoding == MSGPACK:
        return msgpack.packb(value, use_bin_type=True, datetime=True)  # type: ignore[no-any-return]
    if encoding == JSON:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")
    raise ConatError(f"unknown encoding {encoding}")


def decode(raw: bytes, encoding: int) -> Any:
    if encoding == MSGPACK:
        return msgpack.unpackb(raw, raw=False, timestamp=3, strict_map_key=False)
    if encoding == JSON:
        return json.loads(raw) if raw else None
    raise ConatError(f"unknown encoding {encoding}")


class Transport(Protocol):
    connected: bool

    def start(self, owner: Owner) -> None: ...
    def emit(self, event: str, args: list[Any], ack: Callable[..., None] | None = None) -> None: ...
    def close(self) -> None: ...


class Message:
    """A received message; ``data`` is decoded on first use."""

    __slots__ = ("client", "subject", "raw", "encoding", "headers", "_data", "_decoded")

    def __init__(self, client: Client, subject: str, raw: bytes, encoding: int, headers: Any) -> None:
        self.client = client
        self.subject = subject
        self.raw = raw
        self.encoding = encoding
        self.headers = headers
        """As sent: usually an object, but any JSON value (upstream forwards ``"x"``, ``7``, …)."""
        self._decoded = False
        self._data: Any = None

    @property
    def data(self) -> Any:
        if not self._decoded:
            self._data = decode(self.raw, self.encoding)
            self._decoded = True
        return self._data

    @property
    def header_map(self) -> dict[str, Any]:
        """The headers when they are an object, else an empty one (what layers that read
        named headers need)."""
        headers = self.headers
        return headers if isinstance(headers, dict) else {}

    @property
    def reply_subject(self) -> str | None:
        reply = self.header_map.get("CN-Reply")
        return reply if isinstance(reply, str) else None

    def is_request(self) -> bool:
        return self.reply_subject is not None

    def respond(self, data: Any = None, *, headers: Any = None, raw: bytes | None = None,
                encoding: int | None = None, wait_for_interest: bool = True,
                timeout: float = DEFAULT_TIMEOUT) -> Deferred[int]:
        """Answer a request (waiting for the requester's inbox, as upstream does)."""
        reply = self.reply_subject
        if reply is None:
            raise ConatError("message is not a request (it has no reply subject)")
        return self.client.publish(reply, data, headers=headers, raw=raw,
                                   encoding=self.encoding if encoding is None else encoding,
                                   wait_for_interest=wait_for_interest, timeout=timeout)

    def respond_sync(self, data: Any = None, *, headers: Any = None,
                     raw: bytes | None = None, encoding: int | None = None) -> None:
        reply = self.reply_subject
        if reply is None:
            raise ConatError("message is not a request (it has no reply subject)")
        self.client.publish_sync(reply, data, headers=headers, raw=raw,
                                 encoding=self.encoding if encoding is None else encoding)

    def __repr__(self) -> str:
        return f"Message(subject={self.subject!r}, {len(self.raw)} bytes, headers={self.headers!r})"


class Subscription:
    """Messages for one subscription: iterate (``async for``) or pass ``callback``."""

    def __init__(self, client: Client, pattern: str, queue: str,
                 callback: Callable[[Message], Any] | None = None) -> None:
        self.client = client
        self.pattern = pattern
        self.queue = queue
        self.callback = callback
        self.closed = False
        self.error: Exception | None = None
        self._messages: deque[Message] = deque()
        self._waiting: Deferred[Message] | None = None

    def _push(self, msg: Message) -> None:
        if self.closed:
            return
        if self.callback is not None:
            try:
                result = self.callback(msg)
                if isinstance(result, (Deferred, Awaitable)) and not isinstance(result, Deferred):
                    result = ensureDeferred(result)  # type: ignore[arg-type]
                if isinstance(result, Deferred):
                    result.addErrback(lambda f: log.failure("conat: subscription callback failed", f))
            except Exception:
                log.failure("conat: subscription callback failed")
            return
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            waiting.callback(msg)
        else:
            self._messages.append(msg)

    def next(self, timeout: float | None = None) -> Deferred[Message]:
        """The next message (StopAsyncIteration once closed)."""
        if self._messages:
            return succeed(self._messages.popleft())
        if self.closed:
            d: Deferred[Message] = Deferred()
            d.errback(self.error or StopAsyncIteration())
            return d
        d = self._waiting = Deferred(lambda _: setattr(self, "_waiting", None))
        if timeout is not None:
            d.addTimeout(timeout, self.client.reactor)
        return d

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.next()

    def close(self) -> None:
        if self.closed:
            return
        self._end(None)
        self.client._release(self)

    def _end(self, error: Exception | None) -> None:
        self.closed = True
        self.error = error
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error or StopAsyncIteration())


class Replies:
    """The replies to a ``request_many``."""

    def __init__(self, client: Client, reply: str, max_messages: int | None) -> None:
        self.client = client
        self.reply = reply
        self.max_messages = max_messages
        self.received = 0
        self._timer: Any = None
        self._sub = Subscription(client, reply, "")

    def _push(self, msg: Message) -> None:
        self.received += 1
        self._sub._push(msg)
        if self.max_messages is not None and self.received >= self.max_messages:
            self.close()

    def __aiter__(self) -> Replies:
        return self

    async def __anext__(self) -> Message:
        return await self._sub.next()

    def close(self) -> None:
        self.client._replies.pop(self.reply, None)
        self.client._open_replies.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._sub.closed = True
        waiting, self._sub._waiting = self._sub._waiting, None
        if waiting is not None:
            waiting.errback(StopAsyncIteration())
