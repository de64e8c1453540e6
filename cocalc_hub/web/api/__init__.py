"""The JSON API under ``BASE_PATH/api/v2/``: routing, bodies, auth, CSRF, errors.

Endpoints are ``async def handler(ctx) -> dict`` added to their module's
:class:`EndpointTable` by its ``endpoint`` decorator, which also describes them (summary,
parameters, statuses) for the OpenAPI document served at ``api/v2/openapi.json``
(:mod:`cocalc_hub.web.api.openapi`), so the document is made from the same registry that
routes requests (:mod:`cocalc_hub.web.api.registry`, which lists the modules). Parameters
come from the JSON or urlencoded POST body (upstream's convention), and for read-only
endpoints also from the query string of a GET.
Errors are JSON with a real HTTP status (upstream answers 200 with ``{error}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request

from cocalc_hub.auth.accounts import Accounts, AuthError
from cocalc_hub.auth.bootstrap import AdminSetup
from cocalc_hub.auth.caller import HTTP, Authenticator, Caller
from cocalc_hub.auth.cookies import CookieNames, browser_cookie_path, clear_cookie, parse_cookie_header, set_cookie
from cocalc_hub.auth.csrf import Csrf
from cocalc_hub.db.store import DatabaseUnavailable, utcnow
from cocalc_hub.projects.operations import Projects
from cocalc_hub.web.errors import json_error, json_response
from cocalc_hub.web.request import HubRequest, client_ip, is_secure
from cocalc_hub.web.resource import HubResource

log = Logger()

MAX_BODY = 1024 * 1024
OPENAPI_PATH = "v2/openapi.json"
UNSAFE = (b"POST", b"PUT", b"PATCH", b"DELETE")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ApiServices:
    """What endpoints may use."""

    auth: Authenticator
    accounts: Accounts
    projects: Projects
    names: CookieNames
    csrf: Csrf
    base_path: str = "/"
    admin_setup: AdminSetup | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    request: HubRequest
    params: dict[str, Any]
    caller: Caller
    services: ApiServices
    client_ip: str
    secure: bool
    cookies: dict[str, str]
    status: int = 200
    redirect: str | None = None
    """A same-origin path to send a browser to (303) instead of the JSON result."""

    def param(self, name: str, *, required: bool = False, kind: type | tuple[type, ...] | None = None) -> Any:
        value = self.params.get(name)
        if value is None:
            if required:
                raise ApiError(400, f"missing parameter {name!r}")
            return None
        if kind is not None and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ApiError(400, f"parameter {name!r} must be {names.replace('str', 'a string')}")
        return value

    def set_cookie(self, header: bytes) -> None:
        self.request.responseHeaders.addRawHeader(b"set-cookie", header)

    def require_account(self) -> Caller:
        if self.caller.error:
            raise ApiError(401, self.caller.error)
        if not self.caller.signed_in:
            raise ApiError(401, "you must be signed in")
        return self.caller


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass(frozen=True)
class Param:
    """One parameter, as the OpenAPI document describes it (handlers still read ``ctx.params``)."""

    name: str
    type: str = "string"
    """A JSON Schema type: string, integer, number, boolean, array or object."""
    description: str = ""
    required: bool = False
    format: str | None = None
    """uuid, email, date-time, password… (JSON Schema ``format``)."""
    enum: tuple[str, ...] = ()


PROJECT_ID = Param("project_id", description="The project's id.", required=True, format="uuid")


@dataclass(frozen=True)
class Endpoint:
    handler: Handler
    read_only: bool = False
    """May also be called with GET (no side effects)."""
    anonymous: bool = False
    """Callable without credentials (sign-in, sign-up)."""
    summary: str = ""
    params: tuple[Param, ...] = ()
    success: tuple[int, ...] = (200,)
    """The statuses of a successful call."""
    errors: tuple[int, ...] = ()
    """Error statuses of this endpoint besides those every endpoint may answer (see openapi)."""


class EndpointTable:
    """The endpoints one module defines, in the order it defines them. Each API module has one
    (``ENDPOINTS``); :mod:`cocalc_hub.web.api.registry` lists the modules, so nothing is
    registered by importing a module elsewhere."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}

    def endpoint(self, path: str, *, read_only: bool = False, anonymous: bool = False, summary: str = "",
                 params: tuple[Param, ...] = (), success: tuple[int, ...] = (200,),
                 errors: tuple[int, ...] = ()) -> Callable[[Handler], Handler]:
        """Add ``handler`` at ``BASE_PATH/api/<path>``; ``summary`` defaults to the first line
        of its docstring."""

        def add(fn: Handler) -> Handler:
            if path in self.endpoints:
                raise ValueError(f"two endpoints at {path!r}")
            text = summary or (fn.__doc__ or "").strip().split("\n")[0]
            self.endpoints[path] = Endpoint(fn, read_only=read_only, anonymous=anonymous, summary=text,
                                            params=params, success=success, errors=errors)
            return fn

        return add


def _same_origin(request: Request, secure: bool) -> bool:
    """False when the browser says the request comes from another site."""
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site.lower() not in (b"same-origin", b"none"):
        return False
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host")
    if not host or origin == b"null":
        return False
    parts = urlsplit(origin.decode("latin-1"))
    return parts.netloc.lower() == host.decode("latin-1").lower() and parts.scheme in ("http", "https")


class ApiResource(HubResource):
    """Mounted at ``BASE_PATH/api``."""

    json_errors = True

    def __init__(self, services: ApiServices, endpoints: dict[str, Endpoint]) -> None:
        """``endpoints``: cocalc_hub.web.api.registry.api_endpoints() (tests may give others)."""
        super().__init__()
        self.services = services
        self.endpoints = endpoints
        self._openapi: bytes | None = None

    def render(self, request: Request) -> Any:
        hub_request = cast(HubRequest, request)
        path = hub_request.mount_rest.lstrip(b"/").decode("latin-1")
        if path == OPENAPI_PATH:
            return self._render_openapi(request)
        ep = self.endpoints.get(path)
        if ep is None:
            return json_error(request, 404, "no such API endpoint")
        if request.method not in (b"GET", b"HEAD", b"POST"):
            request.setHeader(b"allow", b"GET, POST" if ep.read_only else b"POST")
            return json_error(request, 405, "method not allowed")
        if request.method in (b"GET", b"HEAD") and not ep.read_only:
            request.setHeader(b"allow", b"POST")
            return json_error(request, 405, "this endpoint needs POST")
        finished: list[bool] = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def respond(body: bytes) -> None:
            if not finished:
                request.write(body)
                request.finish()

        d: Deferred[bytes] = Deferred.fromCoroutine(self._handle(hub_request, ep))
        d.addCallback(respond)
        d.addErrback(lambda f: log.failure("API response failed", f))
        return NOT_DONE_YET

    def _render_openapi(self, request: Request) -> bytes:
        """The OpenAPI document (anonymous, GET): made once, from the registry."""
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return json_error(request, 405, "method not allowed")
        if self._openapi is None:
            from cocalc_hub.web.api.openapi import document

            doc = document(self.endpoints, base_path=self.services.base_path, names=self.services.names)
            self._openapi = json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
        body = self._openapi
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    async def _handle(self, request: HubRequest, ep: Endpoint) -> bytes:
        services = self.services
        try:
            params = self._params(request)
            secure = is_secure(request, request.trust_proxy)
            cookies = parse_cookie_header(b"; ".join(request.requestHeaders.getRawHeaders(b"cookie") or []))
            cookies = services.names.effective(cookies, secure)
            caller = await services.auth.identify(cookies, request.getHeader(b"authorization"), HTTP)
            ctx = Ctx(request, params, caller, services, client_ip(request, request.trust_proxy), secure, cookies)
            if request.method in UNSAFE:
                self._check_csrf(ctx, ep)
            if not ep.anonymous:
                ctx.require_account()
            result = await ep.handler(ctx)
            if ctx.redirect is not None:
                request.setResponseCode(303)
                request.setHeader(b"location", ctx.redirect.encode("utf-8"))
                request.setHeader(b"cache-control", b"no-store")
                body = b""
            else:
                body = json_response(request, ctx.status, result)
        except (ApiError, AuthError) as e:
            body = json_error(request, e.status, e.message)
            retry_after = getattr(e, "retry_after", None)
            if retry_after:
                request.setHeader(b"retry-after", b"%d" % max(1, math.ceil(retry_after)))
        except DatabaseUnavailable:
            log.failure("database unavailable during {path}", path=request.path)
            body = json_error(request, 503, "the database is unavailable; try again shortly")
        except Exception:
            log.failure("API error in {path}", path=request.path)
            body = json_error(request, 500, "internal server error")
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body

    def _params(self, request: HubRequest) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if request.method in (b"GET", b"HEAD"):
            query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
            params.update(parse_qsl(query, keep_blank_values=True))
            return params
        assert request.content is not None
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        if not raw.strip():
            return params
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype == b"application/json":
            try:
                data = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(data, dict):
                raise ApiError(400, "the JSON body must be an object")
            return data
        if ctype == b"application/x-www-form-urlencoded":
            try:
                return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
            except UnicodeDecodeError:
                raise ApiError(400, "the form body is not valid UTF-8") from None
        raise ApiError(415, "send JSON (application/json) or a form (application/x-www-form-urlencoded)")

    def _check_csrf(self, ctx: Ctx, ep: Endpoint) -> None:
        """Cookie credentials need the session's CSRF token; anonymous posts must be same-origin."""
        request = ctx.request
        if ctx.caller.via in ("remember_me", "api_key") and not ctx.caller.error:
            names = ctx.services.names
            cookie_value = ctx.cookies.get(names.remember_me if ctx.caller.via == "remember_me" else names.api_key)
            presented = request.getHeader(b"x-csrf-token") or ctx.params.get("csrf_token")
            if not cookie_value or not ctx.services.csrf.check(cookie_value, presented):
                raise ApiError(403, "missing or wrong CSRF token (send the X-CSRF-Token header)")
        elif not _same_origin(request, ctx.secure):
            raise ApiError(403, "cross-site request refused")


def safe_next(value: object, base_path: str) -> str | None:
    """A redirect target only if it is a path on this site under the base path (no open redirects)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(c in value for c in "\r\n\t") or len(value) > 4096:
        return None
    prefix = "" if base_path == "/" else base_path
    if prefix and not (value == prefix or value.startswith(prefix + "/")):
        return None
    return value


def session_cookies(ctx: Ctx, cookie_value: str, account_id: str, expire: datetime, same_site: str) -> None:
    """Set remember_me (HttpOnly), account_id and the CSRF token cookie for a new session, in
    the strongest form the request allows (``__Host-`` names over HTTPS, see auth.cookies)."""
    names = ctx.services.names.browser(ctx.secure)
    path = browser_cookie_path(ctx.secure, ctx.services.base_path)
    max_age = round((expire - utcnow()).total_seconds())
    ctx.set_cookie(set_cookie(names.remember_me, cookie_value, expires=expire, max_age=max_age, http_only=True,
                              same_site=same_site, secure=ctx.secure, path=path))
    ctx.set_cookie(set_cookie(names.account_id, account_id, expires=expire, max_age=max_age, http_only=False,
                              same_site="lax", secure=ctx.secure, path=path))
    ctx.set_cookie(set_cookie(names.csrf, ctx.services.csrf.token(cookie_value), expires=expire, max_age=max_age,
                              http_only=False, same_site="strict", secure=ctx.secure, path=path))


def clear_session_cookies(ctx: Ctx) -> None:
    """Clear the session cookies in the form they were set, and the plain ``Path=/`` form
    earlier versions set."""
    plain = ctx.services.names
    base = ctx.services.base_path
    forms = [(ctx.services.names.browser(ctx.secure), browser_cookie_path(ctx.secure, base), ctx.secure)]
    if ctx.secure or base != "/":
        forms.append((plain, "/", ctx.secure))
    for names, path, secure in forms:
        for name in (names.remember_me, names.account_id, names.csrf):
            ctx.set_cookie(clear_cookie(name, secure=secure, path=path))
