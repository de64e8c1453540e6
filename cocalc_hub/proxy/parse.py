"""Parse ``/<project_id>/(port|server|raw)/…`` once, strictly.

The raw path is split on ``/`` exactly; the project id must be a UUID (normalised to
lower case), the port 1–65535 in plain decimal. Anything that could make the
authorised project or port differ from the one reached — encoded slashes, dot
segments, backslashes, ``;`` parameters, empty segments in the routing part — is
refused instead of normalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UUID = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PORT = re.compile(rb"[1-9][0-9]{0,4}")
KINDS = (b"port", b"server", b"raw")


class BadRoute(Exception):
    """Looks like a project route but is not a valid one (answer 400)."""


@dataclass(frozen=True)
class Route:
    project_id: str
    kind: str
    """port, server or raw."""
    port: int | None
    upstream_path: bytes
    """The path (without query) the backend sees."""
    prefix: bytes
    """The public prefix (base path included) that the route strips or keeps."""


def looks_like_project(first: bytes) -> bool:
    return bool(_UUID.fullmatch(first))


def _check_segments(segments: list[bytes]) -> None:
    for seg in segments:
        lowered = seg.lower()
        if seg in (b".", b"..") or b"%2f" in lowered or b"%5c" in lowered or b"\\" in seg \
                or lowered in (b"%2e", b"%2e%2e", b".%2e", b"%2e.") or b"%00" in seg:
            raise BadRoute("path tricks are not allowed in proxied URLs")


_MEMO: dict[tuple[bytes, bytes], Route | None | str] = {}
_MEMO_MAX = 8192


def parse_route(path: bytes, base: bytes) -> Route | None:
    """The route for a raw request path, None if it is not a project URL, BadRoute if malformed.

    ``base`` is the base path without trailing slash (``b""`` for ``/``). Results are
    memoised: the same URLs come back again and again.
    """
    key = (path, base)
    hit = _MEMO.get(key, _MISS)
    if hit is _MISS:
        try:
            hit = _parse_route(path, base)
        except BadRoute as e:
            hit = str(e)
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = hit
    if isinstance(hit, str):
        raise BadRoute(hit)
    return hit  # type: ignore[return-value]


_MISS = object()


def _parse_route(path: bytes, base: bytes) -> Route | None:
    if not path.startswith(base + b"/"):
        return None
    rel = path[len(base):]
    parts = rel.split(b"/", 4)  # ['', id, kind, port|rest..., rest]
    if len(parts) < 3 or not _UUID.fullmatch(parts[1]):
        return None
    project_id = parts[1].decode("ascii").lower()
    kind = parts[2]
    if kind not in KINDS:
        if kind.lower() in KINDS:
            raise BadRoute("route names are lower case")
        return None
    if kind == b"raw":
        if len(parts) == 3:
            raise BadRoute("a raw URL needs a trailing slash")
        rest = b"/".join(parts[3:])
        _check_segments(rest.split(b"/"))
        canonical_prefix = base + b"/" + project_id.encode() + b"/raw"
        return Route(project_id, "raw", None, canonical_prefix + b"/" + rest, canonical_prefix)
    if len(parts) < 4:
        raise BadRoute("a port number is required")
    port_text = parts[3]
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise BadRoute("the port must be a number from 1 to 65535")
    port = int(port_text)
    if len(parts) == 4:
        raise BadRoute("a trailing slash after the port is required")
    rest = parts[4]
    _check_segments(rest.split(b"/"))
    canonical_prefix = base + b"/" + project_id.encode() + b"/" + kind + b"/" + port_text
    if kind == b"port":
        # The backend sees the full path (with a lower-cased project id).
        return Route(project_id, "port", port, canonical_prefix + b"/" + rest, canonical_prefix)
    return Route(project_id, "server", port, b"/" + rest, canonical_prefix)
