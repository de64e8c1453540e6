"""The project manager with real subprocesses: the real project program and misbehaving ones."""

from __future__ import annotations

import hashlib
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from cocalc_hub.auth import project_tokens
from cocalc_hub.db.store import utcnow
from cocalc_hub.projects import processes
from cocalc_hub.projects.manager import ProjectManager
from cocalc_hub.projects.program import ProjectError
from tests.projects.support import ClockedReactor, fake_program, gone, make_manager, new_project, project_pids
from tests.support import LogCapture, until


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
    r = await HTTPClient(Agent(reactor, pool=pool)).get(url, headers=hdrs)
    return r.code, await r.content()


async def state_becomes(store: Any, pid: str, name: str) -> Any:
    """Wait until the project's recorded state is ``name``; the project."""
    async def reached() -> bool:
        return bool((await store.get_project(pid)).state_name == name)

    await until(reached, what=f"the project's state to become {name}")
    return await store.get_project(pid)


class RealProjectTests(unittest.TestCase):
    timeout = 60

    async def test_create_start_raw_stop(self) -> None:
        store, manager = await make_manager(self)
        pid = await new_project(store)
        home = manager.ensure_home(pid)
        (home / "hello.txt").write_text("hello from the project\n")
        state = await manager.start(pid)
        self.assertEqual(state["state"], "running")
        target = manager.local_target(pid)
        assert target is not None
        port, token = target
        project = await store.get_project(pid)
        self.assertTrue(project_tokens.verify(project.secret_token, token))  # kept as a hash
        self.assertEqual(project.status["browser-server.port"], port)
        url = f"http://127.0.0.1:{port}/{pid}/raw/hello.txt"
        code, body = await fetch(url, {"X-CoCalc-Project-Token": token})
        self.assertEqual((code, body), (200, b"hello from the project\n"))
        code, body = await fetch(url)
        self.assertEqual(code, 403)
        self.assertNotIn(b"hello", body)
        code, _ = await fetch(url, {"X-CoCalc-Project-Token": token + "x"})
        self.assertEqual(code, 403)
        self.assertIn(port, await manager.listening_ports(pid))
        main_pid = state["project.pid"]
        self.assertTrue(processes.belongs_to(main_pid, pid))
        state = await manager.stop(pid)
        self.assertEqual(state["state"], "opened")
        self.assertEqual(project_pids(pid), [])
        self.assertIsNone((await store.get_project(pid)).secret_token)
        self.assertIsNone(manager.local_target(pid))
        # A fresh token at every start.
        await manager.start(pid)
        new_target = manager.local_target(pid)
        assert new_target is not None
        self.assertNotEqual(new_target[1], token)
        await manager.stop(pid)

    async def test_concurrent_starts_start_one_process(self) -> None:
        store, manager = await make_manager(self)
        pid = await new_project(store)
        other = ProjectManager(store, manager.config, reactor)  # another hub process, same database
        results = await defer.gatherResults([defer.ensureDeferred(m.start(pid)) for m in
                                             (manager, manager, other, manager, other)])
        pids = {r.get("project.pid") for r in results if r["state"] == "running"}
        self.assertEqual(len(project_pids(pid)), 1, project_pids(pid))
        self.assertLessEqual(len(pids), 1)
        await manager.stop(pid)
        self.assertEqual(project_pids(pid), [])

    async def test_stop_of_stopped_and_unknown(self) -> None:
        store, manager = await make_manager(self)
        pid = await new_project(store)
        self.assertEqual((await manager.stop(pid))["state"], "opened")
        with self.assertRaises(ProjectError) as cm:
            await manager.start("00000000-0000-4000-8000-000000000000")
        self.assertEqual(cm.exception.status, 404)
        await store.delete_project(pid)
        with self.assertRaises(ProjectError):
            await manager.start(pid)

    async def test_environment_is_a_whitelist(self) -> None:
        os.environ["PGPASSWORD"] = "hub-secret-password"
        self.addCleanup(os.environ.pop, "PGPASSWORD")
        store, manager = await make_manager(self)
        pid = await new_project(store)
        await manager.start(pid)
        main = manager.active[pid].pid
        env = processes.psutil.Process(main).environ()
        self.assertNotIn("PGPASSWORD", env)
        self.assertEqual(env["COCALC_PROJECT_ID"], pid)
        self.assertEqual(env["HOME"], str(manager.home(pid)))
        self.assertTrue(env["PATH"].startswith(str(manager.home(pid)) + "/bin:"))
        for key in env:
            self.assertFalse(key.startswith(("PG", "DATA_", "AWS_")), key)
        await manager.stop(pid)


class MisbehavingProjectTests(unittest.TestCase):
    timeout = 60

    async def start_fake(self, how: str, **config: Any) -> tuple[Any, ProjectManager, str]:
        store, manager = await make_manager(self, program=fake_program(how), **config)
        pid = await new_project(store)
        return store, manager, pid

    async def test_crash_at_once(self) -> None:
        store, manager, pid = await self.start_fake("crash")
        with self.assertRaises(ProjectError):
            await manager.start(pid)
        project = await store.get_project(pid)
        self.assertEqual(project.state_name, "error")
        self.assertIn("exited with exit code 3 before it was ready", project.state["error"])
        self.assertIn("boom: something went wrong", "\n".join(project.status["last_output"]))
        await gone(pid)
        # From the error state a start is allowed again (and fails the same way).
        with self.assertRaises(ProjectError):
            await manager.start(pid)

    async def test_hang_hits_the_deadline(self) -> None:
        clock = ClockedReactor()
        store, manager, pid = await self.start_fake("hang", start_timeout=1.5, clock=clock)
        starting = defer.ensureDeferred(manager.start(pid))
        await until(lambda: pid in manager.starting and "still thinking..." in manager.starting[pid].output(),
                    what="the project to say it is still thinking")
        clock.advance(1.4)
        self.assertFalse(starting.called)
        clock.advance(0.1)  # the deadline
        with self.assertRaises(ProjectError) as cm:
            await starting
        self.assertEqual(cm.exception.status, 504)
        project = await store.get_project(pid)
        self.assertEqual(project.state_name, "error")
        self.assertIn("did not report ready within 1.5 seconds", project.state["error"])
        self.assertIn("still thinking...", project.status["last_output"])
        await gone(pid)

    async def test_ignores_sigterm(self) -> None:
        clock = ClockedReactor()
        store, manager, pid = await self.start_fake("ignore-term", stop_grace=0.5, clock=clock)
        await manager.start(pid)
        main = manager.active[pid].pid
        stopping = defer.ensureDeferred(manager.stop(pid))
        # SIGTERM is sent and the stop waits out its grace on the clock; the project lives on
        await until(lambda: bool(clock.clock.getDelayedCalls()), what="the stop to wait out its grace")
        self.assertFalse(stopping.called)
        self.assertTrue(processes.belongs_to(main, pid))
        clock.advance(0.5)  # the grace is over: SIGKILL
        state = await stopping
        self.assertEqual(state["state"], "opened")
        await gone(pid)

    async def test_children_that_outlive_it(self) -> None:
        store, manager, pid = await self.start_fake("fork")
        await manager.start(pid)
        await until(lambda: len(project_pids(pid)) >= 2, what="the escaped grandchild")
        await manager.stop(pid)
        await gone(pid)
        # A leftover from a previous run is killed before the next start.
        await manager.start(pid)
        await until(lambda: len(project_pids(pid)) >= 2, what="the escaped grandchild")
        main = manager.active[pid].pid
        os.killpg(main, signal.SIGKILL)  # the project dies; its escaped grandchild lives on
        project = await state_becomes(store, pid, "error")
        self.assertIn("stopped unexpectedly", project.state["error"])
        await gone(pid)

    async def test_prints_megabytes(self) -> None:
        store, manager, pid = await self.start_fake("megabytes")
        state = await manager.start(pid)
        self.assertEqual(state["state"], "running")
        output = manager.active[pid].proto.output()
        self.assertLessEqual(len(output), 100)
        self.assertLessEqual(sum(len(line) for line in output), 100 * 2000 + 2000)
        await manager.stop(pid)
        await gone(pid)

    async def test_bogus_port(self) -> None:
        store, manager, pid = await self.start_fake("bogus-port")
        with self.assertRaises(ProjectError):
            await manager.start(pid)
        project = await store.get_project(pid)
        self.assertIn("which it does not listen on", project.state["error"])
        await gone(pid)

    async def test_garbage_on_ready_pipe(self) -> None:
        store, manager, pid = await self.start_fake("garbage")
        with self.assertRaises(ProjectError):
            await manager.start(pid)
        project = await store.get_project(pid)
        self.assertIn("garbage", project.state["error"])
        await gone(pid)

    async def test_dies_on_its_own_is_noticed_at_once(self) -> None:
        store, manager, pid = await self.start_fake("die-later")
        await manager.start(pid)
        os.kill(manager.active[pid].pid, signal.SIGUSR1)  # now it exits, by itself, with code 7
        project = await state_becomes(store, pid, "error")
        self.assertIn("stopped unexpectedly (exit code 7)", project.state["error"])
        self.assertIn("exiting on my own", project.status["last_output"])
        self.assertIsNone(manager.local_target(pid))
        await gone(pid)


class RestartAndIdleTests(unittest.TestCase):
    timeout = 60

    async def test_hub_restart_adopts_without_duplicates(self) -> None:
        store, first = await make_manager(self)
        pid = await new_project(store)
        await first.start(pid)
        main = first.active[pid].pid
        await first.stopService() if first.running else None
        first.release_all()
        second = ProjectManager(store, first.config, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(second.stop(pid)))
        await second.recover()
        self.assertIn(pid, second.active)
        self.assertEqual(second.active[pid].pid, main)
        state = await second.start(pid)  # already running: no second copy
        self.assertEqual(state["project.pid"], main)
        self.assertEqual([p for p in project_pids(pid) if p == main], [main])
        # The adopted process is watched: its death is noticed.
        os.killpg(main, signal.SIGKILL)
        await until(lambda: pid not in second.active, what="the adopted project's death to be noticed")
        await state_becomes(store, pid, "error")

    async def test_restart_without_adoption_stops_leftovers(self) -> None:
        store, first = await make_manager(self)
        pid = await new_project(store)
        await first.start(pid)
        first.release_all()
        second = ProjectManager(store, first.config.__class__(**{**first.config.__dict__, "adopt": False}), reactor)
        await second.recover()
        self.assertEqual((await store.get_project(pid)).state_name, "opened")
        await gone(pid)

    async def test_a_project_from_before_hashed_tokens_is_stopped_not_adopted(self) -> None:
        store, first = await make_manager(self)
        pid = await new_project(store)
        await first.start(pid)
        first.release_all()
        # What schema 003 leaves for a project that ran with a plain token: a hash, no nonce.
        token = first.config.token_key  # any value: only its hash is kept
        legacy = "sha256$$" + hashlib.sha256(token).hexdigest()
        await store.set_project_state(pid, {"state": "running"}, secret_token=legacy)
        second = ProjectManager(store, first.config, reactor)
        captured = LogCapture(self)
        await second.recover()
        self.assertNotIn(pid, second.active)
        self.assertEqual((await store.get_project(pid)).state_name, "opened")
        await gone(pid)
        await captured.wait_for(f"stopped project {pid} left over from a previous hub (its token cannot be derived")

    async def test_dead_project_recorded_at_restart(self) -> None:
        store, manager = await make_manager(self)
        pid = await new_project(store)
        await store.set_project_state(pid, {"state": "running"}, status={"project.pid": 99999999,
                                                                          "browser-server.port": 1},
                                      secret_token="t")
        await manager.recover()
        self.assertEqual((await store.get_project(pid)).state_name, "opened")

    async def test_idle_stop_with_a_fake_clock(self) -> None:
        store, manager = await make_manager(self, idle_timeout=1800, min_run_time=600)
        idle = await new_project(store, "idle")
        busy = await new_project(store, "busy")
        forever = await new_project(store, "forever")
        young = await new_project(store, "young")
        for p in (idle, busy, forever, young):
            await manager.start(p)
        await store.set_project_settings(forever, {"idle_timeout": 0})
        now = utcnow() + timedelta(hours=2)
        await store.touch_project(busy, now=now - timedelta(minutes=5))
        for p in (idle, busy, forever):
            await store.set_project_state(p, {"state": "running"}, last_started=now - timedelta(hours=1))
        await store.set_project_state(young, {"state": "running"}, last_started=now - timedelta(minutes=5))
        stopped = await manager.check_idle(now=now)
        self.assertEqual(stopped, [idle])
        self.assertEqual((await store.get_project(idle)).state_name, "opened")
        for p in (busy, forever, young):
            self.assertEqual((await store.get_project(p)).state_name, "running")

    async def test_touch_is_throttled(self) -> None:
        store, manager = await make_manager(self, touch_interval=30)
        pid = await new_project(store)
        before = (await store.get_project(pid)).last_edited
        writes: list[str] = []
        touch_project = store.touch_project

        def recorded(project_id: str, *args: Any, **kw: Any) -> Any:
            writes.append(project_id)
            return touch_project(project_id, *args, **kw)

        self.patch(store, "touch_project", recorded)
        manager.touch(pid)

        async def written() -> bool:
            return bool((await store.get_project(pid)).last_edited > before)

        await until(written, what="the touch to be written")
        first = (await store.get_project(pid)).last_edited
        manager.touch(pid)  # within the interval: not even attempted (the decision is synchronous)
        self.assertEqual(writes, [pid])
        self.assertEqual((await store.get_project(pid)).last_edited, first)


class MultiUserTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("multi-user mode needs root (CI runs as root)")

    async def test_projects_run_as_their_own_uid(self) -> None:
        store, manager = await make_manager(self, multi_user=True, limits={"processes": 200})
        a = await new_project(store, "a")
        b = await new_project(store, "b")
        await manager.start(a)
        await manager.start(b)
        uid_a = processes.project_uid(a)
        main = manager.active[a].pid
        proc = processes.psutil.Process(main)
        self.assertEqual(proc.uids().real, uid_a)
        self.assertEqual(proc.uids().effective, uid_a)
        self.assertEqual(proc.gids().real, uid_a)
        with open(f"/proc/{main}/status") as f:
            groups = [line for line in f if line.startswith("Groups:")][0].split()[1:]
        self.assertEqual(groups, [])
        home = manager.home(a)
        st = home.stat()
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (uid_a, 0o700))
        with open(f"/proc/{main}/limits") as f:
            nproc = [line for line in f if line.startswith("Max processes")][0].split()
        self.assertEqual(nproc[2:4], ["200", "200"])
        (manager.home(b) / "secret.txt").write_text("b's secret")
        os.chown(manager.home(b) / "secret.txt", processes.project_uid(b), processes.project_uid(b))
        port, token = manager.local_target(a)  # type: ignore[misc]
        from cocalc_hub.projects.client import ProjectClient

        client = ProjectClient(reactor, "/")
        self.addCleanup(client.close)
        status, body = await client.call(a, port, token, "exec", {"command": "id", "args": ["-u"]}, 20)
        self.assertEqual((status, body["stdout"].strip()), (200, str(uid_a)))
        status, body = await client.call(a, port, token, "exec",
                                         {"command": "cat", "args": [str(manager.home(b) / "secret.txt")],
                                          "err_on_exit": False}, 20)
        self.assertNotEqual(body["exit_code"], 0)
        self.assertIn("Permission denied", body["stderr"])
        await manager.stop(a)
        await manager.stop(b)
        self.assertEqual(project_pids(a, uid_a), [])
        self.assertTrue(Path(home).exists())
