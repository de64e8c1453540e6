"""PostgreSQL-only: changes committed through one backend instance (one hub machine) reach the
changefeed listeners of the others by LISTEN/NOTIFY, in order, once, across reconnections."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial import unittest
from zope.interface import provider

from cocalc_hub.conat.persist.storage.base import Stream
from cocalc_hub.conat.persist.storage.common import StorageSession
from cocalc_hub.conat.persist.storage.postgres import PgStorageBackend, PgStream
from tests.conat.persist.support import _admin, fake_clock, make_postgres, pg_schema, req
from tests.support import WAIT, settle, until

PATH = "projects/00000000-0000-4000-8000-000000000000/notify"
Events = list[dict[str, Any]]


async def no_strays(seconds: float = 0.2) -> None:
    """A bounded negative check: stray (duplicate) events get this long to show up."""
    await settle(seconds)


def without_msg_id(events: Events) -> Events:
    return [{k: v for k, v in e.items() if k != "msgID"} for e in events]


def set_seqs(events: Events) -> list[int]:
    return [e["seq"] for e in events if "seq" in e]


def view(events: Events) -> dict[int, bytes]:
    """What a changefeed client holds after these events (a set replaces its key's message)."""
    out: dict[int, bytes] = {}
    keys: dict[str, int] = {}
    for e in events:
        if e.get("op") == "delete":
            for seq in e["seqs"]:
                out.pop(seq, None)
            continue
        if "key" in e:
            out.pop(keys.get(e["key"], -1), None)
            keys[e["key"]] = e["seq"]
        out[e["seq"]] = e["raw"]
    return out


class NotifyTests(unittest.TestCase):
    def assertHistories(self, *histories: Events) -> None:
        """Several instances' changefeeds tell one history: sets in seq order, each once, the
        same event for a seq wherever it appears, the same deletes in the same places, the same
        end state. A set may be missing only where its message was gone (deleted, or replaced
        by key) before that instance read it."""
        hs = [without_msg_id(h) for h in histories]
        by_seq: dict[int, dict[str, Any]] = {}
        for h in hs:
            self.assertEqual(set_seqs(h), sorted(set(set_seqs(h))))
            for e in h:
                if "seq" in e:
                    self.assertEqual(by_seq.setdefault(e["seq"], e), e)
        deletes = [[e for e in h if e.get("op")] for h in hs]
        for d in deletes[1:]:
            self.assertEqual(d, deletes[0])
        for j in range(len(deletes[0])):  # whatever comes before the j-th delete somewhere, comes before it everywhere
            before: set[int] = set()
            after: set[int] = set()
            for h in hs:
                k = [i for i, e in enumerate(h) if e.get("op")][j]
                before.update(set_seqs(h[:k]))
                after.update(set_seqs(h[k + 1:]))
            self.assertFalse(before & after)
            self.assertLess(max(before, default=0), min(after, default=2**63))
        gone = {seq for d in deletes[0] for seq in d["seqs"]}
        for seq, e in by_seq.items():
            if seq not in gone and "key" in e:
                if any(x.get("key") == e["key"] and x["seq"] > seq for x in by_seq.values()):
                    gone.add(seq)
        for h in hs:
            self.assertLessEqual(set(by_seq) - set(set_seqs(h)), gone)
            self.assertEqual(view(h), view(hs[0]))

    async def backends(self, n: int, **kw: Any) -> list[PgStorageBackend]:
        """``n`` instances on one schema, each with its own pool and listener (as n hubs)."""
        self.clock = fake_clock()
        schema = await pg_schema(self)
        return [make_postgres(self, self.clock, schema, **kw) for _ in range(n)]

    async def open(self, backend: PgStorageBackend) -> tuple[Stream, Events]:
        stream = await backend.open(PATH)
        events: Events = []
        stream.add_listener(events.extend)
        assert isinstance(stream, PgStream)
        await until(lambda: backend.listener_pid is not None and stream.cursor is not None, what="listening")
        return stream, events

    async def test_other_instance_gets_every_change_in_order(self) -> None:
        a, b = await self.backends(2)
        (sa, ea), (_, eb) = await self.open(a), await self.open(b)
        await sa.set(req(b"one", key="k", headers={"h": [1]}, msg_id="m1"))
        await sa.set_many([req(b"two"), req(b"three", key="k"), req(b"four", encoding=2)])
        await sa.delete(seq=2)
        await sa.delete(seqs=[99])  # as given, even if nothing was there
        await sa.config({"max_msgs": 2})  # trims
        await sa.config({"allow_msg_ttl": True, "max_msgs": -1})
        await sa.set(req(b"short", ttl=1000))
        self.clock.advance(2)
        await sa.set_many([req(b"later"), req(b"x" * 5000, headers={"big": True})])  # TTL expiry deletes
        await sa.delete(all=True)
        expected = without_msg_id(ea)
        self.assertEqual(set_seqs(ea), [1, 2, 3, 4, 5, 6, 7])
        self.assertIn({"op": "delete", "seqs": [5]}, ea)  # the expired one
        await until(lambda: eb[-1:] == expected[-1:], what="B's events")
        await no_strays()
        self.assertHistories(expected, eb)
        self.assertEqual(without_msg_id(ea), expected)  # A got its own events once

    async def test_both_instances_write_and_see_one_history(self) -> None:
        a, b = await self.backends(2)
        (sa, ea), (sb, eb) = await self.open(a), await self.open(b)
        for i in range(20):
            s = sa if i % 3 else sb
            await s.set(req(b"%d" % i, key=f"k{i % 4}"))
            if i % 5 == 4:
                await s.delete(seq=i - 1)
        await until(lambda: ea[-1:] == eb[-1:] and set_seqs(ea)[-1:] == [20], what="both histories")
        await no_strays()
        self.assertHistories(ea, eb)
        stored = {m.seq: m.raw for batch in [x async for x in sa.get_all()] for m in batch}
        self.assertEqual(view(ea), stored)

    async def test_burst_from_two_writers_arrives_in_order(self) -> None:
        a, b, c = await self.backends(3)
        (sa, ea), (_, eb), (sc, ec) = await self.open(a), await self.open(b), await self.open(c)

        async def write(s: Stream, tag: bytes) -> None:
            for i in range(0, 500, 25):  # 25 pipelined sets per commit, racing the other writer
                await gatherResults([ensureDeferred(s.set(req(tag + b"%d" % j))) for j in range(i, i + 25)])
            for j in range(500, 520):
                await s.set(req(tag + b"%d" % j))

        await gatherResults([ensureDeferred(write(sa, b"a")), ensureDeferred(write(sc, b"c"))])
        await until(lambda: len(eb) >= 1040 and len(ea) >= 1040 and len(ec) >= 1040, what="1040 events")
        await no_strays()
        for events in (ea, eb, ec):
            self.assertEqual(set_seqs(events), list(range(1, 1041)))
        self.assertHistories(ea, eb, ec)

    def held_first_catch_up(self, stream: Stream) -> tuple[threading.Event, threading.Event]:
        """Hold the stream's next catch-up, in its worker thread, after it has read, until the
        test sets ``release``; (reading, release)."""
        assert isinstance(stream, PgStream)
        reading, release = threading.Event(), threading.Event()
        catch_up = stream._catch_up

        def held(s: StorageSession) -> Any:
            result = catch_up(s)
            if not reading.is_set():
                reading.set()
                release.wait(WAIT)  # bounded: a failing test must not block the thread for ever
            return result

        self.patch(stream, "_catch_up", held)
        self.addCleanup(release.set)  # before the backends close (cleanups run last added first)
        return reading, release

    def held_reconnection(self, backend: PgStorageBackend) -> threading.Event:
        """The backend's listener connects again only once the test sets the returned event."""
        allowed = threading.Event()
        connect = backend.listen_connection

        def held() -> psycopg.Connection[Any]:
            allowed.wait(WAIT)
            return connect()

        self.patch(backend, "listen_connection", held)
        self.addCleanup(allowed.set)
        return allowed

    def heard(self, backend: PgStorageBackend) -> list[int]:
        """The last_seq of every notification the backend's listener hands over, as they come."""
        seqs: list[int] = []
        notified = backend.notified

        def record(payloads: list[str]) -> None:
            seqs.extend(int(p.split(" ")[1]) for p in payloads)
            notified(payloads)

        self.patch(backend, "notified", record)
        return seqs

    async def test_commit_during_a_catch_up_is_not_lost(self) -> None:
        a, b = await self.backends(2)
        (sa, ea), (sb, eb) = await self.open(a), await self.open(b)
        reading, release = self.held_first_catch_up(sb)
        heard = self.heard(b)
        await sa.set(req(b"1"))
        await until(reading.is_set, what="B's catch-up")
        await sa.set(req(b"2"))
        await until(lambda: 2 in heard, what="B to hear of seq 2")  # while the catch-up that read seq 1 runs
        release.set()
        await until(lambda: set_seqs(eb) == [1, 2], what="both events")
        self.assertHistories(ea, eb)

    async def test_reconnection_during_a_catch_up_is_not_lost(self) -> None:
        a, b = await self.backends(2)
        (sa, ea), (sb, eb) = await self.open(a), await self.open(b)
        reading, release = self.held_first_catch_up(sb)
        allowed = self.held_reconnection(b)
        await sa.set(req(b"1"))
        await until(reading.is_set, what="B's catch-up")
        pid = b.listener_pid
        await threads.deferToThread(_admin, f"SELECT pg_terminate_backend({pid})")
        await until(lambda: b.listener_pid is None, what="the listener to notice")
        await sa.set(req(b"2"))  # nobody hears this one; the reconnection must catch up
        allowed.set()
        await until(lambda: b.listener_pid not in (None, pid), what="the listener to reconnect")
        release.set()  # the catch-up that read seq 1 ends only now, after the reconnection
        await until(lambda: set_seqs(eb) == [1, 2], what="both events")
        self.assertHistories(ea, eb)

    async def test_listener_reconnects_and_catches_up(self) -> None:
        a, b = await self.backends(2)
        (sa, ea), (_, eb) = await self.open(a), await self.open(b)
        lines: list[str] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if "notification connection" in str(event.get("log_format", "")):
                lines.append(event["log_format"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await sa.set(req(b"before"))
        await until(lambda: len(eb) == 1, what="first event")
        allowed = self.held_reconnection(b)
        pid = b.listener_pid
        await threads.deferToThread(_admin, f"SELECT pg_terminate_backend({pid})")
        await until(lambda: b.listener_pid is None, what="the listener to notice")
        await sa.set(req(b"during 1"))
        await sa.set_many([req(b"during 2"), req(b"during 3")])
        await sa.delete(seq=1)
        await settle(0.1)  # a bounded negative check: nothing can arrive without the listener
        self.assertEqual(len(eb), 1)
        allowed.set()
        await until(lambda: eb[-1:] == ea[-1:], what="the catch-up after reconnecting")
        self.assertNotIn(b.listener_pid, (None, pid))
        await no_strays()
        self.assertHistories(ea, eb)
        self.assertEqual(len([x for x in lines if x.startswith("persist: lost")]), 1)
        self.assertEqual(len([x for x in lines if "back after" in x]), 1)
        # a second outage is a new one: its own warning and its own "back" line
        pid = b.listener_pid
        await threads.deferToThread(_admin, f"SELECT pg_terminate_backend({pid})")
        await until(lambda: b.listener_pid is None, what="the listener to notice again")
        await sa.set(req(b"during the second outage"))
        await until(lambda: eb[-1:] == ea[-1:], what="the second catch-up")
        await until(lambda: len([x for x in lines if "back after" in x]) == 2, what="the second back line")
        self.assertEqual(len([x for x in lines if x.startswith("persist: lost")]), 2)

    async def test_deletes_pruned_from_the_log_still_reach_listeners(self) -> None:
        a, b = await self.backends(2, delete_log_seconds=1.0)
        (sa, ea), (_, eb) = await self.open(a), await self.open(b)
        await sa.set_many([req(b"%d" % i) for i in range(70)])
        await until(lambda: len(eb) == 70, what="70 events")
        allowed = self.held_reconnection(b)
        await threads.deferToThread(_admin, f"SELECT pg_terminate_backend({b.listener_pid})")
        await until(lambda: b.listener_pid is None, what="the listener to notice")
        await sa.delete(seq=1)
        self.clock.advance(2)  # the first delete is now older than the log keeps
        for seq in range(2, 66):  # crossing delete id 64 prunes the log
            await sa.delete(seq=seq)
        allowed.set()
        await until(lambda: view(eb) == view(ea), what="B's view to match A's")
        self.assertEqual(sorted(view(eb)), [66, 67, 68, 69, 70])
        self.assertEqual(set_seqs(eb), list(range(1, 71)))
        self.assertEqual(eb[70:], [{"op": "delete", "seqs": list(range(1, 66))}])  # one diff, not 65 deletes

    async def test_close_leaves_no_threads_or_timers(self) -> None:
        a, b = await self.backends(2)
        (sa, _), (sb, _) = await self.open(a), await self.open(b)
        await sa.set(req())
        assert isinstance(sb, PgStream)
        await until(lambda: sb.cursor == (1, 0), what="B to catch up")
        # make B's catch-up fail, so it waits on a retry timer when the backends close
        await threads.deferToThread(_admin, f'ALTER TABLE "{b.schema}".persist_streams RENAME TO gone')
        b.notified([f"{sb.key} 2 0"])
        await until(lambda: sb._retry is not None, what="a retry timer")
        await a.close()
        await b.close()
        names = [t.name for t in threading.enumerate() if t.is_alive()]
        self.assertEqual([n for n in names if "cocalc-hub-persist" in n], [])
        mine = [c for c in reactor.getDelayedCalls() if isinstance(getattr(c.func, "__self__", None), PgStream)]
        self.assertEqual(mine, [])
        self.flushLoggedErrors(psycopg.errors.UndefinedTable)

    async def test_tables_of_an_older_version_get_the_new_column(self) -> None:
        self.clock = fake_clock()
        schema = await pg_schema(self)
        await threads.deferToThread(_admin, f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".persist_streams'
                                    " (path TEXT PRIMARY KEY, last_seq BIGINT NOT NULL DEFAULT 0)")
        a, b = make_postgres(self, self.clock, schema), make_postgres(self, self.clock, schema)
        (sa, ea), (_, eb) = await self.open(a), await self.open(b)
        await sa.set(req(b"1"))
        await sa.delete(seq=1)
        # B may read the set before the delete (two events) or only after it (the delete alone):
        # wait for the delete, which needs the new column, and check the histories agree
        await until(lambda: eb[-1:] == ea[-1:] == [{"op": "delete", "seqs": [1]}], what="B's delete")
        self.assertHistories(ea, eb)
