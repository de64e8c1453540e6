"""The persist server accepts what upstream accepts (issue 14.5): a message ttl on a stream
without allow_msg_ttl, any integer limit, odd characters in storage paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor

from cocalc_hub.conat.message import MSGPACK, encode
from cocalc_hub.conat.permissions import HUB_USER, account_user
from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend
from tests.conat.test_persist import A, PersistCase
from tests.support import until

ODD = ["hub/back\\slash", "hub/..\\..\\escape", "hub/colon:star*q?", "hub/per%cent", "hub/sp ace/é☃𝄞"]


class AcceptsTests(PersistCase):
    async def sqlite(self) -> Path:
        root = Path(self.mktemp())
        backend = SqliteStorageBackend(root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(backend.close()))
        await self.start_server(backend)
        return root

    async def test_ttl_without_allow_msg_ttl_is_stored(self) -> None:
        await self.start_server()
        p = await self.open(f"accounts/{A}/ttl")
        self.assertEqual((await p.set("a", ttl=1000))["seq"], 1)
        many = await p.set_many([{"ttl": 5000, "messageData": {"encoding": MSGPACK, "raw": encode("b")}},
                                 {"ttl": 2500.0, "messageData": {"encoding": MSGPACK, "raw": encode("c")}},
                                 {"ttl": "soon", "messageData": {"encoding": MSGPACK, "raw": encode("d")}}])
        self.assertEqual([m.get("seq") for m in many[:2]], [2, 3])
        self.assertEqual(many[2], {"error": "ttl must be a number of ms, not 'soon'", "code": 400})
        self.assertFalse((await p.config())["allow_msg_ttl"])
        self.assertEqual((await p.inventory())["count"], 3)

    async def test_any_integer_limit(self) -> None:
        await self.start_server()
        p = await self.open(f"accounts/{A}/limits")
        config = await p.config({"max_age": -1, "max_msgs": -5})
        self.assertEqual((config["max_age"], config["max_msgs"]), (-1, -5))
        await p.set("kept")
        self.assertEqual((await p.inventory())["count"], 1)

    async def test_odd_paths_round_trip_through_the_server(self) -> None:
        root = await self.sqlite()
        for path in ODD:
            writer = await self.open(path, HUB_USER)
            reader = await self.open(path, HUB_USER, changefeed=True)
            events: list[dict[str, Any]] = []
            reader.on_events = events.extend
            await writer.set(path, key="k")
            await until(lambda events=events: bool(events))
            self.assertEqual(events[0]["key"], "k")
            got = await reader.get(key="k")
            assert got is not None
            self.assertEqual(got.raw, encode(path))
            self.assertEqual([m.raw async for batch in reader.get_all() for m in batch], [encode(path)])
        names = sorted(str(f.relative_to(root)) for f in root.rglob("*.db"))
        self.assertEqual(names, ["hub/..%5C..%5Cescape.db", "hub/back%5Cslash.db", "hub/colon:star*q?.db",
                                 "hub/per%25cent.db", "hub/sp ace/é☃𝄞.db"])

    async def test_an_account_cannot_leave_its_directory(self) -> None:
        root = await self.sqlite()
        p = await self.open(f"accounts/{A}/..\\..\\..\\x", account_user(A))
        await p.set("inside")
        self.assertEqual([str(f.relative_to(root)) for f in root.rglob("*.db")], [f"accounts/{A}/..%5C..%5C..%5Cx.db"])
