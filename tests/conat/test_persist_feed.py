"""Changefeed order: every changefeed hears a change no later than its writer's reply (issue 14.3).

Clients here are in-process (LocalTransport): what the broker routes to a connection is
pushed to that connection's transport at once (logged here, in order) and handed to the
client on a later reactor turn. So "the broker wrote the feed update before the reply" is
checked exactly, and "the reader has it" once the reactor has run what was already due
when the writer's await returned (one zero-delay turn; no timer is waited for). The
server's changefeed throttle is set to a minute, so an update that waited for it would
arrive long after the test failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from cocalc_hub.conat.client import Client
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.message import MSGPACK, encode
from cocalc_hub.conat.permissions import account_user
from cocalc_hub.conat.persist.client import PersistClient
from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend
from tests.conat.test_persist import A, PersistCase
from tests.support import settings_for, start_hub

MINUTE = 60.0


def turn() -> defer.Deferred[None]:
    """One reactor turn: what was due (zero-delay calls scheduled before now) has run."""
    return task.deferLater(reactor, 0, lambda: None)


class FeedBeforeReplyTests(PersistCase):
    async def open_pair(self, backend: Any = None) -> tuple[PersistClient, PersistClient, list[dict[str, Any]],
                                                            list[tuple[str, str]]]:
        """A writer and a changefeed reader on one stream; ``wire`` logs, in order, what the
        broker pushes to either connection: ("reader", subject) / ("writer", subject)."""
        await self.start_server(backend, changefeed_throttle=MINUTE)
        wire: list[tuple[str, str]] = []
        writer = await self.open_logged(f"accounts/{A}/order", "writer", wire)
        reader = await self.open_logged(f"accounts/{A}/order", "reader", wire, changefeed=True)
        events: list[dict[str, Any]] = []
        reader.on_events = events.extend
        return writer, reader, events, wire

    async def open_logged(self, path: str, name: str, wire: list[tuple[str, str]], **options: Any) -> PersistClient:
        transport = LocalTransport(self.broker, account_user(A))
        push = transport.push

        def logged(event: str, args: list[Any], ack: Any) -> None:
            if args and isinstance(args[0], dict) and "subject" in args[0]:
                wire.append((name, args[0]["subject"]))
            push(event, args, ack)

        transport.push = logged  # type: ignore[method-assign]
        c = Client(reactor, transport)
        self.addCleanup(c.close)
        p = PersistClient(c, path, **options)
        self.addCleanup(p.close)
        await p.connect()
        return p

    def assert_feed_first(self, wire: list[tuple[str, str]], start: int) -> None:
        """In ``wire[start:]``, the reader's feed update comes before the writer's reply."""
        routed = wire[start:]
        feed = [i for i, (who, subject) in enumerate(routed) if who == "reader" and ".client." in subject]
        reply = [i for i, (who, subject) in enumerate(routed) if who == "writer" and subject.startswith("_INBOX")]
        self.assertTrue(feed, f"no changefeed update routed to the reader: {routed}")
        self.assertTrue(reply, f"no reply routed to the writer: {routed}")
        self.assertLess(feed[0], reply[0], f"the writer's reply was routed before the reader's update: {routed}")

    async def test_every_set_reaches_the_feed_before_its_reply(self) -> None:
        writer, _, events, wire = await self.open_pair()
        for i in range(1, 6):  # sequential: all but the first fall inside the throttle window
            start = len(wire)
            seq = (await writer.set(f"v{i}", key="k"))["seq"]
            self.assert_feed_first(wire, start)
            await turn()
            self.assertIn(seq, [e.get("seq") for e in events], f"set {i}: the reader does not have it")

    async def test_set_many_and_delete_reach_the_feed_before_their_reply(self) -> None:
        writer, _, events, wire = await self.open_pair()
        await writer.set("first")  # opens the throttle window
        start = len(wire)
        results = await writer.set_many([{"messageData": {"encoding": MSGPACK, "raw": encode(i)}} for i in range(3)])
        self.assert_feed_first(wire, start)
        await turn()
        self.assertEqual([e.get("seq") for e in events if "seq" in e][-3:], [r["seq"] for r in results])
        start = len(wire)
        self.assertEqual(await writer.delete(seq=results[0]["seq"]), [results[0]["seq"]])
        self.assert_feed_first(wire, start)
        await turn()
        self.assertEqual(events[-1], {"op": "delete", "seqs": [results[0]["seq"]]})

    async def test_sets_committed_together_reach_a_feed_in_one_write(self) -> None:
        """What still batches: sets committed in one transaction (SQLite's group commit) go
        to a feed in one write (the memory backend commits each set as it comes)."""
        backend = SqliteStorageBackend(Path(self.mktemp()), reactor)
        self.addCleanup(lambda: defer.ensureDeferred(backend.close()))
        writer, reader, events, _ = await self.open_pair(backend)
        await writer.set("first")
        assert reader.sock is not None
        before = reader.sock.receiver.last
        results = await defer.gatherResults([writer.set(i) for i in range(100)])
        await turn()
        self.assertEqual([e["seq"] for e in events if "seq" in e][-100:], [r["seq"] for r in results])
        self.assertLess(reader.sock.receiver.last - before, 20, "about one feed write per group commit")

    async def test_a_burst_of_sets_on_a_memory_stream_reaches_a_feed_in_few_writes(self) -> None:
        """The memory store commits a burst (sets that arrived in one reactor turn) as one
        group while the stream has a changefeed, so it is not one feed write per set."""
        writer, reader, events, wire = await self.open_pair()
        await writer.set("first")
        assert reader.sock is not None
        before = reader.sock.receiver.last
        start = len(wire)
        results = await defer.gatherResults([writer.set(i) for i in range(100)])
        self.assert_feed_first(wire, start)
        await turn()
        self.assertEqual([e["seq"] for e in events if "seq" in e][-100:], [r["seq"] for r in results])
        self.assertLess(reader.sock.receiver.last - before, 5)


class NodeFeedOrderTests(unittest.TestCase):
    """The same over a hub's WebSocket with npm socket.io-client (tests/node/persist_order.js):
    a reader session and a writer session on one connection; each save's update must have
    reached the reader when the save's reply is handled."""

    timeout = 60

    async def test_a_node_reader_has_each_change_when_the_node_writer_s_save_returns(self) -> None:
        from tests.conat.test_interop import NODE_DIR, hub_password, require_node, run_script

        node = require_node()
        hub = start_hub(self, settings_for(self.mktemp()))
        result = await run_script(self, [node, str(NODE_DIR / "persist_order.js"), hub.root,
                                         f"hub_password={hub_password(hub)}", "hub/order", "10"])
        self.assertEqual(result["feed_after_save"], list(range(1, 11)))
