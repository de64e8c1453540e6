"""Losing access cuts off every open channel within a second (issue 13 §3), from the seat of
the caller who loses it: a removed collaborator, a signed-out or banned user, a user whose
password was changed elsewhere, a script whose API key was deleted.

Each victim holds, to a backend inside a real running project: a proxied WebSocket, a
response still streaming, a keep-alive HTTP connection, new HTTP requests, and a conat
WebSocket subscribed to one of the project's subjects (tests/security/revocation_probes.py).
The change is made through this hub's API, through the real ``cocalc-hub-admin`` CLI (a
separate process writing the database) and through a second hub sharing the database;
on SQLite and on PostgreSQL. No cache may expire during these tests (their lifetimes are
set to an hour): only the revocation itself can close anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.client import Client, connect
from tests.db.support import fresh_postgres_url
from tests.proxy.support import start_backend
from tests.security.revocation_probes import Channels, WsProbe, ws_upgrade
from tests.support import RunningHub, make_admin, settings_for, spawn, start_hub, until
from tests.web.api_client import ApiClient

BOUND = 1.0
PASSWORD = "a-Good-passphrase"

Event = Callable[["Victim"], Awaitable[None]]


class Victim:
    """An account about to lose access, with its own API client."""

    def __init__(self, client: ApiClient, email: str) -> None:
        self.client = client
        self.email = email
        self.account_id: str = client.account_id  # type: ignore[attr-defined]
        self.cookies: dict[str, str] = dict(client.cookies)


class RevocationHub:
    """A running hub with a project, its backend, an admin and an owner; victims and channels."""

    kind = "sqlite"
    timeout = 300
    slow = "/special/slow"
    """The backend's streaming response (100 ticks: 5 s)."""

    # the hub, a project with a backend, an admin and an owner ------------------------------

    async def start(self, *, other_hub: bool = False) -> None:
        case: Any = self
        tmp = Path(case.mktemp()).resolve()
        tmp.mkdir(parents=True)
        self.tmp = tmp
        self.database = await fresh_postgres_url(case) if self.kind == "postgres" else f"sqlite:{tmp / 'hub.db'}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.other: RunningHub | None = None
        if other_hub:
            # Started first: a hub recovers the running projects it finds when it starts.
            self.other = start_hub(case, settings_for(tmp / "b", {"database": self.database}))
            assert (await ApiClient(self.other.base, self.pool).get("accounts/profile")).code == 401
        self.hub = start_hub(case, settings_for(tmp / "a", {"database": self.database, "project-stop-grace": "1"}))
        hub = self.hub.hub
        assert hub.auth is not None and hub.proxy is not None and hub.conat is not None
        case.patch(hub.auth.auth, "ttl", 3600.0)
        case.patch(hub.proxy.access, "ttl", 3600.0)
        case.patch(hub.conat.permissions, "ttl", 3600.0)
        self.admin = await self.sign_up("admin@example.com")
        await make_admin(self.hub, self.admin.account_id)  # type: ignore[attr-defined]
        self.owner = await self.sign_up("owner@example.com")
        self.project = (await self.owner.post("projects/create", {"title": "P"})).json["project_id"]
        self.backend_port = await self.backend()
        case.addCleanup(self.hub.stop_projects)
        password = (hub.settings.secrets_dir / "conat-password").read_text().strip()
        self.publisher: Client = connect(reactor, self.hub.base, cookies={"hub_password": password}, reconnect=False)
        case.addCleanup(self.publisher.close)
        await self.publisher.signed_in(timeout=30)
        self.victims = 0

    async def sign_up(self, email: str, base: str | None = None) -> ApiClient:
        c = ApiClient(base or self.hub.base, self.pool)
        r = await c.sign_up(email, PASSWORD)
        assert r.code == 201, r
        c.account_id = r.json["account_id"]  # type: ignore[attr-defined]
        return c

    async def sign_in(self, email: str, base: str) -> ApiClient:
        c = ApiClient(base, self.pool)
        r = await c.sign_in(email, PASSWORD)
        assert r.code == 200, r
        c.account_id = (await c.get("accounts/profile")).json["account_id"]  # type: ignore[attr-defined]
        return c

    async def backend(self) -> int:
        return await start_backend(self.owner, self.project)


    # victims and their channels -----------------------------------------------------------

    async def victim(self) -> Victim:
        """A new collaborator on the project (signed in on this hub)."""
        self.victims += 1
        email = f"victim{self.victims}@example.com"
        client = await self.sign_up(email)
        r = await self.owner.post("projects/collaborators/add", {"project_id": self.project, "email": email})
        assert r.code == 200, r
        return Victim(client, email)

    def channels_prefix(self) -> str:
        """Where the project's backend is reached through the proxy."""
        base_path = self.hub.hub.settings.base_path
        prefix = "" if base_path == "/" else base_path
        return f"{prefix}/{self.project}/server/{self.backend_port}"

    async def channels(self, cookies: dict[str, str]) -> Channels:
        case: Any = self
        channels = Channels(self.hub.port, self.hub.base, self.channels_prefix(),
                            "; ".join(f"{k}={v}" for k, v in cookies.items()), cookies,
                            f"project.{self.project}.revocation-{self.victims}", self.publisher, slow=self.slow)
        case.addCleanup(channels.close)
        await channels.open()
        return channels

    async def check(self, name: str, event: Event, *, key: bool = False) -> dict[str, float | None]:
        """Open a fresh victim's channels, make the change, measure each channel's cut-off."""
        victim = await self.victim()
        cookies = victim.cookies
        if key:
            r = await victim.client.post("api-keys", {"action": "create", "name": "script"})
            victim.key = r.json["response"]  # type: ignore[attr-defined]
            cookies = {"api_key": victim.key["secret"]}  # type: ignore[attr-defined]
        channels = await self.channels(cookies)
        await event(victim)
        since = reactor.seconds()
        cut = await channels.cut_off(since, BOUND)
        if cut["proxied WS"] is not None:
            # idle, so between two frames: the browser is told why (policy violation)
            case: Any = self
            case.assertEqual(channels.ws and channels.ws.close_code, 1008, f"{name}: the WebSocket's close code")
        return cut

    def assert_cut_off(self, results: dict[str, dict[str, float | None]]) -> None:
        late = {event: [ch for ch, t in cut.items() if t is None] for event, cut in results.items()}
        late = {event: chs for event, chs in late.items() if chs}
        case: Any = self
        case.assertEqual(late, {}, f"channels still open {BOUND:g} s after the change: {json.dumps(results)}")

    # the changes ------------------------------------------------------------------------------

    async def ok(self, pending: Awaitable[Any]) -> None:
        r = await pending
        assert r.code == 200, r

    def api_events(self, base: str) -> dict[str, tuple[Event, bool]]:
        """The five changes, made through the API of the hub at ``base``."""

        async def client_of(v: Victim) -> ApiClient:
            return v.client if base == self.hub.base else await self.sign_in(v.email, base)

        async def owner() -> ApiClient:
            return self.owner if base == self.hub.base else await self.sign_in("owner@example.com", base)

        async def admin() -> ApiClient:
            return self.admin if base == self.hub.base else await self.sign_in("admin@example.com", base)

        async def remove(v: Victim) -> None:
            await self.ok((await owner()).post("projects/collaborators/remove",
                                               {"project_id": self.project, "account_id": v.account_id}))

        async def sign_out(v: Victim) -> None:
            client = ApiClient(base, self.pool)
            client.cookies.update(v.cookies)  # the very session that holds the channels
            headers = {}
            if base != self.hub.base:  # each hub has its own CSRF secret
                headers["X-CSRF-Token"] = (await client.get("auth/csrf")).json["token"]
            await self.ok(client.post("accounts/sign-out", headers=headers))

        async def password(v: Victim) -> None:
            elsewhere = await self.sign_in(v.email, base)  # another device changes the password
            await self.ok(elsewhere.post("accounts/set-password", {"currentPassword": PASSWORD,
                                                                   "newPassword": "another-Good-passphrase"}))

        async def delete_key(v: Victim) -> None:
            await self.ok((await client_of(v)).post("api-keys", {"action": "delete",
                                                                 "id": v.key["id"]}))  # type: ignore[attr-defined]

        async def ban(v: Victim) -> None:
            await self.ok((await admin()).post("admin/ban", {"account_id": v.account_id}))

        return {"remove collaborator": (remove, False), "sign-out": (sign_out, False),
                "password change": (password, False), "API key deletion": (delete_key, True),
                "ban": (ban, False)}

    async def cli(self, *args: str) -> None:
        case: Any = self
        cmd = [sys.executable, "-m", "cocalc_hub.admin", "--data", str(self.tmp / "a" / "data"),
               "--database", self.database, "--json", *args]
        proc, _ = spawn(case, cmd)
        code = await proc.ended
        case.assertEqual(code, 0, proc.output.decode())

    def cli_events(self) -> dict[str, tuple[Event, bool]]:
        async def remove(v: Victim) -> None:
            await self.cli("remove-collaborator", self.project, v.email)

        async def reset(v: Victim) -> None:
            await self.cli("reset-password", v.email, "--password", "another-Good-passphrase")

        async def ban(v: Victim) -> None:
            await self.cli("ban", v.email)

        return {"remove-collaborator": (remove, False), "reset-password": (reset, False), "ban": (ban, False)}

    async def run_events(self, events: dict[str, tuple[Event, bool]]) -> None:
        results = {}
        for name, (event, key) in events.items():
            results[name] = await self.check(name, event, key=key)
        self.assert_cut_off(results)


class RevocationSuite(RevocationHub):
    async def test_changes_through_the_api(self) -> None:
        await self.start()
        await self.run_events(self.api_events(self.hub.base))

    async def test_changes_through_the_admin_cli(self) -> None:
        await self.start()
        await self.run_events(self.cli_events())

    async def test_changes_through_another_hub(self) -> None:
        await self.start(other_hub=True)
        assert self.other is not None
        await self.run_events(self.api_events(self.other.base))


class SQLiteRevocationTests(RevocationSuite, unittest.TestCase):
    kind = "sqlite"

    async def test_a_websocket_in_the_middle_of_a_frame_is_closed_too(self) -> None:
        """A victim that stops reading while the backend sends it a big message: the tunnel
        is paused in the middle of a frame (no close frame can go in), and is dropped."""
        await self.start()
        victim = await self.victim()
        channels = await self.channels(victim.cookies)
        ws = channels.ws
        assert ws is not None and ws.transport is not None
        ws.stop_reading()
        ws.send(b"x" * (32 << 20))  # echoed back: far more than the socket buffers hold
        proxy = self.hub.hub.proxy
        assert proxy is not None

        def tunnel_paused_mid_frame() -> bool:
            doors = getattr(proxy, "front_doors", [])  # (before this version: nothing to look at)
            tunnels = [front.tunnel for door in doors for front in door if front.tunnel is not None]
            if not doors:
                return True
            frames = [getattr(t, "frames", None) for t in tunnels]  # (before this version: no frames)
            return any(f is None or not f.at_boundary for f in frames)

        await until(tunnel_paused_mid_frame, what="the echo to fill the buffers")
        await self.ok(self.owner.post("projects/collaborators/remove",
                                      {"project_id": self.project, "account_id": victim.account_id}))
        since = reactor.seconds()
        ws.transport.resumeProducing()  # type: ignore[attr-defined]  # (a reader notices the reset at once)
        await until(lambda: ws.closed_at is not None, timeout=BOUND, what="the WebSocket to be closed")
        self.assertLessEqual(ws.closed_at - since if ws.closed_at else BOUND + 1, BOUND)

    async def test_a_websocket_authorised_just_before_the_change_is_closed_too(self) -> None:
        """The upgrade was authorised, then waited for the project's ports to be read while the
        collaborator was removed (after the hub had looked at its open channels)."""
        await self.start()
        victim = await self.victim()
        hub = self.hub.hub
        assert hub.proxy is not None
        manager = hub.proxy.manager
        read_ports = manager.port_targets
        gate: defer.Deferred[None] = defer.Deferred()
        waiting: list[str] = []

        async def slow_ports(project_id: str) -> dict[int, str]:
            waiting.append(project_id)
            await gate
            return await read_ports(project_id)

        self.patch(manager, "port_targets", slow_ports)
        hub.proxy.access.forget_project(self.project)  # the ports are read afresh
        prefix = self.channels_prefix()
        ws = WsProbe(ws_upgrade(f"{prefix}/ws", "; ".join(f"{k}={v}" for k, v in victim.cookies.items())))
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.hub.port).connect(protocol.Factory.forProtocol(lambda: ws))
        await until(lambda: bool(waiting), what="the upgrade to wait for the ports")
        await self.ok(self.owner.post("projects/collaborators/remove",
                                      {"project_id": self.project, "account_id": victim.account_id}))
        since = reactor.seconds()
        feed: Any = next((s for s in hub if s.name == "revocations"), None)  # (before this version: none)
        if feed is not None:  # it has delivered the change too: its look at open channels is over as well
            last = await hub.store.last_revocation()
            await until(lambda: feed.seq is not None and feed.seq >= last, what="the feed to catch up")
        gate.callback(None)
        await until(lambda: ws.closed_at is not None, timeout=BOUND, what="the WebSocket to be refused or closed")
        self.assertLessEqual((ws.closed_at or since + BOUND + 1) - since, BOUND)


class PostgresRevocationTests(RevocationSuite, unittest.TestCase):
    kind = "postgres"
