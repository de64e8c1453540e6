"""Who gets through the proxy: every caller kind, HTTP and WebSocket, on each route type."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

from twisted.trial import unittest

from tests.proxy.support import Harness, keep_alive, ws_echo, ws_handshake
from tests.support import free_tcp_port


class AccessMatrixTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.h = await Harness().setup(self)

    def routes(self) -> list[str]:
        h = self.h
        return [f"/{h.a}/port/{h.port_a}/echo", f"/{h.a}/server/{h.port_a}/echo", f"/{h.a}/raw/"]

    def ws_routes(self) -> list[str]:
        h = self.h
        return [f"/{h.a}/port/{h.port_a}/ws", f"/{h.a}/server/{h.port_a}/ws"]

    async def key(self, client: Any, project_id: str | None = None) -> str:
        params = {"action": "create", **({"project_id": project_id} if project_id else {})}
        r = await client.post("api-keys", params)
        assert r.code == 201, r
        return str(r.json["response"]["secret"])

    async def test_http_matrix(self) -> None:
        h = self.h
        before = (await h.backend_stats())["requests"]
        owner_key = await self.key(h.owner)
        project_key = await self.key(h.owner, h.a)
        other_key = await self.key(h.outsider, h.b)
        outsider_key = await self.key(h.outsider)
        allowed = {
            "owner": {"client": h.owner},
            "collaborator": {"client": h.friend},
            "admin": {"client": h.admin},
            "owner bearer key": {"headers": {"Authorization": f"Bearer {owner_key}"}},
            "owner basic key": {"headers": {"Authorization": "Basic " + base64.b64encode(f"{owner_key}:".encode())
                                            .decode()}},
            "owner key cookie": {"headers": {"Cookie": f"api_key={owner_key}"}},
            "project key": {"headers": {"Authorization": f"Bearer {project_key}"}},
        }
        denied = {
            "anonymous": ({}, 401),
            "outsider": ({"client": h.outsider}, 403),
            "outsider key": ({"headers": {"Authorization": f"Bearer {outsider_key}"}}, 403),
            "other project's key": ({"headers": {"Authorization": f"Bearer {other_key}"}}, 403),
            "forged session": ({"headers": {"Cookie": "remember_me=sha512$00$1000$nope"}}, 401),
            "forged key": ({"headers": {"Authorization": "Bearer sk-AAAAAAAAAAAAAAAA000001"}}, 401),
        }
        counted = 0
        for route in self.routes():
            for who, kw in allowed.items():
                status, _, body, _ = await h.get(route, **kw)
                self.assertEqual(status, 200, f"{who} {route}: {body[:200]!r}")
                counted += 1 if "/raw/" not in route else 0
            for who, (kw, expected) in denied.items():
                status, headers, body, _ = await h.get(route, **kw)
                self.assertEqual(status, expected, f"{who} {route}")
                self.assertNotIn(b"uri", body)
        after = (await h.backend_stats())["requests"]
        self.assertEqual(after - before, counted + 0, "denied requests must not reach the backend")

    async def test_websocket_matrix(self) -> None:
        h = self.h
        before = (await h.backend_stats())["ws"]
        for route in self.ws_routes():
            status, _ = await ws_handshake(h.hub.port, route, {"Cookie": h.cookie(h.owner)})
            self.assertEqual(status, 101, route)
            status, _ = await ws_handshake(h.hub.port, route, {"Cookie": h.cookie(h.friend)})
            self.assertEqual(status, 101, route)
            status, _ = await ws_handshake(h.hub.port, route, {"Cookie": h.cookie(h.admin)})
            self.assertEqual(status, 101, route)
            status, raw = await ws_handshake(h.hub.port, route, {})
            self.assertEqual(status, 401, raw)
            status, _ = await ws_handshake(h.hub.port, route, {"Cookie": h.cookie(h.outsider)})
            self.assertEqual(status, 403, route)
        other_key = await self.key(h.outsider, h.b)
        project_key = await self.key(h.owner, h.a)
        for route in self.ws_routes():
            status, _ = await ws_handshake(h.hub.port, route, {"Authorization": f"Bearer {other_key}"})
            self.assertEqual(status, 403, "wrong-scope key")
            status, _ = await ws_handshake(h.hub.port, route, {"Cookie": "remember_me=sha512$00$1000$nope"})
            self.assertEqual(status, 401, "forged session")
        status, _ = await ws_handshake(h.hub.port, self.ws_routes()[0], {"Authorization": f"Bearer {project_key}"})
        self.assertEqual(status, 101, "the project's own key")
        stats = await h.backend_stats()
        self.assertEqual(stats["ws"] - before, 7, "only the allowed upgrades reached the backend")
        self.assertNotIn("authorization", stats["ws_headers"])
        status, _ = await ws_handshake(h.hub.port, self.ws_routes()[1],
                                       {"Cookie": h.cookie(h.friend) + "; theme=dark"})
        headers = (await h.backend_stats())["ws_headers"]
        self.assertEqual(headers.get("cookie"), "theme=dark")
        self.assertNotIn("remember_me", str(headers))
        self.assertEqual(headers["x-forwarded-prefix"], f"/{h.a}/server/{h.port_a}")
        # A signed-out session cannot upgrade.
        saved = dict(h.friend.cookies)
        await h.friend.post("accounts/sign-out")
        status, _ = await ws_handshake(h.hub.port, self.ws_routes()[1], {"Cookie": "; ".join(
            f"{k}={v}" for k, v in saved.items())})
        self.assertEqual(status, 401)
        # A real third-party client through the proxy.
        url = f"ws://127.0.0.1:{h.hub.port}/{h.a}/server/{h.port_a}/ws"
        messages = [b"hello", b"\x00" * 70000, "ünïcode".encode()]
        echoed = await ws_echo(url, {"Cookie": h.cookie(h.owner)}, messages)
        self.assertEqual(echoed, messages)

    async def test_revocation_takes_effect_within_a_second(self) -> None:
        h = self.h
        route = f"/{h.a}/server/{h.port_a}/echo"
        self.assertEqual((await h.get(route, client=h.friend))[0], 200)
        friend_id = (await h.friend.get("accounts/profile")).json["account_id"]
        r = await h.owner.post("projects/collaborators/remove", {"project_id": h.a, "account_id": friend_id})
        self.assertEqual(r.code, 200)
        # Removal through this hub process: immediate.
        self.assertEqual((await h.get(route, client=h.friend))[0], 403)
        status, _ = await ws_handshake(h.hub.port, f"/{h.a}/server/{h.port_a}/ws", {"Cookie": h.cookie(h.friend)})
        self.assertEqual(status, 403)
        # Signing out: immediate for the session that signed out.
        saved = dict(h.owner.cookies)
        self.assertEqual((await h.get(route, client=h.owner))[0], 200)
        await h.owner.post("accounts/sign-out")
        h.owner.cookies = saved
        self.assertEqual((await h.get(route, client=h.owner))[0], 401)
        # Removal behind the hub's back (another process): within a second (of the hub's clock).
        await h.hub.hub.store.set_project_user(h.a, friend_id, "collaborator")
        h.clock.advance(1.1)
        self.assertEqual((await h.get(route, client=h.friend))[0], 200)
        await h.hub.hub.store.remove_project_user(h.a, friend_id)
        h.clock.advance(1.0)
        self.assertEqual((await h.get(route, client=h.friend))[0], 403)
        # A deleted project.
        await h.outsider.post("projects/delete", {"project_id": h.b})
        self.assertEqual((await h.get(f"/{h.b}/server/{h.port_b}/echo", client=h.outsider))[0], 403)

    async def test_ports_the_project_does_not_own(self) -> None:
        h = self.h
        for port, why in ((h.port_b, "another project's backend"), (h.hub.port, "the hub itself"),
                          (5432, "PostgreSQL"), (1, "nothing")):
            for kind in ("port", "server"):
                status, _, body, _ = await h.get(f"/{h.a}/{kind}/{port}/echo", client=h.owner)
                self.assertEqual(status, 403, why)
            status, _ = await ws_handshake(h.hub.port, f"/{h.a}/port/{port}/ws", {"Cookie": h.cookie(h.owner)})
            self.assertEqual(status, 403, why)
        # The project's own raw server port is its own, but it refuses requests without the token.
        raw_port = h.hub.hub.projects.manager.local_target(h.a)[0]  # type: ignore[union-attr,index]
        status, _, body, _ = await h.get(f"/{h.a}/server/{raw_port}/", client=h.owner)
        self.assertEqual(status, 403)
        self.assertIn(b"only answers the CoCalc hub", body)

    async def test_path_tricks(self) -> None:
        h = self.h
        before = (await h.backend_stats())["requests"]
        a, p = h.a, h.port_a
        tricks = [f"/{a}/port/0{p}/echo", f"/{a}/port/{p}abc/echo", f"/{a}/port/%3{str(p)[0]}{str(p)[1:]}/echo",
                  f"/{a}/port//{p}/echo", f"/{a}/port/{p}", f"/{a}/server/{p}/a/%2F/../x",
                  f"/{a}/server/{p}/..%2F..%2F{h.b}/server/{h.port_b}/", f"/{a}/port/{p}/../../{h.b}/port/{h.port_b}/",
                  f"/{a}/server/{p}/%2e%2e/", f"/{a}/port/{p};x/echo", f"/{a}/raw/..\\..\\etc/passwd",
                  f"/{a}/raw/%5c..%5c", f"/{a}/port/{p}/echo%00", f"/{a}/PORT/{p}/echo",
                  f"/{a}/server/{p}/%2E%2E/%2E%2E/{h.b}/"]
        for path in tricks:
            status, _, body, _ = await h.get(path, client=h.owner)
            self.assertIn(status, (400, 404), path)
        # Upper-case ids are the same project (and so need the same rights).
        self.assertEqual((await h.get(f"/{a.upper()}/server/{p}/echo", client=h.owner))[0], 200)
        self.assertEqual((await h.get(f"/{a.upper()}/server/{p}/echo", client=h.outsider))[0], 403)
        after = (await h.backend_stats())["requests"]
        self.assertEqual(after - before, 1)

    async def test_error_pages_say_what_to_do(self) -> None:
        """The site's top bar, and the next step; project links only for members, and a refused
        caller gets the same page whether or not the project exists."""
        h = self.h
        base = h.path_base
        target = f"{base}/{h.a}/server/{h.port_a}/x?q=<b>&r=1"
        status, headers, body, _ = await h.get(target[len(base):])
        self.assertEqual(status, 401)
        self.assertIn(b'<header class="top"><a class="brand" href="' + f"{base}/".encode(), body)
        self.assertIn(f'href="{base}/auth/sign-in?next={quote(target, safe="/")}"'.encode(), body)
        self.assertNotIn(b"<b>", body)
        self.assertNotIn(b"/projects/", body)
        self.assertIn("style-src 'self'", headers["content-security-policy"])
        self.assertNotIn("unsafe-inline", headers["content-security-policy"])
        self.assertNotIn(b"<style", body)
        self.assertNotIn(b"<script", body)
        unknown = "0b6c2b80-66a5-4a5e-9c49-2d7a4c1f7e11"
        pages = []
        for project in (h.a, unknown):
            status, _, body, _ = await h.get(f"/{project}/server/{h.port_a}/x", client=h.outsider)
            self.assertEqual(status, 403)
            pages.append(body)
        self.assertEqual(pages[0], pages[1])
        self.assertIn(b"ask the project's owner to add you", pages[0])
        self.assertIn(f'<a href="{base}/">your projects</a>'.encode(), pages[0])
        self.assertNotIn(b"/projects/", pages[0])
        # Members: a link to the project's page, and advice about the port.
        project_link = f'href="{base}/projects/{h.a}"'.encode()
        idle = free_tcp_port()
        status, _, body, _ = await h.get(f"/{h.a}/port/{idle}/", client=h.owner)
        self.assertEqual(status, 403)
        self.assertIn(project_link, body)
        self.assertIn(f"listens on port {idle}".encode(), body)
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/special/close", client=h.owner)
        self.assertEqual(status, 502)
        self.assertIn(project_link, body)
        self.assertIn(f"The server on port {h.port_a} is not answering".encode(), body)
        self.assertIn(f'<a href="{base}/settings">Account</a>'.encode(), body)  # signed in: their links

    async def test_not_running_page(self) -> None:
        h = self.h
        await h.owner.post("projects/stop", {"project_id": h.a})
        status, headers, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/x?y=1", client=h.owner)
        self.assertEqual(status, 503)
        self.assertIn(b"Project is not running", body)
        self.assertIn(f'href="{h.path_base}/projects/{h.a}"'.encode(), body)
        self.assertIn(b'name="csrf_token"', body)
        self.assertIn(b'value="/' + f"{h.a}/server/{h.port_a}/x?y=1".encode() + b'"', body)
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/x", client=h.outsider)
        self.assertEqual(status, 403)
        status, _, _, _ = await h.get(f"/{h.a}/server/{h.port_a}/x")
        self.assertEqual(status, 401)
        # The form starts the project and sends the browser back.
        token = h.owner.csrf_token()
        form = f"project_id={h.a}&csrf_token={token}&next=/{h.a}/raw/".encode()
        status, headers, _, _ = await h.get("/api/v2/projects/start", client=h.owner, method="POST", body=form,
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((status, headers["location"]), (303, f"/{h.a}/raw/"))
        self.assertEqual((await h.get(f"/{h.a}/raw/", client=h.owner))[0], 200)
        form = f"project_id={h.a}&csrf_token={token}&next=https://evil.example/".encode()
        status, headers, body, _ = await h.get("/api/v2/projects/start", client=h.owner, method="POST", body=form,
                                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 200)
        self.assertNotIn("location", headers)
        self.assertEqual(json.loads(body)["state"]["state"], "running")


class KeepAliveReplayTests(unittest.TestCase):
    """The same request head again and again on one connection (the proxy replays its work)."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.h = await Harness().setup(self)

    async def test_revocation_reaches_a_repeating_connection(self) -> None:
        h = self.h
        conn = await keep_alive(h.hub.port)
        self.addCleanup(lambda: conn.transport.loseConnection() if conn.transport else None)
        raw = (f"GET /{h.a}/server/{h.port_a}/echo HTTP/1.1\r\nHost: x\r\nCookie: {h.cookie(h.friend)}\r\n\r\n"
               ).encode()
        for _ in range(20):
            status, _, body = await conn.request(raw)
            self.assertEqual(status, 200)
        friend_id = (await h.friend.get("accounts/profile")).json["account_id"]
        await h.owner.post("projects/collaborators/remove", {"project_id": h.a, "account_id": friend_id})
        status, _, body = await conn.request(raw)
        self.assertEqual(status, 403)
        # Behind the hub's back: within a second (of the hub's clock).
        await h.hub.hub.store.set_project_user(h.a, friend_id, "collaborator")
        h.clock.advance(1.1)
        conn2 = await keep_alive(h.hub.port)
        self.addCleanup(lambda: conn2.transport.loseConnection() if conn2.transport else None)
        self.assertEqual((await conn2.request(raw))[0], 200)
        self.assertEqual((await conn2.request(raw))[0], 200)
        await h.hub.hub.store.remove_project_user(h.a, friend_id)
        h.clock.advance(1.0)
        self.assertEqual((await conn2.request(raw))[0], 403)  # on the same keep-alive connection

    async def test_restart_gives_a_new_raw_token_to_a_repeating_connection(self) -> None:
        h = self.h
        conn = await keep_alive(h.hub.port)
        self.addCleanup(lambda: conn.transport.loseConnection() if conn.transport else None)
        raw = f"GET /{h.a}/raw/ HTTP/1.1\r\nHost: x\r\nCookie: {h.cookie(h.owner)}\r\n\r\n".encode()
        self.assertEqual((await conn.request(raw))[0], 200)
        self.assertEqual((await conn.request(raw))[0], 200)
        r = await h.owner.post("projects/restart", {"project_id": h.a})
        self.assertEqual(r.code, 200)
        status, _, body = await conn.request(raw)
        self.assertEqual(status, 200, body[:200])
        await h.owner.post("projects/stop", {"project_id": h.a})
        status, _, body = await conn.request(raw)
        self.assertEqual(status, 503)

    async def test_backend_answers_change_between_identical_requests(self) -> None:
        h = self.h
        conn = await keep_alive(h.hub.port)
        self.addCleanup(lambda: conn.transport.loseConnection() if conn.transport else None)
        cookie = h.cookie(h.owner)
        setcookie = f"GET /{h.a}/server/{h.port_a}/special/setcookie HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        redirect = f"GET /{h.a}/server/{h.port_a}/special/redirect HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        for raw in (setcookie, setcookie, redirect, redirect, setcookie):
            status, headers, body = await conn.request(raw.encode())
            if "setcookie" in raw:
                self.assertEqual((status, body), (200, b"cookies"))
                self.assertNotIn("remember_me", str(headers))
            else:
                self.assertEqual((status, headers["location"]), (302, f"/{h.a}/server/{h.port_a}/landed"))
