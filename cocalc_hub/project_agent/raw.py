"""The project's HTTP server: ``/<project_id>/raw/`` files over HOME, and the exec API.

Every request must carry the project's per-start secret in ``X-CoCalc-Project-Token``
(the hub's proxy adds it), so other local users and projects cannot use this server
even though it listens on 127.0.0.1 (upstream #2031).
"""

from __future__ import annotations

import hmac
import html
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cocalc_hub.project_agent.jobs import ExecError, Jobs
from cocalc_hub.web.files import UnsafePath, decode_segments, safe_resolve, serve_file

log = Logger()

TOKEN_HEADER = b"x-cocalc-project-token"
# HTML from a project must not run with the hub's origin: an opaque, sandboxed origin.
SANDBOX = b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"
MAX_EXEC_BODY = 1024 * 1024


def _text(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (message + "\n").encode("utf-8")


def _json(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class ProjectRoot(Resource):
    """Routes on the raw path: ``<base>/<id>/raw/...`` and ``<base>/<id>/.api/...``."""

    isLeaf = True

    def __init__(self, *, home: Path, project_id: str, base_path: str, token: str, jobs: Jobs) -> None:
        super().__init__()
        self.home = home.resolve()
        prefix = ("" if base_path == "/" else base_path) + f"/{project_id}"
        self.raw_prefix = (prefix + "/raw/").encode()
        self.raw_bare = (prefix + "/raw").encode()
        self.api_prefix = (prefix + "/.api/").encode()
        self.token = token.encode()
        self.jobs = jobs

    def render(self, request: Request) -> Any:
        request.setHeader(b"server", b"cocalc-project")
        presented = request.getHeader(TOKEN_HEADER) or b""
        if not hmac.compare_digest(presented, self.token):
            return _text(request, 403, "This server only answers the CoCalc hub.")
        path = request.path
        if path.startswith(self.raw_prefix):
            if request.method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                return _text(request, 405, "Only GET and HEAD are allowed here.")
            return self.raw(request, path[len(self.raw_prefix):])
        if path == self.raw_bare:
            request.setResponseCode(301)
            request.setHeader(b"location", self.raw_prefix)
            return b""
        if path == self.api_prefix + b"ping":
            return _json(request, 200, {"pong": True, "pid": os.getpid()})
        if path == self.api_prefix + b"exec":
            if request.method != b"POST":
                request.setHeader(b"allow", b"POST")
                return _json(request, 405, {"error": "POST only"})
            return self.exec(request)
        return _text(request, 404, "Not found.")

    # files ---------------------------------------------------------------------------

    def raw(self, request: Request, rest: bytes) -> Any:
        try:
            segments = decode_segments(rest) if rest else [""]
            directory_url = segments[-1] == ""
            target = safe_resolve(self.home, [s for s in segments if s], allow_hidden=True)
            st = target.stat()
        except (UnsafePath, OSError):
            return _text(request, 404, "No such file.")
        request.setHeader(b"content-security-policy", SANDBOX)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if stat.S_ISDIR(st.st_mode):
            if not directory_url:
                request.setResponseCode(301)
                request.setHeader(b"location", request.path + b"/")
                return b""
            return self.listing(request, target, segments)
        if not stat.S_ISREG(st.st_mode):
            return _text(request, 404, "No such file.")
        extra = {}
        if b"download" in (request.args or {}):
            extra[b"content-disposition"] = b"attachment; filename*=UTF-8''" + quote(target.name).encode()
        try:
            return serve_file(request, target, st=st, cache_control="private, no-cache", extra_headers=extra)
        except (UnsafePath, OSError):
            return _text(request, 404, "No such file.")

    def listing(self, request: Request, directory: Path, segments: list[str]) -> bytes:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return _text(request, 403, "This directory cannot be read.")
        rows = []
        for entry in sorted(entries, key=lambda e: (not e.is_dir(follow_symlinks=True), e.name.lower())):
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(info.st_mode)
            href = quote(entry.name) + ("/" if is_dir else "")
            when = datetime.fromtimestamp(info.st_mtime, UTC).strftime("%Y-%m-%d %H:%M")
            size = "-" if is_dir else f"{info.st_size:,}"
            rows.append(f'<tr><td><a href="{html.escape(href, quote=True)}">{html.escape(entry.name)}'
                        f'{"/" if is_dir else ""}</a></td><td class="n">{size}</td><td>{when}</td></tr>')
        title = "/" + "/".join(s for s in segments if s)
        parent = '<p><a href="../">Parent directory</a></p>' if any(segments[:-1]) else ""
        page = (
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:1.5em}}"
            "td{padding:.2em .8em}.n{text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{parent}<table><tr><th>Name</th><th>Size</th><th>Modified</th></tr>"
            + "".join(rows) + "</table></body></html>\n"
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page.encode("utf-8")

    # exec --------------------------------------------------------------------------------

    def exec(self, request: Request) -> Any:
        assert request.content is not None
        raw = request.content.read(MAX_EXEC_BODY + 1)
        if len(raw) > MAX_EXEC_BODY:
            return _json(request, 413, {"error": "request too large"})
        try:
            params = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            return _json(request, 400, {"error": "the body is not valid JSON"})
        if not isinstance(params, dict):
            return _json(request, 400, {"error": "the body must be a JSON object"})
        lost: list[bool] = []
        request.notifyFinish().addErrback(lambda _: lost.append(True))

        async def run() -> None:
            try:
                status, body = 200, await self.jobs.handle(params)
            except ExecError as e:
                status, body = e.status, {"error": e.message, **e.extra}
            except Exception:
                log.failure("exec failed")
                status, body = 500, {"error": "internal error in the project"}
            if not lost:
                request.write(_json(request, status, body))
                request.finish()

        Deferred.fromCoroutine(run())
        return NOT_DONE_YET
