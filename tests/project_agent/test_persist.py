"""What the hub and the project program keep in persist, end to end: a real hub with its
broker and persist server, a real project process, members reading over real sockets."""

from __future__ import annotations

import socket
from typing import Any

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from cocalc_hub import __version__
from cocalc_hub.conat.client import Client, ConatError
from cocalc_hub.conat.persist.dstream import DKV, DStream
from cocalc_hub.project_agent.records import EXEC_LOG_MAX
from tests.project_agent.support import ProjectConatCase
from tests.support import until
from tests.web.api_client import ApiClient

ENTRY_FIELDS = {"time", "command", "args", "exit_code", "timed_out", "duration_ms", "cwd"}


class PersistCase(ProjectConatCase):
    async def signed_in(self, who: ApiClient) -> Client:
        c = self.browser(who)
        await c.signed_in()
        return c

    async def kv(self, who: ApiClient, name: str) -> DKV:
        kv = DKV(await self.signed_in(who), name, project_id=self.project)
        self.addCleanup(kv.close)
        await kv.init()
        return kv

    async def stream(self, who: ApiClient, name: str) -> DStream:
        stream = DStream(await self.signed_in(who), name, project_id=self.project)
        self.addCleanup(stream.close)
        await stream.init()
        return stream

    async def refused(self, who: ApiClient, name: str) -> None:
        with self.assertRaises(ConatError) as e:
            await self.kv(who, name)
        self.assertEqual(e.exception.code, 403, name)


def current(kv: DKV) -> Any:
    value = kv.get("state")
    return value.get("state") if isinstance(value, dict) else None


class StatusTests(PersistCase):
    async def test_members_read_and_follow_the_current_state_outsiders_are_refused(self) -> None:
        await self.start(await self.watch(self.owner))
        # connecting after the fact: the current state is there, not only future events
        kv = await self.kv(self.owner, "project-status")
        await until(lambda: current(kv) == "running")
        self.assertLessEqual(set(kv.get("state")), {"state", "time", "error"})
        self.assertEqual(kv.keys(), ["state"])
        seen: list[str] = []
        kv.listeners.append(lambda key, value: seen.append(value["state"]))

        friend = await self.kv(self.friend, "project-status")
        self.assertEqual(current(friend), "running")
        await self.refused(self.outsider, "project-status")

        r = await self.owner.post("projects/stop", {"project_id": self.project})
        self.assertEqual(r.code, 200, r)
        await until(lambda: "opened" in seen)
        self.assertEqual(seen, ["stopping", "opened"])  # through the changefeed, in order
        await until(lambda: current(friend) == "opened")
        recorder: Any = self.hub.hub.getServiceNamed("project-status")
        self.assertEqual(recorder.written, 4)  # starting, running, stopping, opened
        self.assertEqual(recorder.outage.failures, 0)


class RecordsTests(PersistCase):
    async def test_project_info_and_the_exec_log(self) -> None:
        await self.start(await self.watch(self.owner))
        running = self.manager.active[self.project]
        home = self.manager.home(self.project)

        info_kv = await self.kv(self.owner, "project-info")
        await until(lambda: info_kv.get("info") is not None)
        info = info_kv.get("info")
        self.assertEqual({k: info[k] for k in ("pid", "version", "home", "hostname")},
                         {"pid": running.pid, "version": __version__, "home": str(home),
                          "hostname": socket.gethostname()})
        self.assertLessEqual(abs(info["started"] / 1000 - running.started), 2.0)
        self.assertEqual((await self.kv(self.friend, "project-info")).get("info"), info)

        log = await self.stream(self.friend, "exec-log")  # a collaborator reads it
        friend = await self.signed_in(self.friend)
        result = await friend.call(self.api, "exec", {"command": "echo $((6*7))xyzzy $SECRET", "bash": True,
                                                      "env": {"SECRET": "hunter2"}})
        self.assertEqual(result["stdout"], "42xyzzy hunter2\n")
        await until(lambda: len(log) == 1)
        entry = log[0]
        self.assertEqual(set(entry), ENTRY_FIELDS)
        self.assertEqual((entry["command"], entry["args"], entry["exit_code"], entry["timed_out"], entry["cwd"]),
                         ("echo $((6*7))xyzzy $SECRET", [], 0, False, str(home.resolve())))
        self.assertIsInstance(entry["duration_ms"], int)
        self.assertGreaterEqual(entry["duration_ms"], 0)
        self.assertLessEqual(abs(entry["time"] / 1000 - running.started), 60)
        self.assertNotIn("42xyzzy", repr(entry))  # never the output
        self.assertNotIn("hunter2", repr(entry))  # nor the environment

        owner = await self.signed_in(self.owner)
        result = await owner.call(self.api, "exec", {"command": "sh", "args": ["-c", "exit 3"],
                                                     "err_on_exit": False})
        self.assertEqual(result["exit_code"], 3)
        with self.assertRaises(ConatError) as e:
            await owner.call(self.api, "exec", {"command": "sleep", "args": ["30"], "timeout": 0.5})
        self.assertEqual(e.exception.code, 504)
        job = await owner.call(self.api, "exec", {"command": "true", "async_call": True})
        await owner.call(self.api, "exec", {"async_get": job["job_id"], "async_await": True})
        await until(lambda: len(log) == 4)
        self.assertEqual([(e["command"], e["args"], e["exit_code"], e["timed_out"]) for e in list(log)[1:]],
                         [("sh", ["-c", "exit 3"], 3, False), ("sleep", ["30"], None, True), ("true", [], 0, False)])
        self.assertLess(log[2]["duration_ms"], 10_000)
        # bounded: the project set the stream's limit
        self.assertEqual((await log.persist.config())["max_msgs"], EXEC_LOG_MAX)

        for name in ("project-info", "exec-log"):
            await self.refused(self.outsider, name)


class NoPersistTests(PersistCase):
    """A hub without a persist server: projects run, exec works, states are published,
    and each side says once that it records nothing."""

    options = {"project-stop-grace": "2", "proxy-server": True, "conat-server": True, "conat-api": True}

    async def test_everything_works_and_the_failure_is_logged_once(self) -> None:
        self.assertNotIn("conat-persist", self.hub.hub.settings.parts)
        warnings: list[str] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") == LogLevel.warn and event.get("log_namespace", "").endswith(".outage"):
                warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        recorder: Any = self.hub.hub.getServiceNamed("project-status")
        recorder.outage.grace = 0
        recorder.outage.delay = recorder.outage.first = 0.1  # retry often, so a repeated warning would show

        events = await self.watch(self.owner)
        started = await self.start(events)
        self.assertIn(("hub", "starting"), [(e["source"], e["state"]) for e in started])
        owner = await self.signed_in(self.owner)
        for i in range(3):
            result = await owner.call(self.api, "exec", {"command": "echo", "args": [str(i)]})
            self.assertEqual(result["stdout"], f"{i}\n")

        await until(lambda: recorder.outage.failures >= 4)
        self.assertEqual(recorder.written, 0)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("project state (DKV project-status) is not recorded", warnings[0])
        self.assertIn("no subscribers", warnings[0])

        def project_warnings() -> list[str]:
            output = self.manager.active[self.project].proto.output()
            return [line for line in output if "exec log (persist) is not recorded" in line]

        await until(lambda: len(project_warnings()) >= 1)
        self.assertEqual(len(project_warnings()), 1, project_warnings())
        result = await owner.call(self.api, "exec", {"command": "echo", "args": ["still"]})
        self.assertEqual(result["stdout"], "still\n")
