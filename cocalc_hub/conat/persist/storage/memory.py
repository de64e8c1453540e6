"""In-memory backend: ephemeral streams (upstream's in-memory SQLite), and the reference
implementation of :class:`~.common.StorageSession` for tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from cocalc_hub.conat.persist.storage.base import StorageBackend, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import StorageSession
from cocalc_hub.conat.persist.storage.stream import OpenStreams, QueuedStream, Runner, StreamStore

T = TypeVar("T")


@dataclass(slots=True)
class _Row:
    seq: int
    key: str | None
    time_ms: float
    headers: str | None
    encoding: int
    raw: bytes
    size: int
    ttl: int | None

    def message(self) -> StoredMessage:
        headers = None if self.headers is None else json.loads(self.headers)
        return StoredMessage(self.seq, self.time_ms, self.key, self.encoding, self.raw, headers, self.ttl)


class MemoryStreamStore(StreamStore, StorageSession):
    """Rows in seq order plus a key index; an undo log gives transactions and savepoints."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}  # insertion order == seq order
        self.by_key: dict[str, int] = {}
        self.conf: dict[str, str] = {}
        self.next_seq = 1
        self.bytes = 0
        self._undo: list[Callable[[], None]] = []
        self._marks: list[int] = []

    # -- StreamStore ------------------------------------------------------------------------------

    def transact(self, fn: Callable[[StorageSession], T], *, write: bool) -> T:
        self._undo, self._marks = [], []
        try:
            return fn(self)
        except BaseException:
            self._unwind(0)
            raise
        finally:
            self._undo, self._marks = [], []

    def close(self) -> None:
        self.rows.clear()
        self.by_key.clear()

    def _unwind(self, mark: int) -> None:
        while len(self._undo) > mark:
            self._undo.pop()()

    # -- StorageSession ---------------------------------------------------------------------------

    def savepoint(self) -> None:
        self._marks.append(len(self._undo))

    def release(self) -> None:
        self._marks.pop()

    def rollback(self) -> None:
        self._unwind(self._marks.pop())

    def read_config(self) -> dict[str, str]:
        return dict(self.conf)

    def write_config(self, field: str, value: str) -> None:
        old = self.conf.get(field)
        self.conf[field] = value

        def undo() -> None:
            if old is None:
                self.conf.pop(field, None)
            else:
                self.conf[field] = old
        self._undo.append(undo)

    def seq_of_key(self, key: str) -> int | None:
        return self.by_key.get(key)

    def totals(self) -> tuple[int, int]:
        return len(self.rows), self.bytes

    def recent(self, since_ms: float) -> tuple[int, int]:
        count = size = 0
        for row in reversed(self.rows.values()):
            if row.time_ms < since_ms:
                break  # times grow with seq
            count += 1
            size += row.size
        return count, size

    def oldest(self, after_seq: int, limit: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for row in self.rows.values():
            if row.seq > after_seq:
                out.append((row.seq, row.size))
                if len(out) >= limit:
                    break
        return out

    def _remove(self, seq: int) -> None:
        row = self.rows.pop(seq, None)
        if row is None:
            return
        self.bytes -= row.size
        if row.key is not None:
            self.by_key.pop(row.key, None)

        def undo() -> None:
            self.rows[seq] = row
            self.rows = dict(sorted(self.rows.items()))
            self.bytes += row.size
            if row.key is not None:
                self.by_key[row.key] = seq
        self._undo.append(undo)

    def delete_seqs(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._remove(seq)

    def _delete_where(self, pred: Callable[[_Row], bool]) -> list[int]:
        victims = [row.seq for row in self.rows.values() if pred(row)]
        self.delete_seqs(victims)
        return victims

    def delete_older_than(self, time_ms: float) -> list[int]:
        return self._delete_where(lambda r: r.time_ms < time_ms)

    def delete_expired(self, now_ms: float) -> list[int]:
        return self._delete_where(lambda r: (r.ttl or 0) > 0 and r.time_ms + (r.ttl or 0) < now_ms)

    def delete_upto(self, last_seq: int | None) -> list[int]:
        return self._delete_where(lambda r: last_seq is None or r.seq <= last_seq)

    def insert(self, *, key: str | None, time_ms: float, headers: str | None, encoding: int,
               raw: bytes, size: int, ttl: int | None) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.rows[seq] = _Row(seq, key, time_ms, headers, encoding, raw, size, ttl)
        self.bytes += size
        if key is not None:
            self.by_key[key] = seq

        def undo() -> None:
            self.rows.pop(seq, None)
            self.bytes -= size
            if key is not None:
                self.by_key.pop(key, None)
            self.next_seq = seq  # never observed by anyone: the transaction did not commit
        self._undo.append(undo)
        return seq

    def get(self, seq: int | None, key: str | None) -> StoredMessage | None:
        if seq is None and key is not None:
            seq = self.by_key.get(key)
        row = None if seq is None else self.rows.get(seq)
        return None if row is None else row.message()

    def page(self, after_seq: int, end_seq: int | None, limit: int, max_bytes: int) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        size = 0
        for row in self.rows.values():
            if row.seq <= after_seq:
                continue
            if end_seq is not None and row.seq > end_seq or len(out) >= limit or size >= max_bytes:
                break
            out.append(row.message())
            size += len(row.raw)
        return out

    def keys(self) -> list[str]:
        return list(self.by_key)

    def last_seq(self) -> int:
        return next(reversed(self.rows), 0)


def inline(fn: Callable[[], Any]) -> Deferred[Any]:
    """Run right away on the reactor thread (memory operations never block)."""
    return maybeDeferred(fn)


def memory_stream(path: str, ephemeral: bool, clock: Callable[[], float],
                  on_close: Callable[[QueuedStream], None], reactor: IReactorTime | None = None) -> QueuedStream:
    """A stream held in memory (also what the other backends use for ephemeral streams).

    Operations run inline, except while the stream has a changefeed that batches (a listener
    with a flush) and ``reactor`` is given: then each runs at the end of the reactor turn, so
    the sets of one burst (a client's pipelined writes arrive in one read) commit as one
    group and reach each changefeed in one message rather than one each; every change must
    reach the changefeeds before its writer's answer, so without this no batching is left."""
    turn_end = None if reactor is None else _at_turn_end(reactor)
    return QueuedStream(path, ephemeral, MemoryStreamStore(), inline, clock, on_close, feed_runner=turn_end)


def _at_turn_end(reactor: IReactorTime) -> Runner:
    def run(fn: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        reactor.callLater(0, lambda: maybeDeferred(fn).chainDeferred(d))
        return d

    return run


class MemoryStorageBackend(OpenStreams, StorageBackend):
    """Streams that live as long as they are open."""

    name = "memory"

    def __init__(self, reactor: IReactorTime, clock: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.clock: Callable[[], float] = clock or reactor.seconds

    async def open(self, path: str, *, ephemeral: bool = False) -> Stream:
        return self._shared(path) or self._keep(memory_stream(path, ephemeral, self.clock, self._forget,
                                                              self.reactor))

    async def close(self) -> None:
        await self._shutdown_streams()
