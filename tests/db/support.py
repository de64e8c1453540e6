"""Stores for tests: a fresh SQLite file or a fresh PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial import unittest

from cocalc_hub.db.sql import SqlStore
from tests.support import CI

PG_URL = os.environ.get("COCALC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

_pg_checked: list[str | None] = []


def postgres_problem() -> str | None:
    """None if the test PostgreSQL server answers, else why not (checked once)."""
    if not _pg_checked:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_checked.append(None)
        except Exception as e:  # any failure means "not available"
            _pg_checked.append(f"PostgreSQL at {PG_URL} is not reachable ({e}); set COCALC_TEST_POSTGRES")
    return _pg_checked[0]


def require_postgres() -> None:
    """Skip (or, under CI=true, fail) when PostgreSQL is not reachable."""
    problem = postgres_problem()
    if problem is not None:
        if CI:
            raise AssertionError(problem + " (CI=true: failing instead of skipping)")
        raise unittest.SkipTest(problem)


def _admin_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


async def fresh_postgres_url(case: unittest.TestCase) -> str:
    """Create an empty database for this test and drop it afterwards."""
    import psycopg

    require_postgres()
    name = "cocalc_test_" + uuid.uuid4().hex[:16]
    await threads.deferToThread(_admin_exec, f'CREATE DATABASE "{name}"')

    async def drop() -> None:
        await threads.deferToThread(_admin_exec, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    case.addCleanup(drop)
    params = psycopg.conninfo.conninfo_to_dict(PG_URL)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **params)


async def open_store(case: unittest.TestCase, kind: str) -> SqlStore:
    """A prepared and opened store of the given kind, closed when the test ends."""
    if kind == "sqlite":
        from cocalc_hub.db.sqlite import SQLiteBackend

        path = Path(case.mktemp()).resolve() / "hub.db"
        store = SqlStore(SQLiteBackend(path, reactor))
    else:
        from cocalc_hub.db.postgres import PostgresBackend

        store = SqlStore(PostgresBackend(await fresh_postgres_url(case), reactor))
    await threads.deferToThread(store.prepare)
    await store.open()
    case.addCleanup(store.close)
    return store


def store_options(kind: str, url: str | None) -> dict[str, Any]:
    """tap options selecting a backend for a whole test hub."""
    if kind == "sqlite":
        return {}
    assert url is not None
    return {"database": url}
