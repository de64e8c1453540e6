"""PostgreSQL backend: every stream in shared tables keyed by path, so several hubs can serve
the same streams. psycopg 3 (synchronous API) runs in a thread pool, never on the reactor.

Sequence numbers come from ``persist_streams.last_seq``, read ``FOR UPDATE`` by every writing
transaction: writers to one stream (from any machine) are serialized, and numbers are never
reused, even after deletes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.base import Backend, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import Session
from cocalc_hub.conat.persist.storage.memory import memory_stream
from cocalc_hub.conat.persist.storage.stream import OpenStreams, QueuedStream, Store, WorkerThreads
from cocalc_hub.db.postgres import Connections

log = Logger()
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS persist_streams (path TEXT PRIMARY KEY, last_seq BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS persist_messages (
  path TEXT NOT NULL, seq BIGINT NOT NULL, key TEXT, time DOUBLE PRECISION NOT NULL, headers TEXT,
  encoding INTEGER NOT NULL, raw BYTEA NOT NULL, size BIGINT NOT NULL, ttl BIGINT,
  PRIMARY KEY (path, seq), UNIQUE (path, key));
CREATE INDEX IF NOT EXISTS persist_messages_time ON persist_messages (path, time);
CREATE TABLE IF NOT EXISTS persist_config (
  path TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (path, field));
"""
_SCHEMA_LOCK = 0x636F63616C6370  # advisory lock id: concurrent hubs create the tables once
_SELECT = "SELECT seq, key, time, headers, encoding, raw, ttl FROM persist_messages"


def _message(row: Any) -> StoredMessage:
    seq, key, t, headers, encoding, raw, ttl = row
    return StoredMessage(int(seq), float(t), key, int(encoding), bytes(raw),
                         None if headers is None else json.loads(headers), None if ttl is None else int(ttl))


class PgSession(Session):
    """One stream's view of one transaction."""

    def __init__(self, cur: psycopg.Cursor[Any], path: str, last_seq: int | None) -> None:
        self.cur = cur
        self.path = path
        self.next_seq = last_seq
        self.start_seq = last_seq
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


class PostgresStore(Store):
    def __init__(self, backend: PostgresBackend, path: str) -> None:
        self.backend = backend
        self.path = path

    def transact(self, fn: Callable[[Session], T], *, write: bool) -> T:
        return self.backend.with_connection(lambda conn: self._transact(conn, fn, write))

    def _transact(self, conn: psycopg.Connection[Any], fn: Callable[[Session], T], write: bool) -> T:
        with conn.transaction(), conn.cursor() as cur:
            last: int | None = None
            if write:
                cur.execute("INSERT INTO persist_streams (path) VALUES (%s) ON CONFLICT DO NOTHING", (self.path,))
                cur.execute("SELECT last_seq FROM persist_streams WHERE path = %s FOR UPDATE", (self.path,))
                row = cur.fetchone()
                assert row is not None
                last = int(row[0])
            session = PgSession(cur, self.path, last)
            result = fn(session)
            if write and session.next_seq != session.start_seq:
                cur.execute("UPDATE persist_streams SET last_seq = %s WHERE path = %s", (session.next_seq, self.path))
            return result

    def close(self) -> None:
        return None


class PostgresBackend(OpenStreams, Backend):
    """Streams in PostgreSQL tables (created if missing; in ``schema`` if given)."""

    name = "postgres"

    def __init__(self, dsn: str, reactor: Any, clock: Callable[[], float] | None = None, *,
                 schema: str | None = None, threads: int = 4, connect_timeout: int = 10) -> None:
        if schema is not None and not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"invalid schema name {schema!r}")
        super().__init__()
        self.dsn = dsn
        self.schema = schema
        self.reactor = reactor
        self.clock: Callable[[], float] = clock or reactor.seconds
        self.connect_timeout = connect_timeout
        self._threads = WorkerThreads(reactor, "cocalc-hub-persist-postgres", threads)
        self._run = self._threads.run
        self._connections = Connections(self._connect)
        self._ready = False
        self._schema_lock = DeferredLock()

    def _connect(self) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {} if self.schema is None else {"options": f"-c search_path={self.schema}"}
        return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout, autocommit=True,
                               application_name="cocalc-hub-persist", **extra)

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

    async def open(self, path: str, *, ephemeral: bool = False) -> Stream:
        stream = self._shared(path)
        if stream is not None:
            return stream
        if ephemeral:
            return self._keep(memory_stream(path, True, self.clock, self._forget))
        if not path or "\0" in path:
            raise ConatError(f"invalid storage path {path!r}", 403)
        await self._schema_lock.run(self._ensure_tables)
        # opened by someone else meanwhile?
        return self._shared(path) or self._keep(
            QueuedStream(path, False, PostgresStore(self, path), self._run, self.clock, self._forget))

    async def _ensure_tables(self) -> None:
        if not self._ready:
            await self._run(lambda: self.with_connection(self._create_tables))
            self._ready = True

    async def close(self) -> None:
        await self._shutdown_streams()
        if await self._threads.stop():
            self._connections.close_all()

