"""Distributed streams and key-value stores on persist (upstream's dstream / dkv).

A :class:`DStream` is an ordered log everyone with access sees the same way: appends get
increasing sequence numbers, and every copy learns of them through the changefeed. A
:class:`DKV` is last-write-wins keys on the same machinery (each key's newest row is its
value; deleting writes a tombstone). Both keep a local copy; after a lost session they
fetch everything past the last sequence number they saw, so nothing is lost or repeated.

Used by the hub (each project's DKV ``project-status``, :mod:`cocalc_hub.projects.status`)
and by the project program (DKV ``project-info``, DStream ``exec-log``,
:mod:`cocalc_hub.project_agent.records`).
"""

from __future__ import annotations

import posixpath
from bisect import insort
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.message import MSGPACK, decode
from cocalc_hub.conat.persist.client import PersistClient
from cocalc_hub.conat.persist.storage.base import StoredMessage

if TYPE_CHECKING:
    from cocalc_hub.conat.client import Client

log = Logger()

TOMBSTONE = "CN-Tombstone"


def storage_path(name: str, *, account_id: str | None = None, project_id: str | None = None) -> str:
    """Where upstream's core-stream keeps a named stream of an account, a project or the hub."""
    if account_id and project_id:
        raise ValueError("a stream belongs to an account or a project, not both")
    if account_id:
        return posixpath.join("accounts", account_id, name)
    if project_id:
        return posixpath.join("projects", project_id, name)
    return posixpath.join("hub", name)


class _Base:
    def __init__(self, client: Client, name: str, *, account_id: str | None = None, project_id: str | None = None,
                 ephemeral: bool = False, config: dict[str, Any] | None = None, service: str = "persist") -> None:
        self.name = name
        self.persist = PersistClient(client, storage_path(name, account_id=account_id, project_id=project_id),
                                     ephemeral=ephemeral, changefeed=True, service=service)
        self.persist.on_events = self._events
        self.persist.on_rebuilt = self._catch_up
        self.wanted_config = config
        self.last_seq = 0
        self.listeners: list[Callable[..., None]] = []
        self._ready = False
        self._early: list[list[dict[str, Any]]] = []

    async def init(self) -> None:
        """Open, fill from the start, apply the wanted config; then follow live changes."""
        await self.persist.connect()
        await self._catch_up()
        if self.wanted_config:
            await self.persist.config(self.wanted_config)

    async def _catch_up(self) -> None:
        self._ready = False
        notify = self.last_seq > 0  # after a lost session, what was missed is news
        for _ in range(5):
            try:
                async for batch in self.persist.get_all(start_seq=self.last_seq + 1 if self.last_seq else None):
                    for m in batch:
                        self._apply_set(m, notify=notify)
                break
            except ConatError as e:
                if e.code not in (503, 408):
                    raise
        self._ready = True
        early, self._early = self._early, []
        for events in early:
            self._events(events)

    def _events(self, events: list[Any]) -> None:
        if not self._ready:
            self._early.append(events)  # live changes that raced the catch-up: applied after it
            return
        for event in events:
            if not isinstance(event, dict):
                continue
            if event.get("op") == "delete":
                seqs = event.get("seqs")
                if isinstance(seqs, list):
                    self._apply_delete([s for s in seqs if isinstance(s, int)])
            elif isinstance(event.get("seq"), int) and isinstance(event.get("raw"), bytes):
                self._apply_set(StoredMessage(seq=event["seq"], time=float(event.get("time", 0)),
                                              key=event.get("key"), encoding=int(event.get("encoding", MSGPACK)),
                                              raw=event["raw"], headers=event.get("headers")))

    def _apply_set(self, m: StoredMessage, notify: bool = True) -> None:
        raise NotImplementedError

    def _apply_delete(self, seqs: list[int]) -> None:
        raise NotImplementedError

    def _notify(self, *args: Any) -> None:
        for fn in list(self.listeners):
            try:
                fn(*args)
            except Exception:
                log.failure("dstream listener failed")

    def close(self) -> None:
        self.persist.close()


class DStream(_Base):
    """An ordered log of values. ``listeners`` get ``(value, seq)`` for each new message."""

    def __init__(self, client: Client, name: str, **options: Any) -> None:
        super().__init__(client, name, **options)
        self.seqs: list[int] = []
        self.messages: dict[int, StoredMessage] = {}

    def _apply_set(self, m: StoredMessage, notify: bool = True) -> None:
        if m.seq in self.messages or m.seq <= 0:
            return  # seen already (live change and catch-up overlap)
        self.messages[m.seq] = m
        insort(self.seqs, m.seq)
        self.last_seq = max(self.last_seq, m.seq)
        if notify:
            self._notify(decode(m.raw, m.encoding), m.seq)

    def _apply_delete(self, seqs: list[int]) -> None:
        gone = set(seqs) & self.messages.keys()
        for s in gone:
            del self.messages[s]
        if gone:
            self.seqs = [s for s in self.seqs if s not in gone]

    async def publish(self, value: Any, *, headers: dict[str, Any] | None = None, msg_id: str | None = None,
                      ttl: int | None = None) -> int:
        """Append; the sequence number once it is durably stored."""
        result = await self.persist.set(value, headers=headers, msg_id=msg_id, ttl=ttl)
        return int(result["seq"])

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, index: int) -> Any:
        m = self.messages[self.seqs[index]]
        return decode(m.raw, m.encoding)

    def __iter__(self) -> Iterator[Any]:
        for s in list(self.seqs):
            m = self.messages[s]
            yield decode(m.raw, m.encoding)


class DKV(_Base):
    """Keys whose newest write wins. ``listeners`` get ``(key, value)``; value None on delete."""

    def __init__(self, client: Client, name: str, **options: Any) -> None:
        super().__init__(client, name, **options)
        self.rows: dict[str, StoredMessage] = {}

    def _apply_set(self, m: StoredMessage, notify: bool = True) -> None:
        self.last_seq = max(self.last_seq, m.seq)
        if m.key is None:
            return
        current = self.rows.get(m.key)
        if current is not None and current.seq >= m.seq:
            return
        if (m.headers or {}).get(TOMBSTONE):
            self.rows.pop(m.key, None)
            if notify and current is not None:
                self._notify(m.key, None)
            return
        self.rows[m.key] = m
        if notify:
            self._notify(m.key, decode(m.raw, m.encoding))

    def _apply_delete(self, seqs: list[int]) -> None:
        gone = set(seqs)
        for key in [k for k, m in self.rows.items() if m.seq in gone]:
            del self.rows[key]
            self._notify(key, None)

    async def set(self, key: str, value: Any, *, previous_seq: int | None = None) -> int:
        result = await self.persist.set(value, key=key, previous_seq=previous_seq)
        return int(result["seq"])

    async def delete(self, key: str) -> None:
        await self.persist.set(None, key=key, headers={TOMBSTONE: True})

    def get(self, key: str, default: Any = None) -> Any:
        m = self.rows.get(key)
        return default if m is None else decode(m.raw, m.encoding)

    def keys(self) -> list[str]:
        return sorted(self.rows)

    def items(self) -> dict[str, Any]:
        return {k: decode(m.raw, m.encoding) for k, m in self.rows.items()}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self.rows
