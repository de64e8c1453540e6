"""One suite, every backend: the semantics of spec §6.5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial import unittest

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.base import StorageBackend, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import DEFAULTS, EPHEMERAL_MAX_BYTES
from tests.conat.persist.support import (
    START,
    fake_clock,
    make_memory,
    make_postgres,
    make_sqlite,
    pg_schema,
    req,
)

PATH = "projects/00000000-0000-4000-8000-000000000000/test"


class StorageTests:
    """Mixed into a TestCase per backend; ``new_backend`` makes one on shared storage."""

    persistent = True

    async def new_backend(self) -> StorageBackend:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.clock = fake_clock()
        self.backend = await self.new_backend()
        self.stream = await self.backend.open(PATH)
        self.events: list[dict[str, Any]] = []
        self.stream.add_listener(self.events.extend)

    async def tearDown(self) -> None:
        await self.backend.close()

    def case(self) -> unittest.TestCase:
        assert isinstance(self, unittest.TestCase)
        return self

    async def rejects(self, coro: Any, code: Any, text: str) -> ConatError:
        t = self.case()
        try:
            await coro
        except ConatError as e:
            t.assertEqual(e.code, code)
            t.assertIn(text, str(e))
            return e
        t.fail(f"no ConatError({text!r})")

    async def all_seqs(self, s: Stream | None = None) -> list[int]:
        return [m.seq for batch in [b async for b in (s or self.stream).get_all()] for m in batch]

    # -- set / get ----------------------------------------------------------------------------

    async def test_set_and_get(self) -> None:
        t = self.case()
        r1 = await self.stream.set(req(b"one", headers={"a": 1}))
        r2 = await self.stream.set(req(b"two", key="k", encoding=2))
        t.assertEqual((r1["seq"], r2["seq"]), (1, 2))
        t.assertEqual(r1["time"], START * 1000)
        m = await self.stream.get(seq=1)
        t.assertEqual(m, StoredMessage(1, START * 1000, None, 1, b"one", {"a": 1}))
        assert m is not None
        t.assertEqual(m.wire(), {"seq": 1, "time": START * 1000, "encoding": 1, "raw": b"one", "headers": {"a": 1}})
        k = await self.stream.get(key="k")
        assert k is not None
        t.assertEqual((k.seq, k.raw, k.encoding, k.key), (2, b"two", 2, "k"))
        t.assertEqual(k.wire()["key"], "k")
        t.assertNotIn("headers", k.wire())
        t.assertIsNone(await self.stream.get(seq=99))
        t.assertIsNone(await self.stream.get(key="nope"))

    async def test_key_overwrite_keeps_one_row(self) -> None:
        t = self.case()
        await self.stream.set(req(b"a1", key="a"))
        await self.stream.set(req(b"b", key="b"))
        r = await self.stream.set(req(b"a2", key="a"))
        t.assertEqual(r["seq"], 3)
        t.assertIsNone(await self.stream.get(seq=1))
        m = await self.stream.get(key="a")
        assert m is not None
        t.assertEqual((m.seq, m.raw), (3, b"a2"))
        t.assertEqual(await self.stream.keys(), ["b", "a"])
        t.assertEqual((await self.stream.inventory())["count"], 2)

    async def test_previous_seq(self) -> None:
        t = self.case()
        r = await self.stream.set(req(key="k"))
        r2 = await self.stream.set(req(key="k", previous_seq=r["seq"]))
        t.assertEqual(r2["seq"], 2)
        await self.rejects(self.stream.set(req(key="k", previous_seq=1)), "wrong-last-sequence", "wrong last sequence")
        await self.rejects(self.stream.set(req(key="missing", previous_seq=0)), "wrong-last-sequence", "wrong last")
        t.assertEqual(await self.all_seqs(), [2])

    async def test_msg_id_dedup(self) -> None:
        t = self.case()
        first = self.stream.set(req(b"1", msg_id="m"))
        again = self.stream.set(req(b"1", msg_id="m"))  # pipelined: still in flight
        r1, r2 = await first, await again
        t.assertEqual(r1, r2)
        t.assertEqual(await self.stream.set(req(b"1", msg_id="m")), r1)
        t.assertEqual(await self.all_seqs(), [1])
        self.clock.advance(121)
        r3 = await self.stream.set(req(b"1", msg_id="m"))
        t.assertEqual(r3["seq"], 2)
        t.assertEqual([e.get("msgID") for e in self.events], ["m", "m"])

    async def test_set_many_isolates_failures(self) -> None:
        t = self.case()
        await self.stream.config({"max_msg_size": 5})
        out = await self.stream.set_many([req(b"ok", key="a"), req(b"far too big"), req(b"ok2", key="a"),
                                          req("str", key="z"),  # type: ignore[arg-type]
                                          req(b"ok3", key="a", previous_seq=1)])
        t.assertEqual(out[0], {"seq": 1, "time": START * 1000})
        t.assertEqual(out[1]["code"], "reject")
        t.assertIn("max_msg_size of 5 bytes exceeded", out[1]["error"])
        t.assertEqual(out[2]["seq"], 2)
        t.assertIn("raw must be bytes", out[3]["error"])
        t.assertEqual(out[4]["code"], "wrong-last-sequence")
        t.assertEqual(await self.all_seqs(), [2])

    async def test_pipelined_sets_group_and_isolate(self) -> None:
        t = self.case()
        ds = [self.stream.set(req(str(i).encode(), key="k" if i == 50 else None,
                                  previous_seq=7 if i == 50 else None)) for i in range(200)]
        results: list[Any] = []
        for d in ds:
            try:
                results.append((await d)["seq"])
            except ConatError as e:
                results.append(e.code)
        t.assertEqual(results[50], "wrong-last-sequence")
        t.assertEqual([r for r in results if r != "wrong-last-sequence"], list(range(1, 200)))
        t.assertEqual([e["seq"] for e in self.events], list(range(1, 200)))

    # -- limits -------------------------------------------------------------------------------

    async def test_ttl(self) -> None:
        t = self.case()
        await self.stream.config({"allow_msg_ttl": True})
        await self.stream.set(req(b"short", ttl=1000))
        await self.stream.set(req(b"long", ttl=10_000))
        await self.stream.set(req(b"forever"))
        self.clock.advance(2)
        await self.stream.set(req(b"now"))
        t.assertEqual(await self.all_seqs(), [2, 3, 4])
        t.assertIn({"op": "delete", "seqs": [1]}, self.events)
        m = await self.stream.get(seq=2)
        assert m is not None
        t.assertEqual(m.ttl, 10_000)

    async def test_a_ttl_is_stored_without_allow_msg_ttl_and_honoured_once_allowed(self) -> None:
        t = self.case()
        self.assert_set(await self.stream.set(req(b"a", ttl=1000)), 1)
        self.assert_set(await self.stream.set(req(b"b", ttl=1500.0)), 2)  # a float, as JavaScript sends
        self.assert_set(await self.stream.set(req(b"c", ttl=-5)), 3)  # stored; never expires (ttl <= 0)
        m = await self.stream.get(seq=1)
        assert m is not None
        t.assertEqual(m.ttl, 1000)
        self.clock.advance(10)
        await self.stream.set(req(b"d"))
        t.assertEqual(await self.all_seqs(), [1, 2, 3, 4], "not expired while allow_msg_ttl is false")
        await self.stream.config({"allow_msg_ttl": True})
        t.assertEqual(await self.all_seqs(), [3, 4])
        t.assertIn({"op": "delete", "seqs": [1, 2]}, self.events)

    def assert_set(self, result: dict[str, Any], seq: int) -> None:
        self.case().assertEqual(result["seq"], seq)

    async def test_any_integer_limit_is_accepted_and_below_the_bound_means_none(self) -> None:
        t = self.case()
        full = await self.stream.config({"max_age": -1, "max_msgs": -7, "max_bytes": -2, "max_msg_size": -100,
                                         "max_bytes_per_second": -3, "max_msgs_per_second": -9})
        t.assertEqual((full["max_age"], full["max_msgs"], full["max_msg_size"]), (-1, -7, -100))
        for _ in range(5):
            await self.stream.set(req(b"x" * 100))
            self.clock.advance(100)
        t.assertEqual(await self.all_seqs(), [1, 2, 3, 4, 5])
        t.assertEqual((await self.stream.inventory())["limits"]["max_age"], -1)
        t.assertEqual((await self.stream.config({"max_age": 0}))["max_age"], 0)
        t.assertEqual((await self.stream.config({"max_age": 2.0e5}))["max_age"], 200_000)

    async def test_odd_characters_in_paths(self) -> None:
        t = self.case()
        paths = ["hub/back\\slash", "hub/a\\..\\..\\x", "hub/..\\..\\etc", "hub/colon:star*q?", "hub/per%cent",
                 "hub/per%25cent", "hub/sp ace/é☃𝄞", "hub/tab\tnl\n", "hub/a.db/x", "hub/a", "hub/" + "L" * 1000,
                 "hub/" + "L" * 999 + "M"]
        for i, path in enumerate(paths):
            s = await self.backend.open(path)
            seen: list[dict[str, Any]] = []
            s.add_listener(seen.extend)
            await s.set(req(path.encode(), key=f"k{i}"))
            t.assertEqual([e.get("key") for e in seen], [f"k{i}"], path)
        for i, path in enumerate(paths):  # every path its own stream
            s = await self.backend.open(path)
            m = await s.get(key=f"k{i}")
            t.assertEqual(m.raw if m else None, path.encode(), path)
            t.assertEqual([m.raw for m in (await self.all_messages(s))], [path.encode()], path)
        if self.persistent:
            await self.backend.close()
            self.backend = await self.new_backend()
            for i, path in enumerate(paths):
                s = await self.backend.open(path)
                t.assertEqual(await s.keys(), [f"k{i}"], path)

    async def all_messages(self, s: Stream) -> list[StoredMessage]:
        return [m for batch in [b async for b in s.get_all()] for m in batch]

    async def test_max_age(self) -> None:
        t = self.case()
        await self.stream.set(req())
        self.clock.advance(5)
        await self.stream.set(req())
        await self.stream.config({"max_age": 3000})
        self.clock.advance(1)
        await self.stream.set(req())
        t.assertEqual(await self.all_seqs(), [2, 3])
        self.clock.advance(10)
        await self.stream.config({"max_age": 3000})  # config enforces too
        t.assertEqual(await self.all_seqs(), [])
        t.assertEqual([e["seqs"] for e in self.events if e.get("op")], [[1], [2, 3]])

    async def test_max_msgs_old(self) -> None:
        t = self.case()
        for _ in range(5):
            await self.stream.set(req())
        await self.stream.config({"max_msgs": 3})
        t.assertEqual(await self.all_seqs(), [3, 4, 5])
        await self.stream.set(req())
        t.assertEqual(await self.all_seqs(), [4, 5, 6])

    async def test_max_msgs_new(self) -> None:
        t = self.case()
        await self.stream.config({"max_msgs": 2, "discard_policy": "new"})
        await self.stream.set(req())
        await self.stream.set(req(key="k"))
        await self.rejects(self.stream.set(req()), "reject", "max_msgs limit reached")
        await self.stream.set(req(key="k"))  # replacing a key does not grow the stream
        t.assertEqual(await self.all_seqs(), [1, 3])

    async def test_max_bytes_old(self) -> None:
        t = self.case()
        await self.stream.config({"max_bytes": 10})
        for raw in (b"aaaa", b"bbbb", b"cc"):
            await self.stream.set(req(raw))
        await self.stream.set(req(b"dddd"))  # 14 > 10: oldest goes
        t.assertEqual(await self.all_seqs(), [2, 3, 4])
        await self.stream.set(req(b"x" * 11))  # alone larger than the limit: everything goes
        t.assertEqual(await self.all_seqs(), [5])
        t.assertEqual((await self.stream.inventory())["bytes"], 11)

    async def test_max_bytes_new(self) -> None:
        t = self.case()
        await self.stream.config({"max_bytes": 10, "discard_policy": "new"})
        await self.stream.set(req(b"aaaaaaa"))
        await self.rejects(self.stream.set(req(b"bbbb")), "reject", "max_bytes limit reached")
        await self.rejects(self.stream.set(req(b"x" * 11)), "reject", "max_bytes limit reached")
        await self.stream.set(req(b"ccc"))
        t.assertEqual(await self.all_seqs(), [1, 2])

    async def test_max_msg_size_and_size_rule(self) -> None:
        t = self.case()
        # size = headers JSON + raw + key, in UTF-16 units: {"h":"é"}=9, raw 3, key "ké"=2 -> 14
        await self.stream.config({"max_msg_size": 14})
        await self.stream.set(req(b"abc", key="k\u00e9", headers={"h": "\u00e9"}))
        await self.rejects(self.stream.set(req(b"abcd", key="k\u00e9", headers={"h": "\u00e9"})), "reject",
                           "max_msg_size of 14 bytes exceeded")
        t.assertEqual((await self.stream.inventory())["bytes"], 14)

    async def test_rate_limits(self) -> None:
        t = self.case()
        await self.stream.config({"max_msgs_per_second": 2})
        for _ in range(3):  # as upstream: rows of the last second are compared with the limit
            await self.stream.set(req())
        await self.rejects(self.stream.set(req()), "reject", "max_msgs_per_second")
        self.clock.advance(1.5)
        await self.stream.set(req())
        await self.stream.config({"max_msgs_per_second": -1, "max_bytes_per_second": 5})
        self.clock.advance(1.5)
        await self.stream.set(req(b"123456"))
        await self.rejects(self.stream.set(req()), "reject", "max_bytes_per_second")
        t.assertEqual(await self.all_seqs(), [1, 2, 3, 4, 5])

    # -- delete, inventory, config -------------------------------------------------------------

    async def test_delete_variants_and_seqs_never_reused(self) -> None:
        t = self.case()
        for _ in range(8):
            await self.stream.set(req())
        t.assertEqual(await self.stream.delete(seq=2), [2])
        t.assertEqual(await self.stream.delete(seqs=[4, 5, 99]), [4, 5, 99])
        t.assertEqual(await self.stream.delete(last_seq=3), [1, 3])
        t.assertEqual(await self.all_seqs(), [6, 7, 8])
        t.assertEqual(await self.stream.delete(all=True), [6, 7, 8])
        t.assertEqual(await self.stream.delete(all=True), [])
        t.assertEqual((await self.stream.set(req()))["seq"], 9)
        t.assertEqual([e for e in self.events if e.get("op")],
                      [{"op": "delete", "seqs": s} for s in ([2], [4, 5, 99], [1, 3], [6, 7, 8], [])])
        await self.rejects(self.stream.delete(), None, "give one of")
        await self.rejects(self.stream.delete(seq=-1), None, "non-negative")

    async def test_inventory_and_keys(self) -> None:
        t = self.case()
        t.assertEqual(await self.stream.inventory(), {"bytes": 0, "count": 0, "limits": {}, "seq": 0})
        await self.stream.set(req(b"12345", key="ab"))
        await self.stream.set(req(b"1"))
        await self.stream.config({"max_msgs": 10, "discard_policy": "old", "desc": {"x": 1}})
        t.assertEqual(await self.stream.inventory(),
                      {"bytes": 8, "count": 2, "limits": {"max_msgs": 10, "desc": {"x": 1}}, "seq": 2})
        t.assertEqual(await self.stream.keys(), ["ab"])

    async def test_config(self) -> None:
        t = self.case()
        t.assertEqual(await self.stream.config(), DEFAULTS)
        full = await self.stream.config({"max_msgs": 5, "allow_msg_ttl": True, "desc": [1, "a"],
                                         "unknown_field": 3, "max_age": None})
        t.assertEqual(full, {**DEFAULTS, "max_msgs": 5, "allow_msg_ttl": True, "desc": [1, "a"]})
        t.assertEqual(await self.stream.config(), full)
        for bad, text in [({"max_msgs": "x"}, "max_msgs must be an integer"), ({"max_bytes": 1.5}, "integer"),
                          ({"max_age": "-1"}, "max_age must be an integer"), ({"max_age": float("nan")}, "integer"),
                          ({"discard_policy": "drop"}, "discard_policy"), ({"allow_msg_ttl": 1}, "true or false"),
                          ({"max_msgs": True}, "integer"), ("nope", "config must be an object")]:
            await self.rejects(self.stream.config(bad), None, text)  # type: ignore[arg-type]
        t.assertEqual(await self.stream.config(), full)

    async def test_ephemeral_cap(self) -> None:
        t = self.case()
        eph = await self.backend.open("hub/ephemeral", ephemeral=True)
        t.assertTrue(eph.ephemeral)
        t.assertEqual((await eph.config())["max_bytes"], EPHEMERAL_MAX_BYTES)
        t.assertEqual((await eph.config({"max_bytes": 10**9}))["max_bytes"], EPHEMERAL_MAX_BYTES)
        t.assertEqual((await eph.config({"max_bytes": 1000}))["max_bytes"], 1000)
        t.assertEqual((await self.stream.config())["max_bytes"], -1)

    async def test_bad_input(self) -> None:
        for coro, text in [(self.stream.set(req("text")), "raw must be bytes"),  # type: ignore[arg-type]
                           (self.stream.set(req(encoding=-1)), "encoding"),
                           (self.stream.set(req(previous_seq=-3, key="k")), "previousSeq"),
                           (self.stream.set(req(ttl="5")), "ttl must be a number"),  # type: ignore[arg-type]
                           (self.stream.set(req(ttl=float("nan"))), "ttl must be a number"),
                           (self.stream.set(req(headers={"x": object()})), "JSON"),
                           (self.stream.get(seq=-1), "seq must be a non-negative integer"),
                           (self.stream.get(), "give seq or key"),
                           (self.stream.delete(seqs=[1, -2]), "seqs item")]:
            await self.rejects(coro, None, text)
        self.case().assertEqual(await self.all_seqs(), [])

    # -- getAll, listeners, sharing, reopen ----------------------------------------------------

    async def test_get_all_batches_and_range(self) -> None:
        t = self.case()
        for i in range(1, 501):
            await self.stream.set(req(b"%03d" % (i % 1000)))
        batches = [[m.seq for m in b] async for b in self.stream.get_all(batch_bytes=30)]
        t.assertEqual([len(b) for b in batches], [10] * 50)
        t.assertEqual(sum(batches, []), list(range(1, 501)))
        one = [[m.seq for m in b] async for b in self.stream.get_all(start_seq=199, end_seq=403)]
        t.assertEqual(one, [list(range(199, 404))])
        t.assertEqual([b async for b in self.stream.get_all(start_seq=600)], [])

    async def test_listeners(self) -> None:
        t = self.case()
        other: list[list[dict[str, Any]]] = []
        self.stream.add_listener(other.append)
        await self.stream.config({"max_msgs": 1})
        await self.stream.set(req(b"a", key="k", headers={"h": 1}, msg_id="id"))
        await self.stream.set(req(b"b"))
        self.stream.remove_listener(other.append)
        await self.stream.delete(seq=2)
        now = START * 1000
        t.assertEqual(self.events, [
            {"seq": 1, "time": now, "key": "k", "encoding": 1, "raw": b"a", "headers": {"h": 1}, "msgID": "id"},
            {"op": "delete", "seqs": [1]}, {"seq": 2, "time": now, "encoding": 1, "raw": b"b"},
            {"op": "delete", "seqs": [2]}])
        t.assertEqual(other, [self.events[:1], self.events[1:3]])

    async def test_open_shares_stream(self) -> None:
        t = self.case()
        again = await self.backend.open(PATH)
        t.assertIs(again, self.stream)
        await again.close()
        await self.stream.set(req())  # still open for the first opener
        t.assertEqual(await self.all_seqs(), [1])

    async def test_reopen_keeps_data_and_config(self) -> None:
        """Persistent backends keep everything; a memory backend keeps nothing (by design)."""
        t = self.case()
        await self.stream.set(req(b"a", key="k", headers={"h": [1]}))
        await self.stream.set(req(b"b"))
        await self.stream.config({"max_msgs": 7, "desc": "d"})
        await self.stream.delete(seq=2)
        await self.backend.close()
        self.backend = await self.new_backend()
        s = await self.backend.open(PATH)
        m = await s.get(key="k")
        if not self.persistent:
            t.assertIsNone(m)
            t.assertEqual((await s.config())["max_msgs"], -1)
            t.assertEqual((await s.set(req()))["seq"], 1)
            return
        t.assertEqual((await s.config())["max_msgs"], 7)
        assert m is not None
        t.assertEqual((m.seq, m.raw, m.headers, m.time), (1, b"a", {"h": [1]}, START * 1000))
        t.assertEqual((await s.set(req()))["seq"], 3)


class MemoryStorageTests(StorageTests, unittest.TestCase):
    persistent = False

    async def new_backend(self) -> StorageBackend:
        return make_memory(self, self.clock)


class SqliteStorageTests(StorageTests, unittest.TestCase):
    async def new_backend(self) -> StorageBackend:
        if not hasattr(self, "root"):
            self.root = Path(self.mktemp())
        return make_sqlite(self, self.clock, self.root)


class PostgresStorageTests(StorageTests, unittest.TestCase):
    async def new_backend(self) -> StorageBackend:
        if not hasattr(self, "schema"):
            self.schema = await pg_schema(self)
        return make_postgres(self, self.clock, self.schema)
