"""The JSON API end to end over a real listening hub, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.auth.passwords import legacy_hash
from tests.db.support import fresh_postgres_url
from tests.support import drive_clocks, make_admin, parse_response, raw_get, raw_http, settings_for, start_hub
from tests.web.api_client import ApiClient

PASSWORD = "a-Good-passphrase"


class ApiSuite:
    """Mixed into a TestCase; ``kind`` picks the database."""

    kind = "sqlite"

    async def setUp(self) -> None:  # type: ignore[override]
        case: unittest.TestCase = self  # type: ignore[assignment]
        options: dict[str, Any] = {}
        if self.kind == "postgres":
            options["database"] = await fresh_postgres_url(case)
        self.hub = start_hub(case, settings_for(case.mktemp(), options, self.env()))
        self.clock = drive_clocks(case, self.hub)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        case.addCleanup(self.pool.closeCachedConnections)

    def env(self) -> dict[str, str]:
        return {}

    def client(self) -> ApiClient:
        return ApiClient(self.hub.base, self.pool)

    async def signed_up_admin(self, email: str) -> ApiClient:
        """An account made administrator as an operator would (sign-up never does)."""
        c = self.client()
        r = await c.sign_up(email)
        assert r.code == 201, r
        await make_admin(self.hub, r.json["account_id"])
        return c

    @property
    def store(self) -> Any:
        return self.hub.hub.store

    async def signed_up(self, email: str) -> ApiClient:
        c = self.client()
        r = await c.sign_up(email)
        assert r.code == 201, r
        return c


class FlowTests(ApiSuite):
    async def test_done_when_flow(self) -> None:
        """Sign up, sign in, project, collaborator by email, API key, sign out."""
        t: Any = self
        alice = self.client()
        r = await alice.sign_up("Alice@Example.com ")
        t.assertEqual(r.code, 201, r)
        t.assertFalse(r.json["is_admin"], "sign-up never makes an administrator, not even the first account")
        alice_id = r.json["account_id"]
        cookies = r.set_cookies()
        remember = next(c for c in cookies if c.startswith("remember_me="))
        t.assertRegex(remember, r"^remember_me=sha512\$[0-9a-f]{32}\$1000\$[0-9a-f-]{36}; Path=/; Expires=")
        t.assertIn("; HttpOnly; SameSite=Strict", remember)
        t.assertNotIn("Secure", remember)
        t.assertIn("Max-Age=15552000", remember)
        t.assertTrue(any(c.startswith(f"account_id={alice_id};") for c in cookies))

        r = await alice.get("accounts/profile")
        t.assertEqual((r.code, r.json["email_address"], r.json["via"]), (200, "alice@example.com", "remember_me"))
        t.assertNotIn("password_hash", r.body.decode())

        bob = await self.signed_up("bob@example.com")
        r = await bob.get("accounts/profile")
        t.assertFalse(r.json["is_admin"])

        r = await alice.post("projects/create", {"title": "Research", "description": "stuff"})
        t.assertEqual(r.code, 201, r)
        pid = r.json["project_id"]
        r = await alice.post("projects/collaborators/add", {"project_id": pid, "email": "BOB@example.com"})
        t.assertEqual((r.code, r.json["status"]), (200, "ok"), r)
        r = await bob.get("projects/get")
        t.assertEqual([p["project_id"] for p in r.json], [pid])
        t.assertEqual(r.json[0]["users"][alice_id], {"group": "owner"})

        r = await alice.post("api-keys", {"action": "create", "name": "script"})
        t.assertEqual(r.code, 201, r)
        secret = r.json["response"]["secret"]
        t.assertRegex(secret, r"^sk-[0-9A-Za-z]{22}$")
        r = await alice.post("api-keys", {"action": "get"})
        t.assertEqual([k["trunc"] for k in r.json["response"]], [secret[:3] + "..." + secret[-6:]])
        t.assertNotIn(secret, r.body.decode())

        script = self.client()
        r = await script.get("accounts/profile", headers={"Authorization": f"Bearer {secret}"})
        t.assertEqual((r.code, r.json["account_id"], r.json["via"]), (200, alice_id, "bearer"))
        basic = base64.b64encode(f"{secret}:".encode()).decode()
        r = await script.post("projects/create", {"title": "from a script"},
                              headers={"Authorization": f"Basic {basic}"})
        t.assertEqual(r.code, 201, r)

        old_cookies = dict(alice.cookies)
        r = await alice.post("accounts/sign-out")
        t.assertEqual(r.code, 200, r)
        t.assertNotIn("remember_me", alice.cookies)
        replay = self.client()
        replay.cookies = old_cookies
        r = await replay.get("accounts/profile")
        t.assertEqual(r.code, 401, "a revoked session must not work")
        r = await alice.sign_in("alice@example.com")
        t.assertEqual((r.code, r.json["account_id"]), (200, alice_id))
        r = await alice.get("projects/get")
        t.assertEqual(len(r.json), 2)

    async def test_password_change_revokes_other_sessions(self) -> None:
        t: Any = self
        one = await self.signed_up("carol@example.com")
        two = self.client()
        t.assertEqual((await two.sign_in("carol@example.com")).code, 200)
        r = await one.post("accounts/set-password",
                           {"currentPassword": "wrong-password", "newPassword": "x-New-pass-1"})
        t.assertEqual(r.code, 403)
        r = await one.post("accounts/set-password", {"currentPassword": PASSWORD, "newPassword": "x-New-pass-1"})
        t.assertEqual((r.code, r.json["revoked_sessions"]), (200, 1), r)
        t.assertEqual((await one.get("accounts/profile")).code, 200)
        t.assertEqual((await two.get("accounts/profile")).code, 401)
        t.assertEqual((await two.sign_in("carol@example.com")).code, 401)
        t.assertEqual((await two.sign_in("carol@example.com", "x-New-pass-1")).code, 200)

    async def test_sign_out_everywhere(self) -> None:
        t: Any = self
        one = await self.signed_up("dan@example.com")
        two = self.client()
        await two.sign_in("dan@example.com")
        r = await one.post("accounts/sign-out", {"all": True})
        t.assertEqual(r.json["revoked"], 2)
        t.assertEqual((await two.get("accounts/profile")).code, 401)

    async def test_legacy_upstream_hash_is_upgraded(self) -> None:
        t: Any = self
        account = await self.store.create_account(email_address="old@example.com",
                                                  password_hash=legacy_hash("upstream-Pass1"))
        c = self.client()
        t.assertEqual((await c.sign_in("old@example.com", "upstream-Pass1")).code, 200)
        stored = await self.store.get_account(account.account_id)
        t.assertTrue(stored.password_hash.startswith("$argon2id$"))
        again = self.client()
        t.assertEqual((await again.sign_in("old@example.com", "upstream-Pass1")).code, 200)
        t.assertEqual((await again.sign_in("old@example.com", "wrong-Pass1")).code, 401)

    async def test_project_keys_are_scoped(self) -> None:
        t: Any = self
        owner = await self.signed_up("owner@example.com")
        member = await self.signed_up("member@example.com")
        pa = (await owner.post("projects/create", {"title": "A"})).json["project_id"]
        pb = (await owner.post("projects/create", {"title": "B"})).json["project_id"]
        await owner.post("projects/collaborators/add", {"project_id": pa, "email": "member@example.com"})
        r = await member.post("api-keys", {"action": "create", "project_id": pa.upper()})
        t.assertEqual(r.code, 201, r)
        key = r.json["response"]["secret"]
        t.assertEqual(r.json["response"]["project_id"], pa)
        r = await member.post("api-keys", {"action": "create", "project_id": pb})
        t.assertEqual(r.code, 403)
        bearer = {"Authorization": f"Bearer {key}"}
        c = self.client()
        r = await c.post("projects/get", {"project_id": pa}, headers=bearer)
        t.assertEqual((r.code, r.json[0]["project_id"]), (200, pa))
        t.assertEqual((await c.post("projects/get", {"project_id": pb}, headers=bearer)).code, 403)
        t.assertEqual([p["project_id"] for p in (await c.post("projects/get", headers=bearer)).json], [pa])
        t.assertEqual((await c.post("projects/create", {"title": "x"}, headers=bearer)).code, 403)
        t.assertEqual((await c.post("api-keys", {"action": "create"}, headers=bearer)).code, 401)
        # Removing the creator from the project kills the key (within the 1 s cache).
        member_id = (await member.get("accounts/profile")).json["account_id"]
        r = await owner.post("projects/collaborators/remove", {"project_id": pa, "account_id": member_id})
        t.assertEqual(r.code, 200, r)
        self.clock.advance(1.1)
        t.assertEqual((await c.post("projects/get", {"project_id": pa}, headers=bearer)).code, 401)

    async def test_project_operations_and_permissions(self) -> None:
        t: Any = self
        owner = await self.signed_up("o@example.com")
        other = await self.signed_up("x@example.com")
        pid = (await owner.post("projects/create", {"title": "T"})).json["project_id"]
        t.assertEqual((await other.post("projects/get", {"project_id": pid})).code, 403)
        t.assertEqual((await other.post("projects/update", {"project_id": pid, "title": "pwn"})).code, 403)
        t.assertEqual((await other.post("projects/delete", {"project_id": pid})).code, 403)
        t.assertEqual((await other.post("projects/collaborators/add",
                                        {"project_id": pid, "email": "x@example.com"})).code, 403)
        r = await owner.post("projects/update", {"project_id": pid.upper(), "title": "Renamed"})
        t.assertEqual((r.code, r.json["project"]["title"]), (200, "Renamed"))
        r = await owner.post("projects/collaborators/list", {"project_id": pid})
        t.assertEqual([c["group"] for c in r.json], ["owner"])
        owner_id = r.json[0]["account_id"]
        r = await owner.post("projects/collaborators/remove", {"project_id": pid, "account_id": owner_id})
        t.assertEqual(r.code, 403)
        t.assertEqual((await owner.post("projects/delete", {"project_id": pid})).code, 200)
        t.assertEqual((await owner.post("projects/get", {"project_id": pid})).code, 404)
        t.assertEqual((await owner.post("projects/get")).json, [])


class BadInputTests(ApiSuite):
    async def test_bodies_and_types(self) -> None:
        t: Any = self
        c = self.client()
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"{not json", content_type="application/json")
        t.assertEqual((r.code, r.json["error"]), (400, "the body is not valid JSON"))
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"[1,2]", content_type="application/json")
        t.assertEqual(r.code, 400)
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"x" * (1024 * 1024 + 1),
                            content_type="application/json")
        t.assertEqual(r.code, 413)
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"<xml/>", content_type="text/xml")
        t.assertEqual(r.code, 415)
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"\xff\xfe", content_type="application/json")
        t.assertEqual(r.code, 400)
        r = await c.request("POST", "/api/v2/auth/sign-in", body=b"[" * 100000 + b"]" * 100000,
                            content_type="application/json")
        t.assertEqual(r.code, 400)
        t.assertEqual((await c.post("auth/sign-in", {"email": ["a"], "password": 5})).code, 400)
        t.assertEqual((await c.post("auth/sign-in", {})).code, 400)
        r = await c.post("auth/sign-up", {"email": "a" * 250 + "@x.com", "password": PASSWORD})
        t.assertEqual(r.code, 400)
        t.assertIn("longer than 254", r.json["error"])
        t.assertEqual((await c.post("auth/sign-up", {"email": "nope", "password": PASSWORD})).code, 400)
        t.assertEqual((await c.post("auth/sign-up", {"email": "p@x.com", "password": "x" * 65})).code, 400)
        t.assertEqual((await c.post("auth/sign-up", {"email": "p@x.com", "password": "short"})).code, 400)
        t.assertEqual((await c.post("auth/sign-up", {"email": "p@x.com", "password": PASSWORD,
                                                     "firstName": {"x": 1}})).code, 400)
        t.assertEqual((await c.sign_in("p@x.com", "x" * 10000)).code, 401)
        t.assertEqual(await self.store.count_accounts(), 0)

    async def test_routes_and_methods(self) -> None:
        t: Any = self
        c = self.client()
        r = await c.post("no/such/thing")
        t.assertEqual((r.code, r.json), (404, {"error": "no such API endpoint"}))
        r = await c.get("auth/sign-in")
        t.assertEqual(r.code, 405)
        t.assertEqual(r.headers.getRawHeaders("allow"), ["POST"])
        r = await c.request("DELETE", "/api/v2/projects/get")
        t.assertEqual(r.code, 405)
        t.assertEqual((await c.get("accounts/profile")).code, 401)
        t.assertEqual((await c.post("projects/create")).code, 401)
        t.assertEqual((await c.get("auth/requires-token")).json, {"requiresToken": False, "signup": "open"})
        r = await c.request("GET", "/api/v2/%3Cscript%3E")
        t.assertNotIn(b"<script>", r.body)
        t.assertEqual(r.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])

    async def test_ids(self) -> None:
        t: Any = self
        c = await self.signed_up("ids@example.com")
        pid = (await c.post("projects/create", {"title": "x"})).json["project_id"]
        for bad in ("not-a-uuid", 123, None, pid + "0", pid[:-1], "../" + pid):
            r = await c.post("projects/get", {"project_id": bad}) if bad is not None else \
                await c.post("projects/update", {"title": "x"})
            t.assertEqual(r.code, 400, bad)
        r = await c.post("projects/get", {"project_id": pid.upper()})
        t.assertEqual((r.code, r.json[0]["project_id"]), (200, pid))
        r = await c.post("projects/get", {"project_id": "00000000-0000-4000-8000-000000000000"})
        t.assertEqual(r.code, 404)
        r = await c.post("projects/collaborators/add", {"project_id": pid, "account_id": "NOT"})
        t.assertEqual(r.code, 400)
        r = await c.post("projects/collaborators/add", {"project_id": pid, "email": "ghost@example.com"})
        t.assertEqual(r.code, 404)
        r = await c.post("api-keys", {"action": "delete", "id": "abc"})
        t.assertEqual(r.code, 400)
        r = await c.post("api-keys", {"action": "delete", "id": 999999})
        t.assertEqual(r.code, 404)
        r = await c.post("api-keys", {"action": "explode"})
        t.assertEqual(r.code, 400)
        r = await c.post("api-keys", {"action": "create", "expire": "yesterday"})
        t.assertEqual(r.code, 400)
        r = await c.post("api-keys", {"action": "create", "expire": 1000})
        t.assertEqual(r.code, 400)

    async def test_forged_and_expired_credentials(self) -> None:
        t: Any = self
        c = await self.signed_up("eve@example.com")
        before = await self.store.count_accounts()
        forged = self.client()
        for value in ("sha512$00$1000$" + "0" * 36, "garbage", "sha512$aa$99999999$x", "a$b$c$d$e"):
            forged.cookies = {"remember_me": value}
            r = await forged.get("accounts/profile")
            t.assertEqual(r.code, 401, value)
        for key in ("sk-AAAAAAAAAAAAAAAA000001", "sk-xyz", "Bearer", "sk-" + "Z" * 300):
            r = await forged.get("accounts/profile", cookies=False, headers={"Authorization": f"Bearer {key}"})
            t.assertEqual(r.code, 401, key)
        r = await forged.get("accounts/profile", cookies=False, headers={"Authorization": "Digest abc"})
        t.assertEqual(r.code, 401)
        # A non-hub Authorization header does not hide a valid session cookie.
        r = await c.get("accounts/profile", headers={"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="})
        t.assertEqual(r.code, 200)
        # An expired session row is refused.
        account_id = (await c.get("accounts/profile")).json["account_id"]
        from datetime import timedelta

        from cocalc_hub.auth.cookies import new_remember_me
        from cocalc_hub.db.store import utcnow

        old = new_remember_me()
        await self.store.create_session(old.session_hash, account_id, utcnow() - timedelta(seconds=1))
        forged.cookies = {"remember_me": old.cookie_value}
        t.assertEqual((await forged.get("accounts/profile")).code, 401)
        # An expired key is refused and deleted.
        r = await c.post("api-keys", {"action": "create", "name": "short"})
        key = r.json["response"]
        from cocalc_hub.auth.accounts import parse_expire  # noqa: F401

        await self.store.update_api_key(account_id, key["id"], expire=utcnow() + timedelta(milliseconds=300))
        self.clock.advance(1.2)
        r = await forged.get("accounts/profile", cookies=False, headers={"Authorization": f"Bearer {key['secret']}"})
        t.assertEqual(r.code, 401)
        t.assertIsNone(await self.store.get_api_key(key["id"]))
        t.assertEqual(await self.store.count_accounts(), before)

    async def test_sign_in_does_not_reveal_emails(self) -> None:
        t: Any = self
        await self.signed_up("known@example.com")
        c = self.client()
        a = await c.sign_in("known@example.com", "wrong-password")
        b = await c.sign_in("unknown@example.com", "wrong-password")
        t.assertEqual((a.code, a.json), (b.code, b.json))
        t.assertEqual(a.code, 401)

    async def test_throttling(self) -> None:
        t: Any = self
        await self.signed_up("victim@example.com")
        c = self.client()
        for _ in range(5):
            t.assertEqual((await c.sign_in("victim@example.com", "guess-wrong")).code, 401)
        r = await c.sign_in("victim@example.com")
        t.assertEqual(r.code, 429, "blocked even with the right password")
        # X-Forwarded-For is ignored without --trust-proxy: still the same IP, other emails not blocked.
        r = await c.sign_in("victim2@example.com", "x-wrong-one")
        t.assertEqual(r.code, 401)


class CsrfTests(ApiSuite):
    async def test_cookie_posts_need_token(self) -> None:
        t: Any = self
        c = await self.signed_up("csrf@example.com")
        r = await c.post("projects/create", {"title": "x"}, csrf=False)
        t.assertEqual(r.code, 403)
        t.assertIn("CSRF", r.json["error"])
        r = await c.post("projects/create", {"title": "x"}, csrf=False, headers={"X-CSRF-Token": "forged"})
        t.assertEqual(r.code, 403)
        r = await c.post("projects/create", {"title": "x"})
        t.assertEqual(r.code, 201)
        # A form post can carry the token as a field.
        token = c.csrf_token()
        r = await c.request("POST", "/api/v2/projects/create", body=f"title=form&csrf_token={token}".encode(),
                            content_type="application/x-www-form-urlencoded", csrf=False)
        t.assertEqual(r.code, 201, r)
        t.assertEqual((await c.get("auth/csrf")).json["token"], token)
        # Reads need no token.
        t.assertEqual((await c.get("projects/get", csrf=False)).code, 200)

    async def test_bearer_posts_need_no_token(self) -> None:
        t: Any = self
        c = await self.signed_up("bearer@example.com")
        secret = (await c.post("api-keys", {"action": "create"})).json["response"]["secret"]
        r = await self.client().post("projects/create", {"title": "k"}, headers={"Authorization": f"Bearer {secret}"})
        t.assertEqual(r.code, 201)

    async def test_cross_site_anonymous_posts_refused(self) -> None:
        t: Any = self
        c = self.client()
        r = await c.post("auth/sign-up", {"email": "x@example.com", "password": PASSWORD},
                         headers={"Origin": "https://evil.example"})
        t.assertEqual(r.code, 403)
        r = await c.post("auth/sign-up", {"email": "x@example.com", "password": PASSWORD},
                         headers={"Sec-Fetch-Site": "cross-site"})
        t.assertEqual(r.code, 403)
        r = await c.post("auth/sign-up", {"email": "x@example.com", "password": PASSWORD},
                         headers={"Origin": "null"})
        t.assertEqual(r.code, 403)
        host = self.hub.root.split("//", 1)[1]
        r = await c.post("auth/sign-up", {"email": "x@example.com", "password": PASSWORD},
                         headers={"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
        t.assertEqual(r.code, 202, r)  # signup_hides_emails (the default): accepted, nobody signed in


class SignupModeTests(ApiSuite):
    async def test_closed_and_token(self) -> None:
        t: Any = self
        admin = await self.signed_up_admin("admin@example.com")
        r = await admin.post("admin/set-setting", {"name": "email_signup", "value": "no"})
        t.assertEqual(r.code, 200, r)
        c = self.client()
        t.assertEqual((await c.sign_up("late@example.com")).code, 403)
        await admin.post("admin/set-setting", {"name": "email_signup", "value": "yes"})
        r = await admin.post("admin/create-registration-token", {"token": "letmein", "limit": 1})
        t.assertEqual(r.code, 201, r)
        t.assertEqual((await c.get("auth/requires-token")).json["signup"], "token")
        t.assertEqual((await c.sign_up("late@example.com")).code, 403)
        t.assertEqual((await c.sign_up("late@example.com", registrationToken="wrong")).code, 403)
        t.assertEqual((await c.sign_up("late@example.com", registrationToken="letmein")).code, 201)
        # A used-up token keeps sign-up token-only (it does not reopen it).
        t.assertEqual((await self.client().sign_up("later@example.com", registrationToken="letmein")).code, 403)
        t.assertEqual((await self.client().sign_up("later@example.com")).code, 403)

    async def test_operator_can_let_sign_up_reveal_emails(self) -> None:
        """signup_hides_emails=no: upstream's behaviour (201 and signed in, or 409)."""
        t: Any = self
        admin = await self.signed_up_admin("admin@example.com")
        r = await admin.post("admin/set-setting", {"name": "signup_hides_emails", "value": "no"})
        t.assertEqual(r.code, 200, r)
        r = await self.client().post("auth/sign-up", {"email": "new@example.com", "password": PASSWORD})
        t.assertEqual(r.code, 201, r)
        t.assertIn("account_id", r.json)
        t.assertTrue(r.set_cookies())
        r = await self.client().post("auth/sign-up", {"email": "new@example.com", "password": PASSWORD})
        t.assertEqual((r.code, r.json["error"]), (409, "an account with this email address already exists"))
        await admin.post("admin/set-setting", {"name": "signup_hides_emails", "value": ""})
        r = await self.client().post("auth/sign-up", {"email": "new@example.com", "password": PASSWORD})
        t.assertEqual(r.code, 202, "the default again")

    async def test_admin_endpoints(self) -> None:
        t: Any = self
        admin = await self.signed_up_admin("root@example.com")
        user = await self.signed_up("user@example.com")
        t.assertEqual((await user.get("admin/accounts")).code, 403)
        r = await admin.get("admin/accounts")
        t.assertEqual([a["email_address"] for a in r.json], ["root@example.com", "user@example.com"])
        user_id = r.json[1]["account_id"]
        r = await admin.post("admin/ban", {"account_id": user_id})
        t.assertEqual(r.code, 200)
        t.assertEqual((await user.get("accounts/profile")).code, 401)
        t.assertEqual((await self.client().sign_in("user@example.com")).code, 403)
        r = await admin.post("admin/set-admin", {"account_id": user_id.upper(), "admin": True})
        t.assertEqual(r.code, 200)
        r = await admin.get("admin/settings")
        t.assertEqual(r.json["signup"], "open")


class NoSecretsInLogs(ApiSuite):
    async def test_logs(self) -> None:
        t: Any = self
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        t.addCleanup(globalLogPublisher.removeObserver, events.append)
        c = await self.signed_up("quiet@example.com")
        await c.sign_in("quiet@example.com", "wrong-Secret-99")
        secret = (await c.post("api-keys", {"action": "create"})).json["response"]["secret"]
        await self.client().get("accounts/profile", headers={"Authorization": f"Bearer {secret}"})
        await c.request("GET", f"/api/v2/accounts/profile?token={secret}")
        text = "\n".join(formatEvent(e) + json.dumps(e, default=str) for e in events)
        for sensitive in (PASSWORD, "wrong-Secret-99", secret, c.cookies.get("remember_me", "@@")):
            t.assertNotIn(sensitive, text)


class BodyLimitTests(unittest.TestCase):
    async def test_huge_content_length_refused_early(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp()))
        raw = await raw_http(hub.port, raw_get("/api/v2/auth/sign-in", method="POST",
                                               headers={"Content-Length": str(10 ** 12)}))
        status, _, _ = parse_response(raw)
        self.assertEqual(status, 413)


class SQLiteFlow(FlowTests, unittest.TestCase):
    pass


class PostgresFlow(FlowTests, unittest.TestCase):
    kind = "postgres"


class SQLiteBadInput(BadInputTests, unittest.TestCase):
    pass


class PostgresBadInput(BadInputTests, unittest.TestCase):
    kind = "postgres"


class SQLiteCsrf(CsrfTests, unittest.TestCase):
    pass


class SQLiteSignupModes(SignupModeTests, unittest.TestCase):
    pass


class PostgresSignupModes(SignupModeTests, unittest.TestCase):
    kind = "postgres"


class SQLiteLogs(NoSecretsInLogs, unittest.TestCase):
    pass
