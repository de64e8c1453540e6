"""Attacker: another site's page opening a WebSocket into a member's project server.

A browser sends the hub's cookies with a WebSocket upgrade whatever page opens it (with
``samesite_remember_me`` = ``none`` even from another site), so a page on
``https://evil.example`` could talk to a project's server (``/port/``, ``/server/``) as the
signed-in member. The proxy refuses (403) a cookie-authenticated upgrade whose ``Origin`` is
not the hub's own (nor allowed by the operator), before anything reaches the project;
programs (no ``Origin``) and API keys in ``Authorization`` are unaffected.
"""

from __future__ import annotations

from twisted.trial import unittest

from tests.proxy.support import Harness, ws_handshake


class CrossSiteProjectWebSocketTests(unittest.TestCase):
    timeout = 120

    async def test_other_sites_cannot_open_websockets_into_projects(self) -> None:
        h = await Harness().setup(self)
        routes = [f"/{h.a}/port/{h.port_a}/ws", f"/{h.a}/server/{h.port_a}/ws"]
        r = await h.owner.post("api-keys", {"action": "create", "project_id": h.a})
        assert r.code == 201, r
        key = str(r.json["response"]["secret"])
        before = (await h.backend_stats())["ws"]
        for route in routes:
            for cookie in (h.cookie(h.owner), h.cookie(h.friend), f"api_key={key}"):
                for origin in ("https://evil.example", "http://hub.test.evil.example", "null", "http://hub.test:81"):
                    status, raw = await ws_handshake(h.hub.port, route, {"Cookie": cookie, "Origin": origin})
                    self.assertEqual(status, 403, f"{route} from {origin}: {raw[:200]!r}")
                    self.assertIn(b"only accepted from this site", raw)
        self.assertEqual((await h.backend_stats())["ws"], before, "a cross-site upgrade reached the project")
        allowed = 0
        for route in routes:
            for headers in ({"Cookie": h.cookie(h.owner), "Origin": "http://hub.test"},  # the hub's own pages
                            {"Cookie": h.cookie(h.friend)},  # a program: no Origin
                            {"Authorization": f"Bearer {key}", "Origin": "https://evil.example"}):
                status, raw = await ws_handshake(h.hub.port, route, headers)
                self.assertEqual(status, 101, f"{route} {headers}: {raw[-900:]!r}")
                allowed += 1
        self.assertEqual((await h.backend_stats())["ws"] - before, allowed)
