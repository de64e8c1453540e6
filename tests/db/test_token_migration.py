"""Schema 003: projects' secret tokens kept in plain text by earlier versions become hashes
that still verify (on SQLite and on PostgreSQL), and nothing readable is left of them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial import unittest

from cocalc_hub.auth import project_tokens
from cocalc_hub.db import backend
from cocalc_hub.db.sql import SqlStore
from tests.db.support import fresh_postgres_url

PLAIN = "zOa_C-pYA9uvOtFAr7Bvc5l8A6r8oaJ-p1RszUUi3ig"


class MigrationSuite:
    kind = "abstract"

    async def make_store(self) -> SqlStore:
        raise NotImplementedError

    async def test_plain_tokens_become_hashes_that_verify(self) -> None:
        case: Any = self
        store = await self.make_store()
        module = importlib.import_module(f"cocalc_hub.db.{self.kind}")
        # The database as version 002 left it, with a project holding a plain token.
        case.patch(module, "migrations", lambda name: backend.migrations(name)[:2])
        case.assertEqual(await threads.deferToThread(store.prepare), 2)
        await store.open()
        account = await store.create_account(email_address="m@example.com", password_hash="x")
        project = await store.create_project(owner_id=account.account_id, title="old")
        other = await store.create_project(owner_id=account.account_id, title="never started")
        await store.set_project_state(project.project_id, {"state": "running"}, secret_token=PLAIN)
        await store.close()
        case.patch(module, "migrations", backend.migrations)
        case.assertEqual(await threads.deferToThread(store.prepare), len(backend.migrations(self.kind)))
        await store.open()
        case.addCleanup(store.close)
        stored = (await store.get_project(project.project_id)).secret_token  # type: ignore[union-attr]
        case.assertTrue(stored.startswith("sha256$$"), stored)
        case.assertNotIn(PLAIN, stored)
        case.assertTrue(project_tokens.verify(stored, PLAIN))
        case.assertFalse(project_tokens.verify(stored, PLAIN[:-1] + "x"))
        case.assertFalse(project_tokens.verify(stored, stored))
        # Not re-derivable: a hub stops such a project instead of adopting it.
        case.assertIsNone(project_tokens.recover(b"k" * 32, project.project_id, stored))
        case.assertIsNone((await store.get_project(other.project_id)).secret_token)  # type: ignore[union-attr]
        # New tokens: verify, re-derive with the key, and only with the key.
        token, fresh = project_tokens.new_token(b"k" * 32, project.project_id)
        await store.set_project_state(project.project_id, {"state": "running"}, secret_token=fresh)
        stored = (await store.get_project(project.project_id)).secret_token  # type: ignore[union-attr]
        case.assertNotIn(token, stored)
        case.assertTrue(project_tokens.verify(stored, token))
        case.assertEqual(project_tokens.recover(b"k" * 32, project.project_id, stored), token)
        case.assertIsNone(project_tokens.recover(b"j" * 32, project.project_id, stored))


class SQLiteMigrationTests(MigrationSuite, unittest.TestCase):
    kind = "sqlite"

    async def make_store(self) -> SqlStore:
        from cocalc_hub.db.sqlite import SQLiteBackend

        return SqlStore(SQLiteBackend(Path(self.mktemp()).resolve() / "hub.db", reactor))


class PostgresMigrationTests(MigrationSuite, unittest.TestCase):
    kind = "postgres"

    async def make_store(self) -> SqlStore:
        from cocalc_hub.db.postgres import PostgresBackend

        return SqlStore(PostgresBackend(await fresh_postgres_url(self), reactor))
