"""Backends for the persist storage tests, each driven by a fake clock."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.trial import unittest

from cocalc_hub.conat.persist.storage.base import SetRequest, StorageBackend
from tests.db.support import PG_URL, require_postgres

if TYPE_CHECKING:
    from cocalc_hub.conat.persist.storage.postgres import PgStorageBackend

START = 1_700_000_000.0  # fake clock start, seconds


def req(raw: bytes = b"x", **kw: Any) -> SetRequest:
    return SetRequest(raw=raw, encoding=kw.pop("encoding", 1), **kw)


def fake_clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


def make_memory(case: unittest.TestCase, clock: Clock) -> StorageBackend:
    from cocalc_hub.conat.persist.storage.memory import MemoryStorageBackend

    return MemoryStorageBackend(reactor, clock.seconds)


def make_sqlite(case: unittest.TestCase, clock: Clock, root: Path | None = None) -> StorageBackend:
    from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend

    return SqliteStorageBackend(root or Path(case.mktemp()), reactor, clock.seconds)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())


async def pg_schema(case: unittest.TestCase) -> str:
    """A fresh schema for this test, dropped afterwards."""
    require_postgres()
    schema = "persist_test_" + uuid.uuid4().hex[:12]

    async def drop() -> None:
        await threads.deferToThread(_admin, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    case.addCleanup(drop)
    return schema


def make_postgres(case: unittest.TestCase, clock: Clock, schema: str, **kw: Any) -> PgStorageBackend:
    """A backend on ``schema``, closed before the schema is dropped (trial runs cleanups,
    last added first, before tearDown)."""
    from cocalc_hub.conat.persist.storage.postgres import PgStorageBackend
    from cocalc_hub.db.postgres import Connections

    backend = PgStorageBackend(PG_URL, reactor, clock.seconds, pool=Connections, schema=schema, **kw)
    case.addCleanup(backend.close)
    return backend
