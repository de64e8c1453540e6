"""The SQL Store's projects: rows, their members (collaborators), state and settings."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cocalc_hub.db.backend import Tx
from cocalc_hub.db.sql_base import SqlBase
from cocalc_hub.db.store import MEMBER_GROUPS, Conflict, Project, normalize_uuid, utcnow

_PROJECT_COLS = ("project_id, title, description, users, created, deleted, state, status, last_edited, "
                 "last_started, settings, run_quota, env, secret_token")


class SqlProjects(SqlBase):
    """Projects: the projects table."""

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
