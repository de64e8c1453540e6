"""The storage interface the persist server talks to, independent of any backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class StoredMessage:
    """One stored message, as ``get``/``getAll`` hand it out (raw always uncompressed)."""

    seq: int
    time: float  # ms since epoch
    key: str | None
    encoding: int
    raw: bytes
    headers: dict[str, Any] | None
    ttl: int | None = None  # ms

    def wire(self) -> dict[str, Any]:
        """The object upstream sends in getAll replies (key/headers omitted when None)."""
        out: dict[str, Any] = {"seq": self.seq, "time": self.time}
        if self.key is not None:
            out["key"] = self.key
        out["encoding"] = self.encoding
        out["raw"] = self.raw
        if self.headers is not None:
            out["headers"] = self.headers
        return out


@dataclass(slots=True)
class SetRequest:
    """One ``set`` (or one item of ``setMany``)."""

    raw: bytes
    encoding: int
    headers: dict[str, Any] | None = None
    key: str | None = None
    ttl: int | None = None  # ms
    previous_seq: int | None = None
    msg_id: str | None = None


Listener = Callable[[list[dict[str, Any]]], None]
"""Receives changefeed events: set events ``{seq, time, key?, encoding, raw, headers?, msgID?}``
and delete events ``{"op": "delete", "seqs": [...]}``."""


class Stream(ABC):
    """One open stream. Listeners are called on the reactor thread, after the change is
    committed, in commit order, with the list of events of that change."""

    path: str
    ephemeral: bool

    @abstractmethod
    def set(self, req: SetRequest) -> Awaitable[dict[str, Any]]:
        """Store one message: ``{"seq", "time"}``; fails with ConatError(msg, code).
        (Not a coroutine: every write takes this path, and a Deferred costs less.)"""

    @abstractmethod
    async def set_many(self, reqs: list[SetRequest]) -> list[dict[str, Any]]:
        """Per item ``{"seq", "time"}`` or ``{"error", "code"?}``."""

    @abstractmethod
    async def get(self, *, seq: int | None = None, key: str | None = None) -> StoredMessage | None:
        """The message with that seq or key, or None."""

    @abstractmethod
    def get_all(self, *, start_seq: int | None = None, end_seq: int | None = None,
                batch_bytes: int = 20_000_000) -> AsyncIterator[list[StoredMessage]]:
        """Messages with start_seq <= seq <= end_seq in batches cut once they reach
        ``batch_bytes`` raw bytes; pages through storage, so memory stays bounded."""

    @abstractmethod
    async def delete(self, *, seq: int | None = None, seqs: list[int] | None = None,
                     last_seq: int | None = None, all: bool = False) -> list[int]:
        """Delete and return the deleted seqs (for ``seq``/``seqs``: as given)."""

    @abstractmethod
    async def config(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """Update (optionally) and return the full effective configuration (9 fields)."""

    @abstractmethod
    async def inventory(self) -> dict[str, Any]:
        """``{"bytes", "count", "limits", "seq"}``."""

    @abstractmethod
    async def keys(self) -> list[str]:
        """All keys in the stream."""

    @abstractmethod
    def add_listener(self, fn: Listener, *, flush: Callable[[], None] | None = None) -> None:
        """Call ``fn`` with the events of every later committed change. ``flush``, if given,
        is called once a change's events were given to every listener and before the writer
        of that change is answered: a listener that holds events back to batch them sends
        them then, so everyone has a change no later than its writer's reply."""

    @abstractmethod
    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn``."""

    @abstractmethod
    async def close(self) -> None:
        """Release the stream (storage is closed when the last opener closes it)."""


class StorageBackend(ABC):
    """Opens streams by path; owns whatever threads/connections they need."""

    name: str

    @abstractmethod
    async def open(self, path: str, *, ephemeral: bool = False) -> Stream:
        """Open (or share the already open) stream at ``path`` (``"projects/<uuid>/foo"``)."""

    @abstractmethod
    async def close(self) -> None:
        """Close every stream this backend opened."""
