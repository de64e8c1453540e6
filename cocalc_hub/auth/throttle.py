"""Failure counters: sliding windows (per client address: sign-in failures, sign-ups, setup
tokens) and growing delays (sign-in failures per account and address, see :class:`Backoff`)."""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

from cocalc_hub.cache import LRU

# (window seconds, events allowed in the window): sign-in failures per address 30/min and
# 200/h as upstream's per-IP rule; sign-ups per address 20/h.
IP_RULES = ((60, 30), (3600, 200))
SIGNUP_RULES = ((3600, 20),)
# Wrong passwords for one account from one address: the first FREE_FAILURES cost nothing,
# then the next attempt waits FIRST_DELAY, doubling with each further failure up to MAX_DELAY.
FREE_FAILURES = 5
FIRST_DELAY = 30.0
MAX_DELAY = 900.0
FORGET_AFTER = 86400.0


def address_key(client_ip: str) -> str:
    """The unit a client address is throttled by: an IPv4 address, an IPv6 /64 (one
    customer's network; its 2**64 addresses are one)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def wait_text(seconds: float) -> str:
    """``seconds`` for people: "40 seconds", "3 minutes" (rounded up)."""
    if seconds <= 90:
        n = max(1, math.ceil(seconds))
        return f"{n} second{'s' if n != 1 else ''}"
    n = math.ceil(seconds / 60)
    return f"{n} minutes"


class Throttle:
    """Counts events per key; ``blocked(key)`` once any window holds its maximum."""

    def __init__(self, clock: IReactorTime, rules: Sequence[tuple[float, int]], *, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.rules = tuple(rules)
        self.horizon = max(w for w, _ in self.rules)
        self.depth = max(n for _, n in self.rules)
        self.max_keys = max_keys
        self._events: LRU[str, deque[float]] = LRU(max_keys)

    def _recent(self, key: str) -> deque[float] | None:
        events = self._events.peek(key)
        if events is None:
            return None
        cutoff = self.clock.seconds() - self.horizon
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            self._events.pop(key)
            return None
        return events

    def blocked(self, key: str) -> bool:
        events = self._recent(key)
        if not events:
            return False
        now = self.clock.seconds()
        return any(sum(1 for t in events if t > now - window) >= limit for window, limit in self.rules)

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` is not blocked any more (0 if it is not)."""
        events = self._recent(key)
        if not events:
            return 0.0
        now = self.clock.seconds()
        wait = 0.0
        for window, limit in self.rules:
            inside = [t for t in events if t > now - window]
            if len(inside) >= limit:
                wait = max(wait, inside[len(inside) - limit] + window - now)
        return wait

    def record(self, key: str) -> None:
        events = self._recent(key)
        if events is None:
            events = deque(maxlen=self.depth)
        events.append(self.clock.seconds())
        self._events.put(key, events)

    def reset(self, key: str) -> None:
        self._events.pop(key)


class Backoff:
    """Failures per key with growing delays (see FREE_FAILURES); a key is forgotten on
    ``reset`` (a success) or ``forget`` seconds after its last failure."""

    def __init__(self, clock: IReactorTime, *, free: int = FREE_FAILURES, first: float = FIRST_DELAY,
                 cap: float = MAX_DELAY, forget: float = FORGET_AFTER, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.free = free
        self.first = first
        self.cap = cap
        self.forget = forget
        self.max_keys = max_keys
        self._failures: LRU[tuple[str, str], tuple[int, float]] = LRU(max_keys)

    def delay(self, count: int) -> float:
        """How long the next attempt waits after ``count`` failures."""
        if count < self.free:
            return 0.0
        return float(min(self.cap, self.first * 2.0 ** (count - self.free)))

    def wait(self, key: tuple[str, str]) -> float:
        """Seconds until the next attempt for ``key`` is allowed (0: now)."""
        hit = self._failures.peek(key)
        if hit is None:
            return 0.0
        count, last = hit
        now = self.clock.seconds()
        if now - last >= self.forget:
            self._failures.pop(key)
            return 0.0
        return max(0.0, last + self.delay(count) - now)

    def record(self, key: tuple[str, str]) -> None:
        hit = self._failures.pop(key)
        now = self.clock.seconds()
        count = hit[0] if hit is not None and now - hit[1] < self.forget else 0
        self._failures.put(key, (count + 1, now))

    def reset(self, key: tuple[str, str]) -> None:
        self._failures.pop(key)
