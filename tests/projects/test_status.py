"""The hub's project-status DKVs: lazy opening, idle closing, an outage and its end.

An in-process broker and persist server on the real reactor; the recorder's own timers
(retries, idle sweeps) run on a Clock so the test decides when they fire."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import provider

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import Client
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.persist.dstream import DKV
from cocalc_hub.conat.persist.server import PersistServer
from cocalc_hub.conat.persist.storage.memory import MemoryStorageBackend
from cocalc_hub.projects.status import StatusRecorder
from tests.support import until

P = "cccccccc-0000-4000-8000-000000000003"


class StatusRecorderTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.broker = Broker(reactor)
        self.backend = MemoryStorageBackend(reactor)
        self.clock = task.Clock()
        self.server: PersistServer | None = None
        self.recorder = StatusRecorder(self.client, self.clock, grace=0)
        self.recorder.startService()
        self.addCleanup(self.recorder.stopService)
        self.lines: list[tuple[LogLevel, str]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace", "").endswith(".outage") and event["log_level"] != LogLevel.debug:
                self.lines.append((event["log_level"], formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def client(self) -> Client:
        c = Client(reactor, LocalTransport(self.broker))
        self.addCleanup(c.close)
        return c

    async def start_persist(self) -> None:
        self.server = PersistServer(self.client(), self.backend)
        await self.server.start()
        self.addCleanup(self.server.close)

    async def read(self) -> Any:
        kv = DKV(self.client(), "project-status", project_id=P)
        try:
            await kv.init()
            return kv.items()
        finally:
            kv.close()

    async def test_open_lazily_close_when_idle_and_survive_an_outage(self) -> None:
        await self.start_persist()
        self.assertEqual(self.recorder.projects, {})
        self.recorder(P, {"state": "starting", "time": "t1", "extra": "not recorded"})
        self.recorder(P, {"state": "running", "time": "t2"})
        await until(lambda: self.recorder.written == 2)
        self.assertEqual(await self.read(), {"state": {"state": "running", "time": "t2"}})
        kv = self.recorder.projects[P].kv
        assert kv is not None
        self.recorder(P, {"state": "error", "time": "t3", "error": "boom"})
        await until(lambda: self.recorder.written == 3)
        self.assertIs(self.recorder.projects[P].kv, kv)  # reused
        self.assertEqual(await self.read(), {"state": {"state": "error", "time": "t3", "error": "boom"}})

        self.clock.advance(60)  # a sweep, but not idle long enough
        self.assertIs(self.recorder.projects[P].kv, kv)
        self.clock.advance(600)
        self.assertEqual(self.recorder.projects, {})
        self.assertTrue(kv.persist.closed)

        # persist goes away: the transition is not held up, one warning, retried later
        assert self.server is not None
        await self.server.close()
        self.recorder(P, {"state": "opened", "time": "t4"})
        self.recorder(P, {"state": "starting", "time": "t5"})
        await until(lambda: self.recorder.outage.failures == 1)
        for _ in range(3):
            self.clock.advance(self.recorder.outage.delay)
            await until(lambda: not self.recorder.projects[P].busy)
        self.assertEqual(self.recorder.outage.failures, 4)
        self.assertEqual([level for level, _ in self.lines], [LogLevel.warn])
        self.assertIn("project state (DKV project-status) is not recorded", self.lines[0][1])

        await self.start_persist()
        self.clock.advance(self.recorder.outage.delay)
        await until(lambda: self.recorder.written == 4)
        self.assertEqual(await self.read(), {"state": {"state": "starting", "time": "t5"}})  # the newest
        self.assertEqual([level for level, _ in self.lines], [LogLevel.warn, LogLevel.info])
        self.assertIn("is written again", self.lines[1][1])

    async def test_stopping_closes_everything(self) -> None:
        await self.start_persist()
        self.recorder(P, {"state": "running", "time": "t"})
        await until(lambda: self.recorder.written == 1)
        kv = self.recorder.projects[P].kv
        assert kv is not None and self.recorder.client is not None
        client = self.recorder.client
        self.recorder.stopService()
        self.assertTrue(kv.persist.closed and client.closed)
        self.assertEqual(self.recorder.projects, {})
        self.recorder(P, {"state": "opened", "time": "t"})  # after stop: ignored
        self.assertEqual(self.recorder.projects, {})
