"""A running hub with an owner, a collaborator ("friend") and an outsider, and one project
of the owner's: the cast of every end-to-end permission test."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.client import Client, connect
from tests.support import RunningHub, settings_for, start_hub
from tests.web.api_client import ApiClient


class MembersCase(unittest.TestCase):
    timeout = 60
    env: dict[str, str] = {}
    options: dict[str, Any] = {}

    async def setUp(self) -> None:  # type: ignore[override]
        self.hub: RunningHub = start_hub(self, settings_for(self.mktemp(), self.options, self.env))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        await self.add_members()

    async def add_members(self) -> None:
        """Sign up owner, friend and outsider (none of them an administrator) and make the
        project, with the friend as collaborator."""
        self.owner = await self.account("owner@example.com")
        self.friend = await self.account("friend@example.com")
        self.outsider = await self.account("outsider@example.com")
        r = await self.owner.post("projects/create", {"title": "P"})
        self.project: str = r.json["project_id"]
        r = await self.owner.post("projects/collaborators/add", {"project_id": self.project,
                                                                  "email": "friend@example.com"})
        assert r.code == 200, r

    async def account(self, email: str) -> ApiClient:
        """A new signed-up account (``account_id`` set on the client)."""
        c = ApiClient(self.hub.base, self.pool)
        r = await c.sign_up(email)
        assert r.code == 201, r
        c.account_id = (await c.get("accounts/profile")).json["account_id"]  # type: ignore[attr-defined]
        return c

    def client(self, cookies: dict[str, str], **options: Any) -> Client:
        """A conat client of the hub with these cookies (closed at cleanup)."""
        c = connect(reactor, self.hub.base, cookies=cookies, reconnect=False, **options)
        self.addCleanup(c.close)
        return c

    def browser(self, who: ApiClient) -> Client:
        """A conat client signed in like the browser of ``who`` (its remember_me cookie)."""
        return self.client(dict(who.cookies))
