"""What crosses the proxy: hub credentials never reach a project; projects cannot set hub cookies.

Request side: hop-by-hop headers (RFC 9110 §7.6.1, plus those the Connection header
names) are dropped; the hub's cookies are removed under any name and prefix; an
Authorization header carrying a hub credential in any spelling is removed (see
:mod:`.credentials`); inbound ``X-Forwarded-*`` are dropped unless the peer is a trusted
proxy; ``X-Forwarded-For/-Proto/-Host/-Prefix`` are set. Response side: hop-by-hop
headers are dropped, and so is every ``Set-Cookie`` a browser could read as one of the
hub's cookies (:func:`cocalc_hub.auth.cookies.set_cookie_names`); ``Location`` pointing
at the backend is rewritten to the public prefix, and a ``Location`` or ``Refresh`` that
would take the browser to another site raises :class:`OffSite` (the proxy answers 502).
"""

from __future__ import annotations

from collections.abc import Callable

from cocalc_hub.auth.cookies import set_cookie_names
from cocalc_hub.proxy.credentials import CredentialFinder
from cocalc_hub.proxy.http1 import Headers
from cocalc_hub.proxy.redirects import UnparsableRefresh, refresh_url, stays_on_site

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"proxy-authorization", b"proxy-authenticate"})
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix",
                       b"x-forwarded-port", b"forwarded", b"x-real-ip"})
TOKEN_HEADER = b"x-cocalc-project-token"
_LOCAL_HOSTS = (b"127.0.0.1", b"localhost", b"[::1]")


class OffSite(Exception):
    """A project's response would redirect the browser to another site."""


def _named_by_connection(headers: Headers) -> set[bytes]:
    names: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return names


def strip_cookies(header: bytes, reserved: Callable[[str], bool]) -> bytes:
    """The Cookie header without the hub's cookies (b"" if nothing is left)."""
    kept = []
    for pair in header.split(b";"):
        pair = pair.strip()
        if not pair:
            continue
        name = pair.split(b"=", 1)[0].strip().decode("latin-1")
        if not reserved(name):
            kept.append(pair)
    return b"; ".join(kept)


def is_hub_credential(authorization: bytes, hub_secret: bytes | CredentialFinder | None) -> bool:
    """Authorization values that carry something the hub understands (API keys, sessions,
    its own secrets), whatever the scheme and spelling."""
    finder = hub_secret if isinstance(hub_secret, CredentialFinder) else CredentialFinder([hub_secret])
    return finder.in_authorization(authorization)


def request_headers(headers: Headers, *, reserved: Callable[[str], bool], hub_secret: bytes | CredentialFinder | None,
                    trust_proxy: bool, client_ip: bytes, proto: bytes, prefix: bytes,
                    upgrade: bytes | None = None, token: bytes | None = None) -> list[bytes]:
    """Header lines (``Name: value``) for the backend request."""
    drop = HOP_BY_HOP | _named_by_connection(headers)
    finder = hub_secret if isinstance(hub_secret, CredentialFinder) else CredentialFinder([hub_secret])
    out: list[bytes] = []
    inbound_for: list[bytes] = []
    host = b""
    for key, value in headers:
        if key in drop or key == TOKEN_HEADER:
            continue
        if key in FORWARDED:
            if trust_proxy and key == b"x-forwarded-for":
                inbound_for.append(value)
            continue
        if key == b"host":
            host = value
        elif key == b"cookie":
            value = strip_cookies(value, reserved)
            if not value:
                continue
        elif key == b"authorization" and finder.in_authorization(value):
            continue
        out.append(key + b": " + value)
    chain = b", ".join([*inbound_for, client_ip])
    out.append(b"x-forwarded-for: " + chain)
    out.append(b"x-forwarded-proto: " + proto)
    if host:
        out.append(b"x-forwarded-host: " + host)
    out.append(b"x-forwarded-prefix: " + prefix)
    if upgrade is not None:
        out.append(b"connection: Upgrade")
        out.append(b"upgrade: " + upgrade)
    if token is not None:
        out.append(TOKEN_HEADER + b": " + token)
    return out


def response_headers(headers: Headers, *, reserved: Callable[[str], bool], backend_port: int,
                     public_prefix: bytes | None, keep: frozenset[bytes] = frozenset(),
                     own_host: bytes | None = None, secure: bool = False, status: int = 302) -> list[bytes]:
    """Header lines for the client. ``public_prefix`` is set for routes that strip a prefix;
    ``own_host`` is the Host the browser asked for (absolute redirects to it are fine).
    Raises OffSite for a redirect elsewhere (``Location`` of a 3xx, which is all a browser
    follows, or ``Refresh``)."""
    drop = (HOP_BY_HOP | _named_by_connection(headers)) - keep
    out: list[bytes] = []
    for key, value in headers:
        if key in drop or key == b"set-cookie2":
            continue
        if key == b"set-cookie":
            names = set_cookie_names(value)
            if names is None or any(reserved(name) for name in names):
                continue
        elif key == b"location":
            value = rewrite_location(value, backend_port, public_prefix)
            if 300 <= status < 400 and not stays_on_site(value, own_host, secure):
                raise OffSite("location")
        elif key == b"refresh":
            try:
                url = refresh_url(value)
            except UnparsableRefresh:
                raise OffSite("refresh") from None
            if url is not None and not stays_on_site(url, own_host, secure):
                raise OffSite("refresh")
        out.append(key + b": " + value)
    return out


def _backend_origins(port: int) -> list[bytes]:
    netlocs = [host + b":%d" % port for host in _LOCAL_HOSTS]
    if port == 80:
        netlocs += list(_LOCAL_HOSTS)
    return [scheme + netloc for scheme in (b"http://", b"https://") for netloc in netlocs]


def rewrite_location(value: bytes, backend_port: int, public_prefix: bytes | None) -> bytes:
    """Location pointing at the backend → the public URL (relative, so scheme and host are ours)."""
    for origin in _backend_origins(backend_port):
        if value == origin or value.startswith(origin + b"/") or value.startswith(origin + b"?"):
            value = value[len(origin):] or b"/"
            return (public_prefix + value) if public_prefix is not None else value
    if public_prefix is not None and value.startswith(b"/") and not value.startswith(b"//") \
            and not value.startswith(public_prefix + b"/"):
        # The backend thinks it lives at "/": keep redirects inside its prefix.
        return public_prefix + value
    return value
