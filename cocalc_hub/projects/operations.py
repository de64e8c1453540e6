"""Project operations with their permission checks, shared by every transport.

The JSON API, the conat hub API and the admin CLI call these; who may do what is
decided here and nowhere else. Listeners hear about membership changes so caches
(the proxy's access decisions) can drop what they know at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from cocalc_hub.auth.accounts import AuthError, normalize_email
from cocalc_hub.auth.caller import Caller
from cocalc_hub.db.store import MEMBER_GROUPS, Conflict, Project, Store, is_uuid, normalize_uuid
from cocalc_hub.projects.client import ProjectClient, ProjectUnreachable
from cocalc_hub.projects.manager import ProjectManager, state_view
from cocalc_hub.projects.program import ProjectError

log = Logger()

MAX_TITLE = 1024
MAX_DESCRIPTION = 16 * 1024
MAX_PROJECTS_PER_ACCOUNT = 10000


def project_id_param(value: object) -> str:
    """A project id from input: a UUID (any case) → its canonical lower-case form."""
    if not isinstance(value, str) or not is_uuid(value):
        raise AuthError(400, "project_id must be a UUID")
    return normalize_uuid(value)


def account_id_param(value: object, what: str = "account_id") -> str:
    if not isinstance(value, str) or not is_uuid(value):
        raise AuthError(400, f"{what} must be a UUID")
    return normalize_uuid(value)


def _text(value: object, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AuthError(400, f"{what} must be a string")
    if len(value) > limit:
        raise AuthError(400, f"{what} is longer than {limit} characters")
    return value


class Projects:
    def __init__(self, store: Store, manager: ProjectManager | None = None,
                 client: ProjectClient | None = None) -> None:
        self.store = store
        self.manager = manager
        self.client = client
        self.listeners: list[Callable[[str], None]] = []

    def changed(self, project_id: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(project_id)
            except Exception:
                log.failure("project change listener failed")

    # access ------------------------------------------------------------------------

    async def access(self, caller: Caller, project_id: str, *, write: bool = True) -> Project:
        """The project, if the caller may use it (members, admins, its own project key)."""
        if not caller.signed_in:
            raise AuthError(401, "you must be signed in")
        project = await self.store.get_project(project_id)
        if project is None or project.deleted:
            raise AuthError(404, "no such project")
        if caller.is_hub:
            return project
        if caller.kind == "project":
            if caller.project_id == project_id:
                return project
            raise AuthError(403, "this key is for another project")
        assert caller.account_id is not None
        group = project.group_of(caller.account_id)
        allowed = group in MEMBER_GROUPS or (not write and group == "viewer")
        if allowed or caller.is_admin:
            return project
        raise AuthError(403, "you are not a collaborator on this project")

    def _account_caller(self, caller: Caller) -> str:
        if not caller.is_account or caller.account_id is None:
            if caller.signed_in:
                raise AuthError(403, "only accounts may do this")
            raise AuthError(401, "you must be signed in")
        return caller.account_id

    # operations -----------------------------------------------------------------------

    async def create(self, caller: Caller, *, title: object = None, description: object = None,
                     project_id: object = None) -> Project:
        owner = self._account_caller(caller)
        chosen = None
        if project_id is not None:
            if not caller.is_admin:
                raise AuthError(403, "only administrators may choose a project_id")
            chosen = project_id_param(project_id)
        if len(await self.store.list_projects(owner, include_deleted=True, limit=MAX_PROJECTS_PER_ACCOUNT + 1)) \
                > MAX_PROJECTS_PER_ACCOUNT:
            raise AuthError(429, f"at most {MAX_PROJECTS_PER_ACCOUNT} projects per account")
        try:
            project = await self.store.create_project(
                owner_id=owner, title=_text(title, "title", MAX_TITLE) or "No Title",
                description=_text(description, "description", MAX_DESCRIPTION) or "", project_id=chosen)
        except Conflict:
            raise AuthError(409, "a project with this id already exists") from None
        log.info("project {project_id} created by {owner}", project_id=project.project_id, owner=owner)
        return project

    async def list_for(self, caller: Caller, *, include_deleted: bool = False, limit: int = 1000) -> list[Project]:
        if caller.kind == "project" and caller.signed_in and caller.project_id:
            return [await self.access(caller, caller.project_id)]
        account_id = self._account_caller(caller)
        return await self.store.list_projects(account_id, include_deleted=include_deleted, limit=limit)

    async def get(self, caller: Caller, project_id: str) -> Project:
        return await self.access(caller, project_id, write=False)

    async def update(self, caller: Caller, project_id: str, *, title: object = None,
                     description: object = None) -> Project:
        await self.access(caller, project_id)
        await self.store.update_project(project_id, title=_text(title, "title", MAX_TITLE),
                                        description=_text(description, "description", MAX_DESCRIPTION))
        project = await self.store.get_project(project_id)
        assert project is not None
        return project

    async def delete(self, caller: Caller, project_id: str) -> None:
        project = await self.access(caller, project_id)
        if not caller.is_admin and not (caller.account_id and project.group_of(caller.account_id) == "owner"):
            raise AuthError(403, "only the owner may delete a project")
        await self.store.delete_project(project_id)
        self.changed(project_id)
        if self.manager is not None:
            await self.manager.delete(project_id)
        log.info("project {project_id} deleted", project_id=project_id)

    async def add_collaborator(self, caller: Caller, project_id: str, *, account_id: object = None,
                               email_address: object = None) -> str:
        """Add by account id or by email; returns the account id added."""
        project = await self.access(caller, project_id)
        if account_id is not None:
            target = await self.store.get_account(account_id_param(account_id))
        elif email_address is not None:
            target = await self.store.get_account_by_email(normalize_email(email_address))
        else:
            raise AuthError(400, "give account_id or email_address")
        if target is None or target.deleted:
            raise AuthError(404, "no account with that id or email address")
        if project.group_of(target.account_id) == "owner":
            return target.account_id
        await self.store.set_project_user(project_id, target.account_id, "collaborator")
        self.changed(project_id)
        return target.account_id

    async def remove_collaborator(self, caller: Caller, project_id: str, account_id: object) -> None:
        target = account_id_param(account_id)
        project = await self.access(caller, project_id)
        group = project.group_of(target)
        if group is None:
            raise AuthError(404, "that account is not on this project")
        if group == "owner":
            raise AuthError(403, "the owner cannot be removed from a project")
        await self.store.remove_project_user(project_id, target)
        self.changed(project_id)

    async def collaborators(self, caller: Caller, project_id: str) -> list[dict[str, Any]]:
        project = await self.access(caller, project_id, write=False)
        out = []
        for account_id, entry in project.users.items():
            account = await self.store.get_account(account_id)
            out.append({
                "account_id": account_id,
                "group": entry.get("group"),
                "first_name": account.first_name if account else "",
                "last_name": account.last_name if account else "",
                # Email addresses are private; administrators see them.
                "email_address": account.email_address if account and caller.is_admin else None,
            })
        return out

    # control ---------------------------------------------------------------------------

    def _manager(self) -> ProjectManager:
        if self.manager is None:
            raise AuthError(503, "this hub process does not run projects (start it with --proxy-server or --all)")
        return self.manager

    async def _control(self, fn: Any, project_id: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await fn(project_id)
        except ProjectError as e:
            raise AuthError(e.status, e.message) from None
        return result

    async def start(self, caller: Caller, project_id: str) -> dict[str, Any]:
        await self.access(caller, project_id)
        manager = self._manager()
        manager.touch(project_id, caller.account_id)
        return await self._control(manager.start, project_id)

    async def stop(self, caller: Caller, project_id: str) -> dict[str, Any]:
        await self.access(caller, project_id)
        return await self._control(self._manager().stop, project_id)

    async def restart(self, caller: Caller, project_id: str) -> dict[str, Any]:
        await self.access(caller, project_id)
        return await self._control(self._manager().restart, project_id)

    async def state(self, caller: Caller, project_id: str) -> dict[str, Any]:
        project = await self.access(caller, project_id, write=False)
        if self.manager is None:
            return state_view(project)  # projects run in another hub process; the store holds their state
        return await self._control(self.manager.state, project_id)

    async def touch(self, caller: Caller, project_id: str) -> None:
        await self.access(caller, project_id)
        self._manager().touch(project_id, caller.account_id)

    async def exec(self, caller: Caller, project_id: str, params: dict[str, Any]) -> tuple[int, Any]:
        """Run a command in the project (starting it if needed); (HTTP status, result)."""
        await self.access(caller, project_id)
        manager = self._manager()
        target = manager.local_target(project_id)
        if target is None:
            await self._control(manager.start, project_id)
            target = manager.local_target(project_id)
            if target is None:
                raise AuthError(503, "the project is not running")
        manager.touch(project_id, caller.account_id)
        assert self.client is not None
        wait = params.get("timeout")
        budget = float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else 60.0
        if params.get("async_call"):
            budget = 30.0
        try:
            return await self.client.call(project_id, target[0], target[1], "exec", params, budget + 15.0)
        except ProjectUnreachable as e:
            raise AuthError(502, str(e)) from None
