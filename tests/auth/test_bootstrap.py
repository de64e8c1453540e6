"""The first administrator: sign-up never grants it; a one-time setup link logged at start
does, once, for a limited time; the admin CLI does it from the shell."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.auth.accounts import AuthError
from cocalc_hub.auth.bootstrap import SETUP_TTL, AdminSetup, token_hash
from cocalc_hub.auth.caller import Caller
from cocalc_hub.db.store import utcnow
from tests.support import LogCapture, RunningHub, settings_for, spawn, start_hub
from tests.web.api_client import ApiClient

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/auth/setup)#token=([A-Za-z0-9_-]{43})\b")


class SetupCase(unittest.TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.logs = LogCapture(self)
        self.tmp = Path(self.mktemp()).resolve()
        self.hub: RunningHub = start_hub(self, settings_for(self.tmp))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        line = await self.logs.wait_for("No administrator exists yet")
        m = LINK.search(line)
        assert m is not None, line
        self.token = m.group(2)

    def client(self) -> ApiClient:
        return ApiClient(self.hub.base, self.pool)

    async def profile(self, c: ApiClient) -> dict[str, Any]:
        r = await c.get("accounts/profile")
        assert r.code == 200, r
        return r.json  # type: ignore[no-any-return]


class SignUpNeverAdminTests(SetupCase):
    async def test_first_sign_up_is_not_admin_and_setup_link_is_logged_once(self) -> None:
        first = self.client()
        r = await first.sign_up("first@example.com")
        self.assertEqual((r.code, r.json["is_admin"]), (201, False))
        self.assertFalse((await self.profile(first))["is_admin"])
        r = await first.get("admin/accounts")
        self.assertEqual(r.code, 403)
        lines = [line for line in self.logs.lines if "No administrator exists yet" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("within 60 minutes", lines[0])
        self.assertIn("cocalc-hub-admin setup-link", lines[0])

    async def test_closed_sign_up_has_no_first_account_exception(self) -> None:
        await self.hub.hub.store.set_setting("email_signup", "no")
        r = await self.client().sign_up("first@example.com")
        self.assertEqual(r.code, 403, r)
        self.assertEqual(await self.hub.hub.store.count_accounts(), 0)


class SetupLinkTests(SetupCase):
    async def test_anonymous_holder_creates_the_admin_once(self) -> None:
        c = self.client()
        r = await c.post("auth/setup-admin", {"token": self.token, "check": True})
        self.assertEqual((r.code, r.json), (200, {"valid": True, "signed_in": False}))
        r = await c.post("auth/setup-admin", {"token": self.token, "email": "Root@Example.com",
                                               "password": "a-Good-passphrase", "firstName": "Ro"})
        self.assertEqual((r.code, r.json["is_admin"]), (200, True), r)
        profile = await self.profile(c)  # signed in by the same answer
        self.assertEqual((profile["email_address"], profile["is_admin"]), ("root@example.com", True))
        self.assertEqual((await c.get("admin/accounts")).code, 200)
        # used: once an administrator exists, every setup link is refused with a clear answer
        again = self.client()
        r = await again.post("auth/setup-admin", {"token": self.token, "email": "b@example.com",
                                                   "password": "a-Good-passphrase"})
        self.assertEqual(r.code, 409, r)
        self.assertIn("already exists", r.json["error"])
        self.assertEqual(await self.hub.hub.store.count_accounts(), 1, "no account made with a refused link")
        # single use even when no administrator is left
        await self.hub.hub.store.set_banned(profile["account_id"], True)
        r = await again.post("auth/setup-admin", {"token": self.token, "email": "b@example.com",
                                                   "password": "a-Good-passphrase"})
        self.assertEqual(r.code, 403, r)
        self.assertIn("used already", r.json["error"])

    async def test_signed_in_account_promotes_itself(self) -> None:
        c = self.client()
        self.assertEqual((await c.sign_up("me@example.com")).code, 201)
        r = await c.post("auth/setup-admin", {"token": self.token, "check": True})
        self.assertEqual(r.json, {"valid": True, "signed_in": True})
        r = await c.post("auth/setup-admin", {"token": self.token}, csrf=False)
        self.assertEqual(r.code, 403, "a signed-in browser needs its CSRF token here too")
        self.assertIn("CSRF", r.json["error"])
        r = await c.post("auth/setup-admin", {"token": self.token})
        self.assertEqual((r.code, r.json["is_admin"]), (200, True), r)
        self.assertTrue((await self.profile(c))["is_admin"])

    async def test_existing_account_needs_its_password(self) -> None:
        owner = self.client()
        self.assertEqual((await owner.sign_up("owner@example.com")).code, 201)
        stranger = self.client()
        r = await stranger.post("auth/setup-admin", {"token": self.token, "email": "owner@example.com",
                                                      "password": "not-the-password"})
        self.assertEqual(r.code, 401, r)
        self.assertEqual(await self.hub.hub.store.count_admins(), 0)
        r = await stranger.post("auth/setup-admin", {"token": self.token, "email": "owner@example.com",
                                                      "password": "a-Good-passphrase"})
        self.assertEqual((r.code, r.json["is_admin"]), (200, True), "the token was not spent by the failure")

    async def test_wrong_missing_and_hostile_tokens(self) -> None:
        c = self.client()
        hostile = "<script>alert(1)</script>"
        cases: list[tuple[Any, int, str]] = [
            ("x" * 43, 403, "not valid"), (self.token[:-1], 403, "not valid"), (hostile, 403, "not valid"),
            (None, 400, "no token"), ("", 400, "no token"), (12, 400, "no token"), ("t" * 10000, 400, "no token"),
            ({"$ne": ""}, 400, "no token"),
        ]
        for token, status, fragment in cases:
            r = await c.post("auth/setup-admin", {"token": token, "email": "a@example.com",
                                                   "password": "a-Good-passphrase"})
            self.assertEqual(r.code, status, (token, r))
            self.assertIn(fragment, r.json["error"])
            self.assertNotIn("<script>", r.body.decode())
        self.assertEqual(await self.hub.hub.store.count_accounts(), 0)
        r = await c.post("auth/setup-admin", {"token": self.token, "email": "not an email", "password": "x"})
        self.assertEqual(r.code, 400)
        r = await c.request("GET", "/api/v2/auth/setup-admin?token=" + self.token)
        self.assertEqual(r.code, 405, "never a GET: a token in a URL ends up in logs")
        r = await c.post("auth/setup-admin", {"token": self.token}, headers={"Origin": "https://evil.example"})
        self.assertEqual(r.code, 403, "cross-site posts are refused")

    async def test_wrong_tokens_are_throttled_per_address(self) -> None:
        c = self.client()
        codes = [(await c.post("auth/setup-admin", {"token": f"wrong-{i}", "check": True})).code for i in range(31)]
        self.assertEqual(codes[:30], [403] * 30)
        self.assertEqual(codes[30], 429)
        r = await c.post("auth/setup-admin", {"token": self.token, "check": True})
        self.assertEqual(r.code, 429, "the right token too, from that address, for a while")

    async def test_expired_token_is_refused(self) -> None:
        expired = "e" * 43
        await self.hub.hub.store.create_setup_token(token_hash(expired), utcnow() - timedelta(seconds=1))
        r = await self.client().post("auth/setup-admin", {"token": expired, "check": True})
        self.assertEqual(r.code, 403)
        self.assertIn("expired", r.json["error"])

    async def test_setup_page_is_served_to_everyone(self) -> None:
        c = self.client()
        for _ in range(2):
            r = await c.request("GET", "/auth/setup")
            self.assertEqual(r.code, 200)
            self.assertIn(b"setup.js", r.body)
            self.assertNotIn(self.token.encode(), r.body)
            await c.sign_up("visitor@example.com")


class SetupClockTests(unittest.TestCase):
    """Expiry follows the injected clock: valid until SETUP_TTL has passed, then refused."""

    async def test_token_expires_after_the_ttl(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp(), {"mode": "single-user"}))
        assert hub.hub.auth is not None
        clock = task.Clock()
        clock.advance(utcnow().timestamp())
        setup = AdminSetup(hub.hub.store, hub.hub.auth.accounts, clock)
        token = await setup.new_token()
        clock.advance(SETUP_TTL.total_seconds() - 1)
        self.assertEqual(await setup.check(token), token_hash(token))
        clock.advance(2)
        with self.assertRaises(AuthError) as caught:
            await setup.check(token)
        self.assertEqual(caught.exception.status, 403)
        with self.assertRaises(AuthError):
            await setup.claim(token, Caller(kind="anonymous"), email="late@example.com", password="a-Good-passphrase")
        self.assertEqual(await hub.hub.store.count_accounts(), 0)


class AdminCliBootstrapTests(unittest.TestCase):
    """From the shell: setup-link, create-account --admin; a hub with an admin logs no link."""

    timeout = 90

    async def cli(self, data: Path, *args: str, expect: int = 0) -> Any:
        proc, _ = spawn(self, [sys.executable, "-m", "cocalc_hub.admin", "--data", str(data), "--json", *args])
        code = await proc.ended
        out = proc.output.decode()
        self.assertEqual(code, expect, out)
        self.assertNotIn("Traceback", out)
        return json.loads(out) if expect == 0 else out

    async def test_cli_link_and_admin(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        data = tmp / "data"
        logs = LogCapture(self)
        hub = start_hub(self, settings_for(tmp))
        await logs.wait_for("No administrator exists yet")
        made = await self.cli(data, "setup-link", "--url", hub.base)
        m = LINK.search(made["link"])
        assert m is not None, made
        self.assertEqual(m.group(1), hub.url("/auth/setup"))
        self.assertEqual(made["expires_in_minutes"], 60)
        pool = HTTPConnectionPool(reactor, persistent=False)
        c = ApiClient(hub.base, pool)
        r = await c.post("auth/setup-admin", {"token": m.group(2), "email": "cli@example.com",
                                               "password": "a-Good-passphrase"})
        self.assertEqual((r.code, r.json["is_admin"]), (200, True), r)
        out = await self.cli(data, "setup-link", expect=1)
        self.assertIn("an administrator exists already", out)
        await hub.hub.stopService()

        # a fresh installation whose admin comes from the shell: the hub logs no link
        other = tmp / "other"
        made = await self.cli(other / "data", "create-account", "root@example.com", "--admin")
        self.assertTrue(made["is_admin"])
        self.assertEqual((await self.cli(other / "data", "create-account", "bob@example.com"))["is_admin"], False)
        logs.lines.clear()
        second = start_hub(self, settings_for(other))
        assert second.hub.admin_setup is not None
        self.assertFalse(await second.hub.admin_setup.needed())
        await second.hub.stopService()
        self.assertEqual([line for line in logs.lines if "No administrator exists yet" in line], [])


class SetupStopTests(unittest.TestCase):
    async def test_stopped_right_after_start_the_check_finishes_on_an_open_store(self) -> None:
        """SIGTERM just after start: the setup check in flight must not hit a closed database
        (trial fails this test on any logged error)."""
        from cocalc_hub.tap import build_service
        from tests.support import FAST_ARGON2

        logs = LogCapture(self)
        for _ in range(3):
            hub = build_service(settings_for(self.mktemp()), reactor, password_cost=FAST_ARGON2)
            hub.startService()
            await hub.stopService()
        self.assertEqual([line for line in logs.lines if "could not make a first-admin setup link" in line], [])
