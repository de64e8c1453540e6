"""The hub's database: a Store interface with SQLite (default) and PostgreSQL backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from cocalc_hub.db.store import (
    Account,
    ApiKey,
    Conflict,
    DatabaseUnavailable,
    LoginSession,
    NotFound,
    Project,
    Store,
    StoreError,
    is_uuid,
    normalize_uuid,
    utcnow,
)
from cocalc_hub.settings import Settings, SettingsError

__all__ = ["Account", "ApiKey", "Conflict", "DatabaseUnavailable", "LoginSession", "NotFound", "Project", "Store",
           "StoreError", "is_uuid", "normalize_uuid", "utcnow", "make_store", "prepare_store", "StoreService"]

if TYPE_CHECKING:
    from cocalc_hub.db.sql import SqlStore

log = Logger()


def make_store(settings: Settings, reactor: IReactorFromThreads) -> SqlStore:
    """The SqlStore the settings ask for (not yet prepared or opened)."""
    from cocalc_hub.db.sql import SqlStore

    if settings.database_kind == "postgres":
        from cocalc_hub.db.postgres import PostgresBackend

        return SqlStore(PostgresBackend(settings.database, reactor))
    from pathlib import Path

    from cocalc_hub.db.sqlite import SQLiteBackend

    return SqlStore(SQLiteBackend(Path(settings.database), reactor))


def prepare_store(settings: Settings, reactor: IReactorFromThreads) -> SqlStore:
    """Connect and migrate now (blocking: this runs before the reactor), retrying an
    unreachable database for ``database_wait`` seconds; SettingsError if it never works."""
    import time

    store = make_store(settings, reactor)
    deadline = time.monotonic() + settings.database_wait
    while True:
        try:
            store.prepare()
            return store
        except Exception as e:
            retry = _retryable(e) and time.monotonic() < deadline
            if not retry:
                target = settings.database if settings.database_kind == "sqlite" else describe_database(settings)
                raise SettingsError("--database", f"cannot open {target}: {_one_line(e)}") from None
            log.warn("database not reachable yet ({err}); retrying", err=_one_line(e))
            time.sleep(1.0)


def _retryable(e: Exception) -> bool:
    import psycopg

    return isinstance(e, psycopg.OperationalError)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def describe_database(settings: Settings) -> str:
    from cocalc_hub.db.postgres import describe

    return describe(settings.database)


class StoreService(service.Service):
    """Opens the store when the hub starts and flushes/closes it last when it stops."""

    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> None:
        service.Service.startService(self)
        Deferred.fromCoroutine(self.store.open()).addErrback(
            lambda f: log.failure("cannot open the database", f))

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self.store.close())
