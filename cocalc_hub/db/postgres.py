"""PostgreSQL backend: psycopg 3 (synchronous API) in a small thread pool.

Using the synchronous driver in threads keeps the hub independent of the reactor
(psycopg's async API would force the asyncio reactor on everything).
"""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cocalc_hub.db.backend import Backend, Dialect, Tx, migrations
from cocalc_hub.db.store import DatabaseUnavailable

T = TypeVar("T")
log = Logger()

REVOCATIONS_CHANNEL = "cocalc_hub_revocations"
"""NOTIFY channel of the revocations table (see cocalc_hub.db.revocations)."""
REVOCATIONS_LOCK = 0x636F63616C6301
"""Transaction-level advisory lock taken before a revocation row is inserted (an arbitrary
constant, "cocalc" + 1 in ASCII): revocations commit in ``seq`` order."""
# Any two hub processes migrating at once serialise on this advisory lock key.
_MIGRATION_LOCK = 0x0C0CA1C


class Connections:
    """psycopg connections shared by a thread pool's workers: the newest idle one is reused,
    a broken one is dropped (the next call connects again). Used from pool threads only;
    errors from ``connect`` and from the caller's work are the caller's to translate."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._all: list[psycopg.Connection[Any]] = []

    def acquire(self) -> psycopg.Connection[Any]:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
            self._all.append(conn)
            return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken:
            self.discard(conn)
        else:
            self._idle.put(conn)

    def discard(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.close()
        finally:
            if conn in self._all:
                self._all.remove(conn)

    def close_all(self) -> None:
        for conn in list(self._all):
            self.discard(conn)
        while not self._idle.empty():
            self._idle.get_nowait()


class PostgresDialect(Dialect):
    name = "postgres"

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def ts_in(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def ts_out(self, value: Any) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, (str, bytes)) else value

    def groups_in(self, groups: Sequence[str]) -> Any:
        return list(groups)

    def groups_out(self, value: Any) -> tuple[str, ...]:
        return tuple(str(g) for g in value or ())

    def user_group(self) -> str:
        return "(users -> ?::text ->> 'group')"

    def has_user(self) -> str:
        # Containment so the GIN index on users can be used.
        return "users @> jsonb_build_object(?::text, '{}'::jsonb)"

    def set_key(self, column: str) -> str:
        return f"(COALESCE({column}, '{{}}'::jsonb) || jsonb_build_object(?::text, ?::jsonb))"

    def remove_key(self, column: str) -> str:
        return f"({column} - ?::text)"

    def merge(self, column: str) -> str:
        return f"(COALESCE({column}, '{{}}'::jsonb) || ?::jsonb)"

    def state_name(self) -> str:
        return "(state ->> 'state')"

    def has_group(self) -> str:
        return "(?::text = ANY(groups))"

    def announce(self) -> str | None:
        return f"SELECT pg_notify('{REVOCATIONS_CHANNEL}', '')"  # delivered when the transaction commits

    def serialize_revocations(self) -> str | None:
        # BIGSERIAL hands out seq at INSERT, not at COMMIT: held until this transaction ends,
        # the lock makes the next writer take its seq only after this one is visible.
        return f"SELECT pg_advisory_xact_lock({REVOCATIONS_LOCK})"


def describe(conninfo: str) -> str:
    """The conninfo without a password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable connection string)"
    params.pop("password", None)
    host = params.get("host") or "(libpq default host)"
    return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', 5432)}/{params.get('dbname', '')}"


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, conninfo: str, reactor: IReactorFromThreads, *, size: int = 4,
                 connect_timeout: int = 10) -> None:
        self.conninfo = conninfo
        self.reactor = reactor
        self.size = size
        self.connect_timeout = connect_timeout
        self.dialect = PostgresDialect()
        self._pool: ThreadPool | None = None
        self._connections = Connections(self._connect)

    def notification_conninfo(self) -> str | None:
        return self.conninfo

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, connect_timeout=self.connect_timeout,
                               application_name="cocalc-hub")

    def prepare(self) -> int:
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TIMESTAMP NOT NULL)")
                row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
                version = int(row[0]) if row else 0
                for number, name, sql in migrations("postgres"):
                    if number <= version:
                        continue
                    conn.execute(sql.encode("utf-8"))  # a whole script: bytes skip placeholder parsing
                    conn.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (%s, %s, now())",
                                 (number, name))
                    log.info("database {db}: applied schema {name}", db=describe(self.conninfo), name=name)
                    version = number
            return version
        finally:
            conn.close()

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=self.size, name="cocalc-hub-postgres")
            self._pool.start()

    def _execute(self, fn: Callable[[Tx], T], write: bool) -> T:
        connections = self._connections
        try:
            conn = connections.acquire()
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(f"cannot connect to {describe(self.conninfo)}: {e}") from None
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    result = fn(Tx(cur, self.dialect))
        except psycopg.OperationalError as e:
            # The connection is probably broken: drop it, the next call reconnects.
            connections.discard(conn)
            raise DatabaseUnavailable(f"database error: {e}") from None
        except BaseException:
            connections.release(conn)
            raise
        connections.release(conn)
        return result

    def run(self, fn: Callable[[Tx], T], *, write: bool) -> Deferred[T]:
        if self._pool is None:
            raise DatabaseUnavailable("the database is not open")
        return threads.deferToThreadPool(self.reactor, self._pool, self._execute, fn, write)

    def stop(self) -> Deferred[None]:
        pool, self._pool = self._pool, None
        if pool is None:
            self._connections.close_all()
            return succeed(None)
        # Let queued work finish (ThreadPool.stop joins, so not on the reactor thread), then close.
        d: Deferred[None] = threads.deferToThread(pool.stop)
        d.addCallback(lambda _: self._connections.close_all())
        return d
