"""cocalc_hub.cache: the LRU and the TTL cache the hub's caches are made of."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from cocalc_hub.cache import LRU, TTLCache


class LRUTests(unittest.TestCase):
    def test_the_least_recently_used_goes_first(self) -> None:
        lru: LRU[str, int] = LRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        self.assertEqual(lru.get("a"), 1)  # a is now the most recent
        lru.put("c", 3)
        self.assertEqual(list(lru), ["a", "c"])
        self.assertIsNone(lru.get("b"))

    def test_peek_does_not_refresh(self) -> None:
        lru: LRU[str, int] = LRU(2)
        lru.put("a", 1)
        lru.put("b", 2)
        self.assertEqual(lru.peek("a"), 1)
        self.assertEqual(lru["a"], 1)
        lru.put("c", 3)
        self.assertNotIn("a", lru)
        self.assertEqual(len(lru), 2)

    def test_weight_bounds_the_total(self) -> None:
        lru: LRU[str, bytes] = LRU(10, weight=len)
        lru.put("a", b"12345")
        lru.put("b", b"1234")
        self.assertEqual(lru.used, 9)
        lru.put("b", b"12345")  # replacing counts the new weight only
        self.assertEqual((lru.used, list(lru)), (10, ["a", "b"]))
        lru.put("c", b"1")
        self.assertEqual((lru.used, list(lru)), (6, ["b", "c"]))
        lru.put("big", b"x" * 11)  # heavier than the whole budget: nothing stays
        self.assertEqual((lru.used, len(lru)), (0, 0))

    def test_pop_drop_if_and_clear(self) -> None:
        lru: LRU[str, int] = LRU(10)
        for i, key in enumerate("abcd"):
            lru.put(key, i)
        self.assertEqual(lru.pop("a"), 0)
        self.assertIsNone(lru.pop("a"))
        lru.drop_if(lambda k, v: v % 2 == 1)
        self.assertEqual(list(lru), ["c"])
        lru.clear()
        self.assertEqual((len(lru), lru.used), (0, 0))


class TTLCacheTests(unittest.TestCase):
    def test_entries_expire_on_the_injected_clock(self) -> None:
        clock = Clock()
        cache: TTLCache[str, str] = TTLCache(clock, 5.0, 10)
        cache.put("k", "v")
        clock.advance(4.9)
        self.assertEqual(cache.get("k"), "v")
        clock.advance(0.1)
        self.assertIsNone(cache.get("k"))
        self.assertEqual(len(cache), 0)

    def test_bounded_pop_and_clear(self) -> None:
        cache: TTLCache[int, int] = TTLCache(Clock(), 5.0, 2)
        for i in range(3):
            cache.put(i, i)
        self.assertIsNone(cache.get(0))
        cache.pop(1)
        self.assertIsNone(cache.get(1))
        cache.clear()
        self.assertIsNone(cache.get(2))
