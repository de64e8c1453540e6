"""Attackers: a project's web server answering with hostile ``Set-Cookie`` headers, and
anyone who can plant a cookie the hub did not set (a sibling host, plain HTTP).

A browser must never end up holding a cookie it would send back to the hub under one of
the hub's names, whatever form the header takes (RFC 6265bis parsing: a nameless cookie
is sent back as its bare value, names are trimmed, prefixes and case vary). The hub's own
cookies take the strongest form the deployment allows: ``__Host-`` names (``Secure``,
``Path=/``, host-only) over HTTPS, and ``Path=BASE_PATH`` over plain HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.proxy.support import Harness
from tests.support import make_self_signed_cert, settings_for, start_hub
from tests.web.api_client import ApiClient

# Each is sent back by a browser (or a client that splits on commas) as one of the hub's
# cookies: a nameless cookie's value is sent bare, so "=remember_me=x" comes back as
# "remember_me=x"; names are trimmed; __Host-/__Secure- prefixes and case vary.
HOSTILE = [
    "=remember_me=planted; Path=/",
    "= remember_me=planted",
    "remember_me",
    " remember_me =planted",
    "\tremember_me=planted",
    '"remember_me"=planted',
    "Remember_Me=planted",
    "REMEMBER_ME=planted",
    "__Host-remember_me=planted; Secure; Path=/",
    "__host-remember_me=planted; Secure; Path=/",
    "__Secure-remember_me=planted; Secure",
    "=__Host-remember_me=planted; Secure; Path=/",
    "%2Fhubremember_me=planted",
    "app=1, remember_me=planted",
    "api_key=sk-planted",
    "=api_key=sk-planted",
    "hub_password=planted",
    "sys=planted",
    "=sys=planted",
    "project_id=00000000-0000-4000-8000-000000000000",
    "project_secret=planted",
    "csrf_token=planted",
    "=csrf_token=planted",
    "account_id=planted",
    "cocalc_version=1",
]


class HostileSetCookieTests(unittest.TestCase):
    timeout = 120

    async def test_project_cannot_plant_hub_cookies(self) -> None:
        h = await Harness().setup(self)
        query = "&".join("h=" + quote("Set-Cookie: " + value, safe="") for value in [*HOSTILE, "app=1; Path=/"])
        for route in ("server", "port"):
            status, _, body, cookies = await h.get(f"/{h.a}/{route}/{h.port_a}/special/respond?{query}",
                                                   client=h.owner)
            self.assertEqual((status, body), (200, b"hostile"))
            self.assertEqual(cookies, ["app=1; Path=/"], f"{route}: the browser was given {cookies!r}")


class HubCookieFormTests(unittest.TestCase):
    timeout = 120

    async def https_hub(self) -> tuple[Any, ApiClient]:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        key, cert = make_self_signed_cert(tmp)
        hub = start_hub(self, settings_for(tmp, {"port": f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"}))
        harness = Harness()
        harness.pool = HTTPConnectionPool(reactor, persistent=False)

        def client() -> ApiClient:
            c = ApiClient(f"https://127.0.0.1:{hub.port}", harness.pool)
            c.http = harness.https_client()
            return c

        self.client = client
        return hub, client()

    async def test_https_cookies_are_host_prefixed_and_planted_ones_are_ignored(self) -> None:
        hub, victim = await self.https_hub()
        r = await victim.sign_up("victim@example.com")
        self.assertEqual(r.code, 201)
        set_cookies = r.set_cookies()
        for name in ("remember_me", "account_id", "csrf_token"):
            line = next((c for c in set_cookies if c.startswith(f"__Host-{name}=")), None)
            self.assertIsNotNone(line, f"no __Host-{name} in {set_cookies!r}")
            assert line is not None
            attributes = [a.strip().lower() for a in line.split(";")[1:]]
            self.assertIn("path=/", attributes)
            self.assertIn("secure", attributes)
            self.assertFalse(any(a.startswith("domain") for a in attributes), line)
        self.assertFalse([c for c in set_cookies if c.split("=", 1)[0] in ("remember_me", "account_id")])
        r = await victim.get("accounts/profile")
        self.assertEqual((r.code, r.json["email_address"]), (200, "victim@example.com"))

        # The attacker's own valid session, planted under the plain name (from plain HTTP or
        # a sibling host, which cannot set __Host- cookies), does not sign the victim in.
        attacker = self.client()
        self.assertEqual((await attacker.sign_up("attacker@example.com")).code, 201)
        planted = self.client()
        planted.cookies = {"remember_me": attacker.cookies["__Host-remember_me"]}
        r = await planted.get("accounts/profile")
        self.assertEqual(r.code, 401, r.json)
        victim.cookies["remember_me"] = attacker.cookies["__Host-remember_me"]
        r = await victim.get("accounts/profile")
        self.assertEqual((r.code, r.json["email_address"]), (200, "victim@example.com"))

        # The conat client (wss) signs in with the __Host- cookie a browser holds.
        from cocalc_hub.conat.client import connect

        client = connect(reactor, f"https://127.0.0.1:{hub.port}", verify_tls=False,
                         cookies={"__Host-remember_me": victim.cookies["__Host-remember_me"]})
        self.addCleanup(client.close)
        info = await client.signed_in()
        self.assertEqual(info["user"], {"account_id": r.json["account_id"]})
        r = await victim.post("accounts/sign-out")
        self.assertEqual(r.code, 200)
        self.assertNotIn("__Host-remember_me", victim.cookies)

    async def test_http_cookies_are_limited_to_the_base_path(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp(), env={"BASE_PATH": "/hub"}))
        c = ApiClient(hub.base, HTTPConnectionPool(reactor, persistent=False))
        r = await c.sign_up("alice@example.com")
        self.assertEqual(r.code, 201)
        for name in ("remember_me", "account_id", "csrf_token"):
            line = next(x for x in r.set_cookies() if x.startswith(f"%2Fhub{name}="))
            attributes = [a.strip() for a in line.split(";")[1:]]
            self.assertIn("Path=/hub", attributes, line)
        self.assertEqual((await c.get("accounts/profile")).code, 200)
