"""A hub with users, projects and backends inside them, for end-to-end proxy tests."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.support import (
    drive_clocks,
    free_tcp_port,
    make_admin,
    parse_response,
    raw_http,
    settings_for,
    start_hub,
    until,
)
from tests.web.api_client import ApiClient

BACKEND = str(Path(__file__).resolve().parent / "backend_app.py")


async def start_backend(client: ApiClient, project_id: str) -> int:
    """Run backend_app.py inside the project (as a member's exec); its port once it listens."""
    port = free_tcp_port()
    r = await client.post("exec", {"project_id": project_id, "command": sys.executable,
                                   "args": ["-u", BACKEND, str(port)], "async_call": True})
    assert r.code == 200, r

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        await until(listening, what=f"the backend to listen on port {port}")
    except AssertionError:
        job = await client.post("exec", {"project_id": project_id, "async_get": r.json["job_id"]})
        raise AssertionError(f"backend did not start: {job.json}") from None
    return port


class Harness:
    """admin, owner, friend (collaborator on A), outsider; projects A (owner)
    and B (outsider), each running a backend_app.py."""

    scheme = "http"

    async def setup(self, case: unittest.TestCase, *, options: dict[str, Any] | None = None,
                    env: dict[str, str] | None = None) -> Harness:
        self.case = case
        opts = {"project-stop-grace": "1"}
        opts.update(options or {})
        self.hub = start_hub(case, settings_for(case.mktemp(), opts, env))
        self.clock = drive_clocks(case, self.hub)
        if self.scheme == "https":
            self.hub.base = self.hub.base.replace("http://", "https://")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.admin = await self.user("admin@example.com")
        await make_admin(self.hub, self.admin.account_id)  # type: ignore[attr-defined]
        self.owner = await self.user("owner@example.com")
        self.friend = await self.user("friend@example.com")
        self.outsider = await self.user("outsider@example.com")
        self.a = (await self.owner.post("projects/create", {"title": "A"})).json["project_id"]
        self.b = (await self.outsider.post("projects/create", {"title": "B"})).json["project_id"]
        r = await self.owner.post("projects/collaborators/add", {"project_id": self.a, "email": "friend@example.com"})
        assert r.code == 200, r
        self.port_a = await self.backend(self.owner, self.a)
        self.port_b = await self.backend(self.outsider, self.b)
        case.addCleanup(self.hub.stop_projects)
        return self

    @property
    def base(self) -> str:
        return self.hub.base

    def https_client(self) -> Any:
        """A treq client trusting any certificate (the test hub's is self-signed)."""
        from treq.client import HTTPClient
        from twisted.internet.ssl import CertificateOptions
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

        class Trusting(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return CertificateOptions(verify=False)

        return HTTPClient(Agent(reactor, contextFactory=Trusting(), pool=self.pool))

    @property
    def path_base(self) -> str:
        base = self.hub.hub.settings.base_path
        return "" if base == "/" else base

    async def user(self, email: str) -> ApiClient:
        c = ApiClient(self.hub.base, self.pool)
        if self.scheme == "https":
            c.http = self.https_client()
        r = await c.sign_up(email)
        assert r.code == 201, r
        c.account_id = r.json["account_id"]  # type: ignore[attr-defined]
        return c

    async def backend(self, client: ApiClient, project_id: str) -> int:
        return await start_backend(client, project_id)

    def cookie(self, client: ApiClient) -> str:
        return "; ".join(f"{k}={v}" for k, v in client.cookies.items())

    async def get(self, path: str, *, client: ApiClient | None = None, headers: dict[str, str] | None = None,
                  method: str = "GET", body: bytes = b"") -> tuple[int, dict[str, str], bytes, list[str]]:
        """A raw request (exact path bytes); (status, headers, body, all set-cookie values)."""
        h = dict(headers or {})
        if client is not None:
            h["Cookie"] = self.cookie(client)
        lines = [f"{method} {self.path_base}{path} HTTP/1.1", "Host: hub.test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in h.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        raw = await raw_http(self.hub.port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status, headers_out, content = parse_response(raw)
        cookies = [line.split(":", 1)[1].strip() for line in raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
                   if line.lower().startswith("set-cookie:")]
        return status, headers_out, content, cookies

    async def backend_stats(self) -> dict[str, Any]:
        import json

        status, _, body, _ = await self.get(f"/{self.a}/server/{self.port_a}/special/stats", client=self.owner)
        assert status == 200, body
        return dict(json.loads(body))


async def ws_handshake(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send a WebSocket upgrade by hand; (status, the raw bytes that came back)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: hub.test", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    done: defer.Deferred[bytes] = defer.Deferred()

    class Grab(protocol.Protocol):
        data = b""

        def connectionMade(self) -> None:
            self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))  # type: ignore[union-attr]

        def dataReceived(self, data: bytes) -> None:
            self.data += data
            if b"\r\n\r\n" in self.data and not done.called:
                done.callback(self.data)
                self.transport.loseConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            if not done.called:
                done.callback(self.data)

    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(Grab))
    raw = await done
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0
    if status == 101:
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert accept in raw, raw
    return status, raw


async def ws_echo(url: str, headers: dict[str, str], messages: list[bytes]) -> list[bytes]:
    """Talk to a WebSocket echo with autobahn's client (a real third-party client)."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS

    received: list[bytes] = []
    done: defer.Deferred[list[bytes]] = defer.Deferred()

    class Client(WebSocketClientProtocol):
        def onOpen(self) -> None:
            for m in messages:
                self.sendMessage(m, isBinary=True)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            received.append(payload)
            if len(received) == len(messages):
                self.sendClose(1000)

        def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
            if not done.called:
                done.callback(received)

    factory = WebSocketClientFactory(url, headers=headers)
    factory.protocol = Client
    factory.setProtocolOptions(autoPingInterval=0)
    connectWS(factory)
    return await done


class KeepAlive(protocol.Protocol):
    """One persistent connection: send a request, get (status, headers, body) back, repeat."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: defer.Deferred[tuple[int, dict[str, str], bytes]] | None = None
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        self._try()

    def _try(self) -> None:
        if self.waiting is None or b"\r\n\r\n" not in self.buf:
            return
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        status, headers, _ = parse_response(head + b"\r\n\r\n")
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return
        self.buf = rest[length:]
        d, self.waiting = self.waiting, None
        d.callback((status, headers, rest[:length]))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(ConnectionError("closed"))

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.waiting = defer.Deferred()
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiting


async def keep_alive(port: int) -> KeepAlive:
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(protocol.Factory.forProtocol(KeepAlive))
