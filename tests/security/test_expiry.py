"""Credentials that end by themselves cut off open channels within a second too (issue 13
§3), from the seat of their holder: a session or an API key that simply expires (no one
revokes anything, no row is written), a key whose expiry was set while it was in use, and a
project's secret token once the project stops.

Each holder keeps open, to a backend in a real running project, the channels of
tests/security/revocation_probes.py (proxied WebSocket, streaming response, keep-alive and
new HTTP requests, a conat subscription). Caches are set to live an hour, as in
test_revocation: only the expiry itself may close anything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.trial import unittest

from cocalc_hub.auth.cookies import new_remember_me
from cocalc_hub.conat.client import connect
from tests.security.test_revocation import BOUND, RevocationHub
from tests.support import until

log = Logger()

LEAD = 6.0
"""Seconds from creating a credential to its expiry: time enough to open every channel."""


class ExpirySuite(RevocationHub):
    slow = "/special/slow?ticks=400"  # still streaming at the expiry
    async def expires_with(self, cookies: dict[str, str], expiry: float) -> None:
        """Channels opened with ``cookies`` are all cut off within BOUND of ``expiry``."""
        channels = await self.channels(cookies)
        case: unittest.TestCase = self  # type: ignore[assignment]
        case.assertLess(reactor.seconds(), expiry, "the channels took too long to open; raise LEAD")
        cut = await channels.cut_off(expiry, BOUND)
        log.info("seconds from the expiry to each channel's cut-off: {cut}", cut=json.dumps(cut))
        late = [name for name, t in cut.items() if t is None]
        case.assertEqual(late, [], f"open {BOUND:g} s after the credential expired: {json.dumps(cut)}")

    async def test_a_session_that_expires(self) -> None:
        await self.start()
        victim = await self.victim()
        store, names = self.hub.hub.store, self.hub.hub.auth.names  # type: ignore[union-attr]
        session = new_remember_me()
        expiry = reactor.seconds() + LEAD
        await store.create_session(session.session_hash, victim.account_id, datetime.fromtimestamp(expiry, UTC))
        await self.expires_with({names.remember_me: session.cookie_value}, expiry)

    async def test_an_api_key_that_expires(self) -> None:
        await self.start()
        victim = await self.victim()
        expiry = reactor.seconds() + LEAD
        r = await victim.client.post("api-keys", {"action": "create", "name": "script",
                                                  "expire": datetime.fromtimestamp(expiry, UTC).isoformat()})
        assert r.code == 201, r
        await self.expires_with({"api_key": r.json["response"]["secret"]}, expiry)

    async def test_an_api_key_given_an_expiry_while_in_use(self) -> None:
        await self.start()
        victim = await self.victim()
        r = await victim.client.post("api-keys", {"action": "create", "name": "script"})
        assert r.code == 201, r
        key = r.json["response"]
        channels = await self.channels({"api_key": key["secret"]})
        expiry = reactor.seconds() + 2.0
        r = await victim.client.post("api-keys", {"action": "edit", "id": key["id"],
                                                  "expire": datetime.fromtimestamp(expiry, UTC).isoformat()})
        assert r.code == 200, r
        cut = await channels.cut_off(expiry, BOUND)
        log.info("seconds from the expiry to each channel's cut-off: {cut}", cut=json.dumps(cut))
        self.assertEqual([name for name, t in cut.items() if t is None], [],  # type: ignore[attr-defined]
                         f"open {BOUND:g} s after the key expired: {json.dumps(cut)}")

    async def test_a_project_token_once_the_project_stops(self) -> None:
        await self.start()
        manager = self.hub.hub.projects.manager  # type: ignore[union-attr]
        target = manager.local_target(self.project)
        assert target is not None
        # whoever learnt the running project's token (it is in the project's environment)
        holder = connect(reactor, self.hub.base, cookies={"project_id": self.project, "project_secret": target[1]},
                         reconnect=False)
        self.addCleanup(holder.close)  # type: ignore[attr-defined]
        await holder.signed_in(timeout=30)
        subject = f"project.{self.project}.held"
        await holder.subscribe(subject)
        self.assertEqual(await self.publisher.publish(subject, "before"), 1)  # type: ignore[attr-defined]
        r = await self.owner.post("projects/stop", {"project_id": self.project})
        assert r.code == 200, r
        await until(lambda: manager.local_target(self.project) is None, what="the project to stop")
        since = reactor.seconds()

        async def cut_off() -> bool:
            return bool(await self.publisher.publish(subject, "after") == 0)

        await until(cut_off, timeout=BOUND, what="the old token's conat connection to be closed")
        self.assertLessEqual(reactor.seconds() - since, BOUND + 0.1)  # type: ignore[attr-defined]


class SQLiteExpiryTests(ExpirySuite, unittest.TestCase):
    pass


class PostgresExpiryTests(ExpirySuite, unittest.TestCase):
    kind = "postgres"
