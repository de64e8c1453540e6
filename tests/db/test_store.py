"""One Store test suite, run against SQLite and against PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from twisted.internet import defer
from twisted.trial import unittest

from cocalc_hub.db import Conflict, normalize_uuid
from cocalc_hub.db.backend import migrations
from cocalc_hub.db.sql import SqlStore
from tests.db.support import open_store

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def uid() -> str:
    return str(uuid.uuid4())


class StoreSuite:
    """Mixed into a TestCase with ``kind`` set."""

    kind = "abstract"
    store: SqlStore

    async def setUp(self) -> None:  # type: ignore[override]
        self.store = await open_store(self, self.kind)  # type: ignore[arg-type]

    async def account(self, email: str | None = None, **kw: object):  # type: ignore[no-untyped-def]
        return await self.store.create_account(email_address=email or f"{uid()}@example.com",
                                               password_hash="h", **kw)  # type: ignore[arg-type]

    # schema ----------------------------------------------------------------------

    async def test_schema_version_and_idempotent_prepare(self) -> None:
        latest = len(migrations(self.store.d.name))
        self.assertEqual(await self.store.schema_version(), latest)
        self.assertEqual(self.store.prepare(), latest)
        await self.store.ping()

    # accounts --------------------------------------------------------------------

    async def test_create_and_get_account(self) -> None:
        a = await self.store.create_account(email_address="ann@example.com", password_hash="hash1",
                                            first_name="Ann", last_name="Lee", now=T0)
        self.assertEqual(a.email_address, "ann@example.com")
        self.assertEqual((a.first_name, a.last_name), ("Ann", "Lee"))
        self.assertEqual(a.created, T0)
        self.assertEqual(a.created.tzinfo, UTC)
        self.assertEqual(a.groups, ())
        self.assertFalse(a.banned)
        self.assertEqual(normalize_uuid(a.account_id), a.account_id)
        self.assertEqual(await self.store.get_account(a.account_id), a)
        self.assertEqual(await self.store.get_account_by_email("ann@example.com"), a)
        self.assertIsNone(await self.store.get_account_by_email("nobody@example.com"))
        self.assertIsNone(await self.store.get_account(uid()))

    async def test_duplicate_email_conflicts(self) -> None:
        await self.account("dup@example.com")
        with self.assertRaises(Conflict):
            await self.account("dup@example.com")
        self.assertEqual(await self.store.count_accounts(), 1)

    async def test_no_account_is_admin_implicitly(self) -> None:
        first = await self.account()
        self.assertFalse(first.is_admin)
        self.assertEqual(await self.store.count_admins(), 0)
        admin = await self.account(groups=("admin",))
        self.assertEqual(await self.store.count_admins(), 1)
        await self.store.set_banned(admin.account_id, True)
        self.assertEqual(await self.store.count_admins(), 0, "a banned admin does not count")

    async def test_setup_token_works_once_and_expires(self) -> None:
        a = await self.account()
        await self.store.create_setup_token("h" * 64, T0 + timedelta(hours=1))
        self.assertTrue(await self.store.setup_token_valid("h" * 64, T0))
        self.assertFalse(await self.store.setup_token_valid("h" * 64, T0 + timedelta(hours=1)), "expired")
        self.assertFalse(await self.store.redeem_setup_token("h" * 64, a.account_id, T0 + timedelta(hours=2)))
        self.assertFalse(await self.store.redeem_setup_token("x" * 64, a.account_id, T0))
        self.assertTrue(await self.store.redeem_setup_token("h" * 64, a.account_id, T0))
        self.assertTrue((await self.store.get_account(a.account_id)).is_admin)  # type: ignore[union-attr]
        self.assertFalse(await self.store.redeem_setup_token("h" * 64, a.account_id, T0), "single use")
        self.assertFalse(await self.store.setup_token_valid("h" * 64, T0))

    async def test_setup_token_redeemed_once_under_concurrency(self) -> None:
        accounts = [await self.account() for _ in range(8)]
        await self.store.create_setup_token("c" * 64, T0 + timedelta(hours=1))
        won = await defer.gatherResults([defer.ensureDeferred(self.store.redeem_setup_token("c" * 64, a.account_id,
                                                                                              T0))
                                         for a in accounts])
        self.assertEqual(sum(won), 1)
        self.assertEqual(await self.store.count_admins(), 1)

    async def test_list_count_groups_ban_touch(self) -> None:
        a = await self.account(now=T0)
        b = await self.account(now=T0 + timedelta(seconds=1))
        self.assertEqual([x.account_id for x in await self.store.list_accounts()], [a.account_id, b.account_id])
        self.assertEqual([x.account_id for x in await self.store.list_accounts(limit=1, offset=1)], [b.account_id])
        self.assertEqual(await self.store.count_accounts(), 2)
        await self.store.set_groups(a.account_id, ("admin", "x"))
        await self.store.set_banned(b.account_id, True)
        await self.store.touch_account(a.account_id, T0)
        a2 = await self.store.get_account(a.account_id)
        b2 = await self.store.get_account(b.account_id)
        assert a2 is not None and b2 is not None
        self.assertEqual(a2.groups, ("admin", "x"))
        self.assertTrue(a2.is_admin)
        self.assertEqual(a2.last_active, T0)
        self.assertTrue(b2.banned)

    async def test_password_hash_compare_and_set(self) -> None:
        a = await self.account()
        self.assertTrue(await self.store.set_password_hash(a.account_id, "new", expected="h"))
        self.assertFalse(await self.store.set_password_hash(a.account_id, "newer", expected="h"))
        got = await self.store.get_account(a.account_id)
        assert got is not None
        self.assertEqual(got.password_hash, "new")

    async def test_unicode_and_long_values(self) -> None:
        a = await self.store.create_account(email_address="zoë@exämple.com", password_hash="x" * 173,
                                            first_name="Zoë 🎉", last_name="L" * 254)
        got = await self.store.get_account_by_email("zoë@exämple.com")
        assert got is not None
        self.assertEqual(got.first_name, "Zoë 🎉")
        self.assertEqual(got.password_hash, "x" * 173)
        self.assertEqual(got.account_id, a.account_id)

    # sessions --------------------------------------------------------------------

    async def test_sessions(self) -> None:
        a = await self.account()
        h1, h2, h3 = ("sha512$" + "a" * 120, "sha512$" + "b" * 120, "sha512$" + "c" * 120)
        for h in (h1, h2, h3):
            await self.store.create_session(h, a.account_id, T0 + timedelta(days=1))
        s = await self.store.get_session(h1)
        assert s is not None
        self.assertEqual((s.hash, s.account_id, s.expire), (h1, a.account_id, T0 + timedelta(days=1)))
        self.assertTrue(await self.store.delete_session(h1))
        self.assertFalse(await self.store.delete_session(h1))
        self.assertIsNone(await self.store.get_session(h1))
        self.assertEqual(await self.store.delete_sessions(a.account_id, keep_hash=h2), 1)
        self.assertIsNotNone(await self.store.get_session(h2))
        self.assertIsNone(await self.store.get_session(h3))
        self.assertEqual(await self.store.delete_sessions(a.account_id), 1)

    async def test_delete_expired(self) -> None:
        a = await self.account()
        await self.store.create_session("old", a.account_id, T0 - timedelta(seconds=1))
        await self.store.create_session("new", a.account_id, T0 + timedelta(seconds=1))
        await self.store.create_api_key(account_id=a.account_id, project_id=None, name="k",
                                        expire=T0 - timedelta(days=1), secret_for_id=lambda i: ("s", "h", "t"))
        self.assertEqual(await self.store.delete_expired(T0), 2)
        self.assertIsNone(await self.store.get_session("old"))
        self.assertIsNotNone(await self.store.get_session("new"))

    # API keys ---------------------------------------------------------------------

    async def test_api_keys(self) -> None:
        a = await self.account()
        other = await self.account()
        key, secret = await self.store.create_api_key(
            account_id=a.account_id, project_id=None, name="laptop", expire=None, now=T0,
            secret_for_id=lambda i: (f"sk-secret{i}", f"hash{i}", f"sk-...{i:06d}"))
        self.assertEqual(secret, f"sk-secret{key.id}")
        self.assertEqual((key.hash, key.trunc, key.name, key.created), (f"hash{key.id}", f"sk-...{key.id:06d}",
                                                                        "laptop", T0))
        self.assertEqual(await self.store.get_api_key(key.id), key)
        pid = uid()
        key2, _ = await self.store.create_api_key(account_id=a.account_id, project_id=pid, name="p",
                                                  expire=T0 + timedelta(days=3),
                                                  secret_for_id=lambda i: ("s", "h", "t"))
        self.assertGreater(key2.id, key.id)
        self.assertEqual(key2.project_id, pid)
        self.assertEqual([k.id for k in await self.store.list_api_keys(a.account_id)], [key.id, key2.id])
        self.assertEqual(await self.store.list_api_keys(other.account_id), [])
        self.assertTrue(await self.store.update_api_key(a.account_id, key.id, name="renamed", expire=T0))
        self.assertFalse(await self.store.update_api_key(other.account_id, key.id, name="stolen"))
        got = await self.store.get_api_key(key.id)
        assert got is not None
        self.assertEqual((got.name, got.expire), ("renamed", T0))
        await self.store.update_api_key(a.account_id, key.id, clear_expire=True)
        await self.store.touch_api_key(key.id, T0)
        got = await self.store.get_api_key(key.id)
        assert got is not None
        self.assertEqual((got.expire, got.last_active), (None, T0))
        self.assertFalse(await self.store.delete_api_key(key.id, account_id=other.account_id))
        self.assertTrue(await self.store.delete_api_key(key.id, account_id=a.account_id))
        self.assertIsNone(await self.store.get_api_key(key.id))

    async def test_api_key_rolled_back_if_secret_fails(self) -> None:
        a = await self.account()

        def broken(i: int) -> tuple[str, str, str]:
            raise RuntimeError("no entropy")

        with self.assertRaises(RuntimeError):
            await self.store.create_api_key(account_id=a.account_id, project_id=None, name="x", expire=None,
                                            secret_for_id=broken)
        self.assertEqual(await self.store.list_api_keys(a.account_id), [])

    # projects -------------------------------------------------------------------------

    async def test_projects(self) -> None:
        owner = await self.account()
        friend = await self.account()
        p = await self.store.create_project(owner_id=owner.account_id, title="T", description="D", now=T0)
        self.assertEqual(p.users, {owner.account_id: {"group": "owner"}})
        self.assertEqual(p.owner_id, owner.account_id)
        self.assertEqual(p.state_name, "opened")
        self.assertEqual((p.title, p.description, p.created, p.last_edited), ("T", "D", T0, T0))
        self.assertEqual(await self.store.get_project(p.project_id), p)
        self.assertEqual(await self.store.project_group(p.project_id, owner.account_id), (True, "owner"))
        self.assertEqual(await self.store.project_group(p.project_id, friend.account_id), (True, None))
        self.assertEqual(await self.store.project_group(uid(), friend.account_id), (False, None))
        self.assertTrue(await self.store.set_project_user(p.project_id, friend.account_id, "collaborator"))
        self.assertEqual(await self.store.project_group(p.project_id, friend.account_id), (True, "collaborator"))
        self.assertEqual([x.project_id for x in await self.store.list_projects(friend.account_id)], [p.project_id])
        self.assertTrue(await self.store.update_project(p.project_id, title="New", description=None))
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertEqual((got.title, got.description), ("New", "D"))
        self.assertTrue(await self.store.remove_project_user(p.project_id, friend.account_id))
        self.assertFalse(await self.store.remove_project_user(p.project_id, friend.account_id))
        self.assertEqual(await self.store.list_projects(friend.account_id), [])
        self.assertTrue(await self.store.delete_project(p.project_id))
        self.assertFalse(await self.store.delete_project(p.project_id))
        self.assertEqual(await self.store.list_projects(owner.account_id), [])
        self.assertEqual(len(await self.store.list_projects(owner.account_id, include_deleted=True)), 1)
        self.assertEqual(await self.store.project_group(p.project_id, owner.account_id), (False, None))
        self.assertFalse(await self.store.set_project_user(p.project_id, friend.account_id, "collaborator"))
        self.assertFalse(await self.store.update_project(p.project_id, title="x"))

    async def test_list_projects_order_and_all(self) -> None:
        owner = await self.account()
        p1 = await self.store.create_project(owner_id=owner.account_id, now=T0)
        p2 = await self.store.create_project(owner_id=owner.account_id, now=T0 + timedelta(seconds=1))
        self.assertEqual([p.project_id for p in await self.store.list_projects(owner.account_id)],
                         [p2.project_id, p1.project_id])
        await self.store.touch_project(p1.project_id, owner.account_id, now=T0 + timedelta(seconds=5))
        self.assertEqual([p.project_id for p in await self.store.list_projects(owner.account_id)],
                         [p1.project_id, p2.project_id])
        self.assertEqual([p.project_id for p in await self.store.list_all_projects()], [p1.project_id, p2.project_id])
        with self.assertRaises(Conflict):
            await self.store.create_project(owner_id=owner.account_id, project_id=p1.project_id)

    async def test_concurrent_collaborator_edits_lose_nothing(self) -> None:
        owner = await self.account()
        p = await self.store.create_project(owner_id=owner.account_id)
        friends = [uid() for _ in range(12)]
        await defer.gatherResults([defer.ensureDeferred(self.store.set_project_user(p.project_id, f, "collaborator"))
                                   for f in friends])
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertEqual(set(got.users), {owner.account_id, *friends})
        await defer.gatherResults([defer.ensureDeferred(self.store.remove_project_user(p.project_id, f))
                                   for f in friends[:6]])
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertEqual(set(got.users), {owner.account_id, *friends[6:]})

    async def test_state_compare_and_set(self) -> None:
        owner = await self.account()
        p = await self.store.create_project(owner_id=owner.account_id)
        results = await defer.gatherResults([
            defer.ensureDeferred(self.store.set_project_state(p.project_id, {"state": "starting"},
                                                              expect=("opened", "error")))
            for _ in range(10)])
        self.assertEqual(sum(results), 1)
        self.assertTrue(await self.store.set_project_state(
            p.project_id, {"state": "running", "time": "t"}, expect=("starting",), status={"pid": 5},
            secret_token="tok", last_started=T0))
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertEqual((got.state_name, got.status, got.secret_token, got.last_started),
                         ("running", {"pid": 5}, "tok", T0))
        self.assertEqual([x.project_id for x in await self.store.projects_in_states(("running",))], [p.project_id])
        self.assertEqual(await self.store.projects_in_states(("opened",)), [])
        self.assertTrue(await self.store.set_project_state(p.project_id, {"state": "opened"}, clear_secret=True))
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertIsNone(got.secret_token)

    async def test_touch_and_settings(self) -> None:
        owner = await self.account()
        p = await self.store.create_project(owner_id=owner.account_id, now=T0)
        await self.store.touch_project(p.project_id, owner.account_id, now=T0 + timedelta(hours=1))
        self.assertTrue(await self.store.set_project_settings(p.project_id, {"idle_timeout": 60}))
        self.assertTrue(await self.store.set_project_settings(p.project_id, {"memory": 1000}))
        got = await self.store.get_project(p.project_id)
        assert got is not None
        self.assertEqual(got.last_edited, T0 + timedelta(hours=1))
        self.assertEqual(dict(got.settings), {"idle_timeout": 60, "memory": 1000})
        self.assertFalse(await self.store.set_project_settings(uid(), {"x": 1}))

    # settings and registration tokens --------------------------------------------------

    async def test_server_settings(self) -> None:
        self.assertEqual(await self.store.get_settings(), {})
        await self.store.set_setting("email_signup", "no")
        await self.store.set_setting("email_signup", "yes", readonly=True)
        await self.store.set_setting("site_name", "Ünï")
        self.assertEqual(await self.store.get_settings(), {"email_signup": "yes", "site_name": "Ünï"})

    async def test_registration_tokens(self) -> None:
        self.assertEqual(await self.store.registration_tokens_in_force(), 0)
        await self.store.create_registration_token("abc", descr="d", limit=3)
        await self.store.create_registration_token("old", expires=T0 - timedelta(days=1))
        with self.assertRaises(Conflict):
            await self.store.create_registration_token("abc")
        self.assertEqual(await self.store.registration_tokens_in_force(), 2)
        results = await defer.gatherResults([
            defer.ensureDeferred(self.store.redeem_registration_token("abc", T0)) for _ in range(8)])
        self.assertEqual(sum(results), 3)
        self.assertFalse(await self.store.redeem_registration_token("old", T0))
        self.assertFalse(await self.store.redeem_registration_token("nope", T0))
        self.assertEqual(await self.store.registration_tokens_in_force(), 2)
        self.assertTrue(await self.store.disable_registration_token("old"))
        self.assertFalse(await self.store.disable_registration_token("nope"))
        self.assertEqual(await self.store.registration_tokens_in_force(), 1)
        tokens = await self.store.list_registration_tokens()
        self.assertEqual([(t["token"], t["counter"], t["disabled"]) for t in tokens],
                         [("abc", 3, False), ("old", 0, True)])
        # A use given back (no account was made) may be redeemed again; never below zero.
        await self.store.return_registration_token("abc")
        self.assertTrue(await self.store.redeem_registration_token("abc", T0))
        self.assertFalse(await self.store.redeem_registration_token("abc", T0))
        for _ in range(5):
            await self.store.return_registration_token("old")
        await self.store.return_registration_token("nope")
        tokens = await self.store.list_registration_tokens()
        self.assertEqual([t["counter"] for t in tokens], [3, 0])


class SQLiteStoreTests(StoreSuite, unittest.TestCase):
    kind = "sqlite"

    async def test_file_is_wal_and_survives_reopen(self) -> None:
        import sqlite3

        path = self.store.backend.path  # type: ignore[attr-defined]
        a = await self.account("keep@example.com")
        await self.store.close()
        conn = sqlite3.connect(path)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        conn.close()
        await self.store.open()
        got = await self.store.get_account_by_email("keep@example.com")
        assert got is not None
        self.assertEqual(got.account_id, a.account_id)


class PostgresStoreTests(StoreSuite, unittest.TestCase):
    kind = "postgres"
