"""Attacker: a project's web server, logging what the hub's proxy hands it.

A member's browser or script talks to the project's server through the hub; whatever hub
credential rides along (an API key or session in any Authorization spelling, the hub's own
secret, a key in the query string) must not reach that server, which belongs to someone
who should never hold it. An app's own credentials must still arrive.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from twisted.trial import unittest

from tests.proxy.support import Harness


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class CredentialLeakTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.h = await Harness().setup(self)

    async def key(self, client: Any) -> str:
        r = await client.post("api-keys", {"action": "create"})
        assert r.code == 201, r
        return str(r.json["response"]["secret"])

    async def seen(self, path: str, headers: dict[str, str]) -> dict[str, Any]:
        """What the project's server logged for one request (by the owner, signed in)."""
        h = self.h
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}{path}", client=h.owner, headers=headers)
        self.assertEqual(status, 200, body[:300])
        return dict(json.loads(body))

    async def test_authorization_in_any_spelling_never_reaches_the_project(self) -> None:
        h = self.h
        key = await self.key(h.friend)  # a collaborator's key, which the owner's project must not learn
        hub_secret = h.hub.hub.auth.auth.hub_password  # type: ignore[union-attr]
        session = h.friend.cookies["remember_me"]
        spellings = {
            "tab": f"Bearer\t{key}",
            "spaces": f"Bearer    {key}   ",
            "lower": f"bearer {key}",
            "upper": f"BEARER {key}",
            "basic user": "Basic " + b64(f"{key}:x"),
            "basic password": "Basic " + b64(f"someone:{key}"),
            "basic unpadded": "Basic " + b64(f"u:{key}").rstrip("="),
            "basic tab": "Basic\t" + b64(f"u:{key}"),
            "token scheme": f"Token {key}",
            "hub secret tab": f"Bearer\t{hub_secret}",
            "hub secret basic password": "Basic " + b64(f"admin:{hub_secret}"),
            "session": f"Bearer {session}",
            "session basic": "Basic " + b64(f"x:{session}"),
        }
        for label, value in spellings.items():
            echoed = await self.seen("/echo", {"Authorization": value})
            leaked = [v for k, v in echoed["headers"] if k == "authorization"]
            self.assertEqual(leaked, [], f"{label}: the project's server received {leaked!r}")
            text = json.dumps(echoed)
            for secret in (key, hub_secret, session):
                self.assertNotIn(secret, text, label)
        # An app's own Basic auth and bearer tokens still arrive.
        own = "Basic " + b64("alice:app-password")
        echoed = await self.seen("/echo", {"Authorization": own})
        self.assertEqual([v for k, v in echoed["headers"] if k == "authorization"], [own])
        echoed = await self.seen("/echo", {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.app.token"})
        self.assertEqual([v for k, v in echoed["headers"] if k == "authorization"],
                         ["Bearer eyJhbGciOiJIUzI1NiJ9.app.token"])

    async def test_credentials_in_the_query_never_reach_the_project(self) -> None:
        h = self.h
        key = await self.key(h.friend)
        hub_secret = h.hub.hub.auth.auth.hub_password  # type: ignore[union-attr]
        session = h.friend.cookies["remember_me"]
        queries = [
            f"api_key={key}",
            f"token={quote(key)}",
            f"x=1&auth=Bearer%20{key}&y=2",
            f"next=%2Fpath%3Fkey%3D{quote(quote(key))}",
            f"{key}",
            f"remember_me={quote(session)}",
            f"s={session}",
            f"hub={quote(hub_secret)}",
            f"a=1;k={key};b=2",
        ]
        for query in queries:
            echoed = await self.seen(f"/echo?{query}", {})
            text = json.dumps(echoed)
            for secret in (key, hub_secret, session, quote(session), quote(quote(key))):
                self.assertNotIn(secret, text, f"?{query} reached the project as {echoed['uri']!r}")
        # The app's own parameters around them survive, in order.
        echoed = await self.seen(f"/echo?x=1&auth=Bearer%20{key}&y=2", {})
        self.assertEqual(echoed["uri"], "/echo?x=1&y=2")
        echoed = await self.seen("/echo?page=2&q=risk-assessment&sort=desc", {})
        self.assertEqual(echoed["uri"], "/echo?page=2&q=risk-assessment&sort=desc")
