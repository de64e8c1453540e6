"""Serving one regular file over HTTP: types, validators, 304s, gzip, ranges, streaming.

Shared by the hub's static site and the project program's raw file server.
Path safety is the caller's job (see :func:`safe_resolve`).
"""

from __future__ import annotations

import gzip
import mimetypes
import os
import re
import stat
from collections.abc import Sequence
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

from twisted.internet.interfaces import IPullProducer
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from cocalc_hub.cache import LRU

CHUNK = 64 * 1024
INLINE_MAX = 64 * 1024
GZIP_MIN = 256
GZIP_MAX = 2 * 1024 * 1024

_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".webmanifest": "application/manifest+json",
    ".py": "text/x-python",
    ".ipynb": "application/x-ipynb+json",
    ".sh": "text/x-shellscript",
    ".gz": "application/gzip",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
}

_COMPRESSIBLE = re.compile(
    r"^(text/|application/(json|javascript|xml|manifest\+json|x-ipynb\+json|wasm)|image/svg\+xml)"
)


def content_type(name: str) -> str:
    """MIME type for a file name, with a charset for text; unknown → octet-stream."""
    ext = os.path.splitext(name)[1].lower()
    ctype = _TYPES.get(ext) or mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/json", "application/xml", "image/svg+xml",
                                              "application/manifest+json"):
        ctype += "; charset=utf-8"
    return ctype


def is_compressible(ctype: str) -> bool:
    return bool(_COMPRESSIBLE.match(ctype))


class UnsafePath(Exception):
    """The requested path would leave the root, or names something not allowed."""


def decode_segments(raw_path: bytes) -> list[str]:
    """Split a raw (still percent-encoded) URL path into decoded segments, strictly.

    Refuses dot segments, encoded or literal backslashes, NUL and other control
    characters, and encoded slashes, so nothing decodes into a path separator.
    """
    from urllib.parse import unquote_to_bytes

    segments: list[str] = []
    for raw in raw_path.split(b"/"):
        decoded = unquote_to_bytes(raw)
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafePath("path is not valid UTF-8") from None
        if text in (".", "..") or "/" in text or "\\" in text:
            raise UnsafePath("path segment is not allowed")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise UnsafePath("control character in path")
        segments.append(text)
    return segments


def safe_resolve(root: Path, segments: Sequence[str], *, allow_hidden: bool = False) -> Path:
    """Join segments under root and resolve symlinks; refuse anything outside root."""
    for seg in segments:
        if seg in ("", ".", "..") or "/" in seg or "\x00" in seg:
            raise UnsafePath("path segment is not allowed")
        if not allow_hidden and seg.startswith("."):
            raise UnsafePath("hidden files are not served")
    root_resolved = root.resolve()
    candidate = root_resolved.joinpath(*segments)
    resolved = Path(os.path.realpath(candidate))
    if resolved != root_resolved and not resolved.is_relative_to(root_resolved):
        raise UnsafePath("path leaves the root")
    return resolved


class GzipCache:
    """Compressed bodies of small text files, keyed by (path, size, mtime); LRU by bytes."""

    def __init__(self, budget: int = 32 * 1024 * 1024) -> None:
        self.budget = budget
        self._items: LRU[tuple[str, int, int], bytes] = LRU(budget, weight=len)

    def get(self, path: Path, st: os.stat_result) -> bytes:
        key = (str(path), st.st_size, st.st_mtime_ns)
        body = self._items.get(key)
        if body is not None:
            return body
        body = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
        self._items.put(key, body)
        return body


def http_date(ts: float) -> bytes:
    return formatdate(ts, usegmt=True).encode("ascii")


def _etag_matches(header: bytes, etags: Sequence[bytes]) -> bool:
    if header.strip() == b"*":
        return True
    for tag in header.split(b","):
        tag = tag.strip()
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag in etags:
            return True
    return False


def _not_modified_since(header: bytes, mtime: float) -> bool:
    try:
        when = parsedate_to_datetime(header.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    return int(mtime) <= when


def accepts_gzip(request: Request) -> bool:
    header = request.getHeader(b"accept-encoding")
    if not header:
        return False
    for item in header.lower().split(b","):
        parts = [p.strip() for p in item.split(b";")]
        if parts[0] in (b"gzip", b"x-gzip", b"*"):
            q = 1.0
            for p in parts[1:]:
                if p.startswith(b"q="):
                    try:
                        q = float(p[2:])
                    except ValueError:
                        q = 0.0
            return q > 0
    return False


def parse_range(header: bytes, size: int) -> tuple[int, int] | None | bool:
    """One byte range → (start, end inclusive); None if unusable; False if unsatisfiable."""
    header = header.strip()
    if not header.startswith(b"bytes=") or b"," in header:
        return None
    spec = header[6:].strip()
    m = re.fullmatch(rb"(\d*)-(\d*)", spec)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if len(m.group(1)) > 19 or len(m.group(2)) > 19:
        return None
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size:
            return False
        if end < start:
            return None
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        return False
    return max(0, size - suffix), size - 1


@implementer(IPullProducer)
class FileProducer:
    """Streams part of an open file into a request, pulled by the transport."""

    def __init__(self, request: Request, fileobj: IO[bytes], length: int) -> None:
        self.request: Request | None = request
        self.file = fileobj
        self.remaining = length

    def start(self) -> None:
        assert self.request is not None
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.request is None:
            return
        data = self.file.read(min(CHUNK, self.remaining)) if self.remaining > 0 else b""
        if data:
            self.remaining -= len(data)
            self.request.write(data)
        if not data or self.remaining <= 0:
            request, self.request = self.request, None
            self.file.close()
            request.unregisterProducer()
            request.finish()

    def stopProducing(self) -> None:
        self.request = None
        self.file.close()


def _requested_range(request: Request, size: int, etag_plain: bytes, mtime: float) -> tuple[int, int] | None:
    """(start, length) of a file to send: all of it, or the Range asked for (a 206); None
    once a 416 is answered."""
    start, length = 0, size
    request.setHeader(b"accept-ranges", b"bytes")
    rng = request.getHeader(b"range")
    if_range = request.getHeader(b"if-range")
    if rng is not None and request.method == b"GET" and (
        if_range is None or if_range.strip() == etag_plain or if_range.strip() == http_date(mtime)
    ):
        parsed = parse_range(rng, size)
        if parsed is False:
            request.setResponseCode(416)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            request.responseHeaders.removeHeader(b"content-type")
            request.setHeader(b"content-length", b"0")
            return None
        if isinstance(parsed, tuple):
            start, end = parsed
            length = end - start + 1
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, size))
    return start, length


def serve_file(
    request: Request,
    path: Path,
    *,
    cache_control: str,
    gzip_cache: GzipCache | None = None,
    st: os.stat_result | None = None,
    extra_headers: dict[bytes, bytes] | None = None,
    body: bytes | None = None,
    tag: bytes | None = None,
) -> Any:
    """Answer a GET/HEAD for one file. ``body`` overrides the file's bytes (templated pages);
    ``tag`` then names that body in the ETag (default: its size and the file's mtime)."""
    if st is None:
        st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath("not a regular file")
    size = st.st_size if body is None else len(body)
    ctype = content_type(path.name)
    compressible = gzip_cache is not None and is_compressible(ctype) and GZIP_MIN <= size <= GZIP_MAX
    use_gzip = compressible and accepts_gzip(request)
    base_tag = b'"%x-%x' % (size, st.st_mtime_ns) if tag is None else b'"' + tag
    etag_plain, etag_gz = base_tag + b'"', base_tag + b'-gz"'
    etag = etag_gz if use_gzip else etag_plain

    request.setHeader(b"content-type", ctype.encode("ascii"))
    request.setHeader(b"last-modified", http_date(st.st_mtime))
    request.setHeader(b"etag", etag)
    request.setHeader(b"cache-control", cache_control.encode("ascii"))
    request.setHeader(b"x-content-type-options", b"nosniff")
    if compressible:
        request.setHeader(b"vary", b"Accept-Encoding")
    for name, value in (extra_headers or {}).items():
        request.setHeader(name, value)

    inm = request.getHeader(b"if-none-match")
    ims = request.getHeader(b"if-modified-since")
    if (inm is not None and _etag_matches(inm, (etag_plain, etag_gz))) or (
        inm is None and ims is not None and _not_modified_since(ims, st.st_mtime)
    ):
        request.setResponseCode(304)
        request.responseHeaders.removeHeader(b"content-type")
        return b""

    head = request.method == b"HEAD"
    if use_gzip:
        assert gzip_cache is not None
        data = gzip.compress(body, 6, mtime=0) if body is not None else gzip_cache.get(path, st)
        request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"content-length", b"%d" % len(data))
        return b"" if head else data

    start, length = 0, size
    if body is None:
        wanted = _requested_range(request, size, etag_plain, st.st_mtime)
        if wanted is None:
            return b""
        start, length = wanted

    request.setHeader(b"content-length", b"%d" % length)
    if head:
        return b""
    if body is not None:
        return body
    fileobj = path.open("rb")
    if start:
        fileobj.seek(start)
    if length <= INLINE_MAX:
        with fileobj:
            return fileobj.read(length)
    FileProducer(request, fileobj, length).start()
    return NOT_DONE_YET
