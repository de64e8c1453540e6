"""The ``--conat-persist`` part of a hub: a persist server (:mod:`cocalc_hub.conat.persist`) as a
MultiService child, its storage chosen by the hub's settings."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.conat.client import Client
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.server import PersistServer
from cocalc_hub.conat.persist.storage.base import StorageBackend
from cocalc_hub.conat.persist.storage.memory import MemoryStorageBackend
from cocalc_hub.reactors import IThreadPoolReactor
from cocalc_hub.settings import Settings

log = Logger()


def make_backend(settings: Settings, reactor: IThreadPoolReactor) -> StorageBackend:
    """The storage the settings name (every backend keeps ephemeral streams in memory)."""
    if settings.persist_storage == "memory":
        return MemoryStorageBackend(reactor)
    if settings.persist_storage == "postgres":
        from cocalc_hub.conat.persist.storage.postgres import PgStorageBackend
        from cocalc_hub.db.postgres import Connections

        return PgStorageBackend(settings.persist_database, reactor, pool=Connections)
    from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend

    return SqliteStorageBackend(settings.sync_dir, reactor)


class PersistService(Service):
    """Starts the persist server once a conat client is available; stops it (and closes
    every stream, flushing SQLite) on the way down."""

    name = "conat-persist"

    def __init__(self, settings: Settings, reactor: IThreadPoolReactor, client_factory: Callable[[], Client]) -> None:
        self.settings = settings
        self.reactor = reactor
        self.client_factory = client_factory
        self.client: Client | None = None
        self.server: PersistServer | None = None
        self.backend: StorageBackend | None = None
        self._starting: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, f: Failure) -> None:
        if not self.running and f.check(CancelledError, ConatError):
            log.info("conat persist server: stopped before it had started")
            return
        log.failure("conat persist server failed to start", f)

    async def _start(self) -> None:
        s = self.settings
        self.client = self.client_factory()
        await self.client.signed_in(timeout=None)
        self.backend = make_backend(s, self.reactor)
        ids = [str(i) for i in range(s.persist_count)]
        self.server = PersistServer(self.client, self.backend, server_id=s.persist_id, ids=ids)
        await self.server.start()
        where = {"sqlite": f"SQLite files under {s.sync_dir}", "memory": "memory (nothing is kept)",
                 "postgres": "PostgreSQL"}[s.persist_storage]
        log.info("conat persist server {id} (of {n}) keeps streams in {where}", id=s.persist_id, n=s.persist_count,
                 where=where)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self.server is not None:
            await self.server.close()
        if self.backend is not None:
            await self.backend.close()
        if self.client is not None:
            self.client.close()
