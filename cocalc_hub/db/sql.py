"""The Store in SQL, written once; backends (cocalc_hub.db.backend) supply a connection, a
thread and a Dialect.

Every public method runs one transaction in a worker thread (``Backend.run``). SQL is
written with ``?`` placeholders and the few dialect-specific fragments (JSON access,
timestamps, arrays) come from the :class:`Dialect`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from cocalc_hub.db.backend import Backend, Tx
from cocalc_hub.db.store import (
    MEMBER_GROUPS,
    Account,
    ApiKey,
    Conflict,
    NotFound,
    Project,
    Session,
    Store,
    normalize_uuid,
    utcnow,
)

T = TypeVar("T")

REVOCATIONS_KEPT = timedelta(days=1)
"""How long revocation rows are kept (a hub that lags further behind misses them)."""


_ACCOUNT_COLS = ("account_id, email_address, password_hash, first_name, last_name, created, last_active, "
                 "groups, banned, deleted")
_KEY_COLS = "id, account_id, project_id, hash, expire, created, name, trunc, last_active"
_PROJECT_COLS = ("project_id, title, description, users, created, deleted, state, status, last_edited, "
                 "last_started, settings, run_quota, env, secret_token")


class SqlStore(Store):
    """Store implemented on a Backend."""

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

    # row conversion ---------------------------------------------------------------

    def _account(self, row: Any) -> Account | None:
        if row is None:
            return None
        return Account(
            account_id=str(row[0]), email_address=row[1], password_hash=row[2], first_name=row[3] or "",
            last_name=row[4] or "", created=self._ts(row[5]), last_active=self.d.ts_out(row[6]),
            groups=self.d.groups_out(row[7]), banned=bool(row[8]), deleted=bool(row[9]),
        )

    def _ts(self, value: Any) -> datetime:
        ts = self.d.ts_out(value)
        assert ts is not None
        return ts

    def _key(self, row: Any) -> ApiKey | None:
        if row is None:
            return None
        return ApiKey(
            id=int(row[0]), account_id=str(row[1]), project_id=str(row[2]) if row[2] else None,
            hash=row[3].rstrip() if row[3] else None, expire=self.d.ts_out(row[4]), created=self._ts(row[5]),
            name=row[6] or "", trunc=row[7], last_active=self.d.ts_out(row[8]),
        )

    def _project(self, row: Any) -> Project | None:
        if row is None:
            return None
        j = self.d.json_out
        return Project(
            project_id=str(row[0]), title=row[1] or "", description=row[2] or "", users=j(row[3]) or {},
            created=self._ts(row[4]), deleted=bool(row[5]), state=j(row[6]) or {}, status=j(row[7]) or {},
            last_edited=self.d.ts_out(row[8]), last_started=self.d.ts_out(row[9]), settings=j(row[10]) or {},
            run_quota=j(row[11]) or {}, env=j(row[12]) or {}, secret_token=row[13],
        )

    # accounts ---------------------------------------------------------------------

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

    # sessions -------------------------------------------------------------------------

    async def create_session(self, session_hash: str, account_id: str, expire: datetime) -> None:
        await self._write(lambda tx: tx.execute(
            "INSERT INTO remember_me (hash, account_id, expire) VALUES (?, ?, ?)",
            (session_hash, account_id, self.d.ts_in(expire))))

    async def get_session(self, session_hash: str) -> Session | None:
        row = await self._read(lambda tx: tx.one(
            "SELECT hash, account_id, expire FROM remember_me WHERE hash = ?", (session_hash,)))
        if row is None:
            return None
        return Session(hash=row[0].rstrip(), account_id=str(row[1]), expire=self._ts(row[2]))

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

    # API keys -------------------------------------------------------------------------

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

    # projects -------------------------------------------------------------------------

    async def create_project(self, *, owner_id: str, title: str = "", description: str = "",
                             project_id: str | None = None, now: datetime | None = None) -> Project:
        project_id = normalize_uuid(project_id) if project_id else str(uuid.uuid4())
        created = self.d.ts_in(now or utcnow())

        def tx(tx: Tx) -> Project:
            if tx.one("SELECT 1 FROM projects WHERE project_id = ?", (project_id,)) is not None:
                raise Conflict("a project with this id already exists")
            tx.execute(
                "INSERT INTO projects (project_id, title, description, users, created, last_edited, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, title, description, self.d.json_in({owner_id: {"group": "owner"}}), created, created,
                 self.d.json_in({"state": "opened"})))
            project = self._project(tx.one(f"SELECT {_PROJECT_COLS} FROM projects WHERE project_id = ?",
                                            (project_id,)))
            assert project is not None
            return project

        return await self._write(tx)

    async def get_project(self, project_id: str) -> Project | None:
        return await self._read(lambda tx: self._project(
            tx.one(f"SELECT {_PROJECT_COLS} FROM projects WHERE project_id = ?", (project_id,))))

    async def list_projects(self, account_id: str, *, include_deleted: bool = False,
                            limit: int = 1000) -> list[Project]:
        deleted = "" if include_deleted else " AND NOT deleted"
        sql = (f"SELECT {_PROJECT_COLS} FROM projects WHERE {self.d.has_user()}{deleted} "
               "ORDER BY last_edited DESC, project_id LIMIT ?")
        rows = await self._read(lambda tx: tx.all(sql, (account_id, int(limit))))
        return [p for p in map(self._project, rows) if p is not None]

    async def list_all_projects(self, *, limit: int = 100, offset: int = 0) -> list[Project]:
        rows = await self._read(lambda tx: tx.all(
            f"SELECT {_PROJECT_COLS} FROM projects ORDER BY created, project_id LIMIT ? OFFSET ?",
            (int(limit), int(offset))))
        return [p for p in map(self._project, rows) if p is not None]

    async def update_project(self, project_id: str, *, title: str | None = None,
                             description: str | None = None) -> bool:
        def tx(tx: Tx) -> bool:
            if tx.one("SELECT 1 FROM projects WHERE project_id = ? AND NOT deleted", (project_id,)) is None:
                return False
            if title is not None:
                tx.execute("UPDATE projects SET title = ? WHERE project_id = ?", (title, project_id))
            if description is not None:
                tx.execute("UPDATE projects SET description = ? WHERE project_id = ?", (description, project_id))
            return True

        return await self._write(tx)

    async def set_project_user(self, project_id: str, account_id: str, group: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute(f"UPDATE projects SET users = {self.d.set_key('users')} WHERE project_id = ? AND NOT deleted",
                       (account_id, self.d.json_in({"group": group}), project_id))
            changed = tx.rowcount == 1
            if changed and group not in MEMBER_GROUPS:
                self._revoked(tx, "project", project_id)
            return changed

        return await self._write(tx)

    async def remove_project_user(self, project_id: str, account_id: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute(f"UPDATE projects SET users = {self.d.remove_key('users')} WHERE project_id = ? "
                       f"AND {self.d.has_user()}", (account_id, project_id, account_id))
            changed = tx.rowcount == 1
            if changed:
                self._revoked(tx, "project", project_id)
            return changed

        return await self._write(tx)

    async def delete_project(self, project_id: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute("UPDATE projects SET deleted = ? WHERE project_id = ? AND NOT deleted", (True, project_id))
            changed = tx.rowcount == 1
            if changed:
                self._revoked(tx, "project", project_id)
            return changed

        return await self._write(tx)

    async def project_group(self, project_id: str, account_id: str) -> tuple[bool, str | None]:
        row = await self._read(lambda tx: tx.one(
            f"SELECT {self.d.user_group()} FROM projects WHERE project_id = ? AND NOT deleted",
            (account_id, project_id)))
        if row is None:
            return False, None
        return True, row[0]

    async def set_project_state(self, project_id: str, state: Mapping[str, Any], *,
                                expect: tuple[str, ...] | None = None,
                                status: Mapping[str, Any] | None = None,
                                secret_token: str | None = None, clear_secret: bool = False,
                                last_started: datetime | None = None) -> bool:
        sets = ["state = ?"]
        params: list[Any] = [self.d.json_in(dict(state))]
        if status is not None:
            sets.append("status = ?")
            params.append(self.d.json_in(dict(status)))
        if secret_token is not None or clear_secret:
            sets.append("secret_token = ?")
            params.append(secret_token)
        if last_started is not None:
            sets.append("last_started = ?")
            params.append(self.d.ts_in(last_started))
        where = "project_id = ? AND NOT deleted"
        params.append(project_id)
        if expect is not None:
            marks = ", ".join("?" for _ in expect)
            where += f" AND COALESCE({self.d.state_name()}, 'opened') IN ({marks})"
            params.extend(expect)
        sql = f"UPDATE projects SET {', '.join(sets)} WHERE {where}"
        new_secret = secret_token is not None or clear_secret

        def tx(tx: Tx) -> bool:
            old = tx.one("SELECT secret_token FROM projects WHERE project_id = ?", (project_id,)) if new_secret \
                else None
            tx.execute(sql, params)
            changed = tx.rowcount == 1
            if changed and old is not None and old[0] is not None and old[0] != secret_token:
                # the old token signed in connections that are open now: they are re-checked
                self._revoked(tx, "project", project_id)
            return changed

        return await self._write(tx)

    async def touch_project(self, project_id: str, account_id: str | None = None,
                            now: datetime | None = None) -> None:
        stamp = now or utcnow()

        def tx(tx: Tx) -> None:
            tx.execute("UPDATE projects SET last_edited = ? WHERE project_id = ?", (self.d.ts_in(stamp), project_id))
            if account_id is not None:
                tx.execute(
                    f"UPDATE projects SET last_active = {self.d.set_key('last_active')} WHERE project_id = ?",
                    (account_id, json.dumps(stamp.isoformat()), project_id))

        await self._write(tx)

    async def projects_in_states(self, states: tuple[str, ...]) -> list[Project]:
        marks = ", ".join("?" for _ in states)
        sql = (f"SELECT {_PROJECT_COLS} FROM projects WHERE NOT deleted "
               f"AND COALESCE({self.d.state_name()}, 'opened') IN ({marks})")
        rows = await self._read(lambda tx: tx.all(sql, states))
        return [p for p in map(self._project, rows) if p is not None]

    async def set_project_settings(self, project_id: str, settings: Mapping[str, Any]) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute(f"UPDATE projects SET settings = {self.d.merge('settings')} WHERE project_id = ?",
                       (self.d.json_in(dict(settings)), project_id))
            return tx.rowcount == 1

        return await self._write(tx)

    # settings and registration tokens ----------------------------------------------------------

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

    async def registration_tokens_in_force(self) -> int:
        row = await self._read(lambda tx: tx.one("SELECT COUNT(*) FROM registration_tokens WHERE NOT disabled"))
        return int(row[0])

    async def disable_registration_token(self, token: str) -> bool:
        def tx(tx: Tx) -> bool:
            tx.execute("UPDATE registration_tokens SET disabled = ? WHERE token = ?", (True, token))
            return tx.rowcount == 1

        return await self._write(tx)


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
