"""``BASE_PATH/static/…`` from the assets folder, the index page and robots.txt."""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path
from typing import Any, cast

from twisted.web.server import Request

from cocalc_hub.web.errors import SITE_NAME, error_page
from cocalc_hub.web.files import GzipCache, UnsafePath, decode_segments, safe_resolve, serve_file
from cocalc_hub.web.request import HubRequest
from cocalc_hub.web.resource import HubResource

# "app.3f2a9c1b.js", "chunk-0a1b2c3d4e.css", "main.3f2a9c1b.js.map": content-hashed, never change.
_FINGERPRINT = re.compile(r"[.-][0-9a-fA-F]{8,}\.[A-Za-z0-9]+(\.map)?$")

CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_HTML = "no-cache"
CACHE_DEFAULT = "public, max-age=3600"


def cache_control_for(name: str) -> str:
    if _FINGERPRINT.search(name):
        return CACHE_IMMUTABLE
    if name.lower().endswith((".html", ".htm")):
        return CACHE_HTML
    return CACHE_DEFAULT


class StaticResource(HubResource):
    """Files under one root; no listings, no dotfiles, nothing outside the root."""

    def __init__(self, root: Path, gzip_cache: GzipCache | None = None) -> None:
        super().__init__()
        self.root = root
        self.gzip_cache = gzip_cache or GzipCache()

    def render_GET(self, request: Request) -> Any:
        rest = cast(HubRequest, request).mount_rest
        if not rest.startswith(b"/") or rest == b"/":
            return error_page(request, 404, "There is nothing here.")
        try:
            segments = decode_segments(rest[1:])
            path = safe_resolve(self.root, segments)
            st = path.stat()
            return serve_file(request, path, st=st, cache_control=cache_control_for(path.name),
                              gzip_cache=self.gzip_cache)
        except (UnsafePath, OSError):
            return error_page(request, 404, "There is nothing here.")


class TemplatePage(HubResource):
    """A page from the assets folder with ``{{base}}`` replaced by the base path prefix and
    ``{{site}}`` by the site's name."""

    def __init__(self, path: Path, base_path: str, gzip_cache: GzipCache | None = None) -> None:
        super().__init__()
        self.path = path
        self.prefix = "" if base_path == "/" else base_path
        self.gzip_cache = gzip_cache or GzipCache()
        self._cache: tuple[int, bytes] | None = None

    def _body(self, mtime_ns: int) -> bytes:
        if self._cache is None or self._cache[0] != mtime_ns:
            text = self.path.read_text("utf-8").replace("{{base}}", self.prefix)
            self._cache = (mtime_ns, text.encode("utf-8"))
        return self._cache[1]

    def render_GET(self, request: Request, site: str = SITE_NAME) -> Any:
        try:
            st = self.path.stat()
            body = self._body(st.st_mtime_ns).replace(b"{{site}}", html.escape(site).encode("utf-8"))
        except OSError:
            return error_page(request, 404, "There is nothing here.")
        # The ETag follows the content: a new site name is not answered with a 304.
        tag = b"%x-%s" % (st.st_mtime_ns, hashlib.sha256(body).hexdigest()[:16].encode())
        return serve_file(request, self.path, st=st, body=body, cache_control=CACHE_HTML,
                          gzip_cache=self.gzip_cache, tag=tag)


class FaviconResource(HubResource):
    """``/favicon.ico``, which browsers ask for at the host root and under the base path: the
    first of ``candidates`` that exists (the --static folder's own, then the package's)."""

    def __init__(self, candidates: list[Path], gzip_cache: GzipCache | None = None) -> None:
        super().__init__()
        self.candidates = candidates
        self.gzip_cache = gzip_cache or GzipCache()

    def render_GET(self, request: Request) -> Any:
        if cast(HubRequest, request).mount_rest:
            return error_page(request, 404, "There is nothing here.")
        for path in self.candidates:
            try:
                return serve_file(request, path, st=path.stat(), cache_control="public, max-age=86400",
                                  gzip_cache=self.gzip_cache)
            except (UnsafePath, OSError):
                continue
        return error_page(request, 404, "There is nothing here.")


class RobotsResource(HubResource):
    """Keep crawlers away from project content and the API."""

    def __init__(self, base_path: str) -> None:
        super().__init__()
        prefix = "" if base_path == "/" else base_path
        lines = ["User-agent: *"]
        for p in ("/api/", "/static/", "/*/raw/", "/*/port/", "/*/server/", "/conat/"):
            lines.append(f"Disallow: {prefix}{p}")
        self.body = ("\n".join(lines) + "\n").encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=3600, must-revalidate")
        return self.body
