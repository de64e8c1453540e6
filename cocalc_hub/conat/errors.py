"""The one error type of conat, on both sides of the wire."""

from __future__ import annotations

from typing import Any


class ConatError(Exception):
    """An error with upstream's optional ``code``: 403 permission, 408 timeout, 429 limit,
    503 no responders, 404 unknown command, or a string such as ``"reject"``."""

    def __init__(self, message: str, code: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code

    def ack(self) -> dict[str, Any]:
        """As the broker reports it in an acknowledgement (``String(err)`` upstream)."""
        out: dict[str, Any] = {"error": f"Error: {self}"}
        if self.code is not None:
            out["code"] = self.code
        return out

    def __repr__(self) -> str:
        return f"ConatError({str(self)!r}, code={self.code!r})"
