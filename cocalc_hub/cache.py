"""The hub's one small cache: least-recently-used with a bound, optionally with entries that
expire (TTLCache, on an injected IReactorTime so tests use a task.Clock).

Used by the authenticator (auth/caller.py), sign-in throttles (auth/throttle.py), site
settings (auth/accounts.py) and compressed static files (web/files.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

K = TypeVar("K")
V = TypeVar("V")


def _one(value: object) -> int:
    return 1


class LRU(Generic[K, V]):
    """At most ``size`` worth of entries (each weighs ``weight(value)``, 1 by default); adding
    past it drops the least recently used ones. ``get`` and ``put`` make an entry the most
    recently used; ``peek`` and ``[key]`` do not."""

    def __init__(self, size: int, weight: Callable[[V], int] = _one) -> None:
        self.size = size
        self.weight = weight
        self.used = 0
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        return self._d.get(key)

    def __getitem__(self, key: K) -> V:
        return self._d[key]

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def put(self, key: K, value: V) -> None:
        old = self._d.get(key)
        if old is not None:
            self.used -= self.weight(old)
        self._d[key] = value
        self._d.move_to_end(key)
        self.used += self.weight(value)
        while self.used > self.size and self._d:
            _, dropped = self._d.popitem(last=False)
            self.used -= self.weight(dropped)

    def pop(self, key: K) -> V | None:
        value = self._d.pop(key, None)
        if value is not None:
            self.used -= self.weight(value)
        return value

    def drop_if(self, predicate: Callable[[K, V], bool]) -> None:
        for key in [k for k, v in self._d.items() if predicate(k, v)]:
            self.pop(key)

    def clear(self) -> None:
        self._d.clear()
        self.used = 0


class TTLCache(Generic[K, V]):
    """An LRU whose entries also expire ``ttl`` seconds (by ``clock``) after they were put."""

    def __init__(self, clock: IReactorTime, ttl: float, size: int) -> None:
        self.clock = clock
        self.ttl = ttl
        self._lru: LRU[K, tuple[float, V]] = LRU(size)

    def get(self, key: K) -> V | None:
        hit = self._lru.get(key)
        if hit is None:
            return None
        if hit[0] <= self.clock.seconds():
            self._lru.pop(key)
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        self._lru.put(key, (self.clock.seconds() + self.ttl, value))

    def pop(self, key: K) -> None:
        self._lru.pop(key)

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)
