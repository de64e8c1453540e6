"""The proxy's own small responses: errors and "project is not running"."""

from __future__ import annotations

import html

from cocalc_hub.web.errors import reason

CSP = b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


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


def _page(title: str, paragraphs: list[str], extra_html: str = "") -> bytes:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;max-width:40em;"
        "margin:3em auto;padding:0 1em;color:#1a1a1a}button{font-size:1em;padding:.4em 1em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}{extra_html}</body></html>\n"
    ).encode()


def error(status: int, message: str, *, close: bool = False, extra: list[bytes] | None = None) -> bytes:
    """An HTML error; ``message`` is ours (never request input) and is escaped anyway."""
    return response(status, _page(f"{status} {reason(status)}", [message]), close=close, extra=extra)


def not_running(*, member: bool, api_path: str, project_id: str, csrf_token: str | None, next_url: str) -> bytes:
    """503 with a form that starts the project (for members signed in with a session)."""
    form = ""
    if member and csrf_token:
        form = (
            f'<form method="post" action="{html.escape(api_path, quote=True)}">'
            f'<input type="hidden" name="project_id" value="{html.escape(project_id, quote=True)}">'
            f'<input type="hidden" name="csrf_token" value="{html.escape(csrf_token, quote=True)}">'
            f'<input type="hidden" name="next" value="{html.escape(next_url, quote=True)}">'
            "<button type=\"submit\">Start the project</button></form>"
            "<p>Starting takes a few seconds; this page then reloads.</p>"
        )
    paragraphs = ["This project is not running, so its servers cannot be reached."]
    if member and not csrf_token:
        paragraphs.append("Start it from the projects page or with the API, then reload this page.")
    body = _page("Project is not running", paragraphs, form)
    return response(503, body, extra=[b"retry-after: 5"])
