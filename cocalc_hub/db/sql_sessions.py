"""The SQL Store's remember_me sessions (browsers signed in with a password)."""

from __future__ import annotations

from datetime import datetime

from cocalc_hub.db.backend import Tx
from cocalc_hub.db.sql_base import SqlBase
from cocalc_hub.db.store import LoginSession, utcnow


class SqlSessions(SqlBase):
    """Sessions: the remember_me table (and the expiry sweep, which also drops API keys)."""

    async def create_session(self, session_hash: str, account_id: str, expire: datetime) -> None:
        await self._write(lambda tx: tx.execute(
            "INSERT INTO remember_me (hash, account_id, expire) VALUES (?, ?, ?)",
            (session_hash, account_id, self.d.ts_in(expire))))

    async def get_session(self, session_hash: str) -> LoginSession | None:
        row = await self._read(lambda tx: tx.one(
            "SELECT hash, account_id, expire FROM remember_me WHERE hash = ?", (session_hash,)))
        if row is None:
            return None
        return LoginSession(hash=row[0].rstrip(), account_id=str(row[1]), expire=self._ts(row[2]))

    async def delete_session(self, session_hash: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute("DELETE FROM remember_me WHERE hash = ?", (session_hash,))
            removed = tx.rowcount > 0
            if removed:
                self._revoked(tx, "session", session_hash)
            return removed

        return await self._write(tx)

    async def delete_sessions(self, account_id: str, *, keep_hash: str | None = None) -> int:
        def tx(tx: Tx) -> int:
            if keep_hash is None:
                tx.execute("DELETE FROM remember_me WHERE account_id = ?", (account_id,))
            else:
                tx.execute("DELETE FROM remember_me WHERE account_id = ? AND hash <> ?", (account_id, keep_hash))
            removed = tx.rowcount
            if removed:
                self._revoked(tx, "account", account_id)
            return removed

        return await self._write(tx)

    async def delete_expired(self, now: datetime | None = None) -> int:
        stamp = self.d.ts_in(now or utcnow())

        def tx(tx: Tx) -> int:
            tx.execute("DELETE FROM remember_me WHERE expire <= ?", (stamp,))
            n = tx.rowcount
            tx.execute("DELETE FROM api_keys WHERE expire IS NOT NULL AND expire <= ?", (stamp,))
            return n + tx.rowcount

        return await self._write(tx)
