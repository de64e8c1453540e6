"""The web UI's pages: small HTML shells that ``static/app.js`` brings to life.

Each page is a trusted template from ``assets/pages/`` inside one layout. The server decides
only what must not be left to the browser: who may see a page (anonymous visitors are sent
to sign-in with a safe ``next``, non-admins get 403 on the admin page, non-members 403/404
on a project page) and the session's CSRF token, which goes into a ``<meta>`` tag so scripts
never need to read cookies. Everything else comes from the JSON API. Pages carry a strict
Content-Security-Policy: scripts and styles only from this origin, nothing inline.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from cocalc_hub.auth.accounts import AuthError
from cocalc_hub.auth.caller import Caller
from cocalc_hub.auth.cookies import parse_cookie_header
from cocalc_hub.db.store import DatabaseUnavailable, is_uuid, normalize_uuid
from cocalc_hub.packaged import package_path
from cocalc_hub.web.api import ApiServices, safe_next
from cocalc_hub.web.errors import SITE_NAME, error_page
from cocalc_hub.web.files import GzipCache
from cocalc_hub.web.request import HubRequest, is_secure
from cocalc_hub.web.resource import HubResource
from cocalc_hub.web.static import TemplatePage

log = Logger()

PACKAGE_ASSETS = package_path("cocalc_hub.web", "assets")

CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""No inline script or style anywhere in the UI, so injected markup cannot run."""

# Mount points under BASE_PATH (besides the index) that the pages own.
SEGMENTS = ("auth", "projects", "settings", "admin")


@dataclass(frozen=True)
class Page:
    template: str
    title: str
    access: str
    """anonymous (signed-in visitors are sent on), any (signed in or not), user or admin."""
    module: str
    """The script (under static/) that drives the page."""


PAGES = {
    "/": Page("dashboard.html", "Projects", "user", "projects.js"),
    "/projects": Page("dashboard.html", "Projects", "user", "projects.js"),
    "/auth/sign-in": Page("sign-in.html", "Sign in", "anonymous", "auth.js"),
    "/auth/sign-up": Page("sign-up.html", "Sign up", "anonymous", "auth.js"),
    "/auth/setup": Page("setup-admin.html", "First administrator", "any", "setup.js"),
    "/settings": Page("settings.html", "Account", "user", "account.js"),
    "/admin": Page("admin.html", "Administration", "admin", "account.js"),
}
PROJECT_PAGE = Page("project.html", "Project", "user", "projects.js")

UI_ASSETS = ("app.css", "app.js", "auth.js", "projects.js", "account.js", "setup.js")
"""Versioned together: one ``?v=`` for all, so a page never mixes two releases."""

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


class Templates:
    """Reads templates and asset fingerprints, re-reading a file only when it changes."""

    def __init__(self, pages_dir: Path, static_dir: Path) -> None:
        self.pages_dir = pages_dir
        self.static_dir = static_dir
        self._text: dict[Path, tuple[int, str]] = {}

    def _read(self, path: Path) -> str:
        mtime = path.stat().st_mtime_ns
        cached = self._text.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, path.read_text("utf-8"))
            self._text[path] = cached
        return cached[1]

    def page(self, name: str) -> str:
        return self._read(self.pages_dir / name)

    def version(self, assets: tuple[str, ...]) -> str:
        """A content hash for ``?v=``: a new release is fetched at once despite caching."""
        digest = hashlib.sha256()
        for asset in assets:
            path = self.static_dir / asset
            if not path.is_file():
                path = PACKAGE_ASSETS / asset
            try:
                digest.update(self._read(path).encode("utf-8"))
            except OSError:
                digest.update(b"-")
        return digest.hexdigest()[:10]


def _project_id_of(rel: bytes) -> str | None:
    """The id in ``/projects/<uuid>``, or None."""
    if not rel.startswith(b"/projects/"):
        return None
    raw = rel[len(b"/projects/"):].decode("latin-1")
    return normalize_uuid(raw) if is_uuid(raw) else None


class PagesResource(HubResource):
    """Mounted at ``BASE_PATH/`` and under :data:`SEGMENTS`."""

    def __init__(self, services: ApiServices, static_dir: Path, gzip_cache: GzipCache | None = None,
                 pages_dir: Path | None = None) -> None:
        super().__init__()
        self.services = services
        self.prefix = "" if services.base_path == "/" else services.base_path
        self.templates = Templates(pages_dir or PACKAGE_ASSETS / "pages", static_dir)
        # Anonymous visitors of BASE_PATH/ get the welcome page (``--static`` may replace it).
        index = static_dir / "index.html"
        self.landing = TemplatePage(index if index.is_file() else PACKAGE_ASSETS / "index.html",
                                    services.base_path, gzip_cache)

    def render_GET(self, request: Request) -> Any:
        hub_request = cast(HubRequest, request)
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def respond(body: bytes) -> None:
            if not finished:
                if not request.responseHeaders.hasHeader(b"content-length"):  # the landing page sets it
                    request.setHeader(b"content-length", b"%d" % len(body))
                request.write(b"" if request.method == b"HEAD" else body)
                request.finish()

        d: Deferred[bytes] = Deferred.fromCoroutine(self._render(hub_request))
        d.addCallback(respond)
        d.addErrback(lambda f: log.failure("page response failed", f))
        return NOT_DONE_YET

    async def _render(self, request: HubRequest) -> bytes:
        seen: list[Caller] = []  # who is asking, once known: error pages then show their links
        try:
            return await self._page(request, seen)
        except AuthError as e:
            project = _project_id_of(request.rel_path.rstrip(b"/"))
            return await self._error(request, seen, e.status, e.message, project=project)
        except DatabaseUnavailable:
            return error_page(request, 503, "The database is unavailable; try again shortly.")
        except Exception:
            log.failure("page error in {path}", path=request.path)
            return error_page(request, 500, "Something went wrong on the hub.")

    async def _error(self, request: HubRequest, seen: list[Caller], status: int, message: str, *,
                     project: str | None = None) -> bytes:
        """An error page with this caller's links and a hint on what to do next."""
        caller = seen[0] if seen else None
        home = f'<a href="{html.escape(self.prefix, quote=True)}/">the projects page</a>'
        hint = None
        if project and status == 403:
            hint = f"<p>Ask the project's owner to add you as a collaborator. Your own projects are on {home}.</p>"
        elif project and status == 404:
            hint = f"<p>It may have been deleted, or the address is wrong. Your projects are on {home}.</p>"
        elif status == 403:
            hint = f"<p>Ask an administrator of this hub. Your projects are on {home}.</p>"
        nav = self._nav(caller, script=False) if caller is not None else None
        return error_page(request, status, message, extra_html=hint, nav=nav, site=await self._site_name())

    async def _site_name(self) -> str:
        """The site_name setting; its default while the database is away (for pages that do
        not need the database otherwise: the welcome page, error pages)."""
        try:
            return await self.services.accounts.settings.get("site_name") or SITE_NAME
        except DatabaseUnavailable:
            return SITE_NAME

    async def _page(self, request: HubRequest, seen: list[Caller]) -> bytes:
        rel = request.rel_path.rstrip(b"/") or b"/"
        project_id = _project_id_of(rel)
        page = PROJECT_PAGE if project_id else PAGES.get(rel.decode("latin-1"))
        services = self.services
        cookies = parse_cookie_header(b"; ".join(request.requestHeaders.getRawHeaders(b"cookie") or []))
        cookies = services.names.effective(cookies, is_secure(request, request.trust_proxy))
        # Browser pages use cookies only: a Bearer header is for scripts, not for pages.
        caller = await services.auth.identify(cookies, None, ("remember_me", "api_key_cookie"))
        seen.append(caller)
        if page is None:
            return await self._error(request, seen, 404, "There is nothing here.")
        signed_in = caller.is_account
        query = dict(parse_qsl(request.uri.partition(b"?")[2].decode("utf-8", "replace")))
        if rel == b"/" and not signed_in:
            request.setHeader(b"content-security-policy", CSP)
            body = cast(bytes, self.landing.render_GET(request, await self._site_name()))
            vary = request.responseHeaders.getRawHeaders(b"vary") or []
            request.setHeader(b"vary", b", ".join([*vary, b"Cookie"]))  # signed in, "/" is the dashboard
            return body
        if page.access == "anonymous":
            if signed_in:
                return self._redirect(request, safe_next(query.get("next"), services.base_path) or self.prefix + "/")
        elif not signed_in and page.access != "any":
            here = request.uri.decode("latin-1")
            return self._redirect(request, f"{self.prefix}/auth/sign-in?next={quote(here, safe='/')}")
        elif page.access == "admin" and not caller.is_admin:
            return await self._error(request, seen, 403, "Only administrators may open this page.")
        title = page.title
        if project_id:
            project = await services.projects.access(caller, project_id, write=False)
            title = project.title or "Untitled project"
        return await self._html(request, page, caller, cookies, title=title, project_id=project_id or "")

    def _redirect(self, request: HubRequest, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def _csrf(self, caller: Caller, cookies: dict[str, str]) -> str:
        names = self.services.names
        value = cookies.get(names.remember_me) if caller.via == "remember_me" else cookies.get(names.api_key)
        return self.services.csrf.token(value) if value and caller.signed_in else ""

    async def _html(self, request: HubRequest, page: Page, caller: Caller, cookies: dict[str, str], *,
                    title: str, project_id: str) -> bytes:
        site = await self.services.accounts.settings.get("site_name") or "CoCalc"
        t = self.templates
        values = {
            "base": self.prefix,
            "title": title,
            "site": site,
            "csrf": self._csrf(caller, cookies),
            "page": page.template.removesuffix(".html"),
            "project_id": project_id,
            "module": page.module,
            "v": t.version(UI_ASSETS),
        }
        escaped = {k: html.escape(v, quote=True) for k, v in values.items()}
        escaped["nav"] = self._nav(caller)  # built from escaped parts
        text = t.page("layout.html").replace("{{content}}", t.page(page.template))
        # One pass, so a value that looks like a placeholder (a title "{{csrf}}") stays text.
        text = _PLACEHOLDER.sub(lambda m: escaped.get(m.group(1), m.group(0)), text)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"same-origin")
        return text.encode("utf-8")

    def _nav(self, caller: Caller, *, script: bool = True) -> str:
        """The header links: what a signed-in account may open, or sign-in/sign-up (sign-out
        is a scripted button: not on error pages, which have no script)."""
        p = html.escape(self.prefix, quote=True)
        if not caller.is_account:
            return (f'<a href="{p}/auth/sign-in">Sign in</a>'
                    f'<a href="{p}/auth/sign-up">Sign up</a>')
        links = [f'<a href="{p}/">Projects</a>', f'<a href="{p}/settings">Account</a>']
        if caller.is_admin:
            links.append(f'<a href="{p}/admin">Admin</a>')
        if script:
            links.append('<button type="button" id="sign-out" class="link">Sign out</button>')
        return "".join(links)
