"""Static files over a real listening hub: types, gzip, validators, caching, traversal."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from twisted.trial import unittest

from tests.support import RunningHub, http_client, parse_response, raw_get, raw_http, settings_for, start_hub

CSS = "body { color: #123456; }\n" * 40  # > GZIP_MIN so it is compressed
JS = "console.log('fingerprinted');\n" * 20


class StaticTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.static = self.tmp / "static"
        (self.static / "sub").mkdir(parents=True)
        (self.static / "app.css").write_text(CSS)
        (self.static / "main.3f2a9c1b.js").write_text(JS)
        (self.static / "page.html").write_text("<!doctype html><p>hi</p>")
        (self.static / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        (self.static / "data.bin").write_bytes(os.urandom(300_000))
        (self.static / "tiny.txt").write_text("tiny")
        (self.static / "sub" / "inner.json").write_text('{"a": 1}')
        (self.static / ".hidden").write_text("secret")
        (self.tmp / "outside.txt").write_text("OUTSIDE-SECRET")
        (self.static / "escape.txt").symlink_to(self.tmp / "outside.txt")
        (self.static / "escape-dir").symlink_to(self.tmp)
        (self.static / "inside-link.css").symlink_to(self.static / "app.css")
        self.hub: RunningHub = start_hub(self, settings_for(self.tmp, {"static": str(self.static)}))
        self.client = http_client(self)

    async def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        raw = await raw_http(self.hub.port, raw_get(path, headers=headers))
        return parse_response(raw)

    async def test_content_types(self) -> None:
        expected = {
            "/static/app.css": "text/css; charset=utf-8",
            "/static/main.3f2a9c1b.js": "text/javascript; charset=utf-8",
            "/static/page.html": "text/html; charset=utf-8",
            "/static/logo.png": "image/png",
            "/static/data.bin": "application/octet-stream",
            "/static/sub/inner.json": "application/json; charset=utf-8",
        }
        for path, ctype in expected.items():
            status, headers, _ = await self.get(path)
            self.assertEqual(status, 200, path)
            self.assertEqual(headers["content-type"], ctype, path)
            self.assertEqual(headers["x-content-type-options"], "nosniff")

    async def test_body_and_large_file_streams(self) -> None:
        r = await self.client.get(self.hub.url("/static/data.bin"))
        body = await r.content()
        self.assertEqual(body, (self.static / "data.bin").read_bytes())
        self.assertEqual(r.length, 300_000)

    async def test_gzip_for_text_types(self) -> None:
        status, headers, body = await self.get("/static/app.css", **{"Accept-Encoding": "gzip, deflate"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-encoding"], "gzip")
        self.assertEqual(headers["vary"], "Accept-Encoding")
        self.assertEqual(gzip.decompress(body).decode(), CSS)
        self.assertEqual(int(headers["content-length"]), len(body))
        # Without Accept-Encoding, or with gzip;q=0: identity.
        for accept in ({}, {"Accept-Encoding": "gzip;q=0"}, {"Accept-Encoding": "br"}):
            status, headers, body = await self.get("/static/app.css", **accept)
            self.assertNotIn("content-encoding", headers)
            self.assertEqual(body.decode(), CSS)

    async def test_no_gzip_for_binary_or_tiny(self) -> None:
        for path in ("/static/logo.png", "/static/data.bin", "/static/tiny.txt"):
            _, headers, _ = await self.get(path, **{"Accept-Encoding": "gzip"})
            self.assertNotIn("content-encoding", headers, path)

    async def test_etag_and_304(self) -> None:
        status, headers, _ = await self.get("/static/app.css")
        etag, modified = headers["etag"], headers["last-modified"]
        self.assertTrue(etag.startswith('"'))
        status, headers304, body = await self.get("/static/app.css", **{"If-None-Match": etag})
        self.assertEqual((status, body), (304, b""))
        self.assertEqual(headers304["etag"], etag)
        self.assertEqual(headers304["cache-control"], headers["cache-control"])
        status, _, body = await self.get("/static/app.css", **{"If-None-Match": f'"other", W/{etag}'})
        self.assertEqual(status, 304)
        status, _, _ = await self.get("/static/app.css", **{"If-Modified-Since": modified})
        self.assertEqual(status, 304)
        status, _, body = await self.get("/static/app.css", **{"If-None-Match": '"nope"'})
        self.assertEqual(status, 200)
        self.assertEqual(body.decode(), CSS)
        status, _, _ = await self.get("/static/app.css", **{"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
        self.assertEqual(status, 200)
        status, _, _ = await self.get("/static/app.css", **{"If-Modified-Since": "garbage"})
        self.assertEqual(status, 200)

    async def test_gzip_etag_differs_and_matches(self) -> None:
        _, plain, _ = await self.get("/static/app.css")
        _, gz, _ = await self.get("/static/app.css", **{"Accept-Encoding": "gzip"})
        self.assertNotEqual(plain["etag"], gz["etag"])
        status, _, _ = await self.get("/static/app.css", **{"Accept-Encoding": "gzip", "If-None-Match": gz["etag"]})
        self.assertEqual(status, 304)

    async def test_etag_changes_with_content(self) -> None:
        _, before, _ = await self.get("/static/tiny.txt")
        (self.static / "tiny.txt").write_text("changed!")
        os.utime(self.static / "tiny.txt", ns=(1, 1))
        status, after, body = await self.get("/static/tiny.txt", **{"If-None-Match": before["etag"]})
        self.assertEqual((status, body), (200, b"changed!"))
        self.assertNotEqual(before["etag"], after["etag"])

    async def test_cache_headers(self) -> None:
        _, h, _ = await self.get("/static/main.3f2a9c1b.js")
        self.assertEqual(h["cache-control"], "public, max-age=31536000, immutable")
        _, h, _ = await self.get("/static/page.html")
        self.assertEqual(h["cache-control"], "no-cache")
        _, h, _ = await self.get("/static/app.css")
        self.assertEqual(h["cache-control"], "public, max-age=3600")

    async def test_head(self) -> None:
        raw = await raw_http(self.hub.port, raw_get("/static/data.bin", method="HEAD"))
        status, headers, body = parse_response(raw)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], "300000")
        self.assertEqual(body, b"")

    async def test_range(self) -> None:
        data = (self.static / "data.bin").read_bytes()
        status, headers, body = await self.get("/static/data.bin", Range="bytes=10-19")
        self.assertEqual((status, body), (206, data[10:20]))
        self.assertEqual(headers["content-range"], "bytes 10-19/300000")
        status, _, body = await self.get("/static/data.bin", Range="bytes=-5")
        self.assertEqual((status, body), (206, data[-5:]))
        status, headers, _ = await self.get("/static/data.bin", Range="bytes=999999-")
        self.assertEqual(status, 416)
        self.assertEqual(headers["content-range"], "bytes */300000")
        status, _, body = await self.get("/static/data.bin", Range="bytes=0-1,5-6")
        self.assertEqual((status, len(body)), (200, 300000))
        status, _, body = await self.get("/static/data.bin", Range="junk")
        self.assertEqual(status, 200)

    async def test_no_directory_listings(self) -> None:
        for path in ("/static/", "/static/sub", "/static/sub/", "/static"):
            status, headers, body = await self.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"inner.json", body)

    async def test_traversal_is_refused(self) -> None:
        attempts = [
            "/static/../tap.py",
            "/static/..%2f..%2foutside.txt",
            "/static/%2e%2e/outside.txt",
            "/static/%2E%2E/%2E%2E/outside.txt",
            "/static/sub/..%2F..%2Foutside.txt",
            "/static/sub%2f..%2f..%2foutside.txt",
            "/static/..\\outside.txt",
            "/static/..%5coutside.txt",
            "/static/%252e%252e/outside.txt",
            "/static/./app.css",
            "/static//app.css",
            "/static/app.css%00.png",
            "/static/escape.txt",
            "/static/escape-dir/outside.txt",
            "/static/.hidden",
            "/static/%2ehidden",
            "/static/%ff%fe",
        ]
        for path in attempts:
            status, _, body = await self.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"OUTSIDE-SECRET", body, path)
            self.assertNotIn(b"secret", body, path)

    async def test_symlink_inside_root_is_served(self) -> None:
        status, _, body = await self.get("/static/inside-link.css")
        self.assertEqual((status, body.decode()), (200, CSS))

    async def test_404_never_echoes_url(self) -> None:
        evil = "/static/%3Cscript%3Ealert(1)%3C/script%3E"
        for path in (evil, "/nothing/<script>alert(1)</script>", "/%3Cimg%20src=x%20onerror=alert(1)%3E"):
            status, headers, body = await self.get(path)
            self.assertEqual(status, 404)
            self.assertNotIn(b"<script>", body)
            self.assertNotIn(b"alert(1)", body)
            self.assertNotIn(b"onerror", body)
            self.assertTrue(headers["content-type"].startswith("text/html"))

    async def test_index_page(self) -> None:
        # The static dir here has no index.html: the packaged placeholder is used.
        status, headers, body = await self.get("/")
        self.assertEqual(status, 200)
        self.assertIn(b"Welcome to CoCalc", body)  # {{site}}: the default name without the web UI
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertIn(b'href="/static/app.css"', body)
        self.assertIn(b'<header class="top">', body)  # the same top bar as the other pages
        self.assertIn(b'<link rel="icon" href="/static/favicon.svg"', body)
