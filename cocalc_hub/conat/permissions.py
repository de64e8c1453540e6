"""Who may publish or subscribe to what: upstream's ``isAllowed`` rules.

Hubs may do anything. Accounts and projects get their inboxes, ``public.`` (subscribe
only), publish-only access to their own ``hub.<type>.<id>.`` API subject, and subjects
naming their own id in token 1 or 2; accounts also reach ``sys.`` if they are admins and
the subjects of projects they are members of. Membership is the one rule that needs the
database: those answers are cached for ``ttl`` seconds and dropped at once when this
process changes a project (upstream caches every answer for 60 s).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

PUB, SUB = "pub", "sub"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z").match


def is_uuid(value: str) -> bool:
    """36 characters in the 8-4-4-4-12 hex form, any case (upstream's isValidUUID)."""
    return len(value) == 36 and _UUID(value) is not None


@dataclass(frozen=True)
class User:
    """A connection's identity as the broker sees it."""

    kind: str
    """account, project, hub, system, or open (no authentication configured)."""
    id: str | None = None
    admin: bool = False
    caller: Any = None
    """The auth.Caller it came from (None for open and internal users)."""
    info: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_hub(self) -> bool:
        return self.kind in ("hub", "system", "open")

    @property
    def json(self) -> str:
        """The user as upstream prints it in messages (``JSON.stringify``)."""
        return json.dumps(self.info, separators=(",", ":"))

    @property
    def limit_key(self) -> str:
        """Connections are counted per distinct user object."""
        return self.json


def account_user(account_id: str, admin: bool = False, caller: Any = None) -> User:
    return User("account", account_id, admin, caller, {"account_id": account_id})


def project_user(project_id: str, caller: Any = None) -> User:
    return User("project", project_id, False, caller, {"project_id": project_id})


HUB_USER = User("hub", "hub", True, None, {"hub_id": "hub"})
SYSTEM_USER = User("system", "system", True, None, {"hub_id": "system"})
OPEN_USER = User("open", None, True, None, None)


def decide(user: User, subject: str, kind: str) -> bool | str:
    """The rule that decides, without the database: True/False, or the id of the project
    whose membership decides."""
    if user.is_hub:
        return True
    t, uid = user.kind, user.id
    if t not in ("account", "project") or not uid:
        return False
    pub = kind == PUB
    if subject.startswith(f"hub.{t}.{uid}."):
        return pub
    if pub and subject.startswith("_INBOX."):
        return True
    if not pub and subject.startswith(f"_INBOX.{t}-{uid}"):
        return True
    if not pub and subject.startswith("public."):
        return True
    parts = subject.split(".", 2)
    second = parts[1] if len(parts) > 1 else None
    if t == "project":
        return subject.startswith(f"project.{uid}.") or second == f"project-{uid}"
    if subject.startswith(f"account.{uid}.") or second == f"account-{uid}":
        return True
    if parts[0] == "sys":
        return user.admin
    project_id = None
    if second is not None:
        if parts[0] == "project" and is_uuid(second):
            project_id = second
        elif second.startswith("project-") and is_uuid(second[8:]):
            project_id = second[8:]
    if project_id is None:
        return False
    project_id = project_id.lower()
    if project_id == uid:
        return True
    return project_id


def project_of(subject: str) -> str | None:
    """The project a subject's permission depends on (for re-checks when it changes)."""
    parts = subject.split(".", 2)
    if len(parts) < 2:
        return None
    second = parts[1]
    if parts[0] == "project" and is_uuid(second):
        return second.lower()
    if second.startswith("project-") and is_uuid(second[8:]):
        return second[8:].lower()
    return None


Membership = Callable[[str, str], Awaitable[bool]]


class Permissions:
    """isAllowed with caches: rule answers per connection, membership answers here."""

    def __init__(self, is_member: Membership | None, clock: Callable[[], float], *, ttl: float = 5.0,
                 size: int = 10000) -> None:
        self.is_member = is_member
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self.generation = 0
        """Bumped whenever cached membership answers are dropped."""
        self._members: dict[tuple[str, str], tuple[float, bool]] = {}
        self._inflight: dict[tuple[str, str], list[Deferred[bool]]] = {}

    def forget_project(self, project_id: str) -> None:
        for key in [k for k in self._members if k[0] == project_id]:
            del self._members[key]
        # a question asked from now on must not join a lookup that began before the change
        for key in [k for k in self._inflight if k[0] == project_id]:
            del self._inflight[key]
        self.generation += 1

    def forget_all(self) -> None:
        self._members.clear()
        self._inflight.clear()
        self.generation += 1

    def allowed(self, user: User, subject: str, kind: str) -> bool | Deferred[bool]:
        """True/False now, or a Deferred when the database must be asked."""
        verdict = decide(user, subject, kind)
        if verdict is True or verdict is False:
            return verdict
        assert user.id is not None
        return self.member(verdict, user.id)

    def member(self, project_id: str, account_id: str) -> bool | Deferred[bool]:
        key = (project_id, account_id)
        hit = self._members.get(key)
        now = self.clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        waiting = self._inflight.get(key)
        d: Deferred[bool] = Deferred()
        if waiting is not None:
            waiting.append(d)
            return d
        waiters = self._inflight[key] = [d]
        generation = self.generation

        async def ask() -> bool:
            if self.is_member is None:
                return False
            return await self.is_member(project_id, account_id)

        def done(result: Any) -> None:
            if self._inflight.get(key) is waiters:
                del self._inflight[key]
            if isinstance(result, bool) and generation != self.generation:
                # Members changed while asking: the answer may predate that, ask again.
                for w in waiters:
                    again = self.member(project_id, account_id)
                    if isinstance(again, bool):
                        w.callback(again)
                    else:
                        again.chainDeferred(w)
                return
            if isinstance(result, bool):
                if len(self._members) >= self.size:
                    self._members.clear()
                self._members[key] = (self.clock() + self.ttl, result)
                for w in waiters:
                    w.callback(result)
            else:
                for w in waiters:
                    w.errback(result)

        Deferred.fromCoroutine(ask()).addBoth(done)
        return d
