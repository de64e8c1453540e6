"""PostgreSQL-only: two hubs writing to one stream."""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.trial import unittest

from tests.conat.persist.support import fake_clock, make_postgres, pg_schema, req


class TwoHubsTests(unittest.TestCase):
    async def test_concurrent_writers_get_distinct_increasing_seqs(self) -> None:
        clock = fake_clock()
        schema = await pg_schema(self)
        a, b = make_postgres(self, clock, schema), make_postgres(self, clock, schema)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        sa, sb = await a.open("hub/shared"), await b.open("hub/shared")
        seen_a: list[int] = []
        sa.add_listener(lambda events: seen_a.extend(e["seq"] for e in events if "seq" in e))
        results = await gatherResults([ensureDeferred(s.set(req(b"%d" % i))) for i in range(100) for s in (sa, sb)])
        seqs = [r["seq"] for r in results]
        self.assertEqual(sorted(seqs), list(range(1, 201)))
        self.assertEqual(seen_a, sorted(seen_a))  # each hub's own commits in order
        stored = [m.seq for batch in [x async for x in sb.get_all()] for m in batch]
        self.assertEqual(stored, list(range(1, 201)))
        await sa.delete(all=True)
        self.assertEqual((await sb.set(req()))["seq"], 201)
