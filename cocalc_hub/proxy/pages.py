"""The proxy's own small responses: errors and "project is not running".

Written raw by the front door (there is no Request object on the proxy's fast path), inside
the site's frame (:func:`cocalc_hub.web.errors.frame`: the top bar with links back, the
site's stylesheet, no script, nothing inline). Each page says what to do next. Project
links and port advice appear only for members (``Context.project_id``); a refused caller
learns nothing more than the status already tells (401/403 whether or not the project exists).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from urllib.parse import quote

from cocalc_hub.proxy.access import Decision
from cocalc_hub.proxy.parse import Route
from cocalc_hub.web.errors import ERROR_CSP, back_html, frame, nav_html, reason, sentence

CSP = ERROR_CSP

MAX_NEXT = 2048
"""A longer request target is not offered as sign-in's ``next`` (it would only bloat the page)."""


@dataclass(frozen=True)
class Context:
    """Who asked for what, as far as an error page may tell."""

    base: str
    """BASE_PATH without its trailing slash."""
    target: str = ""
    """The request target (path and query), for sign-in's ``next``."""
    signed_in: bool | None = None
    """An account's session (True), not (False), or not known (None)."""
    project_id: str | None = None
    """Set only when the caller is a member of the project."""
    port: int | None = None
    raw: bool = False
    """The route was ``/raw/`` (the project's own file server)."""


def member(plain: Context, route: Route | None, decision: Decision | None) -> Context:
    """The context of a caller allowed into the project (``plain`` if that is not known)."""
    if route is None or decision is None:
        return plain
    return Context(plain.base, signed_in=decision.caller.is_account, project_id=route.project_id, port=route.port,
                   raw=route.kind == "raw")


def refused(plain: Context, target: bytes, decision: Decision) -> Context:
    """The context of a refused caller: no project link, nothing about the project."""
    return Context(plain.base, target=target.decode("latin-1"), signed_in=decision.caller.is_account)


def response(status: int, body: bytes, *, content_type: bytes = b"text/html; charset=utf-8",
             close: bool = False, extra: list[bytes] | None = None) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status).encode()),
             b"content-type: " + content_type,
             b"content-length: %d" % len(body),
             b"cache-control: no-store",
             b"x-content-type-options: nosniff",
             b"content-security-policy: " + CSP,
             b"server: cocalc-hub"]
    if close:
        lines.append(b"connection: close")
    lines.extend(extra or [])
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def _sign_in(ctx: Context) -> str:
    href = f"{ctx.base}/auth/sign-in"
    target = ctx.target
    if target.startswith("/") and not target.startswith("//") and len(target) <= MAX_NEXT:
        href += "?next=" + quote(target, safe="/")  # nothing but [A-Za-z0-9_.~/-] and %XX is left
    return f'<p class="actions"><a class="button" href="{html.escape(href, quote=True)}">Sign in</a></p>'


def _project(ctx: Context) -> str:
    return _link(f"{ctx.base}/projects/{ctx.project_id}", "the project's page")


def next_steps(status: int, ctx: Context) -> str:
    """What the visitor can do about ``status`` (trusted markup; nothing from the request
    but the normalised project id, the port number and the percent-encoded target)."""
    if status == 401:
        return (_sign_in(ctx) + "<p>Sign in with an account that owns this project or collaborates on it; "
                "you then come back to this page.</p>")
    projects = _link(f"{ctx.base}/", "your projects")
    if ctx.project_id is None:
        if status == 403:
            return ("<p>If you should have access, ask the project's owner to add you as a collaborator. "
                    f"Until then, start again from {projects}.</p>")
        return back_html(ctx.base)
    port = f"port {ctx.port}" if ctx.port is not None else "that port"
    if status == 403:
        return (f"<p>Start your server inside the project so that it listens on {port} (for example with "
                f"\u201cRun a command\u201d on {_project(ctx)}), then reload this page.</p>")
    if status == 502 and ctx.raw:
        return (f"<p>The project's file server is not answering. Restarting the project from {_project(ctx)} "
                "usually helps.</p>")
    if status == 502:
        return (f"<p>The server on {port} is not answering: is it still running? Check it on "
                f"{_project(ctx)}, then reload this page.</p>")
    if status == 504:
        return (f"<p>The server on {port} may be busy or stuck. Check it on {_project(ctx)}, "
                "then reload this page.</p>")
    return f"<p>Go back to {_project(ctx)} or to {projects}.</p>"


def _page(status: int, title: str, lead: str, steps: str, ctx: Context) -> bytes:
    body = f"<h1>{html.escape(title)}</h1><p class=\"lead\">{html.escape(lead)}</p>{steps}"
    return frame(title, body, base=ctx.base, nav=nav_html(ctx.base, signed_in=ctx.signed_in)).encode()


def error(status: int, message: str, *, ctx: Context | None = None, close: bool = False,
          extra: list[bytes] | None = None) -> bytes:
    """An HTML error; ``message`` is ours (never request input) and is escaped anyway."""
    ctx = ctx or Context("")
    body = _page(status, f"{status} {reason(status)}", sentence(message), next_steps(status, ctx), ctx)
    return response(status, body, close=close, extra=extra)


def not_running(*, ctx: Context, api_path: str, csrf_token: str | None, next_url: str) -> bytes:
    """503 for members, with a form that starts the project (for those signed in with a session)."""
    steps = ""
    if csrf_token and ctx.project_id:
        steps = (
            f'<form method="post" action="{html.escape(api_path, quote=True)}">'
            f'<input type="hidden" name="project_id" value="{html.escape(ctx.project_id, quote=True)}">'
            f'<input type="hidden" name="csrf_token" value="{html.escape(csrf_token, quote=True)}">'
            f'<input type="hidden" name="next" value="{html.escape(next_url, quote=True)}">'
            "<button type=\"submit\">Start the project</button></form>"
            "<p>Starting takes a few seconds; you then come back to this page. If it is a server you "
            f"started yourself, start it again after the project (see {_project(ctx)}).</p>"
        )
    else:
        steps = f"<p>Start it from {_project(ctx)} or with the API, then reload this page.</p>"
    body = _page(503, "Project is not running", "This project is not running, so its servers cannot be reached.",
                 steps, ctx)
    return response(503, body, extra=[b"retry-after: 5"])
