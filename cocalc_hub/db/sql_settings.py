"""The SQL Store's site settings (server_settings) and registration tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cocalc_hub.db.backend import Tx
from cocalc_hub.db.sql_base import SqlBase
from cocalc_hub.db.store import Conflict, utcnow


class SqlSiteSettings(SqlBase):
    """Site settings and registration tokens."""

    async def get_settings(self) -> dict[str, str]:
        rows = await self._read(lambda tx: tx.all("SELECT name, value FROM server_settings"))
        return {str(name): str(value) for name, value in rows if value is not None}

    async def set_setting(self, name: str, value: str | None, *, readonly: bool = False) -> None:
        await self._write(lambda tx: tx.execute(
            "INSERT INTO server_settings (name, value, readonly) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, readonly = excluded.readonly",
            (name, value, bool(readonly))))

    async def create_registration_token(self, token: str, *, descr: str = "", expires: datetime | None = None,
                                        limit: int | None = None) -> None:
        def tx(tx: Tx) -> None:
            if tx.one("SELECT 1 FROM registration_tokens WHERE token = ?", (token,)) is not None:
                raise Conflict("this registration token already exists")
            tx.execute('INSERT INTO registration_tokens (token, descr, expires, "limit") VALUES (?, ?, ?, ?)',
                       (token, descr, self.d.ts_in(expires), limit))

        await self._write(tx)

    async def list_registration_tokens(self) -> list[dict[str, Any]]:
        rows = await self._read(lambda tx: tx.all(
            'SELECT token, descr, expires, "limit", counter, disabled FROM registration_tokens ORDER BY token'))
        out = []
        for token, descr, expires, limit, counter, disabled in rows:
            exp = self.d.ts_out(expires)
            out.append({"token": token, "descr": descr, "expires": exp.isoformat() if exp else None,
                        "limit": limit, "counter": counter, "disabled": bool(disabled)})
        return out

    async def redeem_registration_token(self, token: str, now: datetime | None = None) -> bool:
        stamp = self.d.ts_in(now or utcnow())

        def tx(tx: Tx) -> bool:
            tx.execute(
                'UPDATE registration_tokens SET counter = counter + 1 WHERE token = ? AND NOT disabled '
                'AND (expires IS NULL OR expires > ?) AND ("limit" IS NULL OR counter < "limit")',
                (token, stamp))
            return tx.rowcount == 1

        return await self._write(tx)

    async def return_registration_token(self, token: str) -> None:
        await self._write(lambda tx: tx.execute(
            "UPDATE registration_tokens SET counter = counter - 1 WHERE token = ? AND counter > 0", (token,)))

    async def registration_tokens_in_force(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT COUNT(*) FROM registration_tokens WHERE NOT disabled"))
        return int(row[0])

    async def disable_registration_token(self, token: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute("UPDATE registration_tokens SET disabled = ? WHERE token = ?", (True, token))
            return tx.rowcount == 1

        return await self._write(tx)
