"""Manager logic with a fake process reactor and a fake clock: deadlines, escalation, crashes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from cocalc_hub.auth import project_tokens
from cocalc_hub.projects.manager import ManagerConfig, ProjectManager
from cocalc_hub.projects.program import ProjectError
from tests.db.support import open_store
from tests.support import settle, until


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)


class FakeProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, FakeTransport, dict[str, str], dict[int, Any]]] = []
        self.next_pid = 4_000_000_000
        self.tokens: list[str] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: dict[str, str], path: str,
                     childFDs: dict[int, Any], **kw: Any) -> FakeTransport:
        self.next_pid += 1
        transport = FakeTransport(self.next_pid)
        proto.makeConnection(transport)
        self.spawned.append((proto, transport, env, childFDs))
        # What the program would read from its token pipe (the manager closes its end after this).
        if 4 in childFDs:
            self.tokens.append(os.read(int(childFDs[4]), 4096).decode())
        return transport


class FakeTable:
    """The process table as the manager sees it; records what it was asked to do."""

    def __init__(self) -> None:
        self.alive_pids: set[int] = set()
        self.unrecognisable: set[int] = set()
        """Live pids that do not show their project yet (forked, not yet exec'd)."""
        self.ports: set[int] = set()
        self.group_signals: list[tuple[int, int]] = []
        self.killed_projects: list[str] = []
        self.on_signal: Callable[[int, int], None] = lambda pgid, sig: None

    def signal_group(self, pgid: int, sig: int) -> bool:
        self.group_signals.append((pgid, sig))
        self.on_signal(pgid, sig)
        return True

    def kill_project(self, project_id: str, **kw: Any) -> int:
        self.killed_projects.append(project_id)
        return 0

    def belongs_to(self, pid: int, project_id: str, uid: int | None = None) -> bool:
        return pid in self.alive_pids and pid not in self.unrecognisable

    def alive(self, pid: int) -> bool:
        return pid in self.alive_pids

    def listening_ports(self, project_id: str, **kw: Any) -> set[int]:
        return set(self.ports)

    def rss_bytes(self, pid: int) -> int:
        return 0


class ManagerUnitTests(unittest.TestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        self.store = await open_store(self, "sqlite")
        self.fake = FakeProcessReactor()
        self.table = FakeTable()
        tmp = self.mktemp()
        config = ManagerConfig(projects=f"{tmp}/[project_id]", start_timeout=30, stop_grace=5, idle_interval=0,
                               allow_root=True)
        self.manager = ProjectManager(self.store, config, self.fake, procs=self.table,
                                      blocking=lambda fn, *a, **kw: defer.maybeDeferred(fn, *a, **kw))
        account = await self.store.create_account(email_address="u@example.com", password_hash="x")
        self.pid = (await self.store.create_project(owner_id=account.account_id)).project_id

    async def state(self) -> Any:
        return await self.store.get_project(self.pid)

    def last(self) -> tuple[Any, FakeTransport, dict[str, str], dict[int, Any]]:
        return self.fake.spawned[-1]

    async def start_running(self, port: int = 4242) -> Any:
        d = defer.ensureDeferred(self.manager.start(self.pid))
        await until(lambda: bool(self.fake.spawned))
        proto, transport, _, _ = self.last()
        self.table.alive_pids.add(transport.pid)
        self.table.ports = {port}
        proto.childDataReceived(3, b'READY {"http_port": %d, "pid": 1}\n' % port)
        await until(lambda: d.called)
        return await d

    async def test_spawn_arguments(self) -> None:
        await self.start_running()
        proto, transport, env, fds = self.last()
        self.assertEqual({k: v for k, v in fds.items() if k != 4}, {0: "w", 1: "r", 2: "r", 3: "r"})
        self.assertEqual(env["COCALC_PROJECT_ID"], self.pid)
        self.assertEqual(env["COCALC_READY_FD"], "3")
        self.assertEqual(env["COCALC_TOKEN_FD"], "4")
        token = self.fake.tokens[-1].strip()
        self.assertEqual(len(token), 43)
        self.assertNotIn(token, repr(env))  # on the pipe only
        self.assertEqual(self.table.killed_projects, [self.pid])  # leftovers killed before the start
        project = await self.state()
        self.assertEqual(project.state_name, "running")
        self.assertEqual(project.status["browser-server.port"], 4242)
        self.assertTrue(project_tokens.verify(project.secret_token, token))
        self.assertNotIn(token, project.secret_token)  # the store has a hash

    async def test_start_deadline(self) -> None:
        d = defer.ensureDeferred(self.manager.start(self.pid))
        await until(lambda: bool(self.fake.spawned))
        # The deadline is set once the pid is recorded (a store write in a thread): wait for it.
        await until(lambda: bool(self.fake.getDelayedCalls()), what="the start deadline to be set")
        proto, transport, _, _ = self.last()
        proto.childDataReceived(1, b"loading a very big library\n")
        self.fake.advance(29.9)
        self.assertFalse(proto.ready.called)  # the deadline has not passed (it would fail this at once)
        self.assertFalse(d.called)
        self.fake.advance(0.2)
        self.assertTrue(proto.ready.called)
        await until(lambda: d.called)
        with self.assertRaises(ProjectError):
            await d
        project = await self.state()
        self.assertEqual(project.state_name, "error")
        self.assertIn("did not report ready within 30 seconds", project.state["error"])
        self.assertEqual(project.status["last_output"], ["loading a very big library"])
        self.assertIn((transport.pid, signal.SIGKILL), self.table.group_signals)
        self.assertIsNone(project.secret_token)

    async def test_exit_before_ready(self) -> None:
        d = defer.ensureDeferred(self.manager.start(self.pid))
        await until(lambda: bool(self.fake.spawned))
        proto, _, _, _ = self.last()
        proto.childDataReceived(2, b"Traceback: ImportError\npartial line")
        proto.processEnded(Failure(ProcessTerminated(exitCode=1)))
        await until(lambda: d.called)
        with self.assertRaises(ProjectError):
            await d
        project = await self.state()
        self.assertIn("exited with exit code 1 before it was ready", project.state["error"])
        self.assertEqual(project.status["last_output"], ["Traceback: ImportError", "partial line"])

    async def test_bogus_port(self) -> None:
        d = defer.ensureDeferred(self.manager.start(self.pid))
        await until(lambda: bool(self.fake.spawned))
        proto, transport, _, _ = self.last()
        self.table.ports = {9999}
        proto.childDataReceived(3, b'READY {"http_port": 4242}\n')
        await until(lambda: d.called)
        with self.assertRaises(ProjectError):
            await d
        self.assertIn("reported port 4242, which it does not listen on", (await self.state()).state["error"])

    async def test_bad_ready_lines(self) -> None:
        for line in (b'READY {"http_port": 0}\n', b"READY [1]\n", b"READY {bad\n", b"NOPE\n", b"x" * 5000):
            d = defer.ensureDeferred(self.manager.start(self.pid))
            await until(lambda: len(self.fake.spawned) > 0)
            proto, _, _, _ = self.last()
            proto.childDataReceived(3, line)
            await until(lambda d=d: d.called)  # type: ignore[misc]
            with self.assertRaises(ProjectError):
                await d
            self.assertEqual((await self.state()).state_name, "error")
            self.fake.spawned.clear()

    async def test_stop_escalates_to_sigkill_and_ends_opened(self) -> None:
        await self.start_running()
        _, transport, _, _ = self.last()
        d = defer.ensureDeferred(self.manager.stop(self.pid))
        await until(lambda: (transport.pid, signal.SIGTERM) in self.table.group_signals)
        self.assertEqual((await self.state()).state_name, "stopping")
        self.assertNotIn((transport.pid, signal.SIGKILL), self.table.group_signals)
        self.fake.advance(5.1)
        await until(lambda: d.called)
        self.assertIn((transport.pid, signal.SIGKILL), self.table.group_signals)
        result = await d
        self.assertEqual(result["state"], "opened")
        self.assertIsNone((await self.state()).secret_token)

    async def test_cooperative_stop_needs_no_clock(self) -> None:
        await self.start_running()
        proto, transport, _, _ = self.last()

        def exits(pgid: int, sig: int) -> None:
            if sig == signal.SIGTERM:
                proto.processEnded(Failure(ProcessDone(0)))

        self.table.on_signal = exits
        result = await self.manager.stop(self.pid)
        self.assertEqual(result["state"], "opened")
        self.assertEqual(self.fake.seconds(), 0)

    async def test_crash_while_running(self) -> None:
        await self.start_running()
        proto, _, _, _ = self.last()
        proto.childDataReceived(2, b"segfault in module x\n")
        self.table.killed_projects.clear()
        proto.processEnded(Failure(ProcessTerminated(exitCode=139)))
        await until(lambda: self.table.killed_projects == [self.pid])

        async def recorded() -> bool:
            return bool((await self.state()).state_name == "error")

        await until(recorded, what="the error state")
        project = await self.state()
        self.assertIn("stopped unexpectedly (exit code 139)", project.state["error"])
        self.assertIn("segfault in module x", project.status["last_output"])
        self.assertIsNone(self.manager.local_target(self.pid))

    async def test_another_hub_waits_for_a_start_that_has_not_reached_exec(self) -> None:
        # Hub A has spawned the program; until exec it has A's environment and uid, so it is
        # not recognisably the project's. Hub B, asked to start the same project, must wait
        # for A's start rather than take that process for dead, start its own and kill A's.
        first = defer.ensureDeferred(self.manager.start(self.pid))
        await until(lambda: bool(self.fake.spawned))
        proto, transport, _, _ = self.last()
        self.table.alive_pids.add(transport.pid)
        self.table.unrecognisable.add(transport.pid)

        async def pid_recorded() -> bool:
            project = await self.state()
            return bool(project.status and project.status.get("project.pid") == transport.pid)

        await until(pid_recorded, what="hub A to record its process")
        other = ProjectManager(self.store, self.manager.config, self.fake, procs=self.table,
                               blocking=lambda fn, *a, **kw: defer.maybeDeferred(fn, *a, **kw))
        second = defer.ensureDeferred(other.start(self.pid))
        for _ in range(20):  # two seconds of B looking at the store
            self.fake.advance(0.1)
            await settle(0.01)
        self.assertEqual(len(self.fake.spawned), 1)
        self.assertEqual((await self.state()).state_name, "starting")
        self.assertFalse(second.called)

        self.table.unrecognisable.discard(transport.pid)  # exec'd: now it is the project's
        self.table.ports = {4242}
        proto.childDataReceived(3, b'READY {"http_port": 4242, "pid": 1}\n')
        self.assertEqual((await first)["state"], "running")

        async def b_done() -> bool:
            self.fake.advance(0.1)
            return second.called

        await until(b_done, what="hub B to see the project running")
        result = await second
        self.assertEqual((result["state"], result["project.pid"]), ("running", transport.pid))
        self.assertEqual(len(self.fake.spawned), 1)
        self.assertEqual(self.table.killed_projects, [self.pid])  # A's leftover check only

    async def test_start_while_running_is_a_no_op(self) -> None:
        first = await self.start_running()
        again = await self.manager.start(self.pid)
        self.assertEqual(len(self.fake.spawned), 1)
        self.assertEqual(first["project.pid"], again["project.pid"])
