"""The revocations table and its feed, on SQLite and PostgreSQL: every change that takes
access away is announced, and a second store on the same database (another process)
hears of it within a second."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from cocalc_hub.db.revocations import RevocationFeed
from cocalc_hub.db.sql import SqlStore
from tests.db.support import fresh_postgres_url
from tests.support import until


class RevocationSuite:
    kind = "abstract"

    async def setUp(self) -> None:  # type: ignore[override]
        case: Any = self
        if self.kind == "sqlite":
            from cocalc_hub.db.sqlite import SQLiteBackend

            path = Path(case.mktemp()).resolve() / "hub.db"
            self.stores = [SqlStore(SQLiteBackend(path, reactor)) for _ in range(2)]
        else:
            from cocalc_hub.db.postgres import PostgresBackend

            url = await fresh_postgres_url(case)
            self.stores = [SqlStore(PostgresBackend(url, reactor)) for _ in range(2)]
        for store in self.stores:
            await threads.deferToThread(store.prepare)
            await store.open()
            case.addCleanup(store.close)
        self.store = self.stores[0]

    async def test_each_change_that_takes_access_away_is_announced(self) -> None:
        case: Any = self
        s = self.store
        a = await s.create_account(email_address="a@example.com", password_hash="h")
        b = await s.create_account(email_address="b@example.com", password_hash="h")
        p = await s.create_project(owner_id=a.account_id)
        await s.set_project_user(p.project_id, b.account_id, "collaborator")  # access given: no row
        await s.create_session("h1", b.account_id, a.created.replace(year=2100))
        await s.create_session("h2", b.account_id, a.created.replace(year=2100))
        await s.set_password_hash(b.account_id, "h-rehashed", expected="h")  # same password: no row
        start = await s.last_revocation()
        case.assertEqual(start, 0)
        key, _ = await s.create_api_key(account_id=b.account_id, project_id=None, name="k", expire=None,
                                        secret_for_id=lambda i: (f"sk-{i}", "hash", "sk-…"))
        await s.delete_session("h1")
        await s.delete_session("h1")  # nothing deleted: no row
        await s.set_password_hash(b.account_id, "new")
        await s.delete_sessions(b.account_id)
        await s.delete_api_key(key.id)
        await s.set_banned(b.account_id, True)
        await s.set_groups(b.account_id, ())
        await s.set_project_user(p.project_id, b.account_id, "viewer")
        await s.remove_project_user(p.project_id, b.account_id)
        await s.delete_project(p.project_id)
        rows = await s.revocations_since(start)
        case.assertEqual([(kind, value) for _, kind, value in rows], [
            ("session", "h1"), ("account", b.account_id), ("account", b.account_id), ("key", str(key.id)),
            ("account", b.account_id), ("account", b.account_id), ("project", p.project_id),
            ("project", p.project_id), ("project", p.project_id)])
        case.assertEqual([seq for seq, _, _ in rows], sorted(seq for seq, _, _ in rows))
        case.assertEqual(await s.revocations_since(rows[3][0]), rows[4:])
        case.assertEqual(await s.last_revocation(), rows[-1][0])

    async def test_another_writer_reaches_the_feed_within_a_second(self) -> None:
        case: Any = self
        got: list[tuple[str, str]] = []
        feed = RevocationFeed(self.stores[0], reactor, got.extend)
        feed.startService()
        case.addCleanup(feed.stopService)
        await until(lambda: feed.seq is not None, what="the feed to start")
        other = self.stores[1]  # another hub process or cocalc-hub-admin
        account = await other.create_account(email_address=f"{uuid.uuid4()}@example.com", password_hash="h")
        for n in range(3):
            await other.set_banned(account.account_id, True)
            since = reactor.seconds()
            await until(lambda n=n: len(got) == n + 1, timeout=1.0, what=f"revocation {n + 1} to arrive")
            case.assertLess(reactor.seconds() - since, 1.0)
        case.assertEqual(got, [("account", account.account_id)] * 3)


class SQLiteRevocationTests(RevocationSuite, unittest.TestCase):
    kind = "sqlite"


class PostgresRevocationTests(RevocationSuite, unittest.TestCase):
    kind = "postgres"


class PostgresOrderTests(unittest.TestCase):
    """PostgreSQL hands out ``seq`` at INSERT, not at COMMIT: the feed must still see every row."""

    async def setUp(self) -> None:  # type: ignore[override]
        from cocalc_hub.db.postgres import PostgresBackend

        self.url = await fresh_postgres_url(self)
        self.stores = [SqlStore(PostgresBackend(self.url, reactor)) for _ in range(2)]
        for store in self.stores:
            await threads.deferToThread(store.prepare)
            await store.open()
            self.addCleanup(store.close)

    def _waiting_for_a_lock(self) -> bool:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        return bool(row and row[0])

    async def test_a_revocation_committed_after_a_later_one_is_delivered(self) -> None:
        import psycopg

        from cocalc_hub.db.backend import Tx

        got: list[tuple[str, str]] = []
        feed = RevocationFeed(self.stores[0], reactor, got.extend)
        feed.startService()
        self.addCleanup(feed.stopService)
        await until(lambda: feed.seq is not None, what="the feed to start")
        writer = self.stores[1]
        account = await writer.create_account(email_address="a@example.com", password_hash="h")
        # Writer A (another hub process) runs the very statements every revoking change runs,
        # and has not committed yet when writer B revokes something else.
        held = psycopg.connect(self.url)
        self.addCleanup(held.close)
        writer._revoked(Tx(held.cursor(), writer.d), "session", "first")
        second = defer.ensureDeferred(writer.set_banned(account.account_id, True))
        await until(lambda: second.called or self._waiting_for_a_lock(), what="writer B to commit or wait")
        if second.called:  # B committed first: the feed reads it before A commits
            await until(lambda: ("account", account.account_id) in got, what="B's revocation to arrive")
        held.commit()
        await second
        await until(lambda: len(got) == 2, timeout=3.0, what=f"both revocations to arrive (got {got})")
        self.assertEqual(got, [("session", "first"), ("account", account.account_id)])

    async def test_while_notifications_are_down_revocations_still_arrive_within_a_second(self) -> None:
        got: list[tuple[str, str]] = []
        from cocalc_hub.db import postgres

        # LISTEN keeps failing (the database itself still answers the feed's reads).
        self.patch(postgres, "REVOCATIONS_CHANNEL", "not a channel")
        feed = RevocationFeed(self.stores[0], reactor, got.extend)
        feed.startService()
        self.addCleanup(feed.stopService)
        await until(lambda: feed.seq is not None, what="the feed to start")
        account = await self.stores[1].create_account(email_address="b@example.com", password_hash="h")
        for n in range(3):
            await self.stores[1].set_banned(account.account_id, True)
            since = reactor.seconds()
            await until(lambda n=n: len(got) == n + 1, timeout=2.0, what=f"revocation {n + 1} to arrive")
            self.assertLess(reactor.seconds() - since, 1.0)
