"""Issue 13 §2, from the attacker's seat: a project's owner uses the proxy to reach a server
that is not the project's, by listening on the same port number on another address.

The victim listens on 127.0.0.1:P: a plain TCP server standing in for PostgreSQL or any
local service (here, in the test process), or another project's server. The attacker's
project listens on 127.0.0.2:P, [::1]:P or [::]:P (0.0.0.0:P cannot be bound), or on
127.0.0.1:P until the proxy has checked the port and then lets the victim have it. Requests
go through ``/<project>/port/P/`` and ``/<project>/server/P/`` with the attacker's session.
The victim must never get a byte: the answer is the attacker's own server or a refusal.

Every case runs in single-user mode (all projects share the hub's uid: ownership is by
the sockets in the project's process tree) and in multi-user mode (each project has its own
uid), since the two decide ownership differently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from twisted.internet import protocol, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.projects import sockets
from tests.security.tenants import hub_in_mode
from tests.support import drive_clocks, free_tcp_port, parse_response, raw_http, until
from tests.web.api_client import ApiClient

LISTENER = Path(__file__).resolve().parent / "listener.py"
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
"""listener.py needs only the standard library; a project uid may not reach the test's venv."""


class Victim(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data  # type: ignore[attr-defined]
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nvictim")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class VictimFactory(protocol.ServerFactory):
    protocol = Victim

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""


class PortOwnershipTests(unittest.TestCase):
    timeout = 120
    multi_user = False

    async def setUp(self) -> None:
        self.hub = hub_in_mode(self, multi_user=self.multi_user)
        drive_clocks(self, self.hub)
        # A clock that stands still: the proxy's reading of who listens where stays fresh
        # until the test says otherwise, so "between the check and the connect" is driven.
        self.clock = task.Clock()
        self.clock.advance(1000.0)
        assert self.hub.hub.proxy is not None
        self.patch(self.hub.hub.proxy.access, "clock", self.clock)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.attacker = await self.user("attacker@example.com")
        self.project = (await self.attacker.post("projects/create", {"title": "mine"})).json["project_id"]
        self.manager = self.hub.hub.projects.manager  # type: ignore[union-attr]
        self.addCleanup(self.hub.stop_projects)
        self.port = free_tcp_port()

    async def user(self, email: str) -> ApiClient:
        client = ApiClient(self.hub.base, self.pool)
        r = await client.sign_up(email)
        assert r.code == 201, r
        return client

    def victim_service(self) -> VictimFactory:
        factory = VictimFactory()
        port = reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory

    async def listen(self, client: ApiClient, project_id: str, name: str, host: str, *flags: str) -> str:
        """Run listener.py in the project; its first report (``listening PID`` or ``error …``)."""
        r = await client.post("projects/start", {"project_id": project_id})
        assert r.code == 200, r
        home = self.manager.home(project_id)
        shutil.copy(LISTENER, home / "listener.py")
        r = await client.post("exec", {"project_id": project_id, "command": PYTHON,
                                       "args": ["-u", "listener.py", name, host, str(self.port), *flags],
                                       "async_call": True})
        assert r.code == 200, r
        report = home / name
        await until(lambda: report.exists() and report.read_text().endswith("\n"), what=f"{name} to report")
        return report.read_text().splitlines()[0]

    async def get(self, client: ApiClient, path: str) -> tuple[int, bytes]:
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        raw = await raw_http(self.hub.port, (f"GET {path} HTTP/1.1\r\nHost: hub.test\r\nConnection: close\r\n"
                                             f"Cookie: {cookie}\r\n\r\n").encode())
        status, _, body = parse_response(raw)
        return status, body

    async def both_routes(self) -> list[tuple[int, bytes]]:
        return [await self.get(self.attacker, f"/{self.project}/{kind}/{self.port}/") for kind in ("port", "server")]

    def assert_refused(self, answers: list[tuple[int, bytes]], fragment: bytes) -> None:
        for status, body in answers:
            self.assertEqual(status, 403, body[:300])
            self.assertIn(fragment, body)

    # the cases ------------------------------------------------------------------------------

    async def test_other_loopback_address_does_not_reach_127_0_0_1(self) -> None:
        victim = self.victim_service()
        self.assertTrue((await self.listen(self.attacker, self.project, "attacker", "127.0.0.2")).startswith(
            "listening"))
        self.assert_refused(await self.both_routes(), b"not on 127.0.0.1, ::1 or all interfaces")
        self.assertEqual(victim.connections, 0)

    async def test_ipv6_loopback_reaches_only_the_projects_own_server(self) -> None:
        victim = self.victim_service()
        self.assertTrue((await self.listen(self.attacker, self.project, "attacker", "::1")).startswith("listening"))
        for status, body in await self.both_routes():
            self.assertEqual((status, body), (200, b"attacker"))
        self.assertEqual(victim.connections, 0)

    async def test_wildcard_that_fails_to_bind_then_ipv6_only_wildcard(self) -> None:
        victim = self.victim_service()
        self.assertEqual(await self.listen(self.attacker, self.project, "any4", "0.0.0.0"), "error EADDRINUSE")
        self.assert_refused(await self.both_routes(), b"does not listen on that port")
        self.assertTrue((await self.listen(self.attacker, self.project, "any6", "::", "v6only")).startswith(
            "listening"))
        self.clock.advance(60)  # a new reading
        for status, body in await self.both_routes():
            self.assertEqual((status, body), (200, b"any6"))
        self.assertEqual(victim.connections, 0)

    async def test_listener_closes_between_check_and_connect(self) -> None:
        self.assertTrue((await self.listen(self.attacker, self.project, "attacker", "127.0.0.1")).startswith(
            "listening"))
        status, body = await self.get(self.attacker, f"/{self.project}/port/{self.port}/")
        self.assertEqual((status, body), (200, b"attacker"))  # the proxy has checked the port: the project's
        # Now the project's listener goes and the victim takes the address. The proxy's reading
        # is still fresh (its clock stands still), so it connects without reading again.
        os.kill(await self._pid("attacker"), signal.SIGKILL)
        await until(lambda: not self._listening("127.0.0.1"), what="the attacker's listener to close")
        victim = self.victim_service()
        for kind in ("port", "server"):
            status, body = await self.get(self.attacker, f"/{self.project}/{kind}/{self.port}/")
            self.assertEqual(status, 403, body[:300])
            self.assertIn(b"The server that answered on that port is not this project", body)
        self.assertEqual(victim.received, b"", "the request reached the victim")

    async def test_another_projects_server_on_127_0_0_1(self) -> None:
        other = await self.user("victim@example.com")
        theirs = (await other.post("projects/create", {"title": "theirs"})).json["project_id"]
        self.assertTrue((await self.listen(other, theirs, "victim", "127.0.0.1")).startswith("listening"))
        self.assertTrue((await self.listen(self.attacker, self.project, "attacker", "127.0.0.2")).startswith(
            "listening"))
        self.assert_refused(await self.both_routes(), b"not on 127.0.0.1, ::1 or all interfaces")
        self.assertEqual((self.manager.home(theirs) / "victim").read_text().splitlines()[1:], [])

    # helpers ------------------------------------------------------------------------------

    async def _pid(self, name: str) -> int:
        first = (self.manager.home(self.project) / name).read_text().splitlines()[0]
        return int(first.split()[1])

    def _listening(self, host: str) -> bool:
        return any(e.state == sockets.LISTEN and e.port == self.port and e.local == host for e in sockets.table())


class MultiUserPortOwnershipTests(PortOwnershipTests):
    multi_user = True


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


if not _ipv6_loopback():  # pragma: no cover - CI and the dev machines have ::1
    PortOwnershipTests.skip = MultiUserPortOwnershipTests.skip = "no IPv6 loopback here"  # type: ignore[attr-defined]
