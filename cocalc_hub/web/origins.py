"""Which origins may open a WebSocket on the hub with a browser's session cookie.

A browser sends the hub's session cookie with a WebSocket upgrade whatever page opened it
(WebSockets are not bound by the same-origin policy), and says which page that was in
``Origin``. So an upgrade that carries the session cookie is refused unless its ``Origin``
is the hub's own (the scheme and ``Host`` the browser used: ``X-Forwarded-Host/-Proto``
count only with ``--trust-proxy``) or one the operator allowed
(``--conat-allowed-origins`` / ``COCALC_CONAT_ALLOWED_ORIGINS``). ``Origin: null``
(sandboxed pages, such as the ``/raw/`` files) is never the hub's own. Upgrades without
``Origin`` come from programs, not browsers, and are not affected; neither are clients
signing in with an API key, a project secret or the hub password.

The same policy applies to WebSocket upgrades the proxy forwards into projects (``/port/``,
``/server/``, ``/raw/``) when a cookie (session or ``api_key``) is what authenticated them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from twisted.web.http import Request

from cocalc_hub.web.request import is_secure

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]")


class BadOrigin(ValueError):
    """Not an origin (``scheme://host[:port]``); str() says why."""


def normalize_origin(value: str) -> str:
    """``https://Hub.Example:443`` → ``https://hub.example``; BadOrigin if it is not an origin."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise BadOrigin(f"{value!r} is not an origin: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        raise BadOrigin(f"{value!r} is not an origin (http[s]://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise BadOrigin(f"{value!r} is not an origin: an origin has no path, query or fragment")
    host = parts.netloc.rpartition(":")[0] if port is not None else parts.netloc
    if not _HOST.fullmatch(host):
        raise BadOrigin(f"{value!r} is not an origin: bad host {host!r}")
    host = host.lower()
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_allowed_origins(raw: str) -> frozenset[str]:
    """A comma- or space-separated list of origins (BadOrigin names the first bad one)."""
    return frozenset(normalize_origin(item) for item in re.split(r"[\s,]+", raw) if item)


class OriginPolicy:
    """The hub's own origin (from the request) plus the operator's allow-list."""

    def __init__(self, allowed: Iterable[str] = (), *, trust_proxy: bool = False) -> None:
        self.allowed = frozenset(normalize_origin(o) for o in allowed)
        self.trust_proxy = trust_proxy

    def own_origin(self, request: Request) -> str | None:
        host = None
        if self.trust_proxy:
            forwarded = request.getHeader(b"x-forwarded-host")
            if forwarded:
                host = forwarded.split(b",")[0].strip()
        if host is None:
            host = request.getHeader(b"host")
        return self.origin_of(host, is_secure(request, self.trust_proxy))

    @staticmethod
    def origin_of(host: bytes | None, secure: bool) -> str | None:
        """The origin of a page at ``host`` (the Host the browser used), None if there is none."""
        if not host:
            return None
        try:
            return normalize_origin(f"{'https' if secure else 'http'}://{host.decode('latin-1')}")
        except BadOrigin:
            return None

    def foreign(self, request: Request) -> str | None:
        """The request's Origin if it is neither ours nor allowed; None if it is fine or absent."""
        return self.foreign_origin(request.getHeader(b"origin"), self.own_origin(request))

    def foreign_origin(self, raw: bytes | None, own: str | None) -> str | None:
        """``raw`` (an Origin header) if it is neither ``own`` nor allowed; None if fine or absent."""
        if raw is None:
            return None
        origin: str = raw.decode("latin-1").strip()
        try:
            normalized = normalize_origin(origin)
        except BadOrigin:
            return origin or "(empty)"
        if normalized in self.allowed or normalized == own:
            return None
        return origin
