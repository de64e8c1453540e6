"""Where a browser would go with a project's ``Location`` (or ``Refresh``) header.

The proxy refuses (502) a project response that would send the browser off the hub's
site: the hub's origin must never redirect elsewhere on a project's behalf (an open
redirect under the hub's name). The question is answered the way a browser's URL parser
(WHATWG URL) would: leading and trailing blanks and controls are ignored, tabs and
newlines inside are removed, ``\\`` counts as ``/``, ``//host``, ``/\\host``,
``http:host`` (another scheme than the page's) and ``https://user@host`` all name a host.
What stays on the site: relative references (``x``, ``?q``, ``#f``, ``../x``), paths
(``/x``), and absolute ``http(s)`` URLs whose host (and port) is the one the browser
asked for. Everything else, other schemes included (``javascript:``, ``data:``), is off-site.
"""

from __future__ import annotations

import re

_STRIP = bytes(range(0x21))
_TAB_NEWLINE = re.compile(rb"[\t\n\r]")
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*):")
_SLASHES = b"/\\"
_DEFAULT_PORTS = {b"http": b"80", b"https": b"443"}


def _authority(rest: bytes) -> bytes:
    """The authority after leading slashes: up to the first of ``/ \\ ? #``."""
    rest = rest.lstrip(_SLASHES)
    end = len(rest)
    for c in b"/\\?#":
        i = rest.find(bytes([c]))
        if 0 <= i < end:
            end = i
    return rest[:end]


def _host_port(authority: bytes, scheme: bytes) -> bytes:
    host = authority.rpartition(b"@")[2].lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and host.endswith(b":" + default):
        host = host[: -len(default) - 1]
    return host


def stays_on_site(value: bytes, own_host: bytes | None, secure: bool) -> bool:
    """Would a browser that asked ``own_host`` (the request's Host) stay on it when sent here?"""
    url = _TAB_NEWLINE.sub(b"", value.strip(_STRIP))
    page_scheme = b"https" if secure else b"http"
    m = _SCHEME.match(url)
    if m is None:
        if url[:1] in (b"/", b"\\") and url[1:2] in (b"/", b"\\"):
            return own_host is not None and _host_port(_authority(url), page_scheme) == _own(own_host, page_scheme)
        return True
    scheme = m.group(1).lower()
    rest = url[m.end():]
    if scheme not in _DEFAULT_PORTS:
        return False
    if scheme == page_scheme and not (rest[:1] in (b"/", b"\\") and rest[1:2] in (b"/", b"\\")):
        # "https:/x" or "https:x" on an https page: a path on the same site; refused anyway
        # (no real server needs the form, and refusing cannot be mistaken).
        return False
    return own_host is not None and _host_port(_authority(rest), scheme) == _own(own_host, scheme)


def _own(own_host: bytes, scheme: bytes) -> bytes:
    return _host_port(own_host.strip(), scheme)


_ASCII_WS = b"\t\n\x0c\r "


class UnparsableRefresh(ValueError):
    """A ``Refresh`` value with something after its delay that the declarative refresh
    steps cannot read: refused rather than guessed at (fail closed)."""


def _skip(value: bytes, pos: int, chars: bytes) -> int:
    while pos < len(value) and value[pos] in chars:
        pos += 1
    return pos


def _take(value: bytes, pos: int, word: bytes) -> int | None:
    """Position after ``word`` (ASCII case-insensitive) at ``pos``, else None."""
    end = pos + len(word)
    return end if value[pos:end].lower() == word else None


def refresh_url(value: bytes) -> bytes | None:
    """The URL a browser would load for a ``Refresh`` header, None for a plain reload.

    The HTML standard's shared declarative refresh steps: blanks, a delay (digits, then any
    digits and dots), then optionally ``;`` or ``,`` with blanks around, then optionally
    ``url`` blanks ``=`` blanks, and the rest, optionally quoted, is the URL — so
    ``0; //evil``, ``0,//evil`` and ``0 https://evil`` all name one. Raises
    UnparsableRefresh where a browser would ignore the header but there is more than a delay.
    """
    pos = _skip(value, 0, _ASCII_WS)
    start = pos
    pos = _skip(value, pos, b"0123456789")
    if pos == start and value[pos:pos + 1] != b".":
        if value[pos:].strip(_ASCII_WS):
            raise UnparsableRefresh(value)
        return None
    pos = _skip(value, pos, b"0123456789.")
    if pos >= len(value):
        return None
    if value[pos] not in b";," + _ASCII_WS:
        raise UnparsableRefresh(value)
    pos = _skip(value, pos, _ASCII_WS)
    if value[pos:pos + 1] in (b";", b","):
        pos += 1
    pos = _skip(value, pos, _ASCII_WS)
    if pos >= len(value):
        return None
    url_start = pos
    after_url = _take(value, pos, b"url")
    if after_url is not None:
        pos = _skip(value, after_url, _ASCII_WS)
        if value[pos:pos + 1] != b"=":
            return value[url_start:]  # "url" without "=": the whole rest is the URL
        pos = _skip(value, pos + 1, _ASCII_WS)
    elif value[pos:pos + 1] in (b"u", b"U"):
        return value[url_start:]  # "u…" that is not "url": the rest is the URL
    quote = value[pos:pos + 1]
    if quote in (b"'", b'"'):
        return value[pos + 1:].split(quote, 1)[0]
    return value[pos:]
