"""A persist session from the client side (spec §6.4): open a stream, run commands, follow
its changefeed, and rebuild the session when it is lost.

``scope`` is the owner of the data (``account-<id>``, ``project-<id>`` or ``hub``); the
path must lie under that owner's prefix (``accounts/<id>/…``, ``projects/<id>/…``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import MSGPACK, Message, Replies, encode
from cocalc_hub.conat.persist.storage.base import StoredMessage
from cocalc_hub.conat.socket import SocketClient
from cocalc_hub.conat.socket.tcp import CMD

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

REBUILD_FIRST, REBUILD_FACTOR, REBUILD_MAX = 1.5, 1.8, 30.0
STALL = 1.0
"""Seconds with requests outstanding and no answer before the server is probed: a persist
process that died leaves its requests unanswered, and only the broker knows it is gone."""
SET_MANY_BATCH = 500


def scope_for(path: str) -> str:
    """The scope that owns a storage path."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == "accounts":
        return f"account-{parts[1]}"
    if len(parts) >= 3 and parts[0] == "projects":
        return f"project-{parts[1]}"
    return "hub"


def stored(item: dict[str, Any]) -> StoredMessage:
    return StoredMessage(seq=int(item["seq"]), time=float(item.get("time", 0)), key=item.get("key"),
                         encoding=int(item.get("encoding", MSGPACK)), raw=bytes(item.get("raw", b"")),
                         headers=item.get("headers"))


def _check(reply: Message) -> Message:
    headers = reply.header_map
    if headers.get("error") or headers.get("code"):
        raise ConatError(str(headers.get("error") or "error"), headers.get("code"))
    return reply


class PersistClient:
    """One stream. ``on_events(events)`` receives changefeed batches when ``changefeed``;
    ``on_rebuilt()`` runs after a lost session was replaced (callers fetch what they missed)."""

    def __init__(self, client: Client, path: str, *, scope: str | None = None, ephemeral: bool = False,
                 changefeed: bool = False, service: str = "persist", timeout: float = 30.0) -> None:
        self.client = client
        self.reactor = client.reactor
        self.path = path
        self.scope = scope or scope_for(path)
        self.ephemeral = ephemeral
        self.changefeed = changefeed
        self.service = service
        self.timeout = timeout
        self.sock: SocketClient | None = None
        self.closed = False
        self.fatal: ConatError | None = None
        self.on_events: Callable[[list[dict[str, Any]]], None] | None = None
        self.on_rebuilt: Callable[[], Any] | None = None
        self._delay = REBUILD_FIRST
        self._rebuilding = False
        self._reading: set[Replies] = set()
        """getAll replies being read: ended by close()."""
        self._pending: set[Deferred[Message]] = set()
        """Requests of the current session waiting for their answer: failed at once when
        the session is lost (their server will never answer) or the client is closed."""
        self._answered_at = 0.0
        self._watchdog: Any = None
        self._sleeping: Deferred[None] | None = None
        """The pause before the next rebuild attempt: cancelled by close()."""

    # the session ------------------------------------------------------------------------------

    async def connect(self) -> None:
        subject = f"{self.service}.{self.scope}"

        async def server_id() -> str:
            reply = await self.client.request(f"{subject}.id", None, timeout=self.timeout)
            if not isinstance(reply.data, str):
                raise ConatError(f"the persist load balancer answered {reply.data!r}")
            return reply.data

        sock = SocketClient(self.client, subject, server_id=server_id, reconnection=False)
        sock.on_data = self._data
        sock.on_close.append(self._lost)
        self.sock = sock
        await sock.connect()
        sock.write({"storage": {"path": self.path, **({"ephemeral": True} if self.ephemeral else {})},
                    "changefeed": self.changefeed})
        # the server answers requests only once the stream is open; a failed open is fatal
        await self.inventory()

    def _data(self, msg: Message) -> None:
        headers = msg.header_map
        if headers.get("error") and msg.raw in (b"\xc0", b""):
            self.fatal = ConatError(str(headers["error"]), headers.get("code"))
            log.warn("persist {p}: {e}", p=self.path, e=self.fatal)
            self.close()
            return
        if isinstance(msg.data, list) and self.on_events is not None:
            self.on_events(msg.data)

    def _lost(self, reason: str) -> None:
        self._fail_pending()
        if self.closed or self.fatal is not None or self._rebuilding:
            return
        log.info("persist {p}: session lost ({r}); rebuilding", p=self.path, r=reason)
        self._rebuilding = True
        ensureDeferred(self._rebuild()).addErrback(lambda f: log.failure("persist: rebuild failed", f))

    async def _rebuild(self) -> None:
        try:
            while not self.closed:
                delay = self._delay * random.uniform(0.75, 1.25)
                self._delay = min(self._delay * REBUILD_FACTOR, REBUILD_MAX)
                self._sleeping = task.deferLater(self.reactor, delay, lambda: None)
                try:
                    await self._sleeping
                except CancelledError:
                    return  # closed
                finally:
                    self._sleeping = None
                if self.is_closed():
                    return
                try:
                    await self.connect()
                except ConatError as e:
                    if e.code in (403, 429) or self.fatal is not None:
                        self.fatal = self.fatal or e
                        log.warn("persist {p}: giving up: {e}", p=self.path, e=e)
                        return
                    log.info("persist {p}: rebuild failed ({e}); retrying", p=self.path, e=e)
                    if self.sock is not None:
                        self.sock.on_close.clear()
                        self.sock.close()
                    continue
                # back to the first delay once a session stands again (a server that keeps
                # failing is retried every REBUILD_FIRST seconds, not ever more slowly)
                self._delay = REBUILD_FIRST
                break
        finally:
            self._rebuilding = False
        if self.on_rebuilt is not None and not self.closed:
            try:
                result = self.on_rebuilt()
                if isinstance(result, Deferred) or hasattr(result, "__await__"):
                    await result
            except ConatError:
                if not self.is_closed():
                    raise  # otherwise: closed while catching up, nothing left to do

    def request(self, cmd: str, data: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
                timeout: float | None = None, **params: Any) -> Deferred[Message]:
        """One command; its error header raised as a ConatError. (No coroutine: every
        write takes this path.)"""
        if self.fatal is not None:
            return fail(self.fatal)
        if self.closed or self.sock is None:
            return fail(ConatError("persist client is closed"))
        headers = {"cmd": cmd, **{k: v for k, v in params.items() if v is not None}}
        sock = self.sock

        def answered(reply: Message) -> Message:
            self._pending.discard(d)
            self._answered_at = self.reactor.seconds()
            return _check(reply)

        def failed(f: Failure) -> Failure:
            self._pending.discard(d)
            if isinstance(f.value, ConatError) and f.value.code == 503 and sock.state != "closed":
                # nobody listens on our server's subject any more: that server is gone
                sock.close("the persist server is gone", notify=False)
            if self.fatal is not None:  # the server refused the stream and closed the session
                return Failure(self.fatal)
            if self.closed:
                return Failure(ConatError("persist client is closed"))
            if sock.state == "closed":  # cancelled by _fail_pending, or failed because of it
                return Failure(ConatError("the persist session was lost; the request may or may not "
                                          "have been carried out", 503))
            return f

        if not self._pending:
            self._answered_at = self.reactor.seconds()
        d = sock.request(data, headers=headers, raw=raw, encoding=encoding, timeout=timeout or self.timeout)
        self._pending.add(d)
        self._watch()
        return d.addCallbacks(answered, failed)

    def _watch(self) -> None:
        if self._watchdog is None or not self._watchdog.active():
            self._watchdog = self.reactor.callLater(STALL, self._check_stall)

    def _check_stall(self) -> None:
        """Requests outstanding and nothing answered for STALL seconds: ask the broker
        whether our server still listens (a 503 means its process is gone)."""
        self._watchdog = None
        sock = self.sock
        if not self._pending or sock is None or sock.state == "closed" or self.closed:
            return
        if self.reactor.seconds() - self._answered_at >= STALL:

            def probed(f: Failure) -> None:
                if isinstance(f.value, ConatError) and f.value.code == 503 and sock.state != "closed":
                    sock.close("the persist server is gone", notify=False)

            sock.request(None, headers={CMD: "ping"}, timeout=STALL * 10).addCallbacks(lambda _: None, probed)
        self._watch()

    def _fail_pending(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        pending, self._pending = self._pending, set()
        for d in pending:
            d.cancel()

    # commands ---------------------------------------------------------------------------------

    def set(self, value: Any = None, *, raw: bytes | None = None, encoding: int = MSGPACK,
            key: str | None = None, ttl: int | None = None, previous_seq: int | None = None,
            msg_id: str | None = None, headers: dict[str, Any] | None = None) -> Deferred[dict[str, Any]]:
        """Append (or replace ``key``); fires with ``{seq, time}`` once stored."""
        try:
            body = encode(value, encoding) if raw is None else raw
        except Exception as e:
            return fail(e)
        reply = self.request("set", raw=body, encoding=encoding, key=key, ttl=ttl, previousSeq=previous_seq,
                             msgID=msg_id, headers=headers)
        return reply.addCallback(lambda r: dict(r.data))

    async def set_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items ``{key?, ttl?, previousSeq?, msgID?, messageData: {encoding, raw, headers?}}``,
        sent 500 at a time as upstream does."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(items), SET_MANY_BATCH):
            reply = await self.request("setMany", items[i:i + SET_MANY_BATCH])
            out.extend(reply.data)
        return out

    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        reply = await self.request("get", seq=seq, key=key)
        h = reply.headers
        if not h or "seq" not in h:
            return None
        user = {k: v for k, v in h.items() if k not in ("seq", "time", "key")}
        return StoredMessage(seq=h["seq"], time=h.get("time", 0), key=h.get("key"), encoding=reply.encoding,
                             raw=reply.raw, headers=user or None)

    async def get_all(self, *, start_seq: int | None = None, end_seq: int | None = None,
                      timeout: float | None = None) -> AsyncIterator[list[StoredMessage]]:
        """Batches of stored messages; a gap in the replies' numbering is a 503 (retry)."""
        if self.fatal is not None:
            raise self.fatal
        if self.sock is None or self.closed:
            raise ConatError("persist client is closed")
        headers = {"cmd": "getAll", **({"start_seq": start_seq} if start_seq is not None else {}),
                   **({"end_seq": end_seq} if end_seq is not None else {})}
        replies = await self.client.request_many(self.sock.peer, None, headers=headers,
                                                 max_wait=timeout or max(self.timeout, 120.0))
        self._reading.add(replies)
        expected = 0
        try:
            async for reply in replies:
                h = reply.header_map
                if h.get("error"):
                    raise ConatError(str(h["error"]), h.get("code"))
                if h.get("seq") != expected:
                    raise ConatError(f"data dropped, probably due to load -- please try again; expected "
                                     f"seq={expected}", 503)
                expected += 1
                if reply.data is None:
                    return
                yield [stored(item) for item in reply.data]
            if self.closed:
                raise ConatError("persist client is closed")
            raise ConatError("timeout", 408)
        finally:
            self._reading.discard(replies)
            replies.close()

    async def delete(self, *, seq: int | None = None, seqs: list[int] | None = None, last_seq: int | None = None,
                     all: bool = False) -> list[int]:
        reply = await self.request("delete", seq=seq, seqs=seqs, last_seq=last_seq, all=all or None)
        return list(reply.data["seqs"])

    async def config(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict((await self.request("config", config=config)).data)

    async def inventory(self) -> dict[str, Any]:
        return dict((await self.request("inventory")).data)

    async def keys(self) -> list[str]:
        return list((await self.request("keys")).data)

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        for replies in list(self._reading):
            replies.close()
        self._fail_pending()
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self.sock is not None:
            self.sock.on_close.clear()
            self.sock.close()

