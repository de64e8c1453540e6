"""The project program on conat, end to end: real hub, real project process, real sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from cocalc_hub.conat.client import ConatError, connect
from cocalc_hub.subjects import api_subject, project_subject, state_subject
from tests.project_agent.support import ProjectConatCase, seen


def hub_states(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events if e["source"] == "hub"]


class SubjectTests(ProjectConatCase):
    def setUp(self) -> None:  # type: ignore[override]
        pass  # no hub needed

    def test_upstream_names(self) -> None:
        p = "6f2d3c1e-0000-4000-8000-000000000001"
        self.assertEqual(api_subject(p), f"project.{p}.0.api.-")
        self.assertEqual(state_subject(p), f"project.{p}.0.state.-")
        self.assertEqual(project_subject(p, "x", compute_server_id=None, path="a/b.txt"),
                         f"project.{p}.-.x.YS9iLnR4dA==")


class LifecycleTests(ProjectConatCase):
    async def test_collaborator_sees_states_live_and_calls_the_api(self) -> None:
        events = await self.watch(self.friend)
        started = await self.start(events)
        mine = started[-1]
        self.assertEqual(hub_states(started)[0], "starting")
        running = self.manager.active[self.project]
        self.assertEqual((mine["project_id"], mine["pid"], mine["compute_server_id"]),
                         (self.project, running.pid, 0))
        self.assertLessEqual(abs(mine["start_ts"] / 1000 - running.started), 2.0)
        if "running" not in hub_states(started):  # the hub's "running" may come after the project's
            started += await seen(events, lambda e: e["source"] == "hub" and e["state"] == "running")
        self.assertEqual(hub_states(started), ["starting", "running"])

        friend = self.browser(self.friend)
        pong = await friend.call(self.api, "ping")
        self.assertEqual((pong["pong"], pong["project_id"], pong["pid"]), (True, self.project, running.pid))
        self.assertEqual(pong["start_ts"], mine["start_ts"])
        with self.assertRaises(ConatError) as e:
            await friend.call(self.api, "rm -rf")
        self.assertEqual(e.exception.code, 404)
        self.assertIn("unknown function", str(e.exception))
        with self.assertRaises(ConatError) as e:
            await friend.call(self.api, "ping", 1)
        self.assertEqual(e.exception.code, 400)

        # the project's environment names the hub's broker but carries no hub credential
        env = (await friend.call(self.api, "exec", {"command": "env"}))["stdout"]
        self.assertIn(f"CONAT_SERVER={self.hub.base}\n", env)
        password = (self.hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        self.assertNotIn(password, env)
        self.assertNotIn("COCALC_PROJECT_SECRET", env)
        self.assertNotIn("COCALC_TOKEN_FD", env)

        r = await self.owner.post("projects/stop", {"project_id": self.project})
        self.assertEqual(r.code, 200, r)
        stopped = await seen(events, lambda e: e["source"] == "hub" and e["state"] == "opened")
        self.assertEqual(hub_states(stopped), ["stopping", "opened"])
        # the project said goodbye itself before exiting (SIGTERM → "stopping")
        self.assertIn(("project", "stopping"), [(e["source"], e["state"]) for e in stopped])
        with self.assertRaises(ConatError) as e:
            await friend.call(self.api, "ping", timeout=30)
        self.assertEqual(e.exception.code, 503)

    async def test_outsiders_and_signed_out_users_are_refused(self) -> None:
        events = await self.watch(self.owner)
        await self.start(events)
        outsider = self.browser(self.outsider)
        await outsider.signed_in()
        with self.assertRaises(ConatError) as e:
            await outsider.call(self.api, "ping")
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:
            await outsider.call(self.api, "readFile", ".smc/secret-token")
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:
            await outsider.subscribe(state_subject(self.project))
        self.assertEqual(e.exception.code, 403)
        # signed out: the remember_me cookie no longer signs anyone in
        cookies = dict(self.friend.cookies)
        r = await self.friend.post("accounts/sign-out")
        self.assertEqual(r.code, 200)
        anonymous = connect(reactor, self.hub.base, cookies=cookies, reconnect=False)
        self.addCleanup(anonymous.close)
        with self.assertRaises(ConatError) as e:
            await anonymous.signed_in(timeout=10)
        self.assertEqual(str(e.exception), "Error: remember me cookie expired")
        nobody = connect(reactor, self.hub.base, reconnect=False)
        self.addCleanup(nobody.close)
        with self.assertRaises(ConatError):
            await nobody.signed_in(timeout=10)
        # the owner still gets through
        self.assertTrue((await self.browser(self.owner).call(self.api, "ping"))["pong"])

    async def test_the_project_rejoins_when_the_broker_drops_it(self) -> None:
        events = await self.watch(self.friend)
        first = (await self.start(events))[-1]
        assert self.hub.hub.conat is not None
        self.hub.hub.conat.close_connections()  # every socket, the project's and ours
        events = await self.watch(self.friend)
        again = await seen(events, lambda e: e["source"] == "project" and e["state"] == "running")
        self.assertEqual((again[-1]["pid"], again[-1]["start_ts"]), (first["pid"], first["start_ts"]))
        self.assertTrue((await self.browser(self.friend).call(self.api, "ping"))["pong"])


class NoConatTests(ProjectConatCase):
    """A project whose hub gives no broker address still serves HTTP exec (and says why)."""

    async def test_exec_over_http_without_conat(self) -> None:
        self.manager.config.hub_url = lambda: ""
        r = await self.owner.post("projects/start", {"project_id": self.project})
        self.assertEqual(r.code, 200, r)
        r = await self.owner.post("exec", {"project_id": self.project, "command": "echo", "args": ["hi"]})
        self.assertEqual((r.code, r.json["stdout"]), (200, "hi\n"))
        output = self.manager.active[self.project].proto.output()
        self.assertTrue(any("CONAT_SERVER is not set" in line for line in output), output)
        client = self.browser(self.owner)
        with self.assertRaises(ConatError) as e:
            await client.call(self.api, "ping", timeout=30)
        self.assertEqual(e.exception.code, 503)

