"""Project control and exec over the JSON API, with real project processes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.projects.support import project_pids
from tests.support import settings_for, spawn, start_hub, until
from tests.web.api_client import ApiClient


class ProjectApiTests(unittest.TestCase):
    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.tmp = Path(self.mktemp()).resolve()
        self.hub = start_hub(self, settings_for(self.tmp, {"project-stop-grace": "2"}))
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        self.owner = await self.signed_up("owner@example.com")
        self.pid = (await self.owner.post("projects/create", {"title": "P"})).json["project_id"]
        self.addCleanup(self.stop_project)

    async def stop_project(self) -> None:
        manager = self.hub.hub.projects.manager  # type: ignore[union-attr]
        for project_id in list(manager.active):
            await manager.stop(project_id)

    def client(self) -> ApiClient:
        return ApiClient(self.hub.base, self.pool)

    async def signed_up(self, email: str) -> ApiClient:
        c = self.client()
        r = await c.sign_up(email)
        assert r.code == 201, r
        return c

    async def exec(self, client: ApiClient | None = None, **params: Any) -> Any:
        return await (client or self.owner).post("exec", {"project_id": self.pid, **params})

    async def test_control_and_permissions(self) -> None:
        r = await self.owner.get(f"projects/state?project_id={self.pid}")
        self.assertEqual((r.code, r.json["state"]), (200, "opened"))
        stranger = await self.signed_up("stranger@example.com")
        for action in ("start", "stop", "restart", "touch"):
            self.assertEqual((await stranger.post(f"projects/{action}", {"project_id": self.pid})).code, 403)
        self.assertEqual((await stranger.post("exec", {"project_id": self.pid, "command": "id"})).code, 403)
        self.assertEqual((await self.client().post("projects/start", {"project_id": self.pid})).code, 401)
        r = await self.owner.post("projects/start", {"project_id": self.pid.upper()})
        self.assertEqual((r.code, r.json["state"]["state"]), (200, "running"), r)
        r = await self.owner.post("projects/restart", {"project_id": self.pid})
        self.assertEqual(r.json["state"]["state"], "running")
        self.assertEqual(len(project_pids(self.pid)), 1)
        r = await self.owner.post("projects/stop", {"project_id": self.pid})
        self.assertEqual(r.json["state"]["state"], "opened")
        self.assertEqual(project_pids(self.pid), [])
        r = await self.owner.post("projects/start", {"project_id": "00000000-0000-4000-8000-000000000000"})
        self.assertEqual(r.code, 404)

    async def test_exec(self) -> None:
        # Exec starts the project if needed.
        r = await self.exec(command="echo", args=["hello", "world"])
        self.assertEqual((r.code, r.json), (200, {"type": "blocking", "stdout": "hello world\n", "stderr": "",
                                                   "exit_code": 0}), r)
        await self.exec(command="mkdir", args=["-p", "sub/dir"])
        r = await self.exec(command="pwd", path="sub/dir")
        self.assertTrue(r.json["stdout"].strip().endswith("/sub/dir"))
        r = await self.exec(command="echo $((6*7)) $GREETING >&2; exit 3", bash=True, env={"GREETING": "hi"},
                            err_on_exit=False)
        self.assertEqual((r.code, r.json["stderr"], r.json["exit_code"]), (200, "42 hi\n", 3))
        r = await self.exec(command="false")
        self.assertEqual((r.code, r.json["exit_code"]), (422, 1))
        self.assertIn("exited with code 1", r.json["error"])
        r = await self.exec(command="sleep", args=["10"], timeout=0.5)
        self.assertEqual(r.code, 504)
        self.assertIn("timed out", r.json["error"])
        r = await self.exec(command="head -c 5000 /dev/zero | tr '\\0' x", bash=True, max_output=100)
        self.assertEqual((len(r.json["stdout"]), r.json["truncated"]), (100, True))
        r = await self.exec(command="no-such-command-here")
        self.assertEqual(r.code, 400)
        self.assertIn("command not found", r.json["error"])
        for bad in ({"command": ""}, {"command": 5}, {"command": "ls", "args": "notalist"},
                    {"command": "ls", "args": [1]}, {"command": "ls", "timeout": -1},
                    {"command": "ls", "timeout": "soon"}, {"command": "ls", "env": {"A B": "x"}},
                    {"command": "ls", "path": "../.."}, {"command": "ls", "path": "/etc"},
                    {"command": "ls", "max_output": 10 ** 12}):
            r = await self.exec(**bad)
            self.assertIn(r.code, (400, 403), bad)
        r = await self.owner.post("exec", {"project_id": "nope", "command": "ls"})
        self.assertEqual(r.code, 400)

    async def test_exec_background_server_through_async_get(self) -> None:
        r = await self.exec(command="echo started; exec sleep 30", bash=True, async_call=True)
        self.assertEqual((r.code, r.json["type"], r.json["status"]), (200, "async", "running"), r)
        job = r.json["job_id"]

        async def printed() -> bool:
            return bool((await self.exec(async_get=job)).json["stdout"])

        await until(printed, what="the job's first output")
        r = await self.exec(async_get=job)
        self.assertEqual((r.json["status"], r.json["stdout"]), ("running", "started\n"))
        r = await self.exec(command="exit 5", bash=True, async_call=True)
        job2 = r.json["job_id"]
        r = await self.exec(async_get=job2, async_await=True, timeout=10)
        self.assertEqual((r.json["status"], r.json["exit_code"]), ("completed", 5))
        self.assertEqual((await self.exec(async_get="no-such-job")).code, 404)
        # Stopping the project kills the background job.
        await self.owner.post("projects/stop", {"project_id": self.pid})
        self.assertEqual(project_pids(self.pid), [])

    async def test_collaborator_may_control_admin_too(self) -> None:
        friend = await self.signed_up("friend@example.com")
        await self.owner.post("projects/collaborators/add", {"project_id": self.pid, "email": "friend@example.com"})
        r = await friend.post("exec", {"project_id": self.pid, "command": "true"})
        self.assertEqual(r.code, 200, r)
        r = await friend.post("projects/stop", {"project_id": self.pid})
        self.assertEqual(r.code, 200)

    async def test_admin_cli_controls_through_the_hub(self) -> None:
        cmd = [sys.executable, "-m", "cocalc_hub.admin", "--data", str(self.tmp / "data"), "--json"]
        for action, expected in (("start", "running"), ("state", "running"), ("stop", "opened")):
            proc, _ = spawn(self, [*cmd, action, self.pid, "--hub", self.hub.base])
            self.assertEqual(await proc.ended, 0, proc.output)
            self.assertIn(f'"state": "{expected}"', proc.output.decode())
        proc, _ = spawn(self, [*cmd, "start", self.pid, "--hub", "http://127.0.0.1:1"])
        self.assertEqual(await proc.ended, 1)
        self.assertIn(b"cannot reach the hub", proc.output)
        proc, _ = spawn(self, [*cmd, "set-project-settings", self.pid, "idle_timeout=0"])
        self.assertEqual(await proc.ended, 0, proc.output)
        project = await self.hub.hub.store.get_project(self.pid)
        self.assertEqual(project.settings["idle_timeout"], 0)
