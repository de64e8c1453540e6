"""Health, metrics, robots, BASE_PATH routing, access log and graceful shutdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cocalc_hub.web.health import Status
from tests.support import http_client, parse_response, raw_get, raw_http, settings_for, start_hub, until


class HealthAndMetricsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = start_hub(self, settings_for(self.mktemp()))
        self.client = http_client(self)

    async def test_alive(self) -> None:
        r = await self.client.get(self.hub.root + "/alive")
        self.assertEqual((r.code, await r.text()), (200, "alive\n"))

    async def test_healthcheck_json(self) -> None:
        r = await self.client.get(self.hub.root + "/healthcheck")
        self.assertEqual(r.code, 200)
        body = json.loads(await r.text())
        self.assertEqual(body["status"], "ok")
        self.assertTrue(body["components"]["http"]["ok"])

    async def test_healthcheck_503_when_component_down(self) -> None:
        parts = self.hub.hub.web_parts
        assert parts is not None
        parts.health.register("database", lambda: Status(False, "connection refused"))

        async def slow() -> Status:
            await task.deferLater(reactor, 0, lambda: None)  # answers on a later reactor turn
            return Status(True, "fine")

        parts.health.register("slow", slow)

        def broken() -> Status:
            raise RuntimeError("boom")

        parts.health.register("broken", broken)
        r = await self.client.get(self.hub.root + "/healthcheck")
        self.assertEqual(r.code, 503)
        body = json.loads(await r.text())
        self.assertEqual(body["status"], "fail")
        self.assertEqual(body["components"]["database"], {"ok": False, "detail": "connection refused"})
        self.assertEqual(body["components"]["slow"], {"ok": True, "detail": "fine"})
        self.assertFalse(body["components"]["broken"]["ok"])
        self.flushLoggedErrors(RuntimeError)

    async def test_metrics(self) -> None:
        await (await self.client.get(self.hub.url("/static/hub.css"))).content()
        await (await self.client.get(self.hub.url("/nope"))).content()
        r = await self.client.request("BREW", self.hub.url("/"))
        await r.content()
        r = await self.client.get(self.hub.root + "/metrics")
        self.assertEqual(r.code, 200)
        self.assertEqual(r.headers.getRawHeaders("content-type"), ["text/plain; version=0.0.4; charset=utf-8"])
        text = await r.text()
        self.assertIn('cocalc_hub_http_requests_total{code="200",method="GET",route="static"} 1.0', text)
        self.assertIn('cocalc_hub_http_requests_total{code="404",method="GET",route="notfound"} 1.0', text)
        self.assertIn('method="other"', text)
        self.assertNotIn("BREW", text)
        self.assertIn("cocalc_hub_http_request_duration_seconds_bucket", text)
        self.assertIn("cocalc_hub_http_open_connections", text)
        self.assertIn("process_resident_memory_bytes", text)
        self.assertIn('cocalc_hub_info{version="', text)

    async def test_robots(self) -> None:
        r = await self.client.get(self.hub.root + "/robots.txt")
        text = await r.text()
        self.assertEqual(r.code, 200)
        self.assertTrue(text.startswith("User-agent: *\n"))
        self.assertIn("Disallow: /*/port/\n", text)
        self.assertFalse(any(line.startswith(" ") for line in text.splitlines()))

    async def test_server_header_and_405(self) -> None:
        raw = await raw_http(self.hub.port, raw_get("/static/hub.css", method="DELETE"))
        status, headers, body = parse_response(raw)
        self.assertEqual(status, 405)
        self.assertEqual(headers["server"], "cocalc-hub")
        self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertNotIn(b"hub.css", body)
        raw = await raw_http(self.hub.port, raw_get("/alive", method="BREW"))
        self.assertEqual(parse_response(raw)[0], 405)

    async def test_malformed_requests(self) -> None:
        payloads = (
            b"GARBAGE\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET http://evil/alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /alive HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
        )
        for payload in payloads:
            raw = await raw_http(self.hub.port, payload)
            if raw:
                status, _, _ = parse_response(raw)
                self.assertGreaterEqual(status, 400, payload[:40])
        # The hub is still fine.
        r = await self.client.get(self.hub.root + "/alive")
        self.assertEqual(r.code, 200)
        await r.content()


class BasePathTests(unittest.TestCase):
    def setUp(self) -> None:
        self.hub = start_hub(self, settings_for(self.mktemp(), env={"BASE_PATH": "/my/hub"}))
        self.client = http_client(self)

    async def status(self, path: str) -> int:
        raw = await raw_http(self.hub.port, raw_get(path))
        return parse_response(raw)[0]

    async def test_routes_live_under_base_path(self) -> None:
        self.assertEqual(await self.status("/my/hub/"), 200)
        self.assertEqual(await self.status("/my/hub/static/hub.css"), 200)
        self.assertEqual(await self.status("/my/hub/robots.txt"), 200)
        self.assertEqual(await self.status("/my/hub/metrics"), 200)
        self.assertEqual(await self.status("/static/hub.css"), 404)
        self.assertEqual(await self.status("/"), 404)
        self.assertEqual(await self.status("/my/hubx/static/hub.css"), 404)
        self.assertEqual(await self.status("/my/static/hub.css"), 404)

    async def test_favicon_at_host_root_and_base_path(self) -> None:
        """Browsers ask for /favicon.ico whatever the page links: it is answered, not a 404."""
        for path in ("/favicon.ico", "/my/hub/favicon.ico"):
            raw = await raw_http(self.hub.port, raw_get(path))
            status, headers, body = parse_response(raw)
            self.assertEqual((status, headers["content-type"]), (200, "image/vnd.microsoft.icon"), path)
            self.assertEqual(body[:4], b"\x00\x00\x01\x00", path)  # an ICO header
            self.assertIn("max-age", headers["cache-control"])
        raw = await raw_http(self.hub.port, raw_get("/my/hub/static/favicon.svg"))
        status, headers, body = parse_response(raw)
        self.assertEqual((status, headers["content-type"].split(";")[0]), (200, "image/svg+xml"))
        self.assertEqual(await self.status("/my/hub/favicon.ico/x"), 404)

    async def test_error_pages_have_the_top_bar_under_base_path(self) -> None:
        raw = await raw_http(self.hub.port, raw_get("/my/hub/nothing/<b>here</b>"))
        status, headers, body = parse_response(raw)
        self.assertEqual(status, 404)
        text = body.decode()
        self.assertIn('<header class="top"><a class="brand" href="/my/hub/">', text)
        self.assertIn('href="/my/hub/auth/sign-in"', text)
        self.assertIn('<link rel="stylesheet" href="/my/hub/static/app.css">', text)
        self.assertNotIn("<b>", text)
        self.assertNotIn("<style", text)
        self.assertNotIn("<script", text)
        self.assertNotIn("unsafe-inline", headers["content-security-policy"])
        self.assertIn("style-src 'self'", headers["content-security-policy"])
        # Outside the base path too, the links lead back into it.
        raw = await raw_http(self.hub.port, raw_get("/elsewhere"))
        self.assertIn(b'href="/my/hub/"', parse_response(raw)[2])

    async def test_base_without_slash_redirects(self) -> None:
        raw = await raw_http(self.hub.port, raw_get("/my/hub"))
        status, headers, _ = parse_response(raw)
        self.assertEqual(status, 302)
        self.assertEqual(headers["location"], "/my/hub/")

    async def test_health_at_host_root(self) -> None:
        self.assertEqual(await self.status("/alive"), 200)
        self.assertEqual(await self.status("/healthcheck"), 200)
        self.assertEqual(await self.status("/robots.txt"), 200)
        self.assertEqual(await self.status("/my/hub/alive"), 404)

    async def test_index_links_use_base(self) -> None:
        r = await self.client.get(self.hub.url("/"))
        self.assertIn('href="/my/hub/static/app.css"', await r.text())


class _Slow(Resource):
    """Busy until the test calls ``answer()``."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.started: defer.Deferred[None] = defer.Deferred()
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        self.requests.append(request)
        if not self.started.called:
            self.started.callback(None)
        return NOT_DONE_YET

    def answer(self) -> None:
        for request in self.requests:
            if not request._disconnected:
                request.setHeader(b"content-length", b"8")
                request.write(b"finished")
                request.finish()


class _Idle(Protocol):
    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class GracefulShutdownTests(unittest.TestCase):
    def start(self, grace: float) -> Any:
        hub = start_hub(self, settings_for(self.mktemp(), {"shutdown-grace": str(grace)}))
        parts = hub.hub.web_parts
        assert parts is not None
        return hub, parts

    async def test_busy_request_finishes_idle_connection_closed(self) -> None:
        hub, parts = self.start(grace=120)
        slow = _Slow()
        parts.router.mount("slow", slow, "test")
        idle = await TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port).connect(Factory.forProtocol(_Idle))
        pending = defer.ensureDeferred(raw_http(hub.port, raw_get("/slow")))
        await slow.started
        stopped = hub.hub.stopService()
        await until(lambda: parts.site.draining, what="the site to drain")
        await idle.closed  # at once, while the busy one goes on
        self.assertFalse(stopped.called)
        slow.answer()
        await stopped.addTimeout(60, reactor)  # as soon as the busy request is done, not when the grace is over
        status, headers, body = parse_response(await pending)
        self.assertEqual((status, body), (200, b"finished"))
        self.assertEqual(headers.get("connection"), "close")
        # The port is closed: new connections are refused.
        from twisted.internet.error import ConnectionRefusedError

        with self.assertRaises(ConnectionRefusedError):
            await TCP4ClientEndpoint(reactor, "127.0.0.1", hub.port).connect(Factory.forProtocol(_Idle))

    async def test_grace_period_is_bounded(self) -> None:
        hub, parts = self.start(grace=0.2)
        slow = _Slow()  # never answers
        parts.router.mount("slow", slow, "test")
        pending = defer.ensureDeferred(raw_http(hub.port, raw_get("/slow")))
        await slow.started
        # ends once the grace is over (the request never would): the busy connection is aborted
        await hub.hub.stopService().addTimeout(60, reactor)
        self.assertEqual(await pending, b"")
        self.assertTrue(parts.health.shutting_down)
        self.assertTrue(parts.site.draining)


class AccessLogTests(unittest.TestCase):
    async def test_access_log_line_without_secrets(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hub = start_hub(self, settings_for(self.mktemp()))
        payload = raw_get("/static/hub.css?token=SUPERSECRET&x=1",
                          headers={"Cookie": "remember_me=sha512$abc$1000$LEAKME", "Authorization": "Bearer sk-XYZ"})
        await raw_http(hub.port, payload)
        access = [e for e in events if e.get("log_namespace") == "cocalc_hub.access"]
        self.assertEqual(len(access), 1)
        e = access[0]
        self.assertEqual((e["method"], e["code"], e["route"]), ("GET", 200, "static"))
        self.assertGreaterEqual(e["ms"], 0)
        from twisted.logger import formatEvent

        from cocalc_hub.logs import redact_event

        line = formatEvent(redact_event(e))
        self.assertIn("GET /static/hub.css?token=<redacted>&x=1 200", line)
        for event in events:
            text = formatEvent(redact_event(event)) + json.dumps({k: str(v) for k, v in redact_event(event).items()})
            self.assertNotIn("SUPERSECRET", text)
            self.assertNotIn("LEAKME", text)
            self.assertNotIn("sk-XYZ", text)


class PathHelperTests(unittest.TestCase):
    def test_resolve(self) -> None:
        from cocalc_hub.web.site import Router

        r = Router("/base")
        res = Resource()
        r.mount("static", res, "static")
        mount, rel, rest = r.resolve(b"/base/static/a/b")
        self.assertEqual((mount.route, rel, rest), ("static", b"/static/a/b", b"/a/b"))
        mount, rel, rest = r.resolve(b"/base/static")
        self.assertEqual((mount.route, rest), ("static", b""))
        self.assertEqual(r.resolve(b"/base/staticx")[0].route, "notfound")
        self.assertEqual(r.resolve(b"/basex/static/a")[0].route, "notfound")
        self.assertEqual(r.resolve(b"/base/")[0].route, "notfound")  # no index set
        self.assertEqual(r.resolve(b"http://h/base/static/a")[0].route, "notfound")
        self.assertEqual(Path("/").as_posix(), "/")
