"""The one Stream implementation: an operation queue per stream with group commit.

Backends differ only in their :class:`StreamStore` (how a transaction is opened) and their
``runner`` (a thread pool for SQLite/PostgreSQL, inline for memory). Operations of one stream
run one at a time, in order; consecutive ``set``s are committed in one transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage import common
from cocalc_hub.conat.persist.storage.base import Listener, SetRequest, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import StorageSession
from cocalc_hub.reactors import IThreadPoolReactor

log = Logger()
T = TypeVar("T")
Runner = Callable[[Callable[[], Any]], "Deferred[Any]"]
MAX_GROUP = 10_000  # sets per transaction
PAGE_ROWS = 200  # rows per getAll query


class StreamStore(ABC):
    """The storage of one stream."""

    @abstractmethod
    def transact(self, fn: Callable[[StorageSession], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction and commit (roll back if it raises)."""

    def vacuum(self) -> None:
        """Reclaim space after a bulk delete (outside any transaction)."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the storage."""


@dataclass(slots=True)
class _Op:
    deferred: Deferred[Any]
    fn: Callable[[StorageSession, float], tuple[Any, list[dict[str, Any]]]] | None = None
    write: bool = True
    vacuum: bool = False
    sets: list[SetRequest] = field(default_factory=list)


def _delete_given(s: StorageSession, seqs: list[int]) -> list[int]:
    s.delete_seqs(seqs)
    return seqs


def _page(s: StorageSession, *, after: int, end_seq: int | None, max_bytes: int) -> list[StoredMessage]:
    return s.page(after, end_seq, PAGE_ROWS, max_bytes)


class QueuedStream(Stream):
    def __init__(self, path: str, ephemeral: bool, store: StreamStore, runner: Runner,
                 clock: Callable[[], float], on_close: Callable[[QueuedStream], None], *,
                 feed_runner: Runner | None = None) -> None:
        self.path = path
        self.ephemeral = ephemeral
        self._store = store
        self._runner = runner
        self._feed_runner = feed_runner
        """Used instead of ``runner`` while a listener batches changes (has a flush): the
        memory store's end-of-turn runner, so a burst of sets commits as one group."""
        self._clock = clock
        self._on_close = on_close
        self._queue: deque[_Op] = deque()
        self._busy = False
        self._pumping = False
        self._closed = False
        self._listeners: list[Listener] = []
        self._flushes: dict[Listener, Callable[[], None]] = {}
        self._msg_ids = common.MsgIdCache(self._now_ms)
        self._inflight_ids: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self.openers = 1

    def _now_ms(self) -> float:
        return self._clock() * 1000.0

    # -- queue ------------------------------------------------------------------------------------

    def _enqueue(self, op: _Op) -> None:
        if self._closed:
            raise ConatError(f"stream {self.path!r} is closed")
        self._queue.append(op)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and self._queue:
                self._busy = True
                self._start(self._queue.popleft())
        finally:
            self._pumping = False

    def _start(self, op: _Op) -> None:
        now = self._now_ms()
        ops = [op]
        if op.fn is None:  # group commit: take every set already waiting
            while self._queue and self._queue[0].fn is None and len(ops) < MAX_GROUP:
                ops.append(self._queue.popleft())
            reqs = [o.sets[0] for o in ops]
            ephemeral = self.ephemeral

            def job() -> Any:
                return self._store.transact(lambda s: common.apply_sets(s, reqs, now, ephemeral), write=True)
        else:
            fn = op.fn

            def job() -> Any:
                result = self._store.transact(lambda s: fn(s, now), write=op.write)
                if op.vacuum:
                    self._store.vacuum()
                return result

        d = (self._feed_runner if self._feed_runner is not None and self._flushes else self._runner)(job)
        d.addCallbacks(lambda result: self._done(ops, result), lambda f: self._failed(ops, f))

    def _done(self, ops: list[_Op], result: Any) -> None:
        events: list[dict[str, Any]] = []
        outcomes: list[tuple[_Op, bool, Any]] = []
        if ops[0].fn is None:
            for op, item in zip(ops, result, strict=True):
                if isinstance(item, ConatError):
                    outcomes.append((op, False, item))
                else:
                    events += item[1]
                    outcomes.append((op, True, item[0]))
        else:
            value, events = result
            outcomes.append((ops[0], True, value))
        self._busy = False
        if events:
            self._emit(events)
        if ops[0].fn is None or ops[0].write:
            self._flush_listeners()  # every changefeed has the change before its writer's answer
        for op, ok, value in outcomes:
            if ok:
                op.deferred.callback(value)
            else:
                op.deferred.errback(value)
        self._pump()

    def _failed(self, ops: list[_Op], failure: Any) -> None:
        self._busy = False
        if not failure.check(ConatError):
            log.failure("persist stream {path}: storage operation failed", failure, path=self.path)
        for op in ops:
            op.deferred.errback(failure)
        self._pump()

    def _emit(self, events: list[dict[str, Any]]) -> None:
        for fn in list(self._listeners):
            try:
                fn(list(events))
            except Exception:
                log.failure("persist stream {path}: changefeed listener failed", path=self.path)

    def _flush_listeners(self) -> None:
        for flush in list(self._flushes.values()):
            try:
                flush()
            except Exception:
                log.failure("persist stream {path}: changefeed flush failed", path=self.path)

    def _run(self, fn: Callable[[StorageSession, float], tuple[Any, list[dict[str, Any]]]], *,
             write: bool = True, vacuum: bool = False) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._enqueue(_Op(d, fn, write, vacuum))
        return d

    def _read(self, fn: Callable[[StorageSession], T]) -> Deferred[Any]:
        return self._run(lambda s, now: (fn(s), []), write=False)

    # -- Stream -----------------------------------------------------------------------------------

    def _submit(self, req: SetRequest) -> Deferred[dict[str, Any]]:
        """Queue one set (validated, deduplicated by msgID)."""
        common.validate_request(req)
        msg_id = req.msg_id
        if msg_id is not None:
            cached = self._msg_ids.get(msg_id)
            if cached is not None:
                d0: Deferred[dict[str, Any]] = Deferred()
                d0.callback(cached)
                return d0
            waiting = self._inflight_ids.get(msg_id)
            if waiting is not None:  # the same msgID is being written right now
                d1: Deferred[dict[str, Any]] = Deferred()
                waiting.append(d1)
                return d1
            self._inflight_ids[msg_id] = []
        d: Deferred[dict[str, Any]] = Deferred()
        self._enqueue(_Op(d, sets=[req]))
        if msg_id is None:
            return d

        def settle(result: Any) -> Any:
            waiting = self._inflight_ids.pop(msg_id, [])
            if isinstance(result, dict):
                self._msg_ids.put(msg_id, result)
            for w in waiting:
                if isinstance(result, dict):
                    w.callback(dict(result))
                else:
                    w.errback(result)
            return result

        d.addBoth(settle)
        return d

    def set(self, req: SetRequest) -> Deferred[dict[str, Any]]:
        try:
            return self._submit(req)
        except ConatError as e:
            return fail(e)

    async def set_many(self, reqs: list[SetRequest]) -> list[dict[str, Any]]:
        pending: list[Deferred[dict[str, Any]] | ConatError] = []
        for req in reqs:
            try:
                pending.append(self._submit(req))
            except ConatError as e:
                pending.append(e)
        out: list[dict[str, Any]] = []
        for p in pending:
            if isinstance(p, ConatError):
                out.append(p.ack())
                continue
            try:
                out.append(await p)
            except ConatError as e:
                out.append(e.ack())
        return out

    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        if seq is None and key is None:
            raise ConatError("get: give seq or key")
        if seq is not None:
            common.check_seq("seq", seq)
        if key is not None and not isinstance(key, str):
            raise ConatError(f"key must be a string, not {key!r}")
        result: StoredMessage | None = await self._read(lambda s: s.get(seq, key))
        return result

    async def get_all(self, *, start_seq: int | None = None, end_seq: int | None = None,
                      batch_bytes: int = common.DEFAULT_BATCH_BYTES) -> AsyncIterator[list[StoredMessage]]:
        after = 0 if start_seq is None else max(common.check_seq("start_seq", start_seq) - 1, 0)
        if end_seq is not None:
            common.check_seq("end_seq", end_seq)
        batch: list[StoredMessage] = []
        size = 0
        while True:
            page: list[StoredMessage] = await self._read(
                partial(_page, after=after, end_seq=end_seq, max_bytes=max(batch_bytes - size, 1)))
            if not page:
                break
            for m in page:
                batch.append(m)
                size += len(m.raw)
                if size >= batch_bytes:
                    yield batch
                    batch, size = [], 0
            after = page[-1].seq
            del page
        if batch:
            yield batch

    async def delete(self, *, seq: int | None = None, seqs: list[int] | None = None,
                     last_seq: int | None = None, all: bool = False) -> list[int]:
        def run(fn: Callable[[StorageSession], list[int]], vacuum: bool = False) -> Deferred[Any]:
            return self._run(lambda s, now: (lambda r: (r, [common.delete_event(r)]))(fn(s)), vacuum=vacuum)

        if all:
            result: list[int] = await run(lambda s: s.delete_upto(None), True)
        elif last_seq is not None:
            common.check_seq("last_seq", last_seq)
            result = await run(lambda s: s.delete_upto(last_seq), True)
        elif seq is not None:
            common.check_seq("seq", seq)
            one = [seq]
            result = await run(lambda s: _delete_given(s, one))
        elif seqs is not None:
            if not isinstance(seqs, list):
                raise ConatError(f"seqs must be a list, not {seqs!r}")
            given = [common.check_seq("seqs item", x) for x in seqs]
            result = await run(lambda s: _delete_given(s, given))
        else:
            raise ConatError("delete: give one of seq, seqs, last_seq or all")
        return result

    async def config(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        changes = common.validate_partial(partial)
        ephemeral = self.ephemeral
        result: dict[str, Any] = await self._run(lambda s, now: common.apply_config(s, changes, ephemeral, now))
        return result

    async def inventory(self) -> dict[str, Any]:
        def fn(s: StorageSession) -> dict[str, Any]:
            count, size = s.totals()
            return {"bytes": size, "count": count, "limits": common.limits_of(s), "seq": s.last_seq()}

        result: dict[str, Any] = await self._read(fn)
        return result

    async def keys(self) -> list[str]:
        result: list[str] = await self._read(lambda s: s.keys())
        return result

    def add_listener(self, fn: Listener, *, flush: Callable[[], None] | None = None) -> None:
        self._listeners.append(fn)
        if flush is not None:
            self._flushes[fn] = flush

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)
        if fn not in self._listeners:
            self._flushes.pop(fn, None)

    async def close(self) -> None:
        self.openers -= 1
        if self.openers > 0 or self._closed:
            return
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close the storage after every queued operation, whoever still has it open."""
        if self._closed:
            return
        barrier: Deferred[Any] = self._read(lambda s: None)
        self._closed = True
        self._on_close(self)
        await barrier
        self._listeners.clear()
        self._flushes.clear()
        await self._runner(self._store.close)


class OpenStreams:
    """What every backend does with its open streams: one :class:`QueuedStream` per path,
    shared by all who open it (counted in ``openers``) and forgotten once the last closes."""

    def __init__(self) -> None:
        self._open: dict[str, QueuedStream] = {}

    def _shared(self, path: str) -> QueuedStream | None:
        """The stream already open on ``path``, with one more opener; None if there is none."""
        stream = self._open.get(path)
        if stream is not None:
            stream.openers += 1
        return stream

    def _keep(self, stream: QueuedStream) -> QueuedStream:
        self._open[stream.path] = stream
        return stream

    def _forget(self, stream: QueuedStream) -> None:
        if self._open.get(stream.path) is stream:
            del self._open[stream.path]

    async def _shutdown_streams(self) -> None:
        for stream in list(self._open.values()):
            await stream.shutdown()


class WorkerThreads:
    """A backend's own threads for blocking storage calls: started with the backend,
    stopped by its ``close()`` or, failing that, when the reactor shuts down."""

    def __init__(self, reactor: IThreadPoolReactor, name: str, size: int) -> None:
        self.reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
        self._pool.start()
        self._trigger: Any = reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)

    def run(self, fn: Callable[[], Any]) -> Deferred[Any]:
        return threads.deferToThreadPool(self.reactor, self._pool, fn)

    async def stop(self) -> bool:
        """Let queued work finish (off the reactor thread: stopping joins); False if stopped already."""
        if self._trigger is None:
            return False
        self.reactor.removeSystemEventTrigger(self._trigger)
        self._trigger = None
        await threads.deferToThread(self._pool.stop)
        return True
