"""The persist server: durable streams and key-value stores for every account and project,
served over conat sockets on ``persist.*`` (spec §6.1–§6.4).

It is an ordinary conat client (signed in as the hub), so it runs inside the hub or as
its own process; several can share the load (``ids``), each client being sent to one by
the load balancer's hash of its scope. A session is one socket: its first data message
names the stream (``{storage: {path, ephemeral?}, changefeed}``), then requests with a
``cmd`` header read and write it. Paths are checked against the scope in the socket
subject, so an account or project reaches only its own streams (the broker already
refuses subjects of another scope).
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import Message, Subscription, random_id
from cocalc_hub.conat.persist.storage.base import SetRequest, StorageBackend, Stream
from cocalc_hub.conat.socket import ServerSocket, SocketServer

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()
T = TypeVar("T")

MAX_PER_USER = 500
MAX_GLOBAL = 10_000
MAX_PATH_LENGTH = 4000
INIT_TIMEOUT = 30.0
BATCH_BYTES = 20_000_000
GET_ALL_BATCH = 4_000_000
"""Raw bytes per getAll reply. Upstream cuts at 20 MB; replies are only iterated by the
client, so smaller ones are wire-compatible, need no chunking (max payload 8 MB) and keep
the hub's memory per reader at a few times this."""
CHANGEFEED_THROTTLE = 0.03


def java_hash(text: str) -> int:
    """The 32-bit string hash upstream's balancer uses (UTF-16 code units, signed wrap)."""
    h = 0
    units = text.encode("utf-16-le")
    for i in range(0, len(units), 2):
        h = (h * 31 + (units[i] | units[i + 1] << 8)) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def server_for(scope: str, ids: list[str]) -> str:
    return ids[abs(java_hash(scope)) % len(ids)]


def check_path(subject: str, path: Any, service: str = "persist") -> None:
    """May the socket subject ``<service>.<scope>`` use storage ``path``? (spec §6.4)"""
    if not isinstance(path, str) or not path:
        raise ConatError("storage path must be a non-empty string", 400)
    if posixpath.normpath(path) != path:
        raise ConatError(f"permission denied: path '{path}' is not normalized")
    if len(path) > MAX_PATH_LENGTH:
        raise ConatError(f"permission denied: path (of length {len(path)}) is too long (limit is "
                         f"{MAX_PATH_LENGTH} characters)", 403)
    if path.startswith("/") or path.endswith("/"):
        raise ConatError(f"permission denied: path '{path}' must not start or end with '/'", 403)
    if path == ".." or path.startswith("../") or "\x00" in path:
        raise ConatError(f"permission denied: path '{path}' is outside the storage root", 403)
    tokens = subject.split(".")
    if len(tokens) < 2 or tokens[0] != service:
        raise ConatError(f"invalid subject: '{subject}'", 403)
    scope = tokens[1]
    if scope == "hub":
        return
    if scope.startswith("account-"):
        base = f"accounts/{scope[len('account-'):][:36]}/"
    elif scope.startswith("project-"):
        base = f"projects/{scope[len('project-'):][:36]}/"
    else:
        raise ConatError(f"invalid subject: '{subject}'", 403)
    if not path.startswith(base):
        raise ConatError(f"permission denied: subject '{subject}' does not grant write permission to "
                         f"path='{path}' since it is not under '{base}'", 403)


def _wait(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires (with None) when ``d`` does, leaving ``d``'s result alone."""
    out: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out


class PersistSession:
    """One client socket: its stream, its changefeed, its requests."""

    def __init__(self, server: PersistServer, sock: ServerSocket) -> None:
        self.server = server
        self.sock = sock
        self.scope = sock.subject.split(".")[1] if "." in sock.subject else ""
        self.stream: Stream | None = None
        self.error: ConatError | None = None
        self.ready: Deferred[None] = Deferred()
        self.started = False
        self.counted = False
        self.feed = False
        self.feed_seq = 0
        self.feed_buffer: list[dict[str, Any]] = []
        self.feed_timer: Any = None
        self.feed_last = 0.0
        sock.on_data = self.on_data
        sock.on_request = self.on_request
        sock.on_close.append(self._socket_closed)

    def _socket_closed(self, reason: str) -> None:
        ensureDeferred(self.closed()).addErrback(lambda f: log.failure("persist: closing a session failed", f))

    # opening ----------------------------------------------------------------------------------

    def on_data(self, msg: Message) -> None:
        if self.started:
            return  # only the first data message means something
        self.started = True
        ensureDeferred(self.init(msg))

    async def init(self, msg: Message) -> None:
        try:
            body = msg.data
            storage = body.get("storage") if isinstance(body, dict) else None
            if not isinstance(storage, dict):
                raise ConatError("the first message must be {storage: {path, ...}, changefeed}", 400)
            self.server.admit(self)
            check_path(self.sock.subject, storage.get("path"), self.server.service)
            # the backend shares one stream per path among its openers (and so its changefeed)
            self.stream = await self.server.backend.open(storage["path"], ephemeral=bool(storage.get("ephemeral")))
            if self.sock.state == "closed":
                await self.stream.close()
                self.stream = None
                return
            if body.get("changefeed"):
                self.start_changefeed()
        except Exception as e:
            self.error = e if isinstance(e, ConatError) else ConatError(str(e))
            if not isinstance(e, ConatError):
                log.failure("persist: opening a stream failed")
            try:
                self.sock.write(None, headers=_error_headers(self.error))
            except ConatError:
                pass
        if not self.ready.called:  # closed meanwhile: closed() has released the waiters
            self.ready.callback(None)

    def start_changefeed(self) -> None:
        if self.feed or self.stream is None:
            return
        self.feed = True
        self.stream.add_listener(self.changed, flush=self.flush_pending)

    # the changefeed: ordered, acknowledged writes, batched over 30 ms ---------------------------
    # ... except that a change reaches every changefeed no later than its writer's reply (as
    # upstream; applications rely on "once my save returned, everyone has it"): the stream
    # calls flush_pending after giving a write's events to its listeners and before answering
    # the writer. What still batches: the sets committed together (one transaction, one feed
    # write) and changes that no writer here waits for (other hubs' writes, via PostgreSQL).
    # (Not covered: on PostgreSQL, a write whose events wait until another hub's earlier
    # commit has been read reaches this hub's feeds when that catch-up ends, maybe after
    # its reply.)

    def flush_pending(self) -> None:
        if self.feed_buffer:
            if self.feed_timer is not None and self.feed_timer.active():
                self.feed_timer.cancel()
            self.flush_feed()

    def changed(self, events: list[dict[str, Any]]) -> None:
        self.feed_buffer.extend(events)
        if self.feed_timer is not None:
            return
        now = self.server.reactor.seconds()
        throttle = self.server.changefeed_throttle
        if now - self.feed_last >= throttle:
            self.flush_feed()  # leading edge
        else:
            self.feed_timer = self.server.reactor.callLater(throttle - (now - self.feed_last),
                                                            self.flush_feed)

    def flush_feed(self) -> None:
        self.feed_timer = None
        self.feed_last = self.server.reactor.seconds()
        events, self.feed_buffer = self.feed_buffer, []
        batch: list[dict[str, Any]] = []
        size = 0
        for event in events:
            batch.append(event)
            size += len(event.get("raw", b""))
            if size >= BATCH_BYTES:
                self.write_feed(batch)
                batch, size = [], 0
        if batch:
            self.write_feed(batch)

    def write_feed(self, batch: list[dict[str, Any]]) -> None:
        if self.sock.state == "closed":
            return
        try:
            self.sock.write(batch, headers={"seq": self.feed_seq})
            self.feed_seq += 1
        except ConatError as e:
            log.warn("persist: changefeed write to {s} failed: {e}", s=self.sock.subject, e=e)

    # requests ---------------------------------------------------------------------------------

    def on_request(self, msg: Message) -> Deferred[None]:
        headers = msg.header_map
        stream = self.stream
        if headers.get("cmd") == "set" and stream is not None and self.error is None and self.ready.called:
            # the write path, without the coroutines of the general one
            d: Deferred[Any]
            try:
                result = stream.set(_set_request(msg.raw, msg.encoding, headers.get("headers"), headers))
                d = result if isinstance(result, Deferred) else ensureDeferred(_awaited(result))
            except ConatError as e:
                d = fail(e)
            return d.addCallbacks(msg.respond_sync,
                                  lambda f: ensureDeferred(self._answer_error(msg, "set", f.value)))
        return ensureDeferred(self._request(msg, headers))

    async def _request(self, msg: Message, headers: dict[str, Any]) -> None:
        cmd = headers.get("cmd")
        try:
            if cmd == "serverId":
                await msg.respond(self.server.id)
                return
            await self.wait_ready(headers.get("timeout"))
            if self.error is not None:
                raise self.error
            stream = self.stream
            if stream is None:
                raise ConatError("the stream is not open", 500)
            if cmd == "getAll":
                await self.get_all(stream, msg, headers)
                return
            handler = COMMANDS.get(cmd) if isinstance(cmd, str) else None
            if handler is None:
                await msg.respond(None, headers={"error": f"unknown command {cmd}", "code": 404})
                return
            result = await handler(self, stream, msg, headers)
            # One answer to a requester whose inbox is subscribed for as long as it waits:
            # sent without waiting for the broker's count (that costs a round trip per write).
            if isinstance(result, Reply):
                msg.respond_sync(None, raw=result.raw, encoding=result.encoding, headers=result.headers)
            else:
                msg.respond_sync(result)
        except Exception as e:
            await self._answer_error(msg, cmd, e)

    async def _answer_error(self, msg: Message, cmd: Any, e: BaseException) -> None:
        error = e if isinstance(e, ConatError) else ConatError(str(e))
        if not isinstance(e, ConatError):
            log.failure("persist: {cmd} on {s} failed", cmd=cmd, s=self.sock.subject)
        try:
            await msg.respond(None, headers=_error_headers(error))
        except ConatError:
            pass  # the requester is gone

    async def wait_ready(self, timeout_ms: Any) -> None:
        if self.ready.called:
            return
        timeout = timeout_ms / 1000 if isinstance(timeout_ms, (int, float)) and timeout_ms > 0 else INIT_TIMEOUT
        waiter: Deferred[None] = _wait(self.ready)
        waiter.addTimeout(timeout, self.server.reactor)
        try:
            await waiter
        except Exception:
            raise ConatError("timeout waiting for the stream to open", 408) from None

    async def get_all(self, stream: Stream, msg: Message, headers: dict[str, Any]) -> None:
        """Replies of at most ~20 MB each, then a final null; each reply awaits the broker's
        ack before the next batch is read, so memory stays bounded however long the stream."""
        n = 0
        try:
            async for batch in stream.get_all(start_seq=_int(headers.get("start_seq")),
                                              end_seq=_int(headers.get("end_seq")), batch_bytes=GET_ALL_BATCH):
                await msg.respond([m.wire() for m in batch], headers={"seq": n})
                n += 1
            await msg.respond(None, headers={"seq": n})
        except Exception as e:
            error = e if isinstance(e, ConatError) else ConatError(str(e))
            await msg.respond(None, headers={"error": str(error), "seq": n})

    async def closed(self) -> None:
        if not self.ready.called:
            # requests waiting for the stream to open must not wait (and hold a timer) for
            # a session that is gone
            self.error = self.error or ConatError("the persist session was closed", 503)
            self.ready.callback(None)
        if self.feed_timer is not None and self.feed_timer.active():
            self.feed_timer.cancel()
        self.feed_timer = None
        self.server.sessions.discard(self)
        if self.counted:
            self.server.release_slot(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            if self.feed:
                stream.remove_listener(self.changed)
            await stream.close()


async def _awaited(value: Awaitable[T]) -> T:
    return await value


class Reply:
    """A response that is a stored message's own bytes."""

    def __init__(self, raw: bytes, encoding: int, headers: dict[str, Any] | None) -> None:
        self.raw, self.encoding, self.headers = raw, encoding, headers


def _int(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConatError(f"expected an integer, got {value!r}", 400)
    return value


def _ttl(value: Any) -> int | None:
    """A message's ttl in ms: any number (stored whatever the stream's config, see common.py)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        raise ConatError(f"ttl must be a number of ms, not {value!r}", 400)
    return int(value)


def _error_headers(error: ConatError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": str(error)}
    if error.code is not None:
        out["code"] = error.code
    return out


def _set_request(raw: Any, encoding: Any, headers: Any, params: dict[str, Any]) -> SetRequest:
    if not isinstance(raw, bytes):
        raise ConatError("raw must be binary", 400)
    if encoding not in (0, 1):
        raise ConatError(f"unknown encoding {encoding!r}", 400)
    if headers is not None and not isinstance(headers, dict):
        raise ConatError("headers must be an object", 400)
    key = params.get("key")
    if key is not None and not isinstance(key, str):
        raise ConatError("key must be a string", 400)
    msg_id = params.get("msgID")
    if msg_id is not None and not isinstance(msg_id, str):
        raise ConatError("msgID must be a string", 400)
    return SetRequest(raw=raw, encoding=encoding, headers=headers, key=key, ttl=_ttl(params.get("ttl")),
                      previous_seq=_int(params.get("previousSeq")), msg_id=msg_id)


async def _set(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    return await stream.set(_set_request(msg.raw, msg.encoding, h.get("headers"), h))


async def _set_many(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    items = msg.data
    if not isinstance(items, list):
        raise ConatError("setMany takes an array", 400)
    reqs: list[SetRequest | ConatError] = []
    for item in items:
        try:
            if not isinstance(item, dict) or not isinstance(item.get("messageData"), dict):
                raise ConatError("each item needs messageData {encoding, raw, headers?}", 400)
            data = item["messageData"]
            reqs.append(_set_request(data.get("raw"), data.get("encoding"), data.get("headers"), item))
        except ConatError as e:
            reqs.append(e)
    good = [r for r in reqs if isinstance(r, SetRequest)]
    results = iter(await stream.set_many(good) if good else [])
    return [_error_headers(r) if isinstance(r, ConatError) else next(results) for r in reqs]


async def _delete(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    seqs = h.get("seqs")
    if seqs is not None and (not isinstance(seqs, list) or not all(isinstance(s, int) for s in seqs)):
        raise ConatError("seqs must be a list of integers", 400)
    return {"seqs": await stream.delete(seq=_int(h.get("seq")), seqs=seqs, last_seq=_int(h.get("last_seq")),
                                        all=bool(h.get("all")))}


async def _config(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    config = h.get("config")
    if config is not None and not isinstance(config, dict):
        raise ConatError("config must be an object", 400)
    return await stream.config(config)


async def _inventory(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    return await stream.inventory()


async def _keys(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    return await stream.keys()


async def _get(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    key = h.get("key")
    if key is not None and not isinstance(key, str):
        raise ConatError("key must be a string", 400)
    found = await stream.get(seq=_int(h.get("seq")), key=key)
    if found is None:
        return None
    return Reply(found.raw, found.encoding, {**(found.headers or {}), "seq": found.seq, "time": found.time,
                                             "key": found.key})


async def _changefeed(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    session.start_changefeed()
    return "created"


async def _sqlite(session: PersistSession, stream: Stream, msg: Message, h: dict[str, Any]) -> Any:
    raise ConatError("sqlite command not currently supported")


COMMANDS: dict[str, Callable[[PersistSession, Stream, Message, dict[str, Any]], Any]] = {
    "set": _set, "setMany": _set_many, "delete": _delete, "config": _config, "inventory": _inventory,
    "keys": _keys, "get": _get, "changefeed": _changefeed, "sqlite": _sqlite,
}


class PersistServer:
    """Serves ``<service>.*`` with id ``server_id`` out of ``ids``; answers the load balancer
    on ``<service>.*.id`` unless ``balancer`` is False."""

    def __init__(self, client: Client, backend: StorageBackend, *, server_id: str = "0",
                 ids: list[str] | None = None, service: str = "persist", balancer: bool = True,
                 max_per_user: int = MAX_PER_USER, max_global: int = MAX_GLOBAL,
                 changefeed_throttle: float = CHANGEFEED_THROTTLE) -> None:
        self.client = client
        self.reactor = client.reactor
        self.id = server_id
        self.ids = ids or [server_id]
        if server_id not in self.ids:
            raise ValueError(f"persist server id {server_id!r} is not among {self.ids}")
        self.service = service
        self.balancer = balancer
        self.max_per_user = max_per_user
        self.max_global = max_global
        self.changefeed_throttle = changefeed_throttle
        self.backend = backend
        self.sessions: set[PersistSession] = set()
        self.per_user: dict[str, int] = {}
        self.total = 0
        self.sockets = SocketServer(client, f"{service}.*", server_id, self.connected)
        self._balancer_sub: Subscription | None = None

    async def start(self) -> None:
        await self.sockets.start()
        if self.balancer:
            self._balancer_sub = await self.client.subscribe(f"{self.service}.*.id", queue=random_id(),
                                                             callback=self.balance)
        log.info("persist server {id} of {ids} serving {s}.*", id=self.id, ids=self.ids, s=self.service)

    def balance(self, msg: Message) -> None:
        if msg.is_request():
            scope = msg.subject.split(".")[1]
            msg.respond(server_for(scope, self.ids)).addErrback(lambda f: None)

    def connected(self, sock: ServerSocket) -> None:
        self.sessions.add(PersistSession(self, sock))

    def admit(self, session: PersistSession) -> None:
        """The per-scope and global limits on open streams (429 as upstream)."""
        if self.per_user.get(session.scope, 0) >= self.max_per_user:
            raise ConatError(f"There is a per user limit of {self.max_per_user} persistent storage.   "
                             "Please close some.", 429)
        if self.total >= self.max_global:
            raise ConatError(f"There is a global limit of {self.max_global} persistent storage.   "
                             "Please try again later.", 429)
        self.per_user[session.scope] = self.per_user.get(session.scope, 0) + 1
        self.total += 1
        session.counted = True

    def release_slot(self, session: PersistSession) -> None:
        session.counted = False
        self.total -= 1
        left = self.per_user.get(session.scope, 1) - 1
        if left > 0:
            self.per_user[session.scope] = left
        else:
            self.per_user.pop(session.scope, None)

    async def close(self) -> None:
        if self._balancer_sub is not None:
            self._balancer_sub.close()
        self.sockets.close()
        for session in list(self.sessions):
            await session.closed()
