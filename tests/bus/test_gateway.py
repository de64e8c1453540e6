"""Signing in to conat with every upstream credential, and what accounts may reach."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor

from cocalc_hub.auth import project_tokens
from cocalc_hub.conat.client import ConatError
from tests.conat.support import sockets
from tests.members import MembersCase
from tests.support import make_admin, until
from tests.web.api_client import ApiClient


class AuthCase(MembersCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        secrets = self.hub.hub.settings.secrets_dir
        self.hub_password = (secrets / "conat-password").read_text().strip()
        self.system_password = (secrets / "conat-system-password").read_text().strip()

    async def add_members(self) -> None:
        self.admin = await self.account("admin@example.com")
        await make_admin(self.hub, self.admin.account_id)  # type: ignore[attr-defined]
        await super().add_members()

    async def refused(self, cookies: dict[str, str]) -> str:
        c = self.client(cookies)
        with self.assertRaises(ConatError) as e:
            await c.signed_in(timeout=10)
        return str(e.exception)

    def broker(self) -> Any:
        assert self.hub.hub.conat is not None
        return self.hub.hub.conat.broker


class SignInTests(AuthCase):
    async def test_each_credential_gives_its_user(self) -> None:
        info = await self.browser(self.owner).signed_in()
        self.assertEqual(info, {"max_payload": 8000000, "id": "0", "user": {"account_id": self.owner.account_id}})
        self.assertEqual((await self.client({"hub_password": self.hub_password}).signed_in())["user"],
                         {"hub_id": "hub"})
        self.assertEqual((await self.client({"sys": self.system_password}).signed_in())["user"],
                         {"hub_id": "system"})
        r = await self.owner.post("api-keys", {"action": "create", "name": "k"})
        key = r.json["response"]["secret"]
        self.assertEqual((await self.client({"api_key": key}).signed_in())["user"],
                         {"account_id": self.owner.account_id})
        r = await self.owner.post("api-keys", {"action": "create", "project_id": self.project})
        project_key = r.json["response"]["secret"]
        self.assertEqual((await self.client({"api_key": project_key}).signed_in())["user"],
                         {"project_id": self.project})
        store = self.hub.hub.store
        token, stored = project_tokens.new_token(b"k" * 32, self.project)
        await store.set_project_state(self.project, {"state": "running"}, secret_token=stored)
        self.assertEqual((await self.client({"project_id": self.project, "project_secret": token}).signed_in())["user"],
                         {"project_id": self.project})
        # What the database holds is not a credential.
        self.assertEqual(await self.refused({"project_id": self.project, "project_secret": stored}),
                         "Error: invalid secret token for project")

    async def test_failures_say_why(self) -> None:
        self.assertEqual(await self.refused({}), "Error: no auth cookie set; set one of 'hub_password', "
                                                 "'remember_me', api_key, 'project_secret' or 'project_id'")
        self.assertEqual(await self.refused({"hub_password": "nope"}), "Error: invalid hub password")
        self.assertEqual(await self.refused({"sys": "nope", "hub_password": self.hub_password}),
                         "Error: invalid system account password")
        self.assertEqual(await self.refused({"api_key": "sk-notakey000001"}), "Error: api key no longer valid")
        self.assertEqual(await self.refused({"project_secret": "x"}),
                         "Error: must specify project_id in the cookie project_id")
        self.assertEqual(await self.refused({"project_secret": "x", "project_id": self.project}),
                         "Error: invalid secret token for project")
        self.assertEqual(await self.refused({"remember_me": "sha512$a$b"}),
                         "Error: badly formatted remember_me cookie")
        self.assertIn("must set one of the following cookies", await self.refused({"theme": "dark"}))
        # the broker forgets each refused socket once its close arrives
        await until(lambda: sockets(self.broker()) == [], what="the refused sockets to be gone")
        self.assertEqual(self.broker().total, 0)

    async def test_signing_out_closes_the_browsers_connection(self) -> None:
        # No cached sign-in expires during this test: only the sign-out itself can close the
        # connection (at once, not when a cache runs out).
        self.patch(self.hub.hub.auth.auth, "ttl", 3600.0)
        c = self.browser(self.friend)
        await c.signed_in()
        gone: defer.Deferred[str] = defer.Deferred()
        c.listeners.append(lambda what, detail: gone.callback(detail) if what == "disconnected" else None)
        r = await self.friend.post("accounts/sign-out")
        self.assertEqual(r.code, 200)
        self.assertEqual(await gone.addTimeout(30, reactor), "io server disconnect")
        self.assertEqual(c.error and str(c.error), "Error: remember me cookie expired")

    async def test_a_password_change_closes_the_other_sessions_and_a_deleted_key_its_clients(self) -> None:
        self.patch(self.hub.hub.auth.auth, "ttl", 3600.0)  # closed by the change itself, not by a cache running out
        other_device = ApiClient(self.hub.base, self.pool)
        self.assertEqual((await other_device.sign_in("friend@example.com")).code, 200)
        here, there = self.browser(self.friend), self.browser(other_device)
        r = await self.friend.post("api-keys", {"action": "create", "name": "script"})
        key = r.json["response"]
        scripted = self.client({"api_key": key["secret"]})
        for c in (here, there, scripted):
            await c.signed_in()
        r = await self.friend.post("accounts/set-password", {"currentPassword": "a-Good-passphrase",
                                                             "newPassword": "another-Good-passphrase"})
        self.assertEqual(r.code, 200)
        await until(lambda: not there.is_signed_in, what="the other session's connection to close")
        self.assertEqual(str(there.error), "Error: remember me cookie expired")
        self.assertTrue(here.is_signed_in and scripted.is_signed_in)
        r = await self.friend.post("api-keys", {"action": "delete", "id": key["id"]})
        self.assertEqual(r.code, 200)
        await until(lambda: not scripted.is_signed_in, what="the key's connection to close")
        self.assertEqual(str(scripted.error), "Error: api key no longer valid")
        self.assertTrue(here.is_signed_in)

    async def test_banning_closes_every_connection_of_the_account(self) -> None:
        clients = [self.browser(self.outsider) for _ in range(2)]
        for c in clients:
            await c.signed_in()
        r = await self.admin.post("admin/ban", {"account_id": self.outsider.account_id})
        self.assertEqual(r.code, 200)
        await until(lambda: not any(c.is_signed_in for c in clients), what="the banned clients to be disconnected")
        # a client hears of its disconnection before the broker has counted its socket out
        await until(lambda: self.broker().total == 0, what="the broker to count the connections out")


class BasePathTests(AuthCase):
    env = {"BASE_PATH": "/base"}

    async def test_cookie_names_carry_the_base_path_prefix(self) -> None:
        self.assertIn("%2Fbaseremember_me", self.owner.cookies)
        info = await self.browser(self.owner).signed_in()
        self.assertEqual(info["user"], {"account_id": self.owner.account_id})
        self.assertEqual((await self.client({"%2Fbasehub_password": self.hub_password}).signed_in())["user"],
                         {"hub_id": "hub"})
        self.assertIn("'%2Fbasehub_password'", await self.refused({}))


class PermissionTests(AuthCase):
    async def test_what_an_account_may_reach(self) -> None:
        owner = self.browser(self.owner)
        await owner.signed_in()
        a = self.owner.account_id
        self.assertTrue(owner.inbox and owner.inbox.startswith(f"_INBOX.account-{a}."))
        hub = self.client({"hub_password": self.hub_password})
        await hub.signed_in()
        await self.hub.hub.getServiceNamed("conat-api").stopService()  # this stands in for the hub API
        api = await hub.subscribe("hub.*.*.api", queue="0", callback=lambda m: m.respond(m.subject))
        self.addCleanup(api.close)
        # the hub API: publish (request) yes, and the hub learns who from the subject
        self.assertEqual((await owner.request(f"hub.account.{a}.api", {"name": "x"})).data, f"hub.account.{a}.api")
        with self.assertRaises(ConatError) as e:
            await owner.request(f"hub.account.{self.friend.account_id}.api", 1)
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:
            await owner.subscribe(f"hub.account.{a}.api")
        self.assertEqual(e.exception.code, 403)
        for subject in (f"account.{a}.x", f"foo.account-{a}.y", f"project.{self.project}.z",
                        f"persist.project-{self.project}.w", "public.news"):
            sub = await owner.subscribe(subject)
            sub.close()
        with self.assertRaises(ConatError):
            await owner.publish("public.news", 1)
        outsider = self.browser(self.outsider)
        await outsider.signed_in()
        for subject in (f"project.{self.project}.z", f"account.{a}.x", "sys.conat.default", "anything"):
            with self.assertRaises(ConatError) as e:
                await outsider.publish(subject, 1)
            self.assertEqual(e.exception.code, 403, subject)
        admin = self.browser(self.admin)
        await admin.signed_in()
        await (await admin.subscribe("sys.conat.default")).next(0.01).addErrback(lambda _: None)

    async def test_removing_a_collaborator_takes_their_subscriptions_away(self) -> None:
        friend = self.browser(self.friend)
        await friend.signed_in()
        sub = await friend.subscribe(f"project.{self.project}.files")
        hub = self.client({"hub_password": self.hub_password})
        await hub.signed_in()
        self.assertEqual(await hub.publish(f"project.{self.project}.files", "before"), 1)
        self.assertEqual((await sub.next(30)).data, "before")
        r = await self.owner.post("projects/collaborators/remove", {"project_id": self.project,
                                                                    "account_id": self.friend.account_id})
        self.assertEqual(r.code, 200)
        await until(lambda: not self.broker().index.get(f"project.{self.project}.files"),
                    what="the broker to drop the subscription")
        self.assertEqual(await hub.publish(f"project.{self.project}.files", "after"), 0)
        with self.assertRaises(ConatError) as e:
            await friend.publish(f"project.{self.project}.files", "sneaky")
        self.assertEqual(e.exception.code, 403)


class SysServiceTests(AuthCase):
    async def test_stats_usage_and_disconnect_for_admins_and_hubs_only(self) -> None:
        admin = self.browser(self.admin)
        victim = self.browser(self.outsider)
        await admin.signed_in()
        await victim.signed_in()
        stats = await admin.call("sys.conat.default", "stats")
        users = sorted(str(s["user"]) for s in stats["0"].values())
        # {"hub_id": "hub"}: the hub's own in-process services (conat API, persist…)
        self.assertIn(str({"hub_id": "hub"}), users)
        self.assertEqual([u for u in users if u != str({"hub_id": "hub"})],
                         sorted([str({"account_id": self.admin.account_id}), str({"hub_id": "system"}),
                                 str({"account_id": self.outsider.account_id})]))
        usage = await admin.call("sys.conat.default.0", "usage")
        self.assertEqual(usage["0"]["total"], 2)
        (victim_id,) = [sid for sid, s in stats["0"].items() if s["user"] == {"account_id": self.outsider.account_id}]
        self.assertEqual(await admin.call("sys.conat.default.0", "disconnect", victim_id), 1)
        await until(lambda: not victim.is_signed_in, what="the victim to be disconnected")
        self.assertEqual(await admin.call("sys.conat.default.0", "clusterAddresses"), [self.hub.root])
        with self.assertRaises(ConatError) as e:
            await admin.call("sys.conat.default", "clusterAddresses")
        self.assertEqual(str(e.exception), "Error: wrong service")
        owner = self.browser(self.owner)
        await owner.signed_in()
        with self.assertRaises(ConatError) as e:
            await owner.call("sys.conat.default", "stats")
        self.assertEqual(e.exception.code, 403)
        hub = self.client({"hub_password": self.hub_password})
        await hub.signed_in()
        self.assertIn("0", await hub.call("sys.conat.default", "usage"))
