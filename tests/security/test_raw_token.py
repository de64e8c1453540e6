"""Issue 13 §1 ("the project's token is not readable by any route"), from the attacker's seat.

``/<project>/raw/`` is forwarded to the project program's own server with the project's
secret token in a header. A member kills the project program (in multi-user mode they
share its uid; in single-user mode everyone does) and, before the hub notices, another
process binds the freed port. The next ``/raw/`` request must not hand that process the
token, nor any byte: the proxy checks whose socket answered, as on ``/port/``, and the
member gets a clear error instead.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.projects import sockets
from tests.security.tenants import hub_in_mode
from tests.security.test_ports import VictimFactory
from tests.support import drive_clocks, parse_response, raw_http, until
from tests.web.api_client import ApiClient


class RawTokenTests(unittest.TestCase):
    timeout = 120
    multi_user = False

    async def setUp(self) -> None:
        self.hub = hub_in_mode(self, multi_user=self.multi_user)
        drive_clocks(self, self.hub)
        self.member = ApiClient(self.hub.base, HTTPConnectionPool(reactor, persistent=False))
        r = await self.member.sign_up("member@example.com")
        assert r.code == 201, r
        self.project = (await self.member.post("projects/create", {"title": "p"})).json["project_id"]
        self.manager = self.hub.hub.projects.manager  # type: ignore[union-attr]
        self.addCleanup(self.hub.stop_projects)

    async def raw(self) -> tuple[int, bytes]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.member.cookies.items())
        answer = await raw_http(self.hub.port, (f"GET /{self.project}/raw/ HTTP/1.1\r\nHost: hub.test\r\n"
                                                f"Connection: close\r\nCookie: {cookie}\r\n\r\n").encode())
        status, _, body = parse_response(answer)
        return status, body

    def listening(self, port: int) -> bool:
        return any(e.state == sockets.LISTEN and e.port == port for e in sockets.table())

    async def test_raw_route_does_not_hand_the_token_to_a_squatter(self) -> None:
        r = await self.member.post("projects/start", {"project_id": self.project})
        self.assertEqual(r.code, 200, r)
        target = self.manager.local_target(self.project)
        assert target is not None
        raw_port, token = target
        status, body = await self.raw()
        self.assertLess(status, 500, body[:300])  # the project's own server answers
        # The hub does not notice the project's end (the window the attacker uses).
        self.patch(self.manager, "_ended", lambda *args: None)
        pid = self.manager.active[self.project].pid
        os.killpg(pid, signal.SIGKILL)
        await until(lambda: not self.listening(raw_port), what="the project's server to go")
        squatter = VictimFactory()
        port = reactor.listenTCP(raw_port, squatter, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        status, body = await self.raw()
        self.assertEqual(squatter.received, b"", "the proxy sent the squatter the request")
        self.assertNotIn(token.encode(), squatter.received)
        self.assertEqual(status, 502, body[:300])
        self.assertIn(b"(has the project stopped?)", body)


class MultiUserRawTokenTests(RawTokenTests):
    multi_user = True
