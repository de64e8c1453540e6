"""What crosses the proxy and how: headers, cookies, redirects, errors, streaming, keep-alive."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psutil
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from tests.proxy.support import Harness
from tests.support import parse_response, raw_http, until


class StreamClient(protocol.Protocol):
    """Sends a request (optionally a generated body), counts and hashes what comes back."""

    def __init__(self, head: bytes, body_size: int = 0, chunked: bool = False, read_limit: int | None = None,
                 keep: bool = False) -> None:
        self.head = head
        self.kept: list[bytes] | None = [] if keep else None
        self.body_size = body_size
        self.chunked = chunked
        self.read_limit = read_limit
        self.received = 0
        self.header = b""
        self.digest = hashlib.sha256()
        self.sent_digest = hashlib.sha256()
        self.done: defer.Deferred[None] = defer.Deferred()
        self._left = body_size
        self._block = bytes(range(256)) * 256  # 64 KiB
        self.paused = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.head)
        if self.body_size:
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
            self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self._left > 0:
            block = self._block[: min(len(self._block), self._left)]
            self._left -= len(block)
            self.sent_digest.update(block)
            self.transport.write(b"%x\r\n%s\r\n" % (len(block), block) if self.chunked else block)  # type: ignore[union-attr]
        if self._left <= 0 and self.transport is not None:
            if self.chunked:
                self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.body_size = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self._left = 0

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in self.header:
            self.header += data
            if b"\r\n\r\n" in self.header:
                self.header, rest = self.header.split(b"\r\n\r\n", 1)
                self.header += b"\r\n\r\n"
                data = rest
            else:
                return
        self.received += len(data)
        self.digest.update(data)
        if self.kept is not None:
            self.kept.append(data)
        if self.read_limit is not None and self.received >= self.read_limit:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class DataPathTests(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        self.h = await Harness().setup(self, options={"proxy-timeout": "1.5"})

    async def echo(self, path: str, **kw: Any) -> dict[str, Any]:
        status, headers, body, _ = await self.h.get(path, **kw)
        self.assertEqual(status, 200, body[:300])
        return dict(json.loads(body))

    async def test_what_reaches_the_backend(self) -> None:
        h = self.h
        key = (await h.owner.post("api-keys", {"action": "create"})).json["response"]["secret"]
        cookie = (h.cookie(h.owner) + "; theme=dark; %2Fotherremember_me=leak1; remember_me_x=kept; api_key=" + key +
                  "; hub_password=leak2; %2Fxproject_secret=leak3; session=app")
        got = await self.echo(f"/{h.a}/server/{h.port_a}/echo?q=1&x=%2F", headers={
            "Cookie": cookie, "Authorization": f"Bearer {key}", "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https", "X-Real-IP": "6.6.6.6", "Connection": "X-Hop", "X-Hop": "secret",
            "X-CoCalc-Project-Token": "forged", "Proxy-Authorization": "Basic x", "X-App": "kept"})
        headers = {k: v for k, v in got["headers"]}
        self.assertEqual(got["uri"], "/echo?q=1&x=%2F")
        self.assertEqual(headers["cookie"], "theme=dark; remember_me_x=kept; session=app")
        self.assertNotIn("authorization", headers)
        for name in ("x-hop", "proxy-authorization", "x-real-ip", "x-cocalc-project-token"):
            self.assertNotIn(name, headers)
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(headers["x-forwarded-proto"], "http")
        self.assertEqual(headers["x-forwarded-host"], "hub.test")
        self.assertEqual(headers["x-forwarded-prefix"], f"/{h.a}/server/{h.port_a}")
        self.assertEqual(headers["x-app"], "kept")
        self.assertEqual(headers["host"], "hub.test")
        text = json.dumps(got)
        for secret in (h.owner.cookies["remember_me"], key, "leak1", "leak2", "leak3", "forged", "6.6.6.6"):
            self.assertNotIn(secret, text)
        # An app's own Basic credentials pass; so does the full path for /port/.
        got = await self.echo(f"/{h.a}/port/{h.port_a}/echo", client=h.owner,
                              headers={"Authorization": "Basic YWxpY2U6d29uZGVybGFuZA=="})
        self.assertEqual(got["uri"], f"/{h.a}/port/{h.port_a}/echo")
        self.assertIn(["authorization", "Basic YWxpY2U6d29uZGVybGFuZA=="], got["headers"])
        got = await self.echo(f"/{h.a.upper()}/port/{h.port_a}/echo", client=h.owner)
        self.assertEqual(got["uri"], f"/{h.a}/port/{h.port_a}/echo")

    async def test_what_comes_back(self) -> None:
        h = self.h
        status, headers, body, cookies = await h.get(f"/{h.a}/server/{h.port_a}/special/setcookie", client=h.owner)
        self.assertEqual((status, cookies), (200, ["app=1; Path=/"]))
        status, headers, _, _ = await h.get(f"/{h.a}/server/{h.port_a}/special/redirect", client=h.owner)
        self.assertEqual((status, headers["location"]), (302, f"/{h.a}/server/{h.port_a}/landed"))
        status, headers, _, _ = await h.get(f"/{h.a}/port/{h.port_a}/special/redirect", client=h.owner)
        self.assertEqual(headers["location"], "/landed")
        status, headers, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/echo", client=h.owner, method="HEAD")
        self.assertEqual((status, body), (200, b""))
        self.assertIn("content-length", headers)

    async def test_errors_and_timeouts(self) -> None:
        h = self.h
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/special/close", client=h.owner)
        self.assertEqual(status, 502)
        t0 = reactor.seconds()
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}/special/hang", client=h.owner)
        self.assertEqual(status, 504)
        self.assertLess(reactor.seconds() - t0, 15)  # the configured 1.5 s (with room for a loaded machine), not 120
        evil = "/%3Cscript%3Ealert(1)%3C/script%3E"
        status, _, body, _ = await h.get(f"/{h.a}/server/{h.port_a}{evil}", client=h.outsider)
        self.assertEqual(status, 403)
        self.assertNotIn(b"script", body)
        self.assertNotIn(b"alert", body)
        # The hub is unharmed.
        self.assertEqual((await h.get(f"/{h.a}/server/{h.port_a}/echo", client=h.owner))[0], 200)

    async def test_client_disconnect_aborts_backend_request(self) -> None:
        h = self.h
        before = (await h.backend_stats())["aborted"]
        head = (f"GET /{h.a}/server/{h.port_a}/special/slow HTTP/1.1\r\nHost: x\r\nCookie: {h.cookie(h.owner)}\r\n\r\n"
                ).encode()
        client = StreamClient(head, read_limit=20)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", h.hub.port).connect(protocol.Factory.forProtocol(lambda: client))
        await client.done

        async def aborted() -> bool:
            return bool((await h.backend_stats())["aborted"] > before)

        await until(aborted, what="the backend to see the request aborted")
        self.assertEqual((await h.backend_stats())["aborted"], before + 1)

    async def test_chunked_and_http10(self) -> None:
        h = self.h
        raw = await raw_http(h.hub.port, (f"GET /{h.a}/server/{h.port_a}/special/slow HTTP/1.1\r\nHost: x\r\n"
                                          f"Connection: close\r\nCookie: {h.cookie(h.owner)}\r\n\r\n").encode())
        status, headers, body = parse_response(raw)
        self.assertEqual((status, headers.get("transfer-encoding")), (200, "chunked"))
        self.assertTrue(body.endswith(b"0\r\n\r\n"))
        raw = await raw_http(h.hub.port, (f"GET /{h.a}/server/{h.port_a}/special/slow HTTP/1.0\r\nHost: x\r\n"
                                          f"Cookie: {h.cookie(h.owner)}\r\n\r\n").encode())
        status, headers, body = parse_response(raw)
        self.assertNotIn("transfer-encoding", headers)
        self.assertEqual(body, b"tick\n" * 100)

    async def test_keep_alive_mixing_proxy_and_hub_requests(self) -> None:
        h = self.h
        cookie = h.cookie(h.owner)
        one = f"GET /{h.a}/server/{h.port_a}/echo HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        two = "GET /alive HTTP/1.1\r\nHost: x\r\n\r\n"
        three = (f"POST /{h.a}/server/{h.port_a}/echo HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                 "Content-Length: 5\r\n\r\nhello")
        four = f"GET /{h.a}/raw/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
        raw = await raw_http(h.hub.port, (one + two + three + two + four).encode())  # pipelined, one write
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK"), 5, raw[:2000])
        self.assertIn(b"alive\n", raw)
        self.assertIn(b'"body_len": 5', raw)
        self.assertIn(b"<h1>/</h1>", raw)

    async def test_expect_continue(self) -> None:
        h = self.h
        head = (f"POST /{h.a}/server/{h.port_a}/echo HTTP/1.1\r\nHost: x\r\nCookie: {h.cookie(h.owner)}\r\n"
                "Content-Length: 3\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nabc").encode()
        raw = await raw_http(h.hub.port, head)
        self.assertIn(b'"body_len": 3', raw)

    async def test_large_bodies_stream_in_bounded_memory(self) -> None:
        h = self.h
        me = psutil.Process()
        rss0 = me.memory_info().rss
        size = 200 * 1024 * 1024
        cookie = h.cookie(h.owner)
        for chunked in (False, True):
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
            head = (f"POST /{h.a}/server/{h.port_a}/upload HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                    f"{framing}\r\nConnection: close\r\n\r\n").encode()
            client = StreamClient(head, body_size=size, chunked=chunked)
            await TCP4ClientEndpoint(reactor, "127.0.0.1", h.hub.port).connect(
                protocol.Factory.forProtocol(lambda c=client: c))  # type: ignore[misc]
            await client.done
            self.assertIn(b"200 OK", client.header)
        # The backend (Twisted) echo reports what it got for the last one (chunked body de-chunked there).
        head = (f"GET /{h.a}/server/{h.port_a}/special/big?n={size} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                "Connection: close\r\n\r\n").encode()
        client = StreamClient(head)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", h.hub.port).connect(protocol.Factory.forProtocol(lambda: client))
        await client.done
        self.assertEqual(client.received, size)
        growth = me.memory_info().rss - rss0
        self.assertLess(growth, 64 * 1024 * 1024, f"the hub buffered {growth / 2**20:.0f} MiB")

    async def test_upload_content_arrives_intact(self) -> None:
        h = self.h
        size = 3 * 1024 * 1024 + 17
        cookie = h.cookie(h.owner)
        for chunked in (False, True):
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
            head = (f"POST /{h.a}/server/{h.port_a}/echo HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                    f"{framing}\r\nConnection: close\r\n\r\n").encode()
            client = StreamClient(head, body_size=size, chunked=chunked, keep=True)
            await TCP4ClientEndpoint(reactor, "127.0.0.1", h.hub.port).connect(
                protocol.Factory.forProtocol(lambda c=client: c))  # type: ignore[misc]
            await client.done
            self.assertIn(b"200 OK", client.header, client.header)
            echoed = json.loads(b"".join(client.kept or []))
            self.assertEqual(echoed["body_len"], size)
            self.assertEqual(echoed["body_sha256"], client.sent_digest.hexdigest())
