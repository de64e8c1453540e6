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


def refresh_url(value: bytes) -> bytes | None:
    """The URL of a ``Refresh: 5; url=…`` header, if it has one."""
    m = re.search(rb"(?i)[;,\s]\s*url\s*=\s*(.*)", b" " + value)
    if m is None:
        return None
    url = m.group(1).strip()
    if url[:1] in (b"'", b'"'):
        url = url[1:].split(url[:1], 1)[0]
    return url
