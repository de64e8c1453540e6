"""Password hashes, cookie formats, API key format, throttling and CSRF tokens."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from datetime import timedelta

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from cocalc_hub.auth import apikeys
from cocalc_hub.auth.caller import parse_authorization
from cocalc_hub.auth.cookies import (
    CookieNames,
    clear_cookie,
    new_remember_me,
    parse_cookie_header,
    remember_me_hash,
    set_cookie,
)
from cocalc_hub.auth.csrf import Csrf
from cocalc_hub.auth.passwords import (
    LegacyHashError,
    Passwords,
    legacy_hash,
    parse_legacy,
    password_problem,
    verify_legacy,
)
from cocalc_hub.auth.throttle import Backoff, Throttle, address_key, wait_text
from cocalc_hub.db.store import utcnow
from tests.support import FAST_ARGON2


def independent_hmac_sha512(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA512 built from hashlib.sha512 and the RFC 2104 pads (no hmac module)."""
    block = 128
    if len(key) > block:
        key = hashlib.sha512(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha512(bytes(k ^ 0x36 for k in key) + message).digest()
    return hashlib.sha512(bytes(k ^ 0x5C for k in key) + inner).digest()


def independent_upstream_hash(password: str, salt: str, iterations: int) -> str:
    h = password
    for _ in range(iterations):
        h = independent_hmac_sha512(salt.encode(), h.encode()).hex()
    return f"sha512${salt}${iterations}${h}"


def node_upstream_hash(password: str, salt: str, iterations: int) -> str | None:
    """The same computation in Node's crypto (a third implementation), if node is installed."""
    node = shutil.which("node")
    if node is None:
        return None
    script = ("const c=require('crypto');let [p,s,n]=JSON.parse(process.argv[1]);let h=p;"
              "for(let i=0;i<n;i++){h=c.createHmac('sha512',s).update(h).digest('hex')}"
              "process.stdout.write('sha512$'+s+'$'+n+'$'+h)")
    out = subprocess.run([node, "-e", script, json.dumps([password, salt, iterations])], capture_output=True,
                         text=True, timeout=30)
    return out.stdout if out.returncode == 0 else None


class LegacyHashTests(unittest.TestCase):
    VECTORS = [("correct horse battery staple", "00112233445566778899aabbccddeeff", 1000),
               ("pässwörd ✓", "a1b2c3d4e5f60718293a4b5c6d7e8f90", 1000),
               ("x", "ffffffffffffffffffffffffffffffff", 1)]

    def test_matches_independent_implementations(self) -> None:
        for password, salt, n in self.VECTORS:
            expected = independent_upstream_hash(password, salt, n)
            self.assertEqual(legacy_hash(password, salt, n), expected)
            node = node_upstream_hash(password, salt, n)
            if node is not None:
                self.assertEqual(node, expected)
            if n == 1000:
                self.assertEqual(len(expected), 173)
            self.assertTrue(verify_legacy(expected, password))
            self.assertFalse(verify_legacy(expected, password + "!"))

    def test_malformed_and_hostile_hashes(self) -> None:
        good = legacy_hash("pw", "abc")
        for bad in ("", "sha512", "sha512$abc", "md5$abc$1000$00", "sha512$$1000$00", "sha512$abc$99999999$00",
                    "sha512$abc$-5$00", "sha512$abc$1e9$00", good.replace("$1000$", "$10001$")):
            self.assertFalse(verify_legacy(bad, "pw"), bad)
        self.assertFalse(verify_legacy(good, ""))
        with self.assertRaises(LegacyHashError):
            parse_legacy("sha512$abc$10001$00")
        # Upstream's three-part form means one iteration.
        one = legacy_hash("pw", "abc", 1)
        algo, salt, _, digest = one.split("$")
        self.assertTrue(verify_legacy(f"{algo}${salt}${digest}", "pw"))


class PasswordTests(unittest.TestCase):
    def setUp(self) -> None:
        self.passwords = Passwords(reactor, **FAST_ARGON2)
        self.addCleanup(self.passwords.stop)

    async def test_argon2id_round_trip(self) -> None:
        h = await self.passwords.hash("s3cret-Pass")
        self.assertTrue(h.startswith("$argon2id$"))
        self.assertEqual((await self.passwords.verify(h, "s3cret-Pass")).ok, True)
        self.assertFalse((await self.passwords.verify(h, "s3cret-pass")).ok)
        self.assertFalse((await self.passwords.verify(h, "")).ok)
        self.assertFalse((await self.passwords.verify(None, "x")).ok)
        self.assertFalse((await self.passwords.verify("$argon2id$garbage", "x")).ok)

    async def test_default_cost_is_argon2id_and_needs_no_rehash(self) -> None:
        strong = Passwords(reactor)
        self.addCleanup(strong.stop)
        h = await strong.hash("another-Pass1")
        self.assertIn("m=65536,t=3,p=4", h)
        verdict = await strong.verify(h, "another-Pass1")
        self.assertEqual((verdict.ok, verdict.needs_rehash), (True, False))
        # A cheap hash verifies but asks to be upgraded.
        cheap = await self.passwords.hash("another-Pass1")
        verdict = await strong.verify(cheap, "another-Pass1")
        self.assertEqual((verdict.ok, verdict.needs_rehash), (True, True))

    async def test_legacy_verifies_and_wants_rehash(self) -> None:
        stored = independent_upstream_hash("old-Password9", "0123456789abcdef0123456789abcdef", 1000)
        verdict = await self.passwords.verify(stored, "old-Password9")
        self.assertEqual((verdict.ok, verdict.needs_rehash), (True, True))
        self.assertFalse((await self.passwords.verify(stored, "wrong")).ok)

    async def test_dummy_verify_runs(self) -> None:
        await self.passwords.dummy_verify()

    def test_policy(self) -> None:
        self.assertIsNone(password_problem("a-Good-passphrase"))
        self.assertIn("at least 8", password_problem("short") or "")
        self.assertIn("at most 64", password_problem("x" * 65) or "")
        self.assertIn("too easy", password_problem("password123") or "")
        self.assertIn("too easy", password_problem("aaaaaaaaaaaa") or "")
        self.assertIn("email", password_problem("bob@example.com", email="bob@example.com") or "")
        self.assertIn("string", password_problem(12345678) or "")


class CookieTests(unittest.TestCase):
    def test_names_with_base_path(self) -> None:
        plain = CookieNames.for_base_path("/")
        self.assertEqual((plain.remember_me, plain.api_key, plain.account_id), ("remember_me", "api_key", "account_id"))
        based = CookieNames.for_base_path("/abc/port/5000")
        self.assertEqual(based.remember_me, "%2Fabc%2Fport%2F5000remember_me")
        self.assertEqual(based.hub_password, "%2Fabc%2Fport%2F5000hub_password")
        self.assertEqual(based.sys, "sys")
        self.assertEqual(CookieNames.for_base_path("/x", "my_rm").remember_me, "my_rm")
        self.assertTrue(based.is_reserved("remember_me"))
        self.assertTrue(based.is_reserved("%2Fotherremember_me"))
        self.assertTrue(based.is_reserved("%2FotherAPI_KEY"))
        self.assertFalse(based.is_reserved("_xsrf"))
        for name in ('"remember_me"', " __Host-Remember_Me ", "__secure-__HOST-api_key", "SYS", "my_rm"):
            self.assertTrue(CookieNames.for_base_path("/x", "my_rm").is_reserved(name), name)

    def test_secure_names_and_what_is_read(self) -> None:
        from cocalc_hub.auth.cookies import set_cookie_names

        names = CookieNames.for_base_path("/")
        tls = names.browser(True)
        self.assertEqual((tls.remember_me, tls.account_id, tls.csrf, tls.api_key),
                         ("__Host-remember_me", "__Host-account_id", "__Host-csrf_token", "api_key"))
        self.assertIs(names.browser(False), names)
        jar = {"remember_me": "planted", "__Host-remember_me": "real", "api_key": "k"}
        self.assertEqual(names.effective(jar, True), {"remember_me": "real", "api_key": "k"})
        self.assertEqual(names.effective({"remember_me": "planted"}, True), {})
        self.assertEqual(names.effective({"remember_me": "plain"}, False), {"remember_me": "plain"})
        self.assertEqual(set_cookie_names("=remember_me=x; Path=/"), ["remember_me"])
        self.assertEqual(set_cookie_names("remember_me"), ["remember_me"])
        self.assertEqual(set_cookie_names("a=1, b=2"), ["a", "b"])
        self.assertIsNone(set_cookie_names("a=\x01"))

    def test_remember_me_format_and_hash(self) -> None:
        rm = new_remember_me()
        m = re.fullmatch(r"sha512\$([0-9a-f]{32})\$1000\$([0-9a-f-]{36})", rm.cookie_value)
        assert m is not None
        salt, session_id = m.groups()
        self.assertEqual(len(rm.cookie_value), 81)
        full = independent_upstream_hash(session_id, salt, 1000)
        self.assertEqual(rm.session_hash, full[:127])
        self.assertEqual(remember_me_hash(rm.cookie_value), rm.session_hash)
        self.assertNotEqual(new_remember_me().cookie_value, rm.cookie_value)

    def test_remember_me_hostile_values(self) -> None:
        for bad in ("", "abc", "sha512$x$1000", "sha512$salt$100000$id", "md5$s$1$id", "sha512$s$1000$",
                    "sha512$" + "s" * 500 + "$1000$id", "a$b$c$d$e"):
            with self.assertRaises(LegacyHashError, msg=bad):
                remember_me_hash(bad)

    def test_parse_cookie_header(self) -> None:
        self.assertEqual(parse_cookie_header(b"a=1; b = 2 ;c=3=4; flag; a=9; d=%41%20b; e=%zz"),
                         {"a": "1", "b": "2", "c": "3=4", "d": "A b", "e": "%zz"})
        self.assertEqual(parse_cookie_header(None), {})
        self.assertEqual(parse_cookie_header("x=" + "y" * 20000)["x"], "y" * (16 * 1024 - 2))

    def test_set_cookie_attributes(self) -> None:
        expire = utcnow() + timedelta(days=180)
        header = set_cookie("remember_me", "v", expires=expire, max_age=15552000, http_only=True,
                            same_site="strict", secure=True).decode()
        self.assertTrue(header.startswith("remember_me=v; Path=/; Expires="))
        self.assertIn("GMT; Max-Age=15552000; HttpOnly; SameSite=Strict; Secure", header)
        plain = set_cookie("a", "b", expires=None, max_age=None, http_only=False, same_site=None, secure=False)
        self.assertEqual(plain, b"a=b; Path=/")
        self.assertIn(b"Max-Age=0", clear_cookie("remember_me"))


class ApiKeyFormatTests(unittest.TestCase):
    def test_base62_like_npm(self) -> None:
        self.assertEqual(apikeys.base62_encode(0), "000000")
        self.assertEqual(apikeys.base62_encode(61), "00000Z")
        self.assertEqual(apikeys.base62_encode(62), "000010")
        self.assertEqual(apikeys.base62_encode(10), "00000a")
        self.assertEqual(apikeys.base62_decode("00000A"), 36)
        for n in (1, 12345, 2147483647):
            self.assertEqual(apikeys.base62_decode(apikeys.base62_encode(n)), n)

    def test_key_shape(self) -> None:
        secret, stored, trunc = apikeys.secret_for_id(42)
        self.assertRegex(secret, r"^sk-[0-9A-Za-z]{16}00000G$")
        self.assertEqual(len(secret), 25)
        self.assertEqual(trunc, "sk-...00000G")
        self.assertEqual(apikeys.key_id(secret), 42)
        self.assertTrue(apikeys.matches(stored, secret))
        self.assertFalse(apikeys.matches(stored, secret[:-1] + "H"))
        self.assertEqual(len(stored), 173)

    def test_key_id_refuses_junk(self) -> None:
        for junk in ("", "sk-", "sk-abc", "pk-aaaaaaaaaaaaaaaa000001", "sk-aaaaaaaaaaaaaaaa00000!",
                     "sk-aaaaaaaaaaaaaaaa000000", "sk-" + "a" * 300, "sk-aaaaaaaaaaaaaaaaZZZZZZ"):
            self.assertIsNone(apikeys.key_id(junk), junk)

    def test_authorization_header(self) -> None:
        # (Only "sk-" keys and the hub's own secret are hub credentials; see Authenticator.identify.)
        import base64

        self.assertEqual(parse_authorization(b"Bearer sk-abc"), "sk-abc")
        self.assertEqual(parse_authorization("bearer   sk-abc  "), "sk-abc")
        basic = base64.b64encode(b"sk-abc:").decode()
        self.assertEqual(parse_authorization(f"Basic {basic}"), "sk-abc")
        for junk in (None, b"", b"Bearer", b"Token x", b"Basic !!!", b"Basic " + base64.b64encode(b"\xff\xfe")):
            self.assertIsNone(parse_authorization(junk))


RULES = ((60, 5), (3600, 50))


class ThrottleTests(unittest.TestCase):
    def test_windows_with_fake_clock(self) -> None:
        clock = Clock()
        t = Throttle(clock, RULES)
        for _ in range(5):
            self.assertFalse(t.blocked("a@b"))
            t.record("a@b")
        self.assertTrue(t.blocked("a@b"))
        self.assertEqual(t.retry_after("a@b"), 60)
        self.assertEqual(t.retry_after("other@b"), 0)
        self.assertFalse(t.blocked("other@b"))
        clock.advance(61)
        self.assertFalse(t.blocked("a@b"))
        for _ in range(44):
            t.record("a@b")
            clock.advance(13)  # stay under 5 per minute
        self.assertFalse(t.blocked("a@b"))
        t.record("a@b")  # 50 within the hour
        clock.advance(13)
        self.assertTrue(t.blocked("a@b"))
        clock.advance(3600)
        self.assertFalse(t.blocked("a@b"))

    def test_bounded_memory(self) -> None:
        t = Throttle(Clock(), RULES, max_keys=10)
        for i in range(100):
            t.record(f"k{i}")
        self.assertEqual(len(t._events), 10)

    def test_backoff_grows_and_is_forgotten(self) -> None:
        clock = Clock()
        b = Backoff(clock, free=4, first=30, cap=900, forget=86400)
        key = ("a@b", "192.0.2.1")
        for _ in range(4):
            self.assertEqual(b.wait(key), 0)
            b.record(key)
        self.assertEqual(b.wait(key), 30)
        clock.advance(30)
        self.assertEqual(b.wait(key), 0)
        b.record(key)
        self.assertEqual(b.wait(key), 60)
        for _ in range(10):
            b.record(key)
        self.assertEqual(b.wait(key), 900, "capped")
        self.assertEqual(b.wait(("a@b", "192.0.2.2")), 0, "another address is not delayed")
        b.reset(key)
        self.assertEqual(b.wait(key), 0)
        b.record(key)
        clock.advance(86400)
        b.record(key)
        self.assertEqual(b._failures[key][0], 1, "failures a day old are forgotten")

    def test_address_keys_and_wait_text(self) -> None:
        self.assertEqual(address_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("2001:db8:1:2::9"), address_key("2001:db8:1:2:ffff::1"))
        self.assertEqual(address_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(address_key("local"), "local")
        self.assertEqual((wait_text(1), wait_text(30.2), wait_text(120), wait_text(899)),
                         ("1 second", "31 seconds", "2 minutes", "15 minutes"))


class CsrfTests(unittest.TestCase):
    def test_tokens(self) -> None:
        c = Csrf("secret-one")
        tok = c.token("session-a")
        self.assertTrue(c.check("session-a", tok))
        self.assertTrue(c.check("session-a", tok.encode()))
        self.assertFalse(c.check("session-b", tok))
        self.assertFalse(c.check("session-a", ""))
        self.assertFalse(c.check("session-a", None))
        self.assertFalse(c.check("session-a", tok[:-1] + "x"))
        self.assertFalse(Csrf("secret-two").check("session-a", tok))
        self.assertFalse(c.check("session-a", "ünicode"))
