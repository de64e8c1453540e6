"""The Store: everything the hub keeps in its database, behind one async interface.

Every method returns a Deferred (they are ``async def``); backends run SQL in worker
threads, so the reactor never waits on the database. Ids are lower-case UUID strings,
times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GROUPS = ("owner", "collaborator", "viewer")
MEMBER_GROUPS = frozenset({"owner", "collaborator"})
PROJECT_STATES = ("opened", "starting", "running", "stopping", "error")


class StoreError(Exception):
    """Base class of the errors a Store raises on purpose."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """A uniqueness rule or an expected state did not hold."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached right now."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_uuid(value: str) -> str:
    """Canonical lower-case form; ValueError if ``value`` is not a UUID in 8-4-4-4-12 form."""
    if not isinstance(value, str) or len(value) != 36:
        raise ValueError("not a UUID")
    return str(uuid.UUID(value))


def is_uuid(value: object) -> bool:
    try:
        normalize_uuid(value)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Account:
    account_id: str
    email_address: str | None
    password_hash: str | None
    first_name: str
    last_name: str
    created: datetime
    last_active: datetime | None = None
    groups: tuple[str, ...] = ()
    banned: bool = False
    deleted: bool = False

    @property
    def is_admin(self) -> bool:
        return "admin" in self.groups

    def public(self) -> dict[str, Any]:
        """What the account's owner (or an admin) may see; never the hash."""
        return {
            "account_id": self.account_id,
            "email_address": self.email_address,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "created": self.created.isoformat(),
            "last_active": self.last_active.isoformat() if self.last_active else None,
            "groups": list(self.groups),
            "is_admin": self.is_admin,
            "banned": self.banned,
        }


@dataclass(frozen=True)
class LoginSession:
    """A browser signed in with a password: a remember_me row (not a conat persist session)."""

    hash: str
    account_id: str
    expire: datetime


@dataclass(frozen=True)
class ApiKey:
    id: int
    account_id: str
    project_id: str | None
    hash: str | None
    expire: datetime | None
    created: datetime
    name: str
    trunc: str | None
    last_active: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "trunc": self.trunc,
            "project_id": self.project_id,
            "created": self.created.isoformat(),
            "expire": self.expire.isoformat() if self.expire else None,
            "last_active": self.last_active.isoformat() if self.last_active else None,
        }


@dataclass(frozen=True)
class Project:
    project_id: str
    title: str
    description: str
    users: Mapping[str, Mapping[str, Any]]
    created: datetime
    deleted: bool = False
    state: Mapping[str, Any] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    last_edited: datetime | None = None
    last_started: datetime | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    run_quota: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    secret_token: str | None = None

    def group_of(self, account_id: str) -> str | None:
        entry = self.users.get(account_id)
        group = entry.get("group") if isinstance(entry, Mapping) else None
        return group if isinstance(group, str) else None

    def is_member(self, account_id: str) -> bool:
        """Owner or collaborator (what the proxy and the project API require)."""
        return self.group_of(account_id) in MEMBER_GROUPS

    @property
    def owner_id(self) -> str | None:
        for account_id, entry in self.users.items():
            if isinstance(entry, Mapping) and entry.get("group") == "owner":
                return account_id
        return None

    @property
    def state_name(self) -> str:
        name = self.state.get("state") if self.state else None
        return name if isinstance(name, str) else "opened"

    def public(self) -> dict[str, Any]:
        """The project as members see it (no secret token)."""
        return {
            "project_id": self.project_id,
            "title": self.title,
            "description": self.description,
            "users": {k: dict(v) for k, v in self.users.items()},
            "created": self.created.isoformat(),
            "last_edited": self.last_edited.isoformat() if self.last_edited else None,
            "deleted": self.deleted,
            "state": dict(self.state or {"state": "opened"}),
        }


class Store(abc.ABC):
    """The hub's persistent state. Implementations: SQLite (default) and PostgreSQL."""

    kind: str = "abstract"

    # lifecycle ------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply forward migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and close; safe to call twice."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise DatabaseUnavailable if the database does not answer."""

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    # revocations (written by the methods that take access away) --------------------------

    def notification_conninfo(self) -> str | None:
        """PostgreSQL connection string on which committed revocations are NOTIFYed (None:
        the database has no notifications; read the revocations table by polling)."""
        return None

    @abc.abstractmethod
    async def last_revocation(self) -> int:
        """The newest revocation's sequence number (0: none)."""

    @abc.abstractmethod
    async def revocations_since(self, seq: int, limit: int = 1000) -> list[tuple[int, str, str]]:
        """(seq, kind, value) after ``seq``, oldest first: kind is session (value: its hash),
        account (account_id), key (API key id) or project (project_id)."""

    # accounts ---------------------------------------------------------------------

    @abc.abstractmethod
    async def create_account(self, *, email_address: str | None, password_hash: str | None,
                             first_name: str = "", last_name: str = "", groups: tuple[str, ...] = (),
                             account_id: str | None = None, now: datetime | None = None) -> Account:
        """Insert an account; Conflict if the email is taken. Nothing makes an account admin
        implicitly (see cocalc_hub.auth.bootstrap for the first one)."""

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None: ...

    @abc.abstractmethod
    async def get_account_by_email(self, email_address: str) -> Account | None: ...

    @abc.abstractmethod
    async def get_account_by_legacy_api_key(self, key: str) -> Account | None: ...

    @abc.abstractmethod
    async def list_accounts(self, *, limit: int = 100, offset: int = 0) -> list[Account]: ...

    @abc.abstractmethod
    async def count_accounts(self) -> int: ...

    @abc.abstractmethod
    async def set_password_hash(self, account_id: str, password_hash: str, *,
                                expected: str | None = None) -> bool:
        """Store a new hash; with ``expected``, only if the current hash still equals it."""

    @abc.abstractmethod
    async def set_groups(self, account_id: str, groups: tuple[str, ...]) -> None: ...

    @abc.abstractmethod
    async def set_banned(self, account_id: str, banned: bool) -> None: ...

    @abc.abstractmethod
    async def touch_account(self, account_id: str, now: datetime | None = None) -> None: ...

    # remember_me sessions -----------------------------------------------------------------

    @abc.abstractmethod
    async def create_session(self, session_hash: str, account_id: str, expire: datetime) -> None: ...

    @abc.abstractmethod
    async def get_session(self, session_hash: str) -> LoginSession | None: ...

    @abc.abstractmethod
    async def delete_session(self, session_hash: str) -> bool: ...

    @abc.abstractmethod
    async def delete_sessions(self, account_id: str, *, keep_hash: str | None = None) -> int:
        """Delete every session of the account except ``keep_hash``; return how many."""

    @abc.abstractmethod
    async def delete_expired(self, now: datetime | None = None) -> int:
        """Remove expired sessions and API keys."""

    # API keys -------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_api_key(self, *, account_id: str, project_id: str | None, name: str,
                             expire: datetime | None, secret_for_id: Callable[[int], tuple[str, str, str]],
                             now: datetime | None = None) -> tuple[ApiKey, str]:
        """Insert a key; ``secret_for_id(id)`` returns (secret, hash, trunc) and runs inside the
        same transaction, so a key never exists without its hash. Returns (row, secret)."""

    @abc.abstractmethod
    async def get_api_key(self, key_id: int) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_api_keys(self, account_id: str) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def update_api_key(self, account_id: str, key_id: int, *, name: str | None = None,
                             expire: datetime | None = None, clear_expire: bool = False) -> bool: ...

    @abc.abstractmethod
    async def delete_api_key(self, key_id: int, *, account_id: str | None = None) -> bool: ...

    @abc.abstractmethod
    async def touch_api_key(self, key_id: int, now: datetime | None = None) -> None: ...

    # projects ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_project(self, *, owner_id: str, title: str = "", description: str = "",
                             project_id: str | None = None, now: datetime | None = None) -> Project: ...

    @abc.abstractmethod
    async def get_project(self, project_id: str) -> Project | None: ...

    @abc.abstractmethod
    async def list_projects(self, account_id: str, *, include_deleted: bool = False,
                            limit: int = 1000) -> list[Project]:
        """Projects where the account is in ``users`` (any group), most recently edited first."""

    @abc.abstractmethod
    async def list_all_projects(self, *, limit: int = 100, offset: int = 0) -> list[Project]: ...

    @abc.abstractmethod
    async def update_project(self, project_id: str, *, title: str | None = None,
                             description: str | None = None) -> bool: ...

    @abc.abstractmethod
    async def set_project_user(self, project_id: str, account_id: str, group: str) -> bool:
        """Atomically set ``users[account_id] = {"group": group}``; False if no such project."""

    @abc.abstractmethod
    async def remove_project_user(self, project_id: str, account_id: str) -> bool: ...

    @abc.abstractmethod
    async def delete_project(self, project_id: str) -> bool:
        """Mark deleted (upstream keeps the row)."""

    @abc.abstractmethod
    async def project_group(self, project_id: str, account_id: str) -> tuple[bool, str | None]:
        """(project exists and is not deleted, the account's group or None): the cheap
        question the proxy and the broker ask on every cache miss."""

    @abc.abstractmethod
    async def set_project_state(self, project_id: str, state: Mapping[str, Any], *,
                                expect: tuple[str, ...] | None = None,
                                status: Mapping[str, Any] | None = None,
                                secret_token: str | None = None, clear_secret: bool = False,
                                last_started: datetime | None = None) -> bool:
        """Compare-and-set the state: applied only if the current state name is one of
        ``expect`` (None: unconditionally). Returns whether it was applied."""

    @abc.abstractmethod
    async def touch_project(self, project_id: str, account_id: str | None = None,
                            now: datetime | None = None) -> None:
        """Record activity: ``last_edited`` and ``last_active[account_id]``."""

    @abc.abstractmethod
    async def projects_in_states(self, states: tuple[str, ...]) -> list[Project]: ...

    @abc.abstractmethod
    async def set_project_settings(self, project_id: str, settings: Mapping[str, Any]) -> bool:
        """Merge keys into ``projects.settings`` (e.g. idle timeout, resource limits)."""

    # server settings and registration tokens -----------------------------------------------

    @abc.abstractmethod
    async def get_settings(self) -> dict[str, str]: ...

    @abc.abstractmethod
    async def set_setting(self, name: str, value: str | None, *, readonly: bool = False) -> None: ...

    @abc.abstractmethod
    async def create_registration_token(self, token: str, *, descr: str = "", expires: datetime | None = None,
                                        limit: int | None = None) -> None: ...

    @abc.abstractmethod
    async def list_registration_tokens(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def disable_registration_token(self, token: str) -> bool: ...

    @abc.abstractmethod
    async def redeem_registration_token(self, token: str, now: datetime | None = None) -> bool:
        """Atomically check (exists, enabled, unexpired, under its limit) and count one use."""

    @abc.abstractmethod
    async def return_registration_token(self, token: str) -> None:
        """Give back one use counted by redeem_registration_token (no account was made)."""

    # the first administrator ------------------------------------------------------------------

    @abc.abstractmethod
    async def count_admins(self) -> int:
        """Accounts in the admin group that are neither banned nor deleted."""

    @abc.abstractmethod
    async def create_setup_token(self, token_hash: str, expire: datetime, now: datetime | None = None) -> None:
        """Keep the hash of a first-admin setup link (and drop expired ones)."""

    @abc.abstractmethod
    async def setup_token_valid(self, token_hash: str, now: datetime | None = None) -> bool: ...

    @abc.abstractmethod
    async def redeem_setup_token(self, token_hash: str, account_id: str, now: datetime | None = None) -> bool:
        """In one transaction: delete the unexpired token and make the account an admin.
        False (and nothing changed) if the token is unknown, expired or already used."""

    @abc.abstractmethod
    async def registration_tokens_in_force(self) -> int:
        """Tokens not disabled. Expired or used-up tokens still count: sign-up stays
        token-only until an admin disables them (upstream reopened sign-up instead)."""
