"""A hub with an owner, a collaborator and an outsider, one project, and conat clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cocalc_hub.conat.client import Subscription
from cocalc_hub.subjects import api_subject, state_subject
from tests.members import MembersCase
from tests.web.api_client import ApiClient


class ProjectConatCase(MembersCase):
    options: dict[str, Any] = {"project-stop-grace": "2"}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.api = api_subject(self.project)
        self.addCleanup(self.hub.stop_projects)

    @property
    def manager(self) -> Any:
        return self.hub.hub.projects.manager  # type: ignore[union-attr]

    async def watch(self, who: ApiClient) -> Subscription:
        """Subscribe ``who`` to the project's state events (live from now on)."""
        client = self.browser(who)
        await client.signed_in()
        sub = await client.subscribe(state_subject(self.project))
        self.addCleanup(sub.close)
        return sub

    async def start(self, events: Subscription) -> list[dict[str, Any]]:
        """Start the project and wait for it to have joined conat (its own "running")."""
        r = await self.owner.post("projects/start", {"project_id": self.project})
        self.assertEqual(r.code, 200, r)
        return await seen(events, lambda e: e["source"] == "project" and e["state"] == "running")


async def seen(events: Subscription, last: Callable[[dict[str, Any]], bool],
               timeout: float = 20.0) -> list[dict[str, Any]]:
    """Events up to and including the first for which ``last`` is true."""
    out: list[dict[str, Any]] = []
    while True:
        event = (await events.next(timeout)).data
        out.append(event)
        if last(event):
            return out
