"""Projects' per-start secret tokens: made by the hub, stored only as hashes.

A token is ``HMAC-SHA256(key, "<project_id>:<nonce>")`` (base64url) with a fresh random
nonce per start; ``key`` is ``$SECRETS/project-token-key``, readable only by the hub's user.
The database keeps ``sha256$<nonce>$<hex of sha256(token)>``: enough to verify a token
(conat sign-in), and, with the key, for a restarted hub to derive the token of a project it
adopts again (the proxy presents it to the project). The database alone reveals neither.
Rows converted from plain tokens by the 003 migration have an empty nonce: they verify,
but cannot be re-derived (such a project is stopped rather than adopted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "sha256$"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def derive(key: bytes, project_id: str, nonce: str) -> str:
    mac = hmac.new(key, f"{project_id}:{nonce}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def new_token(key: bytes, project_id: str) -> tuple[str, str]:
    """(token, what the database stores) for one start of a project."""
    nonce = secrets.token_hex(16)
    token = derive(key, project_id, nonce)
    return token, f"{PREFIX}{nonce}${_hash(token)}"


def verify(stored: str | None, token: str) -> bool:
    """Does ``token`` match the stored hash? (Constant time; plain stored values never match.)"""
    if not stored or not stored.startswith(PREFIX) or not token:
        return False
    _, _, digest = stored[len(PREFIX):].partition("$")
    return hmac.compare_digest(digest.encode(), _hash(token).encode())


def recover(key: bytes, project_id: str, stored: str | None) -> str | None:
    """The token of a running project, re-derived from its stored nonce; None if impossible."""
    if not stored or not stored.startswith(PREFIX):
        return None
    nonce, _, _ = stored[len(PREFIX):].partition("$")
    if not nonce:
        return None
    token = derive(key, project_id, nonce)
    return token if verify(stored, token) else None


def load_key(value: str) -> bytes:
    """The key from its secrets file (base64, as :func:`secrets.read_or_create` writes it)."""
    return base64.b64decode(value)
