"""SQLite backend: one file under the data dir, WAL, one dedicated worker thread.

All statements run in that one thread on one connection, so SQLite sees a single
writer per process and the reactor never waits on disk. Several hub processes may
share the file (WAL + busy timeout + ``BEGIN IMMEDIATE`` for writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cocalc_hub.db.backend import Backend, Dialect, Tx, migrations
from cocalc_hub.db.store import DatabaseUnavailable

T = TypeVar("T")
log = Logger()

_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class SQLiteDialect(Dialect):
    name = "sqlite"

    def sql(self, text: str) -> str:
        return text

    def ts_in(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime(_TS_FORMAT)

    def ts_out(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)

    def json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, (str, bytes)) else value

    def groups_in(self, groups: Sequence[str]) -> Any:
        return json.dumps(list(groups))

    def groups_out(self, value: Any) -> tuple[str, ...]:
        parsed = json.loads(value) if value else []
        return tuple(str(g) for g in parsed) if isinstance(parsed, list) else ()

    @staticmethod
    def _path() -> str:
        # A JSON path for one object key taken from a parameter; keys here are UUIDs.
        return "'$.\"' || ? || '\"'"

    def user_group(self) -> str:
        return "json_extract(users, '$.\"' || ? || '\".group')"

    def has_user(self) -> str:
        return f"json_type(users, {self._path()}) IS NOT NULL"

    def set_key(self, column: str) -> str:
        return f"json_set(COALESCE({column}, '{{}}'), {self._path()}, json(?))"

    def remove_key(self, column: str) -> str:
        return f"json_remove({column}, {self._path()})"

    def merge(self, column: str) -> str:
        return f"json_patch(COALESCE({column}, '{{}}'), ?)"

    def state_name(self) -> str:
        return "json_extract(state, '$.state')"

    def has_group(self) -> str:
        return "EXISTS (SELECT 1 FROM json_each(groups) WHERE json_each.value = ?)"


def _sha256_hex(value: Any) -> str | None:
    return None if value is None else hashlib.sha256(str(value).encode("utf-8")).hexdigest()


class SQLiteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path, reactor: IReactorFromThreads) -> None:
        self.path = Path(path)
        self.reactor = reactor
        self.dialect = SQLiteDialect()
        self._pool: ThreadPool | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # Account and session writes are rare and must survive power loss, so FULL.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        # For schema 003 (hashing projects' plain secret tokens); PostgreSQL has sha256().
        conn.create_function("sha256_hex", 1, _sha256_hex, deterministic=True)
        return conn

    def prepare(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only the hub's user may read it (SQLite gives -wal and -shm the same mode).
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            conn.execute("COMMIT")
            version = int(current)
            for number, name, sql in migrations("sqlite"):
                if number <= version:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # executescript would COMMIT our transaction first; run statements one by one.
                    for statement in _split_sql(sql):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                                 (number, name, self.dialect.ts_in(datetime.now(UTC))))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                log.info("database {path}: applied schema {name}", path=str(self.path), name=name)
                version = number
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result}")
            return version
        finally:
            conn.close()

    def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cocalc-hub-sqlite")
        self._pool.start()

    def _connection(self) -> sqlite3.Connection:
        # Only ever called from the single worker thread.
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _execute(self, fn: Callable[[Tx], T], write: bool) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(Tx(conn.cursor(), self.dialect))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def run(self, fn: Callable[[Tx], T], *, write: bool) -> Deferred[T]:
        if self._pool is None:
            raise DatabaseUnavailable("the database is not open")
        d: Deferred[T] = threads.deferToThreadPool(self.reactor, self._pool, self._execute, fn, write)
        return d.addErrback(_translate)

    def stop(self) -> Deferred[None]:
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)

        def close() -> None:
            if self._conn is not None:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._conn.close()
                    self._conn = None

        d: Deferred[None] = threads.deferToThreadPool(self.reactor, pool, close)

        def stop_pool(result: Any) -> Any:
            pool.stop()
            return result

        return d.addBoth(stop_pool)


def _translate(failure: Any) -> Any:
    if failure.check(sqlite3.OperationalError) and "locked" in str(failure.value):
        raise DatabaseUnavailable(f"database is busy: {failure.value}")
    return failure


def _split_sql(script: str) -> list[str]:
    """Statements of a schema file (no semicolons inside literals in our files)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
