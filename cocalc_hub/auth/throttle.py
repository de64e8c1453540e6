"""Sliding-window failure counters (sign-in per email and per IP, sign-up per IP)."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime

# (window seconds, failures allowed in the window) as upstream: email 5/min and 50/h, IP 30/min and 200/h.
EMAIL_RULES = ((60, 5), (3600, 50))
IP_RULES = ((60, 30), (3600, 200))
SIGNUP_RULES = ((3600, 20),)


class Throttle:
    """Counts events per key; ``blocked(key)`` once any window holds its maximum."""

    def __init__(self, clock: IReactorTime, rules: Sequence[tuple[float, int]], *, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.rules = tuple(rules)
        self.horizon = max(w for w, _ in self.rules)
        self.depth = max(n for _, n in self.rules)
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        cutoff = self.clock.seconds() - self.horizon
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def blocked(self, key: str) -> bool:
        events = self._recent(key)
        if not events:
            return False
        now = self.clock.seconds()
        return any(sum(1 for t in events if t > now - window) >= limit for window, limit in self.rules)

    def record(self, key: str) -> None:
        events = self._recent(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.depth)
        events.append(self.clock.seconds())
        self._events.move_to_end(key)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)

    def reset(self, key: str) -> None:
        self._events.pop(key, None)
