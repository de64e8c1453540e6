"""Cookie names, parsing and Set-Cookie headers, in upstream's formats.

Names carry the base path as a prefix (``encodeURIComponent(BASE_PATH)``) unless the base
path is ``/``; the remember_me name can be overridden verbatim with
``COCALC_REMEMBER_ME_COOKIE_NAME`` (two installs on one host would otherwise share it).

The cookies the hub puts in browsers (remember_me, account_id, csrf_token) take the
strongest form the request allows: over HTTPS they are named ``__Host-<name>`` (so the
browser keeps them ``Secure``, host-only and ``Path=/``, and nobody on a sibling host or on
plain HTTP can plant or overwrite them), over plain HTTP they keep their name and get
``Path=BASE_PATH``. On an HTTPS request only the ``__Host-`` form of those three is read
(see :meth:`CookieNames.effective`). Cookies that non-browser clients send themselves
(api_key, hub_password, project_id/project_secret, sys) keep upstream's names.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote, unquote

from cocalc_hub.auth.passwords import LegacyHashError, legacy_digest, parse_legacy

REMEMBER_ME_TTL = timedelta(days=180)
HOST_PREFIX = "__Host-"
_COOKIE_PREFIXES = ("__host-", "__secure-")
# The hub's cookie names without a base-path prefix (any name ending in one is the hub's).
HUB_SUFFIXES = ("remember_me", "api_key", "hub_password", "project_secret", "project_id", "csrf_token",
                "account_id", "cocalc_version")
_CTL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))
SAMESITE_VALUES = ("strict", "lax", "none")
# Hash stored in remember_me.hash: the first 127 characters of algorithm$salt$iterations$hex.
SESSION_HASH_LENGTH = 127
MAX_COOKIE_HEADER = 16 * 1024


def encode_uri_component(text: str) -> str:
    """JavaScript's encodeURIComponent."""
    return quote(text, safe="-_.!~*'()")


@dataclass(frozen=True)
class CookieNames:
    remember_me: str
    api_key: str
    account_id: str
    project_id: str
    project_secret: str
    hub_password: str
    csrf: str
    version: str
    sys: str = "sys"

    @classmethod
    def for_base_path(cls, base_path: str, remember_me_override: str | None = None) -> CookieNames:
        prefix = "" if base_path == "/" else encode_uri_component(base_path)
        return cls(
            remember_me=remember_me_override or f"{prefix}remember_me",
            api_key=f"{prefix}api_key",
            account_id=f"{prefix}account_id",
            project_id=f"{prefix}project_id",
            project_secret=f"{prefix}project_secret",
            hub_password=f"{prefix}hub_password",
            csrf=f"{prefix}csrf_token",
            version=f"{prefix}cocalc_version",
        )

    def secret_names(self) -> frozenset[str]:
        """Names that carry credentials."""
        return frozenset({self.remember_me, self.api_key, self.project_secret, self.hub_password, self.sys})

    def is_reserved(self, name: str) -> bool:
        """Cookies a project must never see or set: ours under any base-path prefix, in any
        case, with or without a ``__Host-``/``__Secure-`` prefix, quotes or blanks around."""
        bare = _bare_name(name)
        if not bare:
            return False
        ours = {n.lower() for n in (*self.secret_names(), self.account_id, self.csrf, self.version, self.project_id)}
        return bare in ours or bare.endswith(HUB_SUFFIXES)

    def browser(self, secure: bool) -> CookieNames:
        """The names the hub writes into a browser over this scheme (``__Host-`` over HTTPS)."""
        if not secure:
            return self
        return replace(self, remember_me=HOST_PREFIX + self.remember_me, account_id=HOST_PREFIX + self.account_id,
                       csrf=HOST_PREFIX + self.csrf)

    def effective(self, cookies: Mapping[str, str], secure: bool) -> dict[str, str]:
        """The request's cookies as the hub reads them, under the plain names: a browser
        cookie's ``__Host-`` form wins, and over HTTPS its plain form is ignored (a plain
        one could have been planted from plain HTTP or a sibling host)."""
        out = dict(cookies)
        for name in (self.remember_me, self.account_id, self.csrf):
            prefixed = out.pop(HOST_PREFIX + name, None)
            if secure:
                out.pop(name, None)
            if prefixed is not None:
                out[name] = prefixed
        return out


def _bare_name(name: str) -> str:
    """A cookie name reduced to what could collide with ours: lower case, without blanks,
    quotes and ``__Host-``/``__Secure-`` prefixes."""
    bare = name.strip().strip('"').strip().lower()
    while bare.startswith(_COOKIE_PREFIXES):
        bare = bare.split("-", 1)[1].strip()
    return bare


def set_cookie_names(value: bytes | str) -> list[str] | None:
    """The cookie names a browser (RFC 6265bis) or a lenient client could take from one
    Set-Cookie value, as the hub would read them back; None if a browser ignores the value.

    A nameless cookie (``=remember_me=x`` or ``remember_me``) is sent back as its bare value,
    i.e. as ``remember_me=x``, so its name is what precedes ``=`` in the value. Clients that
    split a header on commas are covered by also naming every comma-separated piece."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if any(c in _CTL for c in value):
        return None
    names = []
    for piece in [value, *value.split(",")[1:]]:
        pair = piece.split(";", 1)[0]
        name, sep, rest = pair.partition("=")
        name = name.strip(" \t")
        if not sep:
            name, rest = "", name
        if not name:
            name = rest.strip(" \t").partition("=")[0].strip(" \t")
        names.append(name)
    return names


def parse_cookie_header(header: bytes | str | None) -> dict[str, str]:
    """npm ``cookie`` 1.x semantics: ``;``-separated pairs, pairs without ``=`` skipped, names and
    values trimmed, the first occurrence of a name wins, values with ``%`` URI-decoded."""
    if not header:
        return {}
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if len(header) > MAX_COOKIE_HEADER:
        header = header[:MAX_COOKIE_HEADER]
    out: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name or name in out:
            continue
        value = value.strip()
        if "%" in value:
            try:
                value = unquote(value, errors="strict")
            except UnicodeDecodeError:
                pass
        out[name] = value
    return out


@dataclass(frozen=True)
class RememberMe:
    """A new session: the cookie value for the browser and the hash for the database."""

    cookie_value: str
    session_hash: str


def new_remember_me(iterations: int = 1000) -> RememberMe:
    """Upstream's format: cookie ``sha512$<salt>$1000$<uuid4>``; stored hash = first 127
    characters of ``sha512$<salt>$1000$<iterated HMAC of the uuid>``."""
    session_id = str(uuid.uuid4())
    salt = secrets.token_hex(16)
    digest = legacy_digest(session_id, salt, iterations)
    full = f"sha512${salt}${iterations}${digest}"
    return RememberMe(f"sha512${salt}${iterations}${session_id}", full[:SESSION_HASH_LENGTH])


def remember_me_hash(cookie_value: str) -> str:
    """The database hash for a cookie value; LegacyHashError if the value is malformed."""
    parts = cookie_value.split("$")
    if len(parts) != 4:
        raise LegacyHashError("badly formatted remember_me cookie")
    algorithm, salt, iterations, session_id = parts
    if not session_id or len(session_id) > 100 or len(salt) > 100:
        raise LegacyHashError("badly formatted remember_me cookie")
    algorithm, salt, count, _ = parse_legacy(f"{algorithm}${salt}${iterations}$x")
    digest = legacy_digest(session_id, salt, count, algorithm)
    return f"{algorithm}${salt}${iterations}${digest}"[:SESSION_HASH_LENGTH]


def set_cookie(name: str, value: str, *, expires: datetime | None, max_age: int | None, http_only: bool,
               same_site: str | None, secure: bool, path: str = "/") -> bytes:
    """One Set-Cookie header value."""
    parts = [f"{name}={value}", f"Path={path}"]
    if expires is not None:
        parts.append("Expires=" + format_datetime(expires, usegmt=True))
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    if same_site:
        parts.append("SameSite=" + same_site.capitalize())
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode("latin-1")


def clear_cookie(name: str, *, secure: bool = False, path: str = "/") -> bytes:
    extra = "; Secure" if secure else ""
    return f"{name}=; Path={path}; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0{extra}".encode("latin-1")


def browser_cookie_path(secure: bool, base_path: str) -> str:
    """``Path`` of the hub's browser cookies: ``/`` for ``__Host-`` names (the prefix demands
    it), else the base path (a second install on the same host under another path never
    receives them)."""
    return "/" if secure else base_path

