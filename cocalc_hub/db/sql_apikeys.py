"""The SQL Store's API keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from cocalc_hub.db.backend import Tx
from cocalc_hub.db.sql_base import SqlBase
from cocalc_hub.db.store import ApiKey, utcnow

_KEY_COLS = "id, account_id, project_id, hash, expire, created, name, trunc, last_active"


class SqlApiKeys(SqlBase):
    """API keys: the api_keys table."""

    def _key(self, row: Any) -> ApiKey | None:
        if row is None:
            return None
        return ApiKey(
            id=int(row[0]), account_id=str(row[1]), project_id=str(row[2]) if row[2] else None,
            hash=row[3].rstrip() if row[3] else None, expire=self.d.ts_out(row[4]), created=self._ts(row[5]),
            name=row[6] or "", trunc=row[7], last_active=self.d.ts_out(row[8]),
        )

    async def create_api_key(self, *, account_id: str, project_id: str | None, name: str,
                             expire: datetime | None, secret_for_id: Callable[[int], tuple[str, str, str]],
                             now: datetime | None = None) -> tuple[ApiKey, str]:
        created = now or utcnow()

        def tx(tx: Tx) -> tuple[ApiKey, str]:
            row = tx.one(
                "INSERT INTO api_keys (account_id, project_id, name, expire, created) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (account_id, project_id, name, self.d.ts_in(expire), self.d.ts_in(created)))
            key_id = int(row[0])
            secret, key_hash, trunc = secret_for_id(key_id)
            tx.execute("UPDATE api_keys SET hash = ?, trunc = ? WHERE id = ?", (key_hash, trunc, key_id))
            key = self._key(tx.one(f"SELECT {_KEY_COLS} FROM api_keys WHERE id = ?", (key_id,)))
            assert key is not None
            return key, secret

        return await self._write(tx)

    async def get_api_key(self, key_id: int) -> ApiKey | None:
        return await self._read(lambda tx: self._key(
            tx.one(f"SELECT {_KEY_COLS} FROM api_keys WHERE id = ?", (int(key_id),))))

    async def list_api_keys(self, account_id: str) -> list[ApiKey]:
        rows = await self._read(lambda tx: tx.all(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE account_id = ? ORDER BY id", (account_id,)))
        return [k for k in map(self._key, rows) if k is not None]

    async def update_api_key(self, account_id: str, key_id: int, *, name: str | None = None,
                             expire: datetime | None = None, clear_expire: bool = False) -> bool:
        def tx(tx: Tx) -> bool:
            found = False
            if name is not None:
                tx.execute("UPDATE api_keys SET name = ? WHERE id = ? AND account_id = ?", (name, key_id, account_id))
                found = tx.rowcount == 1
            if expire is not None or clear_expire:
                tx.execute("UPDATE api_keys SET expire = ? WHERE id = ? AND account_id = ?",
                           (self.d.ts_in(expire), key_id, account_id))
                found = tx.rowcount == 1
            if name is None and expire is None and not clear_expire:
                found = tx.one("SELECT 1 FROM api_keys WHERE id = ? AND account_id = ?",
                               (key_id, account_id)) is not None
            elif found and (expire is not None or clear_expire):
                self._revoked(tx, "key", int(key_id))
            return found

        return await self._write(tx)

    async def delete_api_key(self, key_id: int, *, account_id: str | None = None) -> bool:
        def tx(tx: Tx) -> bool:
            if account_id is None:
                tx.execute("DELETE FROM api_keys WHERE id = ?", (int(key_id),))
            else:
                tx.execute("DELETE FROM api_keys WHERE id = ? AND account_id = ?", (int(key_id), account_id))
            removed = tx.rowcount > 0
            if removed:
                self._revoked(tx, "key", int(key_id))
            return removed

        return await self._write(tx)

    async def touch_api_key(self, key_id: int, now: datetime | None = None) -> None:
        await self._write(lambda tx: tx.execute(
            "UPDATE api_keys SET last_active = ? WHERE id = ?", (self.d.ts_in(now or utcnow()), int(key_id))))
