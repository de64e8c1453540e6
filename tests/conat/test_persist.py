"""The persist server, its client and dstream/dkv, over a real broker (spec §6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import Client, ConatError, connect
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.message import JSON, MSGPACK, encode
from cocalc_hub.conat.permissions import HUB_USER, User, account_user
from cocalc_hub.conat.persist.client import PersistClient
from cocalc_hub.conat.persist.dstream import DKV, DStream
from cocalc_hub.conat.persist.server import PersistServer, check_path, java_hash, server_for
from cocalc_hub.conat.persist.storage.memory import MemoryStorageBackend
from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend
from cocalc_hub.conat.socket import SocketClient
from tests.support import settings_for, start_hub, until

D = TypeVar("D", DStream, DKV)
A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
P = "cccccccc-0000-4000-8000-000000000003"


class PathRuleTests(unittest.TestCase):
    def test_paths_and_scopes(self) -> None:
        check_path(f"persist.account-{A}", f"accounts/{A}/x")
        check_path(f"persist.project-{P}", f"projects/{P}/a/b/c")
        check_path("persist.hub", "anything/at/all")
        cases = {
            f"accounts/{B}/x": (403, "does not grant write permission"),
            f"projects/{P}/x": (403, "does not grant write permission"),
            f"accounts/{A}/../{B}/x": (None, "is not normalized"),
            f"accounts/{A}//x": (None, "is not normalized"),
            f"/accounts/{A}/x": (403, "must not start or end with '/'"),
            f"accounts/{A}/x/": (None, "is not normalized"),
            "x" * 5000: (403, "too long"),
            "": (400, "non-empty"),
        }
        for path, (code, text) in cases.items():
            with self.assertRaises(ConatError) as e:
                check_path(f"persist.account-{A}", path)
            self.assertEqual(e.exception.code, code, path)
            self.assertIn(text, str(e.exception), path)
        with self.assertRaises(ConatError) as e:
            check_path("persist.somebody", "x/y")
        self.assertEqual((e.exception.code, str(e.exception)), (403, "invalid subject: 'persist.somebody'"))

    def test_the_balancer_hash_is_javas(self) -> None:
        # values of JavaScript's (h << 5) - h + code | 0 loop, computed with node
        self.assertEqual([java_hash(s) for s in ("", "a", "hello", f"account-{A}")],
                         [0, 97, 99162322, -550846747])
        self.assertEqual(java_hash("é☃𝄞"), ((((0xE9 * 31 + 0x2603) * 31 + 0xD834) * 31 + 0xDD1E) & 0xFFFFFFFF))
        ids = ["0", "1", "2"]
        self.assertEqual(server_for(f"account-{A}", ids), ids[550846747 % 3])


class PersistCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.broker = Broker(reactor)
        self.memory = MemoryStorageBackend(reactor)
        self.servers: list[PersistServer] = []

    async def start_server(self, backend: Any = None, **options: Any) -> PersistServer:
        client = self.client(HUB_USER)
        server = PersistServer(client, backend or self.memory, **options)
        await server.start()
        self.servers.append(server)
        self.addCleanup(server.close)
        return server

    def client(self, user: User = HUB_USER) -> Client:
        c = Client(reactor, LocalTransport(self.broker, user))
        self.addCleanup(c.close)
        return c

    async def open(self, path: str, user: User | None = None, **options: Any) -> PersistClient:
        p = PersistClient(self.client(user or account_user(A)), path, **options)
        self.addCleanup(p.close)
        await p.connect()
        return p


class CommandTests(PersistCase):
    async def test_every_command(self) -> None:
        server = await self.start_server()
        p = await self.open(f"accounts/{A}/s")
        r1 = await p.set({"v": 1})
        r2 = await p.set("two", key="k", headers={"h": 1})
        r3 = await p.set(raw=b'"json"', encoding=JSON, key="j")
        self.assertEqual([r["seq"] for r in (r1, r2, r3)], [1, 2, 3])
        self.assertIsInstance(r1["time"], float)
        got = await p.get(key="k")
        assert got is not None
        self.assertEqual((got.seq, got.key, got.headers, got.raw), (2, "k", {"h": 1}, encode("two")))
        got = await p.get(seq=3)
        assert got is not None
        self.assertEqual((got.encoding, got.raw), (JSON, b'"json"'))
        self.assertIsNone(await p.get(seq=99))
        self.assertIsNone(await p.get(key="nope"))
        self.assertEqual(sorted(await p.keys()), ["j", "k"])
        many = await p.set_many([{"messageData": {"encoding": MSGPACK, "raw": encode(i)}} for i in range(3)]
                                + [{"messageData": {"encoding": 7, "raw": b"x"}}, {"bad": 1}])
        self.assertEqual([m.get("seq") for m in many[:3]], [4, 5, 6])
        self.assertEqual(many[3], {"error": "unknown encoding 7", "code": 400})
        self.assertEqual(many[4]["code"], 400)
        inventory = await p.inventory()
        self.assertEqual((inventory["count"], inventory["seq"]), (6, 6))
        self.assertEqual(await p.delete(seq=1), [1])
        all_msgs = [m async for batch in p.get_all() for m in batch]
        self.assertEqual([m.seq for m in all_msgs], [2, 3, 4, 5, 6])
        self.assertEqual([m.seq async for batch in p.get_all(start_seq=4, end_seq=5) for m in batch], [4, 5])
        config = await p.config({"max_msgs": 3})
        self.assertEqual(config["max_msgs"], 3)
        await p.set("seven")
        self.assertEqual(sorted([m.seq async for batch in p.get_all() for m in batch]), [5, 6, 7])
        self.assertEqual((await p.request("serverId")).data, server.id)
        self.assertEqual((await p.request("changefeed")).data, "created")
        with self.assertRaises(ConatError) as e:
            await p.request("sqlite", statement="select 1")
        self.assertEqual(str(e.exception), "sqlite command not currently supported")
        with self.assertRaises(ConatError) as e:
            await p.request("dance")
        self.assertEqual((str(e.exception), e.exception.code), ("unknown command dance", 404))
        with self.assertRaises(ConatError) as e:
            await p.set("x", key="k", previous_seq=1)
        self.assertEqual(e.exception.code, "wrong-last-sequence")
        with self.assertRaises(ConatError) as e:
            await p.request("get", seq="one")
        self.assertEqual(e.exception.code, 400)

    async def test_changefeeds_reach_every_session_on_the_path(self) -> None:
        await self.start_server()
        writer = await self.open(f"accounts/{A}/feed")
        reader = await self.open(f"accounts/{A}/feed", changefeed=True)
        events: list[Any] = []
        reader.on_events = events.extend
        for i in range(100):
            await writer.set(i, key=f"k{i % 10}")
        await writer.delete(seq=100)
        await until(lambda: any(e.get("op") == "delete" for e in events))
        sets = [e for e in events if "op" not in e]
        self.assertEqual([e["seq"] for e in sets], list(range(1, 101)))
        self.assertEqual(sets[5]["key"], "k5")
        self.assertEqual(events[-1], {"op": "delete", "seqs": [100]})
        # (sequential writes: one feed write each, since each reaches the feed before its
        # reply; what still batches is in test_persist_feed)

    async def test_permissions(self) -> None:
        await self.start_server()
        with self.assertRaises(ConatError) as e:  # the path belongs to someone else
            await self.open(f"accounts/{B}/x")
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:  # another account's scope: the broker refuses
            await self.open(f"accounts/{B}/x", scope=f"account-{B}")
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:  # a project the account is not in
            await self.open(f"projects/{P}/x")
        self.assertEqual(e.exception.code, 403)
        with self.assertRaises(ConatError) as e:
            await self.open(f"accounts/{A}/../x", scope=f"account-{A}")
        self.assertIn("not normalized", str(e.exception))
        # the hub may use any path
        hub = await self.open("hub/anything", HUB_USER)
        self.assertEqual((await hub.set(1))["seq"], 1)

    async def test_a_request_waiting_for_the_stream_ends_with_its_session(self) -> None:
        server = await self.start_server()

        async def server_id() -> str:
            return server.id

        sock = SocketClient(self.client(account_user(A)), f"persist.account-{A}", server_id=server_id,
                            reconnection=False)
        self.addCleanup(sock.close)
        await sock.connect()
        # no storage message yet: the request waits for the stream to open
        pending = sock.request(None, headers={"cmd": "inventory"}, timeout=60)
        await until(lambda: any(session.ready.callbacks for session in server.sessions))  # it waits
        for s in list(server.sockets.sockets.values()):
            s.close("dropped by the test")
        reply = await pending.addTimeout(5, reactor)  # at once, not after the 30 s open timeout
        self.assertEqual((reply.headers or {}).get("code"), 503)

    async def test_open_stream_limits(self) -> None:
        server = await self.start_server(max_per_user=2, max_global=3)
        first = await self.open(f"accounts/{A}/1")
        await self.open(f"accounts/{A}/2")
        with self.assertRaises(ConatError) as e:
            await self.open(f"accounts/{A}/3")
        self.assertEqual(e.exception.code, 429)
        self.assertIn("per user limit of 2", str(e.exception))
        await self.open(f"accounts/{B}/1", account_user(B))
        with self.assertRaises(ConatError) as e:
            await self.open(f"accounts/{B}/2", account_user(B))
        self.assertIn("global limit of 3", str(e.exception))
        first.close()  # closing frees the slot
        await until(lambda: server.per_user.get(f"account-{A}") == 1)
        await self.open(f"accounts/{A}/4")

    async def test_get_all_of_many_messages_streams_in_order(self) -> None:
        await self.start_server()
        p = await self.open(f"accounts/{A}/big")
        items = [{"messageData": {"encoding": MSGPACK, "raw": encode(i)}} for i in range(5000)]
        await p.set_many(items)
        seqs = [m.seq async for batch in p.get_all() for m in batch]
        self.assertEqual(seqs, list(range(1, 5001)))

    async def test_two_servers_share_the_load_by_scope(self) -> None:
        s0 = await self.start_server(server_id="0", ids=["0", "1"])
        s1 = await self.start_server(server_id="1", ids=["0", "1"])
        users = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(8)]
        for uid in users:
            p = await self.open(f"accounts/{uid}/x", account_user(uid))
            await p.set(uid)
            expected = server_for(f"account-{uid}", ["0", "1"])
            self.assertEqual((await p.request("serverId")).data, expected)
        self.assertTrue(s0.sessions and s1.sessions)

    async def test_a_restarted_server_is_found_again(self) -> None:
        root = Path(self.mktemp())
        backends = [SqliteStorageBackend(root, reactor), SqliteStorageBackend(root, reactor)]
        for b in backends:
            self.addCleanup(lambda b=b: defer.ensureDeferred(b.close()))
        server = await self.start_server(backends[0])
        p = await self.open(f"accounts/{A}/r")
        await p.set("before")
        rebuilt: list[int] = []
        p.on_rebuilt = lambda: rebuilt.append(1)
        await server.close()
        self.servers.remove(server)
        await self.start_server(backends[1])  # the same files: the data is still there
        await until(lambda: bool(rebuilt))
        await p.set("after")
        self.assertEqual([m.raw async for b in p.get_all() for m in b], [encode("before"), encode("after")])


    async def test_writes_in_flight_to_a_dead_server_fail_fast_and_the_session_is_rebuilt(self) -> None:
        # A persist process killed with -9: its connection (and so its subscriptions) vanish
        # without a word to its sockets' clients, and nothing answers what was in flight.
        server = await self.start_server()
        p = await self.open(f"accounts/{A}/dead")
        await p.set("before")
        (session,) = server.sessions
        stream = session.stream
        assert stream is not None
        stuck: list[defer.Deferred[Any]] = []
        stream.set = lambda req: stuck.append(defer.Deferred()) or stuck[-1]  # type: ignore[method-assign]
        in_flight = [p.set(i) for i in range(5)]
        await until(lambda: len(stuck) == 5)
        server.client.transport.close()  # the broker drops its connection and subscriptions
        rebuilt: list[int] = []
        p.on_rebuilt = lambda: rebuilt.append(1)
        start = reactor.seconds()
        results = await defer.DeferredList(in_flight, consumeErrors=True)
        waited = reactor.seconds() - start
        errors = [r.value for ok, r in results if not ok]
        self.assertEqual([(type(e), e.code) for e in errors], [(ConatError, 503)] * 5)
        self.assertIn("session was lost", str(errors[0]))
        self.assertLess(waited, 4, "requests to a dead server waited for their timeout")
        del stream.set  # type: ignore[method-assign]  # (the backend shares this stream with the next server)
        await self.start_server()
        await until(lambda: bool(rebuilt))
        await p.set("after")
        self.assertEqual([m.raw async for b in p.get_all() for m in b], [encode("before"), encode("after")])


class DStreamTests(PersistCase):
    async def copies(self, kind: type[D], name: str, count: int) -> list[D]:
        """``count`` initialized copies of account A's DStream or DKV ``name``, each on its
        own client."""
        out = []
        for _ in range(count):
            copy = kind(self.client(account_user(A)), name, account_id=A)
            self.addCleanup(copy.close)
            out.append(copy)
        for copy in out:
            await copy.init()
        return out

    async def test_dstream_and_dkv_copies_agree(self) -> None:
        await self.start_server()
        one, two = await self.copies(DStream, "log", 2)
        seen: list[Any] = []
        two.listeners.append(lambda value, seq: seen.append((value, seq)))
        for i in range(20):
            await one.publish({"i": i})
        await until(lambda: len(two) == 20)
        self.assertEqual(list(two), [{"i": i} for i in range(20)])
        self.assertEqual(seen, [({"i": i}, i + 1) for i in range(20)])
        self.assertEqual(list(one), list(two))

        kv1, kv2 = await self.copies(DKV, "kv", 2)
        await kv1.set("a", 1)
        await kv2.set("a", 2)
        await kv1.set("b", [1, 2])
        await kv1.delete("b")
        await until(lambda: kv1.items() == kv2.items() == {"a": 2})
        (kv3,) = await self.copies(DKV, "kv", 1)
        self.assertEqual(kv3.items(), {"a": 2})

    async def test_a_lost_session_loses_and_repeats_nothing(self) -> None:
        server = await self.start_server()
        writer, reader = await self.copies(DStream, "w", 2)
        values: list[Any] = []
        reader.listeners.append(lambda value, seq: values.append(value))
        for i in range(10):
            await writer.publish(i)
        await until(lambda: len(reader) == 10)
        # the server drops the reader's session; writes go on meanwhile
        for sock in list(server.sockets.sockets.values()):
            if reader.persist.sock is not None and sock.client_id == reader.persist.sock.client_id:
                sock.close("dropped by the test")
        for i in range(10, 30):
            await writer.publish(i)
        await until(lambda: len(reader) == 30)
        self.assertEqual(list(reader), list(range(30)))
        self.assertEqual(values, list(range(30)))


class SqliteAndHubTests(PersistCase):
    async def test_sqlite_backend_keeps_streams_across_servers(self) -> None:
        root = Path(self.mktemp())
        backend = SqliteStorageBackend(root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(backend.close()))
        server = await self.start_server(backend)
        p = await self.open(f"accounts/{A}/durable")
        for i in range(50):
            await p.set(i, key=f"k{i}")
        p.close()
        await server.close()
        self.servers.remove(server)
        self.assertTrue((root / "accounts" / A / "durable.db").is_file())
        backend2 = SqliteStorageBackend(root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(backend2.close()))
        await self.start_server(backend2)
        p2 = await self.open(f"accounts/{A}/durable")
        self.assertEqual((await p2.inventory())["count"], 50)

    async def test_a_hub_serves_persist_to_a_signed_in_account_over_its_websocket(self) -> None:
        from twisted.web.client import HTTPConnectionPool

        from tests.web.api_client import ApiClient

        hub = start_hub(self, settings_for(self.mktemp()))
        self.assertTrue(any(s.name == "conat-persist" for s in hub.hub if s.name))
        pool = HTTPConnectionPool(reactor, persistent=False)
        api = ApiClient(hub.base, pool)
        resp = await api.sign_up("persist@example.com")
        account_id = resp.json["account_id"]
        clients = []
        for _ in range(2):
            c = connect(reactor, hub.root, cookies={"remember_me": api.cookies["remember_me"]})
            self.addCleanup(c.close)
            await c.signed_in()
            clients.append(c)
        kv1 = DKV(clients[0], "settings", account_id=account_id)
        kv2 = DKV(clients[1], "settings", account_id=account_id)
        self.addCleanup(kv1.close)
        self.addCleanup(kv2.close)
        await kv1.init()
        await kv2.init()
        await kv1.set("theme", "dark")
        await until(lambda: kv2.get("theme") == "dark")
        # the file is where upstream keeps it
        self.assertTrue((hub.hub.settings.sync_dir / "accounts" / account_id / "settings.db").is_file())
        with self.assertRaises(ConatError) as e:
            other = DKV(clients[0], "x", account_id=A)
            self.addCleanup(other.close)
            await other.init()
        self.assertEqual(e.exception.code, 403)
