"""Spotting hub credentials in what a browser sends to a project, so the proxy can remove them.

A hub credential is an API key (``sk-…``/``sk_…``), a remember_me value
(``<algorithm>$<salt>$<iterations>$<id>``) or one of the hub's own secrets (the conat
hub and system passwords). They are looked for everywhere a client might put them:
each word of an ``Authorization`` header, whatever its scheme, spacing or case, and the
base64 inside it (``Basic`` with the key as user *or* password); and each parameter of
the query string, percent-decoded (several times, for doubly encoded values). An app's
own credentials (its Basic auth, its tokens) look like none of these and pass.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote_to_bytes

_KEY = re.compile(rb"(?<![0-9A-Za-z])sk[-_][0-9A-Za-z]{2,}")
_SESSION = re.compile(rb"(?<![0-9A-Za-z])[A-Za-z0-9]{2,16}\$[^$\s]{1,100}\$[0-9]{1,6}\$[0-9A-Za-z-]{8,}")
_WORDS = re.compile(rb"[^\s,]+")
_SEPARATORS = re.compile(rb"([&;])")
MAX_DECODE = 3
MAX_REMEMBERED = 4096


class CredentialFinder:
    """Knows the hub's own secrets; says whether some bytes carry any hub credential."""

    def __init__(self, secrets: Iterable[bytes | str | None] = ()) -> None:
        self.secrets = tuple(s.encode() if isinstance(s, str) else s for s in secrets if s)
        self._authorizations: dict[bytes, bool] = {}
        """Answers for recent Authorization values (a client sends the same one every time)."""

    def in_text(self, text: bytes) -> bool:
        # (the substring tests first: this runs for every proxied query and Authorization)
        if (b"sk-" in text or b"sk_" in text) and _KEY.search(text):
            return True
        if b"$" in text and _SESSION.search(text):
            return True
        for secret in self.secrets:
            if secret in text:
                return True
        return False

    def in_authorization(self, value: bytes) -> bool:
        """Does this Authorization value carry a hub credential, in any scheme or spelling?"""
        known = self._authorizations.get(value)
        if known is None:
            known = any(self.in_text(candidate) for candidate in _authorization_candidates(value))
            if len(self._authorizations) >= MAX_REMEMBERED:
                self._authorizations.clear()
            self._authorizations[value] = known
        return known

    def clean_query(self, query: bytes) -> bytes:
        """``query`` (``b""`` or starting with ``?``) without the parameters that carry a hub
        credential; unchanged (the same object) when there is none."""
        if len(query) <= 1 or not (self.in_text(query) if b"%" not in query else
                                   any(self.in_text(t) for t in _decodings(query))):
            return query
        parts = _SEPARATORS.split(query[1:])
        kept: list[bytes] = []
        for i in range(0, len(parts), 2):
            segment = parts[i]
            if not segment or any(self.in_text(t) for t in _decodings(segment)):
                continue
            if kept:
                kept.append(parts[i - 1])
            kept.append(segment)
        return b"?" + b"".join(kept) if kept else b""


def _decodings(text: bytes) -> Iterator[bytes]:
    """``text`` and its percent-decodings, until nothing changes. ('+' for a space does not
    matter: no credential contains a space, and a '+' next to one does not hide it.)"""
    yield text
    for _ in range(MAX_DECODE):
        if b"%" not in text:
            return
        decoded = unquote_to_bytes(text)
        if decoded == text:
            return
        text = decoded
        yield text


def _authorization_candidates(value: bytes) -> Iterator[bytes]:
    yield value
    for word in _WORDS.findall(value):
        yield word
        yield from _base64(word)


def _base64(word: bytes) -> Iterator[bytes]:
    stripped = word.rstrip(b"=")
    padded = stripped + b"=" * (-len(stripped) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            yield decode(padded)
        except (binascii.Error, ValueError):
            pass
