"""Route parsing, HTTP/1 heads and bodies, header rewriting and the proxy's own pages."""

from __future__ import annotations

import base64

from twisted.trial import unittest

from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.proxy import pages
from cocalc_hub.proxy.headers import (
    is_hub_credential,
    request_headers,
    response_headers,
    rewrite_location,
    strip_cookies,
)
from cocalc_hub.proxy.http1 import BodyFramer, HttpError, parse_request, parse_response
from cocalc_hub.proxy.parse import BadRoute, parse_route

PID = "0c8a1f3e-2b7d-4a5c-9e6f-1d2c3b4a5f60"
UP = PID.upper()


class RouteTests(unittest.TestCase):
    def test_valid_routes(self) -> None:
        r = parse_route(f"/{PID}/port/8000/a/b".encode(), b"")
        assert r is not None
        self.assertEqual((r.project_id, r.kind, r.port, r.upstream_path),
                         (PID, "port", 8000, f"/{PID}/port/8000/a/b".encode()))
        r = parse_route(f"/{UP}/server/65535/".encode(), b"")
        assert r is not None
        self.assertEqual((r.project_id, r.kind, r.port, r.upstream_path, r.prefix),
                         (PID, "server", 65535, b"/", f"/{PID}/server/65535".encode()))
        r = parse_route(f"/hub/{PID}/raw/x%20y.txt".encode(), b"/hub")
        assert r is not None
        self.assertEqual((r.kind, r.upstream_path, r.prefix), ("raw", f"/hub/{PID}/raw/x%20y.txt".encode(),
                                                                f"/hub/{PID}/raw".encode()))
        r = parse_route(f"/{PID}/server/1/;matrix=ok/a;b".encode(), b"")
        assert r is not None
        self.assertEqual(r.upstream_path, b"/;matrix=ok/a;b")

    def test_not_project_routes(self) -> None:
        for path in (b"/", b"/static/x", f"/{PID}".encode(), f"/{PID}/".encode(), f"/{PID}/files/x".encode(),
                     f"/{PID}x/port/80/".encode(), f"/{PID[:-1]}/port/80/".encode(), b"/not-a-uuid/port/80/",
                     f"/%30{PID[1:]}/port/80/".encode(), f"/{PID}/po%72t/80/".encode(), f"/{PID}//port/80/".encode(),
                     f"/other/{PID}/port/80/".encode()):
            self.assertIsNone(parse_route(path, b""), path)
        self.assertIsNone(parse_route(f"/{PID}/port/80/".encode(), b"/hub"))

    def test_tricks_are_refused(self) -> None:
        for path in (f"/{PID}/port/08000/", f"/{PID}/port/0/", f"/{PID}/port/65536/", f"/{PID}/port/80abc/",
                     f"/{PID}/port/+80/", f"/{PID}/port/0x50/", f"/{PID}/port/%38%30/", f"/{PID}/port/80",
                     f"/{PID}/port//80/", f"/{PID}/port/80;x/", f"/{PID}/port/", f"/{PID}/PORT/80/",
                     f"/{PID}/port/80/../../{PID}/port/81/", f"/{PID}/port/80/%2e%2e/x", f"/{PID}/server/80/a/%2F/b",
                     f"/{PID}/server/80/a%2fb", f"/{PID}/server/80/..%2F..%2F", f"/{PID}/raw/..", f"/{PID}/raw/a/../b",
                     f"/{PID}/raw/a\\..\\b", f"/{PID}/raw/%5c..", f"/{PID}/raw/%00x", f"/{PID}/raw",
                     f"/{PID}/server/80/.", f"/{PID}/server/80/a/%2E%2e/"):
            with self.assertRaises(BadRoute, msg=path):
                parse_route(path.encode(), b"")


class Http1Tests(unittest.TestCase):
    def test_request(self) -> None:
        req = parse_request(b"GET /x?y=1 HTTP/1.1\r\nHost: h\r\nX-A:  b \r\nCookie: a=1")
        self.assertEqual((req.method, req.path, req.query, req.keep_alive), (b"GET", b"/x", b"?y=1", True))
        self.assertEqual(req.headers, [(b"host", b"h"), (b"x-a", b"b"), (b"cookie", b"a=1")])
        self.assertEqual((req.length, req.chunked), (None, False))
        req = parse_request(b"POST / HTTP/1.0\r\nContent-Length: 5\r\nConnection: keep-alive")
        self.assertEqual((req.length, req.keep_alive), (5, True))
        req = parse_request(b"GET / HTTP/1.1\r\nConnection: Upgrade, close\r\nUpgrade: WebSocket")
        self.assertEqual((req.upgrade, req.keep_alive), (b"websocket", False))
        req = parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue")
        self.assertTrue(req.chunked and req.expect_continue)
        self.assertEqual(parse_request(b"POST / HTTP/1.1\r\nContent-Length: 3, 3").length, 3)

    def test_smuggling_and_junk_refused(self) -> None:
        cases = {
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked": 400,
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4": 400,
            b"GET / HTTP/1.1\r\nContent-Length: -1": 400,
            b"GET / HTTP/1.1\r\nContent-Length: 1e3": 400,
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked": 501,
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, identity": 501,
            b"GET / HTTP/1.1\r\nHost : x": 400,
            b"GET / HTTP/1.1\r\nHost: x\r\n folded": 400,
            b"GET / HTTP/1.1\r\nBad\x00Name: x": 400,
            b"GET / HTTP/2.0": 505,
            b"GET / HTTP/1.1 extra": 400,
            b"GET  / HTTP/1.1": 400,
            b"G<T / HTTP/1.1": 400,
            b"GET /\tx HTTP/1.1": 400,
        }
        for head, status in cases.items():
            with self.assertRaises(HttpError, msg=head) as cm:
                parse_request(head)
            self.assertEqual(cm.exception.status, status, head)
        with self.assertRaises(HttpError) as cm:
            parse_request(b"GET / HTTP/1.1\r\n" + b"\r\n".join([b"X: y"] * 200))
        self.assertEqual(cm.exception.status, 431)

    def test_response(self) -> None:
        r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 12", request_method=b"GET")
        self.assertEqual((r.status, r.length, r.keep_alive), (200, 12, True))
        r = parse_response(b"HTTP/1.0 200 OK\r\nServer: x", request_method=b"GET")
        self.assertEqual((r.length, r.chunked, r.keep_alive), (None, False, False))
        r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 12", request_method=b"HEAD")
        self.assertEqual(r.length, 0)
        r = parse_response(b"HTTP/1.1 304 Not Modified", request_method=b"GET")
        self.assertEqual(r.length, 0)
        for bad in (b"HTTP/1.1 2000 x", b"HTTP/2 200 OK", b"junk", b"HTTP/1.1 200 OK\r\nA\r\n"):
            with self.assertRaises(HttpError):
                parse_response(bad, request_method=b"GET")

    def test_chunked_framer(self) -> None:
        body = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nNEXT"
        for split in range(1, len(body)):
            f = BodyFramer(None, True)
            n1 = f.feed(body[:split])
            n2 = f.feed(body[split:])
            self.assertTrue(f.done)
            self.assertEqual(n1 + n2, len(body) - 4)
        f = BodyFramer(None, True, decode=True)
        f.feed(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        self.assertEqual(b"".join(f.decoded or []), b"abcde")
        for bad in (b"zz\r\n", b"5\r\nhelloXX\r\n", b"5\nhello\r\n", b"1" * 20 + b"\r\n", b"-1\r\n"):
            with self.assertRaises(HttpError, msg=bad):
                BodyFramer(None, True).feed(bad)
        f = BodyFramer(10, False)
        self.assertEqual((f.feed(b"x" * 4), f.feed(b"x" * 10), f.done), (4, 6, True))
        f = BodyFramer(None, False)
        self.assertEqual((f.feed(b"abc"), f.at_close()), (3, True))


class HeaderTests(unittest.TestCase):
    names = CookieNames.for_base_path("/hub")

    def test_strip_cookies(self) -> None:
        header = (b"%2Fhubremember_me=s; remember_me=other-install; %2Fhubapi_key=sk-x; theme=dark; "
                  b"%2Fotherremember_me=z; session=abc; csrf_token=t; %2Fhubaccount_id=u; hub_password=p")
        self.assertEqual(strip_cookies(header, self.names.is_reserved), b"theme=dark; session=abc")
        self.assertEqual(strip_cookies(b"remember_me=x", self.names.is_reserved), b"")

    def test_hub_credentials(self) -> None:
        basic = base64.b64encode(b"sk-abc:").decode().encode()
        self.assertTrue(is_hub_credential(b"Bearer sk-abc123", None))
        self.assertTrue(is_hub_credential(b"Basic " + basic, None))
        self.assertTrue(is_hub_credential(b"Bearer s3cret", b"s3cret"))
        app_basic = base64.b64encode(b"alice:wonderland")
        self.assertFalse(is_hub_credential(b"Basic " + app_basic, b"s3cret"))
        self.assertFalse(is_hub_credential(b"Bearer app-token", b"s3cret"))

    def test_request_headers(self) -> None:
        headers = [(b"host", b"hub.example"), (b"connection", b"keep-alive, X-Secret-Hop"),
                   (b"x-secret-hop", b"1"), (b"keep-alive", b"300"), (b"te", b"trailers"),
                   (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"), (b"forwarded", b"for=x"),
                   (b"x-cocalc-project-token", b"forged"), (b"authorization", b"Bearer sk-leak"),
                   (b"accept", b"*/*"), (b"upgrade", b"h2c")]
        lines = request_headers(headers, reserved=self.names.is_reserved, hub_secret=None, trust_proxy=False,
                                client_ip=b"10.0.0.5", proto=b"https", prefix=b"/hub/x/server/80", token=b"tok")
        self.assertEqual(lines, [b"host: hub.example", b"accept: */*", b"x-forwarded-for: 10.0.0.5",
                                 b"x-forwarded-proto: https", b"x-forwarded-host: hub.example",
                                 b"x-forwarded-prefix: /hub/x/server/80", b"x-cocalc-project-token: tok"])
        trusted = request_headers([(b"x-forwarded-for", b"1.2.3.4")], reserved=self.names.is_reserved,
                                  hub_secret=None, trust_proxy=True, client_ip=b"10.0.0.5", proto=b"http",
                                  prefix=b"/p", upgrade=b"websocket")
        self.assertIn(b"x-forwarded-for: 1.2.3.4, 10.0.0.5", trusted)
        self.assertIn(b"upgrade: websocket", trusted)
        app = request_headers([(b"authorization", b"Basic YWxpY2U6d29uZGVybGFuZA==")],
                              reserved=self.names.is_reserved, hub_secret=None, trust_proxy=False,
                              client_ip=b"1.1.1.1", proto=b"http", prefix=b"/p")
        self.assertIn(b"authorization: Basic YWxpY2U6d29uZGVybGFuZA==", app)

    def test_response_headers(self) -> None:
        headers = [(b"set-cookie", b"%2Fhubremember_me=evil; Path=/"), (b"set-cookie", b"remember_me=x"),
                   (b"set-cookie", b"app=1; Path=/"), (b"connection", b"close"), (b"transfer-encoding", b"chunked"),
                   (b"location", b"http://127.0.0.1:8000/login?next=/x"), (b"content-type", b"text/html")]
        lines = response_headers(headers, reserved=self.names.is_reserved, backend_port=8000,
                                 public_prefix=b"/hub/x/server/8000")
        self.assertEqual(lines, [b"set-cookie: app=1; Path=/", b"location: /hub/x/server/8000/login?next=/x",
                                 b"content-type: text/html"])

    def test_location(self) -> None:
        p = b"/hub/x/server/8000"
        self.assertEqual(rewrite_location(b"http://localhost:8000/a", 8000, None), b"/a")
        self.assertEqual(rewrite_location(b"http://[::1]:8000", 8000, p), p + b"/")
        self.assertEqual(rewrite_location(b"/a/b", 8000, p), p + b"/a/b")
        self.assertEqual(rewrite_location(p + b"/a", 8000, p), p + b"/a")
        self.assertEqual(rewrite_location(b"https://example.com/x", 8000, p), b"https://example.com/x")
        self.assertEqual(rewrite_location(b"//evil.example/x", 8000, p), b"//evil.example/x")
        self.assertEqual(rewrite_location(b"http://127.0.0.1:9999/x", 8000, p), b"http://127.0.0.1:9999/x")
        self.assertEqual(rewrite_location(b"relative", 8000, p), b"relative")
        self.assertEqual(rewrite_location(b"http://127.0.0.1/x", 80, None), b"/x")


class PageTests(unittest.TestCase):
    """The proxy's error pages: links under the base path, nothing of the request unescaped."""

    def body(self, status: int, ctx: pages.Context) -> str:
        raw = pages.error(status, "some message", ctx=ctx)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"content-length: %d" % len(body), head)
        return body.decode()

    def test_sign_in_next_is_the_same_path_percent_encoded(self) -> None:
        target = f'/my/hub/{PID}/port/80/"><script>alert(1)</script>?a=1&b=\u00e9'
        text = self.body(401, pages.Context("/my/hub", target=target, signed_in=False))
        self.assertNotIn("<script>", text)
        self.assertIn('href="/my/hub/auth/sign-in?next=/my/hub/' + PID + '/port/80/%22%3E%3Cscript%3E', text)
        self.assertIn("%3Fa%3D1%26b%3D%C3%A9", text)
        self.assertIn('<a href="/my/hub/auth/sign-up">Sign up</a>', text)
        for bad in ("//evil.example/x", "https://evil.example/", "/x" * 2000):
            text = self.body(401, pages.Context("/my/hub", target=bad, signed_in=False))
            self.assertIn('href="/my/hub/auth/sign-in"', text)
            self.assertNotIn("evil", text)

    def test_project_links_only_for_members(self) -> None:
        outsider = self.body(403, pages.Context("", target=f"/{PID}/port/80/", signed_in=True))
        self.assertNotIn(PID, outsider)
        self.assertIn("ask the project's owner", outsider)
        member = pages.Context("/b", signed_in=True, project_id=PID, port=8000)
        for status, words in ((403, "listens on port 8000"), (502, "The server on port 8000 is not answering"),
                              (504, "port 8000 may be busy")):
            text = self.body(status, member)
            self.assertIn(f'href="/b/projects/{PID}"', text)
            self.assertIn(words, text)
        raw = self.body(502, pages.Context("", project_id=PID, raw=True))
        self.assertIn("file server is not answering", raw)
        self.assertIn('<a href="/">Projects</a><a href="/auth/sign-in">Sign in</a>', raw)  # not known who

    def test_plain_pages_and_headers(self) -> None:
        raw = pages.error(400, "path tricks are not allowed in proxied URLs", ctx=pages.Context("/b"), close=True)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"connection: close", head)
        self.assertIn(b"content-security-policy: default-src 'none'; style-src 'self'", head)
        self.assertIn(b"Path tricks are not allowed in proxied URLs.", body)  # a sentence
        self.assertIn(b'href="/b/static/app.css"', body)


class RedirectAndCredentialTests(unittest.TestCase):
    def test_stays_on_site(self) -> None:
        from cocalc_hub.proxy.redirects import refresh_url, stays_on_site

        for ok in (b"/x", b"x/y", b"?q=1", b"#f", b"../up", b"http://hub.test/x", b"HTTP://hub.test:80/",
                   b"https://hub.test/", b"//hub.test/x"):
            self.assertTrue(stays_on_site(ok, b"hub.test", False), ok)
        for bad in (b"//evil", b"/\\evil", b"\\\\evil", b" //evil", b"/\t/evil", b"/\r\n/evil", b"http:evil",
                    b"https:evil", b"http:/evil", b"https://hub.test@evil/", b"http://evil\\@hub.test/",
                    b"javascript:alert(1)", b"HTTP://EVIL/", b"http://hub.test:81/", b"\x00//evil"):
            self.assertFalse(stays_on_site(bad, b"hub.test", False), bad)
        self.assertFalse(stays_on_site(b"//hub.test/x", None, False))
        self.assertEqual(refresh_url(b"0; URL='//evil/x'"), b"//evil/x")
        self.assertEqual(refresh_url(b"5;url=/a"), b"/a")
        self.assertIsNone(refresh_url(b"5"))

    def test_credentials_in_queries(self) -> None:
        from cocalc_hub.proxy.credentials import CredentialFinder

        finder = CredentialFinder([b"the-hub-secret"])
        self.assertEqual(finder.clean_query(b"?a=1&k=sk-abcdefghijklmnop000001&b=2"), b"?a=1&b=2")
        self.assertEqual(finder.clean_query(b"?k=sk%2Dabcdefgh"), b"")
        self.assertEqual(finder.clean_query(b"?x=the-hub-secret"), b"")
        self.assertEqual(finder.clean_query(b"?s=sha512%24abc%241000%2400000000-0000-4000"), b"")
        same = b"?q=risk-assessment&task-12345678=1"
        self.assertIs(finder.clean_query(same), same)
        self.assertTrue(finder.in_authorization(b"Basic " + base64.b64encode(b"user:sk-abcdefgh")))
        self.assertFalse(finder.in_authorization(b"Basic " + base64.b64encode(b"user:password")))
