"""What every part of the SQL Store shares: the backend, its transactions, the revocations
feed and row timestamps. Backends (cocalc_hub.db.backend) supply a connection, a thread and
a Dialect; the aggregates (sql_accounts, sql_sessions, sql_apikeys, sql_projects,
sql_settings) derive from :class:`SqlBase` and cocalc_hub.db.sql composes them.

Every public method runs one transaction in a worker thread (``Backend.run``). SQL is
written with ``?`` placeholders and the few dialect-specific fragments (JSON access,
timestamps, arrays) come from the :class:`Dialect`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from cocalc_hub.db.backend import Backend, Tx
from cocalc_hub.db.store import utcnow

T = TypeVar("T")

REVOCATIONS_KEPT = timedelta(days=1)
"""How long revocation rows are kept (a hub that lags further behind misses them)."""


class SqlBase:
    """The backend and the helpers every aggregate of the SQL Store uses."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.kind = backend.kind
        self.d = backend.dialect
        self._started = False

    # lifecycle ------------------------------------------------------------------

    def prepare(self) -> int:
        return self.backend.prepare()

    async def open(self) -> None:
        if not self._started:
            self.backend.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.backend.stop()

    def _read(self, fn: Callable[[Tx], T]) -> Deferred[T]:
        return self.backend.run(fn, write=False)

    def _write(self, fn: Callable[[Tx], T]) -> Deferred[T]:
        return self.backend.run(fn, write=True)

    async def ping(self) -> None:
        await self._read(lambda tx: tx.one("SELECT 1"))

    def _revoked(self, tx: Tx, kind: str, value: object) -> None:
        """Announce, in the caller's transaction, that access tied to ``value`` was taken away.
        Call it last in a transaction: on PostgreSQL it holds a lock until the commit."""
        now = utcnow()
        serialize = self.d.serialize_revocations()
        if serialize is not None:
            tx.execute(serialize)
        tx.execute("INSERT INTO revocations (kind, value, at) VALUES (?, ?, ?)", (kind, str(value), self.d.ts_in(now)))
        tx.execute("DELETE FROM revocations WHERE at < ?", (self.d.ts_in(now - REVOCATIONS_KEPT),))
        announce = self.d.announce()
        if announce is not None:
            tx.execute(announce)

    def notification_conninfo(self) -> str | None:
        return self.backend.notification_conninfo()

    async def last_revocation(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT MAX(seq) FROM revocations"))
        return int(row[0] or 0)

    async def revocations_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str]]:
        rows = await self._read(lambda tx: tx.all(
            "SELECT seq, kind, value FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)))
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def schema_version(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT MAX(version) FROM schema_migrations"))
        return int(row[0] or 0)

    def _ts(self, value: Any) -> datetime:
        ts = self.d.ts_out(value)
        assert ts is not None
        return ts
