"""Issue 13 §5, from the attacker's seat: sign-in throttling turned against an account's
owner, and sign-up telling whether an email has an account.

The hub runs with --trust-proxy so that each request can come "from" another address
(X-Forwarded-For); the throttles' time is a clock the test drives.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.support import DrivenClock, make_admin, settings_for, start_hub
from tests.web.api_client import ApiClient, Response

PASSWORD = "the-Owners-passphrase"
ATTACKER = "203.0.113.9"
OWNER = "198.51.100.7"


class SignInThrottleTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.hub = start_hub(self, settings_for(self.mktemp(), {"trust-proxy": True}))
        self.accounts = self.hub.hub.auth.accounts  # type: ignore[union-attr]
        self.clock = DrivenClock()
        for name in ("failures", "ip_throttle", "signup_throttle", "email_throttle"):
            if hasattr(self.accounts, name):  # (the code before issue 13 had an email_throttle)
                self.patch(getattr(self.accounts, name), "clock", self.clock)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.owner = self.client(OWNER)
        await self.accounts.settings.set("signup_hides_emails", "no")  # the owner's own sign-up, plainly
        r = await self.owner.sign_up("admin@example.com", PASSWORD)
        assert r.code == 201, r
        await make_admin(self.hub, r.json["account_id"])
        await self.accounts.settings.set("signup_hides_emails", None)  # back to the default

    def client(self, address: str) -> ApiClient:
        c = ApiClient(self.hub.base, self.pool)
        c.headers["X-Forwarded-For"] = address
        return c

    async def sign_in(self, address: str, password: str, email: str = "admin@example.com") -> Response:
        return await self.client(address).sign_in(email, password)

    async def test_hammering_does_not_lock_the_owner_out(self) -> None:
        for i in range(40):
            r = await self.sign_in(ATTACKER, f"guess-{i}-wrong")
            self.assertIn(r.code, (401, 429))
        self.assertEqual(r.code, 429)
        r = await self.sign_in(OWNER, PASSWORD)
        self.assertEqual(r.code, 200, r)
        self.assertTrue(r.json["is_admin"])
        # Nor does hammering from many addresses (each pair has its own delays).
        for n in range(10):
            for i in range(6):
                await self.sign_in(f"192.0.2.{n}", f"guess-{i}-wrong")
        self.assertEqual((await self.sign_in(OWNER, PASSWORD)).code, 200)

    async def test_delays_grow_and_the_owner_is_told_how_long(self) -> None:
        for _ in range(5):
            self.assertEqual((await self.sign_in(OWNER, "my-own-typo")).code, 401)
        r = await self.sign_in(OWNER, PASSWORD)
        self.assertEqual(r.code, 429, r)
        self.assertIn("try again in 30 seconds", r.json["error"])
        self.assertEqual(r.headers.getRawHeaders(b"retry-after"), [b"30"])
        self.clock.advance(30)
        self.assertEqual((await self.sign_in(OWNER, "my-own-typo")).code, 401)
        r = await self.sign_in(OWNER, PASSWORD)
        self.assertIn("try again in 60 seconds", r.json["error"])  # doubled
        self.clock.advance(60)
        self.assertEqual((await self.sign_in(OWNER, PASSWORD)).code, 200)
        self.assertEqual((await self.sign_in(OWNER, "my-own-typo")).code, 401, "a success starts afresh")

    async def test_each_address_has_a_budget_across_emails(self) -> None:
        # An IPv6 /64 is one address: rotating within it buys nothing.
        for i in range(30):
            r = await self.sign_in(f"2001:db8:7:7::{i + 1:x}", "wrong-password", email=f"user{i}@example.com")
            self.assertEqual(r.code, 401, r)
        r = await self.sign_in("2001:db8:7:7::abcd", PASSWORD)
        self.assertEqual(r.code, 429, r)
        self.assertIn("from your address; try again in", r.json["error"])
        self.assertEqual((await self.sign_in("2001:db8:7:8::1", PASSWORD)).code, 200, "the next /64 is not blocked")
        self.clock.advance(61)
        self.assertEqual((await self.sign_in("2001:db8:7:7::abcd", PASSWORD)).code, 200)


class SignUpDoesNotRevealEmailsTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.hub = start_hub(self, settings_for(self.mktemp()))
        self.accounts = self.hub.hub.auth.accounts  # type: ignore[union-attr]
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        first = ApiClient(self.hub.base, self.pool)
        r = await first.sign_up("taken@example.com", PASSWORD)
        assert r.code == 201, r
        self.work: list[str] = []
        passwords, store = self.accounts.passwords, self.accounts.store
        hash_, create = passwords.hash, store.create_account

        async def counted_hash(*a: Any, **kw: Any) -> Any:
            self.work.append("hash")
            return await hash_(*a, **kw)

        async def counted_create(*a: Any, **kw: Any) -> Any:
            self.work.append("insert")
            return await create(*a, **kw)

        self.patch(passwords, "hash", counted_hash)
        self.patch(store, "create_account", counted_create)

    async def attempt(self, email: str) -> tuple[int, Any, list[str], list[str]]:
        c = ApiClient(self.hub.base, self.pool)
        self.work.clear()
        r = await c.post("auth/sign-up", {"email": email, "password": "an-Attackers-guess", "firstName": "E"})
        return r.code, r.json, r.set_cookies(), list(self.work)

    async def test_same_answer_and_same_work(self) -> None:
        taken = await self.attempt("taken@example.com")
        fresh = await self.attempt("fresh@example.com")
        self.assertEqual(taken, fresh)
        code, body, cookies, work = taken
        self.assertEqual(code, 202)
        self.assertNotIn("account_id", body)
        self.assertEqual(cookies, [], "nobody is signed in either way")
        self.assertEqual(work, ["hash", "insert"])
        # The owner of the taken address keeps their password; the new account has its own.
        owner = ApiClient(self.hub.base, self.pool)
        self.assertEqual((await owner.sign_in("taken@example.com", PASSWORD)).code, 200)
        self.assertEqual((await owner.sign_in("taken@example.com", "an-Attackers-guess")).code, 401)
        self.assertEqual((await owner.sign_in("fresh@example.com", "an-Attackers-guess")).code, 200)

    async def test_comparable_timing(self) -> None:
        """Loose on purpose (a loaded 2-core machine): the structural test above is the proof."""
        taken, fresh = [], []
        for i in range(7):
            for email, into in (("taken@example.com", taken), (f"fresh{i}@example.com", fresh)):
                started = time.perf_counter()
                code = (await self.attempt(email))[0]
                into.append(time.perf_counter() - started)
                self.assertEqual(code, 202)
        a, b = statistics.median(taken), statistics.median(fresh)
        self.assertLess(abs(a - b), 0.25 + 0.5 * max(a, b), f"medians {a * 1000:.1f} ms vs {b * 1000:.1f} ms")


class SignUpTokenTests(unittest.TestCase):
    """An attacker holding a registration token signs up with addresses that have accounts
    (probing, or just to use the token up): no account is made, so no use of the token is
    counted, and the answer is still the one a fresh address gets."""

    timeout = 120

    async def test_token_is_spent_only_by_an_account_made(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp()))
        accounts = hub.hub.auth.accounts  # type: ignore[union-attr]
        pool = HTTPConnectionPool(reactor, persistent=False)
        r = await ApiClient(hub.base, pool).sign_up("taken@example.com", PASSWORD)
        assert r.code == 201, r
        await accounts.store.create_registration_token("invite", limit=2)
        for hides in (None, "no"):
            await accounts.settings.set("signup_hides_emails", hides)
            for _ in range(3):
                r = await ApiClient(hub.base, pool).post("auth/sign-up", {
                    "email": "taken@example.com", "password": "an-Attackers-guess", "registrationToken": "invite"})
                self.assertEqual(r.code, 202 if hides is None else 409, r)
        tokens = await accounts.store.list_registration_tokens()
        self.assertEqual([t["counter"] for t in tokens], [0])
        # The token's two invitees still get in; a third sign-up is refused.
        await accounts.settings.set("signup_hides_emails", None)
        for email, code in (("one@example.com", 201), ("two@example.com", 201), ("three@example.com", 403)):
            r = await ApiClient(hub.base, pool).sign_up(email, registrationToken="invite")
            self.assertEqual(r.code, code, r)
