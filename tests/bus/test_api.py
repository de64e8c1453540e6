"""The hub API over conat (``hub.<account|project>.<id>.api``), end to end over real sockets."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub import __version__
from cocalc_hub.bus.api import FUNCTIONS, MAX_REQUEST, SUBJECT, ConatApiService
from cocalc_hub.conat.client import JSON, Client, ConatError, connect
from cocalc_hub.tap import HubService
from tests.projects.support import project_pids
from tests.support import RunningHub, make_admin, settings_for, start_hub, until
from tests.web.api_client import ApiClient

NO_SUCH_PROJECT = "00000000-0000-4000-8000-000000000000"


def api_service(hub: HubService) -> ConatApiService:
    service = hub.getServiceNamed("conat-api")
    assert isinstance(service, ConatApiService)
    return service


class ApiCase(unittest.TestCase):
    timeout = 90

    async def setUp(self) -> None:  # type: ignore[override]
        self.hub: RunningHub = start_hub(self, settings_for(self.mktemp(), {"project-stop-grace": "2"}))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.admin = await self.account("admin@example.com")
        await make_admin(self.hub, self.admin.account_id)  # type: ignore[attr-defined]
        self.owner = await self.account("owner@example.com")
        self.friend = await self.account("friend@example.com")
        self.outsider = await self.account("outsider@example.com")
        await api_service(self.hub.hub).when_ready()

    async def account(self, email: str) -> ApiClient:
        c = ApiClient(self.hub.base, self.pool)
        r = await c.sign_up(email)
        assert r.code == 201, r
        c.account_id = r.json["account_id"]  # type: ignore[attr-defined]
        return c

    def connect(self, cookies: dict[str, str], address: str | None = None) -> Client:
        c = connect(reactor, address or self.hub.base, cookies=cookies, reconnect=False)
        self.addCleanup(c.close)
        return c

    async def browser(self, who: ApiClient) -> Client:
        c = self.connect(dict(who.cookies))
        self.assertEqual((await c.signed_in())["user"], {"account_id": who.account_id})  # type: ignore[attr-defined]
        return c

    async def as_hub(self) -> Client:
        password = (self.hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        c = self.connect({"hub_password": password})
        await c.signed_in()
        return c

    async def call(self, client: Client, ident: str, name: str, *args: Any, kind: str = "account",
                   timeout: float = 30) -> Any:
        reply = await client.request(f"hub.{kind}.{ident}.api", {"name": name, "args": list(args)}, timeout=timeout)
        self.assertIsNone(reply.headers)  # errors are plain data, never an error header
        return reply.data

    async def json_error(self, who: ApiClient, endpoint: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON API's answer to the same thing, as the conat API would phrase it."""
        r = await who.post(endpoint, params)
        self.assertGreaterEqual(r.code, 400, r)
        return {"error": "Error: " + r.json["error"], "code": r.code}

    async def stop_projects(self) -> None:
        manager = self.hub.hub.projects.manager  # type: ignore[union-attr]
        for project_id in list(manager.active) + list(manager.starting):
            await manager.stop(project_id)


class AccountCallTests(ApiCase):
    async def test_system_calls(self) -> None:
        c = await self.browser(self.owner)
        me = self.owner.account_id  # type: ignore[attr-defined]
        before = int(time.time() * 1000)
        now = (await self.call(c, me, "system.ping"))["now"]
        self.assertTrue(before - 1 <= now <= int(time.time() * 1000) + 1, now)
        self.assertEqual(await self.call(c, me, "system.getVersion"), {"version": __version__})
        test = await self.call(c, me, "system.test")
        self.assertEqual((test["account_id"], type(test["server_time"])), (me, int))

    async def test_profile_is_the_callers_account_and_admins_stay_admins(self) -> None:
        c = await self.browser(self.owner)
        me = self.owner.account_id  # type: ignore[attr-defined]
        profile = await self.call(c, me, "accounts.profile")
        self.assertEqual(profile, {k: v for k, v in (await self.owner.get("accounts/profile")).json.items()
                                   if k != "via"})
        self.assertEqual((profile["email_address"], profile["is_admin"]), ("owner@example.com", False))
        a = await self.browser(self.admin)
        admin_id = self.admin.account_id  # type: ignore[attr-defined]
        self.assertTrue((await self.call(a, admin_id, "accounts.profile"))["is_admin"])

    async def test_projects_create_list_get_update_and_collaborators(self) -> None:
        c = await self.browser(self.owner)
        me, friend_id = self.owner.account_id, self.friend.account_id  # type: ignore[attr-defined]
        pid = await self.call(c, me, "projects.createProject", {"title": "Lab", "description": "d"})
        self.assertIsInstance(pid, str)
        listed = await self.call(c, me, "projects.list")
        self.assertEqual([(p["project_id"], p["title"]) for p in listed], [(pid, "Lab")])
        got = await self.call(c, me, "projects.get", {"project_id": pid.upper()})
        self.assertEqual((got["title"], got["description"], got["users"][me]["group"]), ("Lab", "d", "owner"))
        updated = await self.call(c, me, "projects.update", {"project_id": pid, "title": "New", "description": "e"})
        self.assertEqual((updated["title"], updated["description"]), ("New", "e"))
        r = await self.owner.get(f"projects/get?project_id={pid}")  # the JSON API sees the same store
        self.assertEqual((r.json[0]["title"], r.json[0]["description"]), ("New", "e"))
        untitled = await self.call(c, me, "projects.createProject")
        self.assertEqual((await self.call(c, me, "projects.get", {"project_id": untitled}))["title"], "No Title")
        self.assertEqual(len(await self.call(c, me, "projects.list", {})), 2)

        f = await self.browser(self.friend)
        denied = await self.call(f, friend_id, "projects.get", {"project_id": pid})
        self.assertEqual(denied, await self.json_error(self.friend, "projects/update", {"project_id": pid}))
        self.assertEqual(denied, {"error": "Error: you are not a collaborator on this project", "code": 403})
        added = await self.call(c, me, "projects.addCollaborator", {"opts": {"project_id": pid,
                                                                             "account_id": friend_id}})
        self.assertEqual(added, {"project_id": pid, "account_id": friend_id})
        self.assertEqual((await self.call(f, friend_id, "projects.get", {"project_id": pid}))["title"], "New")
        self.assertEqual([p["project_id"] for p in await self.call(f, friend_id, "projects.list")], [pid])
        collaborators = await self.call(c, me, "projects.listCollaborators", {"project_id": pid})
        self.assertEqual(sorted((x["account_id"], x["group"]) for x in collaborators),
                         sorted([(me, "owner"), (friend_id, "collaborator")]))
        # by email, flat arguments: the outsider joins too
        added = await self.call(c, me, "projects.addCollaborator", {"project_id": pid,
                                                                    "email_address": "outsider@example.com"})
        self.assertEqual(added["account_id"], self.outsider.account_id)  # type: ignore[attr-defined]

        self.assertIsNone(await self.call(c, me, "projects.removeCollaborator",
                                          {"opts": {"project_id": pid, "account_id": friend_id}}))
        gone = await self.call(f, friend_id, "projects.update", {"project_id": pid, "title": "mine"})
        self.assertEqual(gone, {"error": "Error: you are not a collaborator on this project", "code": 403})
        self.assertEqual((await self.call(f, friend_id, "projects.list")), [])
        for bad, expected in (({"opts": {"project_id": pid, "account_id": me}}, "the owner cannot be removed"),
                              ({"opts": {"project_id": pid, "account_id": friend_id}}, "not on this project"),
                              ({"opts": {"project_id": pid}}, "missing argument 'account_id'")):
            answer = await self.call(c, me, "projects.removeCollaborator", bad)
            self.assertIn(expected, answer["error"], bad)
        self.assertEqual((await self.call(c, me, "projects.get", {"project_id": pid}))["title"], "New")

    async def test_other_accounts_and_their_projects_are_refused(self) -> None:
        c = await self.browser(self.owner)
        pid = await self.call(c, self.owner.account_id, "projects.createProject", {"title": "P"})  # type: ignore
        o = await self.browser(self.outsider)
        me = self.outsider.account_id  # type: ignore[attr-defined]
        # the broker refuses publishing as someone else: the subject is the security boundary
        with self.assertRaises(ConatError) as e:
            await o.request(f"hub.account.{self.owner.account_id}.api",  # type: ignore[attr-defined]
                            {"name": "projects.list", "args": []}, timeout=10)
        self.assertEqual(e.exception.code, 403)
        for name, params, endpoint in (
                ("projects.get", {"project_id": pid}, "projects/update"),
                ("projects.update", {"project_id": pid, "title": "x"}, "projects/update"),
                ("projects.start", {"project_id": pid}, "projects/start"),
                ("projects.stop", {"project_id": pid}, "projects/stop"),
                ("projects.restart", {"project_id": pid}, "projects/restart"),
                ("projects.state", {"project_id": pid}, "projects/stop"),
                ("projects.listCollaborators", {"project_id": pid}, "projects/update"),
                ("projects.addCollaborator", {"opts": {"project_id": pid, "account_id": me}},
                 "projects/collaborators/add"),
                ("projects.start", {"project_id": NO_SUCH_PROJECT}, "projects/start")):
            expected = await self.json_error(self.outsider, endpoint, params.get("opts", params))
            self.assertEqual(await self.call(o, me, name, params), expected, name)
        self.assertEqual((await self.call(c, self.owner.account_id, "projects.get",  # type: ignore[attr-defined]
                                          {"project_id": pid}))["title"], "P")
        # admins keep their admin flag: they may look at any project and choose a project id
        a = await self.browser(self.admin)
        admin_id = self.admin.account_id  # type: ignore[attr-defined]
        self.assertEqual((await self.call(a, admin_id, "projects.get", {"project_id": pid}))["title"], "P")
        chosen = "11111111-2222-4333-8444-555555555555"
        self.assertEqual(await self.call(a, admin_id, "projects.createProject", {"project_id": chosen}), chosen)
        self.assertEqual(await self.call(o, me, "projects.createProject", {"project_id": chosen}),
                         {"error": "Error: only administrators may choose a project_id", "code": 403})

    async def test_banned_accounts_are_refused_even_when_a_request_gets_through(self) -> None:
        o = await self.browser(self.outsider)
        me = self.outsider.account_id  # type: ignore[attr-defined]
        self.assertIn("now", await self.call(o, me, "system.ping"))
        r = await self.admin.post("admin/ban", {"account_id": me})
        self.assertEqual(r.code, 200, r)
        # the broker drops the banned account's connection (or, if the request wins that race,
        # the API refuses it)
        try:
            reply = await o.request(f"hub.account.{me}.api", {"name": "system.ping", "args": []}, timeout=10)
        except ConatError:
            pass
        else:
            self.assertEqual(reply.data, {"error": "Error: you must be signed in", "code": 401})
        # … and a request naming it (here from a hub client) is refused by the API itself
        h = await self.as_hub()
        self.assertEqual(await self.call(h, me, "system.ping"), {"error": "Error: you must be signed in", "code": 401})
        self.assertEqual(await self.call(h, NO_SUCH_PROJECT, "system.ping"),
                         {"error": "Error: you must be signed in", "code": 401})


class MalformedRequestTests(ApiCase):
    async def test_malformed_requests_get_clear_errors_and_the_service_keeps_going(self) -> None:
        h = await self.as_hub()
        me = self.owner.account_id  # type: ignore[attr-defined]
        subject = f"hub.account.{me}.api"
        shape = "Error: a hub API request is {name: '<group>.<function>', args: [...]}"
        cases: list[tuple[Any, str]] = [
            ("system.ping", shape), ([], shape), (None, shape), ({"args": []}, shape), ({"name": 5}, shape),
            ({"name": "system.ping", "args": "x"}, "Error: args must be a list"),
            ({"name": "system.ping", "args": [{}, {}]},
             "Error: system.ping takes at most one argument (an options object)"),
            ({"name": "projects.get", "args": [5]}, "Error: the argument of projects.get must be an object"),
            ({"name": "projects.get", "args": [{}]}, "Error: missing argument 'project_id'"),
            ({"name": "projects.get", "args": [{"project_id": "nope"}]}, "Error: project_id must be a UUID"),
            ({"name": "projects.get", "args": [{"project_id": ["x"]}]}, "Error: project_id must be a UUID"),
            ({"name": "projects.list", "args": [{"include_deleted": "yes"}]},
             "Error: include_deleted must be true or false"),
            ({"name": "projects.createProject", "args": [{"title": 5}]}, "Error: title must be a string"),
            ({"name": "projects.createProject", "args": [{"title": "t" * 2000}]},
             "Error: title is longer than 1024 characters"),
            ({"name": "projects.addCollaborator", "args": [{"opts": "x"}]},
             "Error: opts of projects.addCollaborator must be an object"),
            ({"name": "system.nope", "args": []}, "Error: unknown function 'system.nope'"),
            ({"name": "constructor", "args": []}, "Error: unknown function 'constructor'"),
            ({"name": "x" * 500}, "Error: unknown function '" + "x" * 100 + "'"),
            ({"name": "system.ping", "args": ["t" * (MAX_REQUEST + 1)]},
             f"Error: the request is larger than {MAX_REQUEST} bytes"),
        ]
        for request, expected in cases:
            reply = await h.request(subject, request, timeout=10)
            self.assertIsInstance(reply.data, dict, request)
            self.assertEqual(reply.data["error"], expected, str(request)[:200])
            self.assertNotIn("Traceback", reply.data["error"])
        reply = await h.request(subject, raw=b"\xc1", timeout=10)  # 0xc1 is never valid MessagePack
        self.assertEqual(reply.data["error"], "Error: the request could not be decoded")
        for bad_subject in ("hub.account.nope.api", f"hub.robot.{me}.api", "hub.account.1234.api"):
            reply = await h.request(bad_subject, {"name": "system.ping", "args": []}, timeout=10)
            self.assertEqual(reply.data["code"], 400, bad_subject)
        # a request in the JSON codec gets a JSON answer; missing args are no args
        reply = await h.request(subject, {"name": "projects.list"}, encoding=JSON, timeout=10)
        self.assertEqual((reply.encoding, reply.data), (JSON, []))
        # every supported function is documented
        self.assertTrue(all(f.doc for f in FUNCTIONS.values()))
        self.assertIn("now", await self.call(h, me, "system.ping"))


class ProjectCallerTests(ApiCase):
    async def test_a_project_may_ping_and_see_only_itself(self) -> None:
        c = await self.browser(self.owner)
        me = self.owner.account_id  # type: ignore[attr-defined]
        pid = await self.call(c, me, "projects.createProject", {"title": "mine"})
        other = await self.call(c, me, "projects.createProject", {"title": "other"})
        r = await self.owner.post("api-keys", {"action": "create", "project_id": pid})
        p = self.connect({"api_key": r.json["response"]["secret"]})
        self.assertEqual((await p.signed_in())["user"], {"project_id": pid})
        self.assertIn("now", await self.call(p, pid, "system.ping", kind="project"))
        self.assertEqual(await self.call(p, pid, "system.getVersion", kind="project"), {"version": __version__})
        self.assertEqual((await self.call(p, pid, "system.test", kind="project"))["project_id"], pid)
        self.assertEqual((await self.call(p, pid, "projects.state", {"project_id": pid}, kind="project"))["state"],
                         "opened")
        self.assertEqual((await self.call(p, pid, "projects.get", {"project_id": pid}, kind="project"))["title"],
                         "mine")
        self.assertEqual([x["project_id"] for x in await self.call(p, pid, "projects.list", kind="project")], [pid])
        self.assertEqual(await self.call(p, pid, "projects.get", {"project_id": other}, kind="project"),
                         {"error": "Error: this key is for another project", "code": 403})
        for name in sorted(FUNCTIONS):
            if not FUNCTIONS[name].projects_too:
                answer = await self.call(p, pid, name, {"project_id": pid}, kind="project")
                self.assertEqual(answer, {"error": "Error: only accounts may do this", "code": 403}, name)
        with self.assertRaises(ConatError) as e:
            await p.request(f"hub.account.{me}.api", {"name": "projects.list", "args": []}, timeout=10)
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:
            await p.request(f"hub.project.{other}.api", {"name": "system.ping", "args": []}, timeout=10)
        self.assertEqual(e.exception.code, 403)
        self.assertEqual(project_pids(pid), [])  # nothing here started it


class ProjectControlTests(ApiCase):
    async def test_start_restart_stop_really_run_the_project(self) -> None:
        self.addCleanup(self.stop_projects)
        c = await self.browser(self.owner)
        me, friend_id = self.owner.account_id, self.friend.account_id  # type: ignore[attr-defined]
        pid = await self.call(c, me, "projects.createProject", {"title": "run"})
        self.assertEqual((await self.call(c, me, "projects.state", {"project_id": pid}))["state"], "opened")
        started = await self.call(c, me, "projects.start", {"project_id": pid}, timeout=60)
        self.assertEqual(started["state"], "running", started)
        pids = project_pids(pid)
        self.assertEqual(len(pids), 1)
        self.assertEqual((await self.call(c, me, "projects.state", {"project_id": pid}))["project.pid"], pids[0])
        restarted = await self.call(c, me, "projects.restart", {"project_id": pid}, timeout=60)
        self.assertEqual(restarted["state"], "running")
        self.assertNotEqual(project_pids(pid), pids)
        self.assertEqual(len(project_pids(pid)), 1)
        # a removed collaborator may no longer stop it
        await self.call(c, me, "projects.addCollaborator", {"opts": {"project_id": pid, "account_id": friend_id}})
        await self.call(c, me, "projects.removeCollaborator", {"opts": {"project_id": pid, "account_id": friend_id}})
        f = await self.browser(self.friend)
        self.assertEqual(await self.call(f, friend_id, "projects.stop", {"project_id": pid}),
                         {"error": "Error: you are not a collaborator on this project", "code": 403})
        self.assertEqual(len(project_pids(pid)), 1)
        stopped = await self.call(c, me, "projects.stop", {"project_id": pid}, timeout=60)
        self.assertEqual(stopped["state"], "opened")
        self.assertEqual(project_pids(pid), [])


class ServiceTests(unittest.TestCase):
    timeout = 60

    async def test_split_processes_broker_here_api_there(self) -> None:
        """A hub with only --conat-server and one with only --conat-api reaching it through
        CONAT_SERVER; projects run in neither, so control says so and state comes from the store."""
        tmp = self.mktemp()
        broker = start_hub(self, settings_for(tmp, {"conat-server": True}))
        with self.assertRaises(KeyError):
            broker.hub.getServiceNamed("conat-api")
        api = start_hub(self, settings_for(tmp, {"conat-api": True}, {"CONAT_SERVER": broker.root}))
        self.assertEqual(sorted(api.hub.settings.parts), ["conat-api"])
        self.assertIsNone(api.hub.conat)
        await api_service(api.hub).when_ready()
        assert api.hub.auth is not None
        accounts = api.hub.auth.accounts
        account = await accounts.create("split@example.com", "a-Good-passphrase", "Split", "User")
        session = await accounts.start_session(account)
        c = connect(reactor, broker.root, cookies={api.hub.auth.names.remember_me: session.session.cookie_value},
                    reconnect=False)
        self.addCleanup(c.close)
        me = (await c.signed_in())["user"]["account_id"]

        async def call(name: str, *args: Any) -> Any:
            return (await c.request(f"hub.account.{me}.api", {"name": name, "args": list(args)}, timeout=30)).data

        self.assertIn("now", await call("system.ping"))
        pid = await call("projects.createProject", {"title": "split"})
        self.assertEqual((await call("projects.get", {"project_id": pid}))["title"], "split")
        self.assertEqual(await call("projects.start", {"project_id": pid}),
                         {"error": "Error: this hub process does not run projects (start it with --proxy-server "
                                   "or --all)", "code": 503})
        self.assertEqual(await call("projects.state", {"project_id": pid}), {"state": "opened"})
        # Banned in the database while the broker (another process) still has the connection
        # open: the API refuses, unless the ban's revocation (within a second, by design) has
        # already closed the connection; either way nothing is listed.
        await api.hub.store.set_banned(me, True)
        try:
            self.assertEqual(await call("projects.list"), {"error": "Error: you must be signed in", "code": 401})
        except ConatError as e:
            self.assertEqual(str(e), "Error: remember me cookie expired")
        await api.hub.store.set_banned(me, False)
        c.close()  # the ban closes it within a second anyway: a new connection, signed in again
        c = connect(reactor, broker.root, cookies={api.hub.auth.names.remember_me: session.session.cookie_value},
                    reconnect=False)
        self.addCleanup(c.close)
        await c.signed_in()
        self.assertEqual([p["project_id"] for p in await call("projects.list")], [pid])
        # stopping the service unsubscribes: nobody answers any more (once the broker, in the
        # other process, has seen the unsubscription or the closed connection)
        await api_service(api.hub).stopService()
        assert broker.hub.conat is not None
        index = broker.hub.conat.broker.index
        await until(lambda: index.get(SUBJECT) is None, what="the broker to drop the API's subscription")
        with self.assertRaises(ConatError) as e:
            await call("system.ping")
        self.assertEqual(e.exception.code, 503)

    async def test_the_api_waits_for_an_unreachable_broker_and_stops_cleanly(self) -> None:
        from tests.support import free_tcp_port

        dead = f"http://127.0.0.1:{free_tcp_port()}"
        hub = start_hub(self, settings_for(self.mktemp(), {"conat-api": True}, {"CONAT_SERVER": dead}))
        service = api_service(hub.hub)
        ready = service.when_ready()
        self.assertFalse(ready.called)
        await service.stopService()
        with self.assertRaises(CancelledError):
            await ready
        self.assertIsNone(service.client)
