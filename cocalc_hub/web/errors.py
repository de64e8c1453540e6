"""Small error responses that never echo request input unescaped."""

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
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def reason(status: int) -> str:
    return _REASONS.get(status, "Error")


def error_page(request: IRequest, status: int, message: str = "", *, extra_html: str = "") -> bytes:
    """An HTML error page. ``message`` is escaped; ``extra_html`` must be trusted markup."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
    title = f"{status} {reason(status)}"
    text = html.escape(message or reason(status))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;"
        "color:#1a1a1a}h1{font-size:1.4em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{text}</p>{extra_html}</body></html>\n"
    )
    return page.encode("utf-8")


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
