"""CSRF protection for cookie-authenticated requests.

The token is an HMAC of the session cookie under a server secret: it changes with every
session, needs no storage, and cannot be computed by a page that cannot read the
HttpOnly session cookie. Pages get it from a readable cookie or ``GET /api/v2/auth/csrf``
and send it back in ``X-CSRF-Token`` (or a ``csrf_token`` form field).
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class Csrf:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode("utf-8")

    def token(self, session_value: str) -> str:
        mac = hmac.new(self._key, b"csrf:" + session_value.encode("utf-8"), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode("ascii")

    def check(self, session_value: str, presented: str | bytes | None) -> bool:
        if not presented:
            return False
        if isinstance(presented, bytes):
            presented = presented.decode("latin-1")
        return hmac.compare_digest(self.token(session_value).encode(), presented.strip().encode("latin-1", "replace"))
