"""Small error responses that never echo request input unescaped.

HTML error pages (the site's and the project proxy's) share one frame: the site's top bar
with links back (the projects page, sign-in) and the site's stylesheet, no script and no
inline style, so they work under the strictest Content-Security-Policy. They are built as
plain strings: the proxy writes them without a Request object, and they must stay cheap.
"""

from __future__ import annotations

import html
import json
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

SITE_NAME = "CoCalc"
"""The brand on pages that cannot wait for the ``site_name`` setting (error pages)."""

ERROR_CSP = (b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
             b"frame-ancestors 'none'; base-uri 'none'")
"""Error pages load only the site's stylesheet and favicon; nothing inline, no script."""


def reason(status: int) -> str:
    return _REASONS.get(status, "Error")


def sentence(text: str) -> str:
    """``no such project`` -> ``No such project.`` (API messages are lower-case phrases)."""
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?)" else ".")


def nav_html(base: str, *, signed_in: bool | None) -> str:
    """The top bar's links on an error page: an account's pages, sign-in/sign-up, or (not
    known who is asking) the start page and sign-in."""
    b = html.escape(base, quote=True)
    if signed_in:
        return f'<a href="{b}/">Projects</a><a href="{b}/settings">Account</a>'
    if signed_in is None:
        return f'<a href="{b}/">Projects</a><a href="{b}/auth/sign-in">Sign in</a>'
    return f'<a href="{b}/auth/sign-in">Sign in</a><a href="{b}/auth/sign-up">Sign up</a>'


def frame(title: str, body_html: str, *, base: str, nav: str, site: str = SITE_NAME) -> str:
    """A whole page around trusted ``body_html`` with the site's top bar (``nav`` trusted too)."""
    b = html.escape(base, quote=True)
    s = html.escape(site)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)} · {s}</title>"
        f"<link rel=\"icon\" href=\"{b}/static/favicon.svg\" type=\"image/svg+xml\">"
        f"<link rel=\"stylesheet\" href=\"{b}/static/app.css\"></head>"
        f"<body><header class=\"top\"><a class=\"brand\" href=\"{b}/\">{s}</a>"
        f"<nav aria-label=\"Main\">{nav}</nav></header>"
        f"<main id=\"main\" class=\"problem\">{body_html}</main></body></html>\n"
    )


def back_html(base: str) -> str:
    """The default "what now" of an error page."""
    href = html.escape(base, quote=True) + "/"
    return f'<p>Check the address, or start again from <a href="{href}">your projects</a>.</p>'


def error_page(request: IRequest, status: int, message: str = "", *, extra_html: str | None = None,
               nav: str | None = None, site: str = SITE_NAME) -> bytes:
    """An HTML error page. ``message`` is escaped; ``extra_html`` (what to do next; default:
    a link back) and ``nav`` (the top bar's links) must be trusted markup."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", ERROR_CSP)
    base = getattr(request, "base_prefix", b"").decode("ascii")
    title = f"{status} {reason(status)}"
    text = html.escape(sentence(message) or reason(status))
    body = (f"<h1>{html.escape(title)}</h1><p class=\"lead\">{text}</p>"
            f"{back_html(base) if extra_html is None else extra_html}")
    nav = nav_html(base, signed_in=None) if nav is None else nav
    return frame(title, body, base=base, nav=nav, site=site).encode("utf-8")


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    """A JSON response with the given status."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def json_error(request: IRequest, status: int, message: str, **fields: Any) -> bytes:
    """The JSON API's error shape: ``{"error": message, ...}`` with a real status code."""
    return json_response(request, status, {"error": message, **fields})


class ErrorResource(Resource):
    """Answers every request under it with one status and message (a part that is not here)."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: IRequest) -> bytes:
        return error_page(request, self.status, self.message)
