"""PostgreSQL backend: every stream in shared tables keyed by path, so several hubs can serve
the same streams. psycopg 3 (synchronous API) runs in a thread pool, never on the reactor.

Sequence numbers come from ``persist_streams.last_seq``, read ``FOR UPDATE`` by every writing
transaction: writers to one stream (from any machine) are serialized, and numbers are never
reused, even after deletes.

Changes committed through another backend instance (another hub machine) reach this one's
changefeed listeners by LISTEN/NOTIFY, without the data travelling in the notification:

* A writing transaction that changes a stream also counts its delete events in
  ``persist_streams.last_delete``, logs each in ``persist_deletes`` (with ``after_seq``, its
  place among the sets) and sends ``NOTIFY cocalc_persist, '<key> <last_seq> <last_delete>'``;
  ``key`` hashes schema and path, so the payload is small whatever the path.
* One channel for all streams, one dedicated connection per backend in its own thread (select
  on its socket and a wake-up socket, so it stops at once): LISTEN per path would need commands
  on a connection that is busy waiting, and the rate is bounded by commits anyway. Payloads for
  paths not open here cost a dict lookup.
* Each open stream keeps a cursor, (last seq, last delete id) its listeners have got. A
  notification beyond it queues a catch-up in the stream's own operation queue: it reads the
  rows and logged deletes past the cursor, merges them in commit order and emits them. A local
  write emits at once when it starts at the cursor; otherwise its events wait ("held") until the
  catch-up reaches its start. Own notifications are not beyond the cursor: no duplicates.
* After every (re)connection the listener makes all streams catch up, so notifications missed
  during an outage lose nothing. The delete log is kept ``DELETE_LOG_SECONDS``; a stream that
  lagged longer announces every seq missing from its range instead (a bigger event, same result).
* Events read back from the tables carry no ``msgID`` (not stored), and a message deleted (or
  replaced by key) before another instance read it reaches that instance's listeners only as
  the delete: their end state is the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.base import StorageBackend, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import StorageSession, delete_event
from cocalc_hub.conat.persist.storage.memory import memory_stream
from cocalc_hub.conat.persist.storage.pg_listen import CHANNEL, Listener
from cocalc_hub.conat.persist.storage.stream import OpenStreams, QueuedStream, StreamStore, WorkerThreads
from cocalc_hub.reactors import IThreadPoolReactor

log = Logger()
T = TypeVar("T")
Cursor = tuple[int, int]  # (last seq, last delete id)
Events = list[dict[str, Any]]

SCHEMA = """
CREATE TABLE IF NOT EXISTS persist_streams (
  path TEXT PRIMARY KEY, last_seq BIGINT NOT NULL DEFAULT 0, last_delete BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS persist_messages (
  path TEXT NOT NULL, seq BIGINT NOT NULL, key TEXT, time DOUBLE PRECISION NOT NULL, headers TEXT,
  encoding INTEGER NOT NULL, raw BYTEA NOT NULL, size BIGINT NOT NULL, ttl BIGINT,
  PRIMARY KEY (path, seq), UNIQUE (path, key));
CREATE INDEX IF NOT EXISTS persist_messages_time ON persist_messages (path, time);
CREATE TABLE IF NOT EXISTS persist_config (
  path TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (path, field));
CREATE TABLE IF NOT EXISTS persist_deletes (
  path TEXT NOT NULL, id BIGINT NOT NULL, after_seq BIGINT NOT NULL, seqs BIGINT[] NOT NULL,
  time DOUBLE PRECISION NOT NULL, PRIMARY KEY (path, id));
"""
_SCHEMA_LOCK = 0x636F63616C6370  # advisory lock id: concurrent hubs create the tables once
_SELECT = "SELECT seq, key, time, headers, encoding, raw, ttl FROM persist_messages"
DELETE_LOG_SECONDS = 24 * 3600.0
PRUNE_EVERY = 64  # delete ids between prunings of a stream's delete log
SYNC_ROWS, SYNC_BYTES = 1000, 8_000_000  # at most this much per catch-up; the next one goes on
SYNC_RETRY, SYNC_RETRY_MAX = 0.5, 30.0  # a failed catch-up is retried (doubling) after this
LISTEN_RETRY = 0.05  # first listener reconnection delay, seconds (doubling; see pg_listen)


class ConnectionPool(Protocol):
    """psycopg connections shared by the backend's pool threads (called from them only): the
    application's pool, e.g. :class:`cocalc_hub.db.postgres.Connections`. ``acquire`` raises
    what the connect function raises; a broken connection is ``discard``-ed, not released."""

    def acquire(self) -> psycopg.Connection[Any]: ...
    def release(self, conn: psycopg.Connection[Any]) -> None: ...
    def discard(self, conn: psycopg.Connection[Any]) -> None: ...
    def close_all(self) -> None: ...


PoolFactory = Callable[[Callable[[], psycopg.Connection[Any]]], ConnectionPool]
"""Makes a :class:`ConnectionPool` from the function that opens one more connection."""


def _message(row: Any) -> StoredMessage:
    seq, key, t, headers, encoding, raw, ttl = row
    return StoredMessage(int(seq), float(t), key, int(encoding), bytes(raw),
                         None if headers is None else json.loads(headers), None if ttl is None else int(ttl))


def _changefeed_events(result: Any) -> Events:
    """The events of a write job's result, as QueuedStream shapes it: ``(value, events)``, or for
    a group commit a list of those and ConatErrors (the failed items)."""
    if isinstance(result, tuple):
        return list(result[1])
    return [e for item in result if isinstance(item, tuple) for e in item[1]]


class PgSession(StorageSession):
    """One stream's view of one transaction."""

    def __init__(self, cur: psycopg.Cursor[Any], path: str, last_seq: int | None) -> None:
        self.cur = cur
        self.path = path
        self.next_seq = last_seq
        self._marks: list[int | None] = []

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        self.cur.execute(sql, params)
        return self.cur.fetchone()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        self.cur.execute(sql, params)
        return self.cur.fetchall()

    def savepoint(self) -> None:
        self._marks.append(self.next_seq)
        self.cur.execute("SAVEPOINT item")

    def release(self) -> None:
        self._marks.pop()
        self.cur.execute("RELEASE SAVEPOINT item")

    def rollback(self) -> None:
        self.next_seq = self._marks.pop()
        self.cur.execute("ROLLBACK TO SAVEPOINT item")
        self.cur.execute("RELEASE SAVEPOINT item")

    def read_config(self) -> dict[str, str]:
        return {f: v for f, v in self._all("SELECT field, value FROM persist_config WHERE path = %s", (self.path,))}

    def write_config(self, field: str, value: str) -> None:
        self.cur.execute("INSERT INTO persist_config (path, field, value) VALUES (%s, %s, %s) "
                         "ON CONFLICT (path, field) DO UPDATE SET value = excluded.value", (self.path, field, value))

    def seq_of_key(self, key: str) -> int | None:
        row = self._one("SELECT seq FROM persist_messages WHERE path = %s AND key = %s", (self.path, key))
        return None if row is None else int(row[0])

    def totals(self) -> tuple[int, int]:
        count, size = self._one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM persist_messages WHERE path = %s",
                                (self.path,))
        return int(count), int(size)

    def recent(self, since_ms: float) -> tuple[int, int]:
        count, size = self._one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM persist_messages "
                                "WHERE path = %s AND time >= %s", (self.path, since_ms))
        return int(count), int(size)

    def oldest(self, after_seq: int, limit: int) -> list[tuple[int, int]]:
        rows = self._all("SELECT seq, size FROM persist_messages WHERE path = %s AND seq > %s ORDER BY seq LIMIT %s",
                         (self.path, after_seq, limit))
        return [(int(s), int(z)) for s, z in rows]

    def delete_seqs(self, seqs: list[int]) -> None:
        if seqs:
            self.cur.execute("DELETE FROM persist_messages WHERE path = %s AND seq = ANY(%s)", (self.path, seqs))

    def _delete(self, where: str, params: tuple[Any, ...]) -> list[int]:
        rows = self._all(f"DELETE FROM persist_messages WHERE path = %s AND {where} RETURNING seq",
                         (self.path, *params))
        return sorted(int(r[0]) for r in rows)

    def delete_older_than(self, time_ms: float) -> list[int]:
        return self._delete("time < %s", (time_ms,))

    def delete_expired(self, now_ms: float) -> list[int]:
        return self._delete("ttl IS NOT NULL AND ttl > 0 AND time + ttl < %s", (now_ms,))

    def delete_upto(self, last_seq: int | None) -> list[int]:
        return self._delete("TRUE" if last_seq is None else "seq <= %s", () if last_seq is None else (last_seq,))

    def insert(self, *, key: str | None, time_ms: float, headers: str | None, encoding: int,
               raw: bytes, size: int, ttl: int | None) -> int:
        if self.next_seq is None:
            raise RuntimeError("insert outside a write transaction")
        self.next_seq += 1
        self.cur.execute("INSERT INTO persist_messages (path, seq, key, time, headers, encoding, raw, size, ttl) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                         (self.path, self.next_seq, key, time_ms, headers, encoding, raw, size, ttl))
        return self.next_seq

    def get(self, seq: int | None, key: str | None) -> StoredMessage | None:
        if seq is not None:
            row = self._one(f"{_SELECT} WHERE path = %s AND seq = %s", (self.path, seq))
        else:
            row = self._one(f"{_SELECT} WHERE path = %s AND key = %s", (self.path, key))
        return None if row is None else _message(row)

    def page(self, after_seq: int, end_seq: int | None, limit: int, max_bytes: int) -> list[StoredMessage]:
        # the running total of sizes (>= raw lengths) keeps large rows on the server
        rows = self._all(
            "SELECT seq, key, time, headers, encoding, raw, ttl FROM ("
            " SELECT *, SUM(size) OVER (ORDER BY seq) - size AS before FROM persist_messages"
            " WHERE path = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s) AS q"
            " WHERE before < %s ORDER BY seq",
            (self.path, after_seq, end_seq if end_seq is not None else 2**63 - 1, limit, max_bytes))
        return [_message(r) for r in rows]

    def keys(self) -> list[str]:
        rows = self._all("SELECT key FROM persist_messages WHERE path = %s AND key IS NOT NULL ORDER BY seq",
                         (self.path,))
        return [str(r[0]) for r in rows]

    def last_seq(self) -> int:
        return int(self._one("SELECT COALESCE(MAX(seq), 0) FROM persist_messages WHERE path = %s", (self.path,))[0])

    # -- cross-instance changefeed (catch-up reads) --

    def state(self) -> Cursor:
        row = self._one("SELECT last_seq, last_delete FROM persist_streams WHERE path = %s", (self.path,))
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def first_seq(self, default: int) -> int:
        row = self._one("SELECT MIN(seq) FROM persist_messages WHERE path = %s", (self.path,))
        return default if row is None or row[0] is None else int(row[0])

    def logged_deletes(self, after_id: int, upto_id: int) -> list[tuple[int, int, list[int]]]:
        rows = self._all("SELECT id, after_seq, seqs FROM persist_deletes WHERE path = %s AND id > %s AND id <= %s"
                         " ORDER BY id", (self.path, after_id, upto_id))
        return [(int(i), int(a), [int(x) for x in seqs]) for i, a, seqs in rows]

    def absent(self, first: int, last: int) -> list[int]:
        """Seqs in [first, last] without a row."""
        rows = self._all("SELECT g FROM generate_series(%s::bigint, %s::bigint) AS g WHERE NOT EXISTS"
                         " (SELECT 1 FROM persist_messages WHERE path = %s AND seq = g) ORDER BY g",
                         (first, last, self.path))
        return [int(r[0]) for r in rows]


class PgStreamStore(StreamStore):
    def __init__(self, backend: PgStorageBackend, path: str, stream: PgStream) -> None:
        self.backend = backend
        self.path = path
        self.stream = stream

    def transact(self, fn: Callable[[StorageSession], T], *, write: bool) -> T:
        return self.backend.with_connection(lambda conn: self._transact(conn, fn, write))

    def _transact(self, conn: psycopg.Connection[Any], fn: Callable[[StorageSession], T], write: bool) -> T:
        with conn.transaction(), conn.cursor() as cur:
            if not write:
                return fn(PgSession(cur, self.path, None))
            cur.execute("INSERT INTO persist_streams (path) VALUES (%s) ON CONFLICT DO NOTHING", (self.path,))
            cur.execute("SELECT last_seq, last_delete FROM persist_streams WHERE path = %s FOR UPDATE", (self.path,))
            row = cur.fetchone()
            assert row is not None
            start = (int(row[0]), int(row[1]))
            session = PgSession(cur, self.path, start[0])
            result = fn(session)
            assert session.next_seq is not None
            end = (session.next_seq, self._log_deletes(cur, start, _changefeed_events(result)))
            if end != start:  # the notification goes out at commit
                cur.execute("UPDATE persist_streams SET last_seq = %s, last_delete = %s WHERE path = %s"
                            " RETURNING pg_notify(%s, %s)",
                            (end[0], end[1], self.path, CHANNEL, f"{self.stream.key} {end[0]} {end[1]}"))
        self.stream.committed(start, end)
        return result

    def _log_deletes(self, cur: psycopg.Cursor[Any], start: Cursor, events: Events) -> int:
        """Log the delete events with their place among the sets; the new last delete id."""
        after, last, now = start[0], start[1], self.backend.clock() * 1000.0
        rows: list[tuple[Any, ...]] = []
        for e in events:
            if e.get("op") == "delete":
                last += 1
                rows.append((self.path, last, after, e["seqs"], now))
            else:
                after = e["seq"]
        if rows:
            cur.executemany("INSERT INTO persist_deletes (path, id, after_seq, seqs, time)"
                            " VALUES (%s, %s, %s, %s::bigint[], %s)", rows)
            if last // PRUNE_EVERY != start[1] // PRUNE_EVERY:
                cur.execute("DELETE FROM persist_deletes WHERE path = %s AND time < %s",
                            (self.path, now - self.backend.delete_log_seconds * 1000.0))
        return last

    def close(self) -> None:
        return None


@dataclass(slots=True)
class _CatchUp:
    cursor: Cursor
    events: Events
    more: bool  # stopped at SYNC_ROWS/SYNC_BYTES: go on
    floor: int | None = None  # new floor (see PgStream)
    lost: bool = False  # deletes had fallen out of the log


class PgStream(QueuedStream):
    """A stream whose listeners also get the changes other instances commit, in commit order.

    ``cursor`` and ``_held`` change on the reactor thread, between operations; a catch-up reads
    them in a worker thread while it is the stream's only running operation. Listeners may hold
    no seq <= ``_floor`` (it is below the first row when the stream was opened)."""

    def __init__(self, backend: PgStorageBackend, path: str) -> None:
        self.key = backend.key_of(path)
        self._backend = backend
        self.cursor: Cursor | None = None  # None until the first catch-up reads it
        self._span: tuple[Cursor, Cursor] | None = None  # set by a write, in its worker thread
        self._holding: tuple[Cursor, Cursor] | None = None
        self._held: deque[tuple[Cursor, Cursor, Events]] = deque()
        self._floor = 0
        self._syncing = False  # a catch-up is queued or running
        self._again = False  # ... and something may have been committed after it read
        self._notice: Cursor | None = None  # notified while an operation ran
        self._retry: IDelayedCall | None = None
        self._retry_delay = SYNC_RETRY
        super().__init__(path, False, PgStreamStore(backend, path, self), backend.run, backend.clock, backend.forget)
        self.wake()  # the first catch-up only reads the cursor

    def committed(self, start: Cursor, end: Cursor) -> None:
        """(worker thread) The running write committed, moving the stream from start to end."""
        self._span = (start, end)

    def notified(self, state: Cursor) -> None:
        """Some instance committed, leaving the stream at ``state``."""
        if self._busy:  # decide when the running operation is done: it may be this very commit
            n = self._notice or state
            self._notice = (max(n[0], state[0]), max(n[1], state[1]))
            return
        cur = self.cursor
        if cur is None or state[0] > cur[0] or state[1] > cur[1]:
            self.wake()

    def _recheck(self) -> None:
        notice, self._notice = self._notice, None
        if notice is not None:
            self.notified(notice)

    def wake(self) -> None:
        """Catch up with the tables: now, or once more after the catch-up already queued."""
        if self._closed:
            return
        if self._syncing:
            self._again = True
            return
        self._syncing = True
        d = self._run(lambda s, now: (self._catch_up(s), []), write=False)
        d.addCallbacks(self._synced, self._sync_failed)

    def _catch_up(self, s: StorageSession) -> _CatchUp:
        """(worker thread) What was committed past the cursor, up to the first held write."""
        assert isinstance(s, PgSession)
        state, cur = s.state(), self.cursor
        if cur is None:
            return _CatchUp(state, [], False, s.first_seq(state[0] + 1) - 1)
        bound = self._held[0][0] if self._held else state
        if bound[0] <= cur[0] and bound[1] <= cur[1]:
            return _CatchUp(cur, [], False)
        rows = s.page(cur[0], bound[0], SYNC_ROWS, SYNC_BYTES) if bound[0] > cur[0] else []
        more = len(rows) >= SYNC_ROWS or sum(len(m.raw) for m in rows) >= SYNC_BYTES
        upto = rows[-1].seq if more else bound[0]
        logged = s.logged_deletes(cur[1], bound[1]) if bound[1] > cur[1] else []
        if [i for i, _, _ in logged] != list(range(cur[1] + 1, bound[1] + 1)):
            # deletes fell out of the log: send the sets, then every seq that is gone
            events = [m.wire() for m in rows]
            if more:
                return _CatchUp((upto, cur[1]), events, True)
            events.append(delete_event(s.absent(self._floor + 1, upto)))
            return _CatchUp(bound, events, False, s.first_seq(upto + 1) - 1, lost=True)
        events = []
        i = last_del = 0
        for del_id, after, seqs in logged:
            if after > upto:
                break
            while i < len(rows) and rows[i].seq <= after:
                events.append(rows[i].wire())
                i += 1
            events.append(delete_event(seqs))
            last_del = del_id
        events += [m.wire() for m in rows[i:]]
        return _CatchUp((upto, last_del or cur[1]), events, more)

    def _synced(self, r: _CatchUp) -> None:
        self._syncing = False
        self._retry_delay = SYNC_RETRY
        again, self._again = r.more or self._again, False
        if r.floor is not None:
            self._floor = r.floor
        if r.lost:
            log.warn("persist stream {path}: missed deletes older than the delete log; announced every missing seq"
                     " up to {seq}", path=self.path, seq=r.cursor[0])
        self.cursor = r.cursor
        if r.events:
            super()._emit(r.events)
        self._drain()
        if again:
            self.wake()

    def _sync_failed(self, failure: Failure) -> None:
        """Try again later (also done by every notification, write and listener reconnection)."""
        self._syncing = False
        if not self._closed and self._retry is None:
            self._retry = self._backend.reactor.callLater(self._retry_delay, self._retried)
            self._retry_delay = min(self._retry_delay * 2, SYNC_RETRY_MAX)

    def _retried(self) -> None:
        self._retry = None
        self.wake()

    def _drain(self) -> None:
        """Emit the held writes whose turn has come; catch up to the first one that waits."""
        while self._held:
            start, end, events = self._held[0]
            cur = self.cursor or start
            if cur[0] < start[0] or cur[1] < start[1]:
                if not self._syncing:
                    self.wake()
                return
            self._held.popleft()
            self.cursor = (max(cur[0], end[0]), max(cur[1], end[1]))
            super()._emit(events)

    # QueuedStream hooks: a write's events go through _held, in cursor order.

    def _done(self, ops: list[Any], result: Any) -> None:
        self._holding, self._span = self._span, None
        try:
            super()._done(ops, result)
        finally:
            self._holding = None
        self._recheck()

    def _failed(self, ops: list[Any], failure: Any) -> None:
        self._span = None
        super()._failed(ops, failure)
        self._recheck()

    def _emit(self, events: Events) -> None:
        span, self._holding = self._holding, None
        if span is None:
            super()._emit(events)
            return
        self._held.append((span[0], span[1], events))
        self._drain()

    async def shutdown(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        await super().shutdown()


class PgStorageBackend(OpenStreams, StorageBackend):
    """Streams in PostgreSQL tables (created if missing; in ``schema`` if given)."""

    name = "postgres"

    def __init__(self, dsn: str, reactor: IThreadPoolReactor, clock: Callable[[], float] | None = None, *,
                 pool: PoolFactory, schema: str | None = None, threads: int = 4, connect_timeout: int = 10,
                 delete_log_seconds: float = DELETE_LOG_SECONDS, listen_retry: float = LISTEN_RETRY) -> None:
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"invalid schema name {schema!r}")
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.reactor = reactor
        self.clock: Callable[[], float] = clock or reactor.seconds
        self.connect_timeout = connect_timeout
        self.delete_log_seconds = delete_log_seconds
        self.listen_retry = listen_retry
        self._threads = WorkerThreads(reactor, "cocalc-hub-persist-postgres", threads)
        self.run = self._threads.run
        self._connections = pool(self._connect)
        self._ready = False
        self._schema_lock = DeferredLock()
        self._by_key: dict[str, PgStream] = {}
        self._listener: Listener | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {} if self.schema is None else {"options": f"-c search_path={self.schema}"}
        return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=True,
                               application_name="cocalc-hub-persist", **extra)

    def listen_connection(self) -> psycopg.Connection[Any]:
        """(listener thread) A new connection for LISTEN, with TCP keepalives."""
        return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=True,
                               application_name="cocalc-hub-persist-listen", keepalives=1,
                               keepalives_idle=30, keepalives_interval=10, keepalives_count=3)

    def with_connection(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` with a pooled connection (in a pool thread)."""
        connections = self._connections
        try:
            conn = connections.acquire()
        except psycopg.OperationalError as e:
            raise ConatError(f"persist storage unavailable: {e}", 503) from None
        try:
            result = fn(conn)
        except psycopg.OperationalError as e:
            connections.discard(conn)
            raise ConatError(f"persist storage error: {e}", 503) from None
        except BaseException:
            connections.release(conn)
            raise
        connections.release(conn)
        return result

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if self.schema is not None:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'.encode())
            conn.execute(SCHEMA.encode())
            if conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
                            " AND table_name = 'persist_streams' AND column_name = 'last_delete'").fetchone() is None:
                conn.execute("ALTER TABLE persist_streams ADD COLUMN last_delete BIGINT NOT NULL DEFAULT 0")

    def key_of(self, path: str) -> str:
        """The stream's name in notifications: short whatever the path, distinct per schema."""
        return hashlib.blake2b(f"{self.schema or ''}\0{path}".encode(), digest_size=12).hexdigest()

    async def open(self, path: str, *, ephemeral: bool = False) -> Stream:
        stream = self._shared(path)
        if stream is not None:
            return stream
        if ephemeral:
            return self._keep(memory_stream(path, True, self.clock, self._forget, self.reactor))
        if not path or "\0" in path:
            raise ConatError(f"invalid storage path {path!r}", 403)
        await self._schema_lock.run(self._ensure_tables)
        # opened by someone else meanwhile?
        return self._shared(path) or self._keep(self._new_stream(path))

    def _new_stream(self, path: str) -> PgStream:
        if self._listener is None:
            self._listener = Listener(self, self.listen_retry)
        stream = PgStream(self, path)
        self._by_key[stream.key] = stream
        return stream

    def forget(self, stream: QueuedStream) -> None:
        self._forget(stream)
        if isinstance(stream, PgStream) and self._by_key.get(stream.key) is stream:
            del self._by_key[stream.key]

    def notified(self, payloads: list[str]) -> None:
        """(reactor) A batch of ``'<key> <last_seq> <last_delete>'`` from the listener."""
        for payload in payloads:
            key, *state = payload.split(" ")
            stream = self._by_key.get(key)
            if stream is not None and len(state) == 2 and all(x.isdigit() for x in state):
                stream.notified((int(state[0]), int(state[1])))

    def listening(self, outage: float | None) -> None:
        """(reactor) LISTEN is (again) in place: everything committed before it is read now."""
        if outage is not None:
            log.info("persist: PostgreSQL notification connection back after {seconds:.1f} s; {count} open"
                     " streams catch up", seconds=outage, count=len(self._by_key))
        for stream in list(self._by_key.values()):
            stream.wake()

    @property
    def listener_pid(self) -> int | None:
        """The PostgreSQL backend pid of the LISTEN connection, while it is connected."""
        return None if self._listener is None else self._listener.pid

    async def _ensure_tables(self) -> None:
        if not self._ready:
            await self.run(lambda: self.with_connection(self._create_tables))
            self._ready = True

    async def close(self) -> None:
        await self._shutdown_streams()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.stop()
        if await self._threads.stop():
            self._connections.close_all()
