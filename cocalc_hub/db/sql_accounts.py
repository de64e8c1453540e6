"""The SQL Store's accounts and the first administrator (its setup tokens)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cocalc_hub.db.backend import Tx
from cocalc_hub.db.sql_base import SqlBase
from cocalc_hub.db.store import Account, Conflict, NotFound, normalize_uuid, utcnow

_ACCOUNT_COLS = ("account_id, email_address, password_hash, first_name, last_name, created, last_active, "
                 "groups, banned, deleted")


class SqlAccounts(SqlBase):
    """Accounts: the accounts table and admin_setup_tokens."""

    def _account(self, row: Any) -> Account | None:
        if row is None:
            return None
        return Account(
            account_id=str(row[0]), email_address=row[1], password_hash=row[2], first_name=row[3] or "",
            last_name=row[4] or "", created=self._ts(row[5]), last_active=self.d.ts_out(row[6]),
            groups=self.d.groups_out(row[7]), banned=bool(row[8]), deleted=bool(row[9]),
        )

    async def create_account(self, *, email_address: str | None, password_hash: str | None,
                             first_name: str = "", last_name: str = "", groups: tuple[str, ...] = (),
                             account_id: str | None = None,
                             now: datetime | None = None) -> Account:
        account_id = normalize_uuid(account_id) if account_id else str(uuid.uuid4())
        created = now or utcnow()

        def tx(tx: Tx) -> Account:
            chosen = tuple(groups)
            if email_address is not None and tx.one(
                "SELECT 1 FROM accounts WHERE email_address = ?", (email_address,)
            ) is not None:
                raise Conflict("an account with this email address already exists")
            tx.execute(
                "INSERT INTO accounts (account_id, email_address, password_hash, first_name, last_name, created, "
                "groups) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (account_id, email_address, password_hash, first_name, last_name, self.d.ts_in(created),
                 self.d.groups_in(chosen)),
            )
            account = self._account(tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = ?",
                                            (account_id,)))
            assert account is not None
            return account

        return await self._write(tx)

    async def get_account(self, account_id: str) -> Account | None:
        return await self._read(lambda tx: self._account(
            tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = ?", (account_id,))))

    async def get_account_by_email(self, email_address: str) -> Account | None:
        return await self._read(lambda tx: self._account(
            tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE email_address = ?", (email_address,))))

    async def get_account_by_legacy_api_key(self, key: str) -> Account | None:
        return await self._read(lambda tx: self._account(
            tx.one(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE api_key = ?", (key,))))

    async def list_accounts(self, *, limit: int = 100, offset: int = 0) -> list[Account]:
        rows = await self._read(lambda tx: tx.all(
            f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY created, account_id LIMIT ? OFFSET ?",
            (int(limit), int(offset))))
        return [a for a in map(self._account, rows) if a is not None]

    async def count_accounts(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT COUNT(*) FROM accounts"))
        return int(row[0])

    async def set_password_hash(self, account_id: str, password_hash: str, *,
                                expected: str | None = None) -> bool:
        def tx(tx: Tx) -> bool:
            if expected is None:
                tx.execute("UPDATE accounts SET password_hash = ? WHERE account_id = ?", (password_hash, account_id))
            else:
                tx.execute("UPDATE accounts SET password_hash = ? WHERE account_id = ? AND password_hash = ?",
                           (password_hash, account_id, expected))
            changed = tx.rowcount == 1
            if changed and expected is None:  # (expected: a transparent re-hash of the same password)
                self._revoked(tx, "account", account_id)
            return changed

        return await self._write(tx)

    async def set_groups(self, account_id: str, groups: tuple[str, ...]) -> None:
        def tx(tx: Tx) -> None:
            tx.execute("UPDATE accounts SET groups = ? WHERE account_id = ?", (self.d.groups_in(groups), account_id))
            self._revoked(tx, "account", account_id)

        await self._write(tx)

    async def set_banned(self, account_id: str, banned: bool) -> None:
        def tx(tx: Tx) -> None:
            tx.execute("UPDATE accounts SET banned = ? WHERE account_id = ?", (bool(banned), account_id))
            self._revoked(tx, "account", account_id)

        await self._write(tx)

    async def touch_account(self, account_id: str, now: datetime | None = None) -> None:
        await self._write(lambda tx: tx.execute(
            "UPDATE accounts SET last_active = ? WHERE account_id = ?", (self.d.ts_in(now or utcnow()), account_id)))

    # the first administrator ---------------------------------------------------------------

    async def count_admins(self) -> int:
        row = await self._read(lambda tx: tx.one(
            f"SELECT COUNT(*) FROM accounts WHERE {self.d.has_group()} AND NOT banned AND NOT deleted",
            ("admin",)))
        return int(row[0])

    async def create_setup_token(self, token_hash: str, expire: datetime, now: datetime | None = None) -> None:
        def tx(tx: Tx) -> None:
            tx.execute("DELETE FROM admin_setup_tokens WHERE expire <= ?", (self.d.ts_in(now or utcnow()),))
            tx.execute("INSERT INTO admin_setup_tokens (token_hash, expire) VALUES (?, ?)",
                       (token_hash, self.d.ts_in(expire)))

        await self._write(tx)

    async def setup_token_valid(self, token_hash: str, now: datetime | None = None) -> bool:
        row = await self._read(lambda tx: tx.one(
            "SELECT 1 FROM admin_setup_tokens WHERE token_hash = ? AND expire > ?",
            (token_hash, self.d.ts_in(now or utcnow()))))
        return row is not None

    async def redeem_setup_token(self, token_hash: str, account_id: str, now: datetime | None = None) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute("DELETE FROM admin_setup_tokens WHERE token_hash = ? AND expire > ?",
                       (token_hash, self.d.ts_in(now or utcnow())))
            if tx.rowcount != 1:
                return False
            row = tx.one("SELECT groups FROM accounts WHERE account_id = ?", (account_id,))
            if row is None:
                raise NotFound("no such account")
            groups = self.d.groups_out(row[0])
            if "admin" not in groups:
                tx.execute("UPDATE accounts SET groups = ? WHERE account_id = ?",
                           (self.d.groups_in(groups + ("admin",)), account_id))
            return True

        return await self._write(tx)
