"""Read barriers (cocalc_hub/conat/transport/barriers.py): a packet that ends a client's wait
reaches it in a read of its own, before what follows it.

Frame by frame with a raw WebSocket client whose pongs the test sends by hand (so what is
held, and until when, is exact), then end to end: npm socket.io-client attaching its
listeners only after the ack or reply, as the upstream conat client does, against a hub.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from cocalc_hub.conat.client import JSON, Client, Message, connect
from cocalc_hub.conat.transport.barriers import BARRIER, PLAIN
from cocalc_hub.conat.transport.engine import EngineOptions
from cocalc_hub.conat.transport.socket import Ack, NamespaceSocket
from tests.conat.support import open_session, serve_engine, ws_connect
from tests.support import CI, REPO, settings_for, start_hub

NODE_DIR = REPO / "tests" / "node"
BARRIERS_JS = NODE_DIR / "barriers.js"
OPTIONS = EngineOptions(ping_interval=10.0, ping_timeout=10.0, connect_timeout=10.0)
PING = "2"


class Scripted:
    """A Socket.IO handler that runs ``script[name](socket, ack)`` for each event."""

    def __init__(self, script: dict[str, Callable[[NamespaceSocket, Ack | None], None]]) -> None:
        self.script = script

    def socket_connected(self, socket: NamespaceSocket) -> None:
        pass

    def socket_event(self, socket: NamespaceSocket, name: str, args: list[Any], ack: Ack | None) -> None:
        self.script[name](socket, ack)

    def socket_disconnected(self, socket: NamespaceSocket, reason: str) -> None:
        pass


REPLY, FEED = object(), object()


def reply(socket: NamespaceSocket, n: int) -> None:
    socket.emit_raw(f'451-["_INBOX.x.*",{{"n":{n}}}]', b"reply", REPLY, BARRIER)


def feed(socket: NamespaceSocket, n: int) -> None:
    socket.emit_raw(f'451-["feed",{{"n":{n}}}]', b"feed", FEED, PLAIN)


class FrameTests(unittest.TestCase):
    async def session(self, script: dict[str, Callable[[NamespaceSocket, Ack | None], None]],
                      options: EngineOptions = OPTIONS) -> tuple[Any, task.Clock, Any]:
        clock = task.Clock()
        port, factory = serve_engine(self, Scripted(script), options, clock=clock)
        ws = await ws_connect(self, port)
        await open_session(ws)
        return ws, clock, factory

    async def delivery(self, ws: Any) -> tuple[str, bytes]:
        return await ws.text(), await ws.binary()

    async def test_a_delivery_for_another_flow_waits_for_the_pong_after_a_reply(self) -> None:
        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)
            feed(socket, 2)
            reply(socket, 3)

        def sync(socket: NamespaceSocket, ack: Ack | None) -> None:
            assert ack is not None
            ack("synced")

        ws, clock, factory = await self.session({"go": go, "sync": sync})
        ws.send_text('42["go"]')
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":1}]', b"reply"))
        self.assertEqual(await ws.text(), PING)
        # A heartbeat ping is never held: everything written before it has arrived by now,
        # and the feed has not, because it waits for the barrier's pong.
        clock.advance(OPTIONS.ping_interval)
        self.assertEqual(await ws.text(), PING)
        self.assertEqual(factory.turns.holds, 1)
        ws.send_text("3")  # answers the barrier's ping
        self.assertEqual(await self.delivery(ws), ('451-["feed",{"n":2}]', b"feed"))
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":3}]', b"reply"))
        ws.send_text("3")  # answers the heartbeat
        ws.send_text('421["sync"]')
        self.assertEqual(await ws.text(), '431["synced"]')  # the pong has been handled
        clock.advance(OPTIONS.ping_timeout)  # the heartbeat was answered: no timeout
        clock.advance(OPTIONS.ping_interval - OPTIONS.ping_timeout)
        self.assertEqual(await ws.text(), PING)

    async def test_replies_on_the_same_inbox_and_acks_are_not_held(self) -> None:
        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)
            reply(socket, 2)
            assert ack is not None
            ack("done")

        ws, _, factory = await self.session({"go": go})
        ws.send_text('421["go"]')
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":1}]', b"reply"))
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":2}]', b"reply"))
        self.assertEqual(await ws.text(), '431["done"]')  # no ping in between: nothing was held
        self.assertEqual(factory.turns.holds, 0)

    async def test_once_the_barrier_has_left_later_deliveries_are_not_held(self) -> None:
        def first(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)

        def then(socket: NamespaceSocket, ack: Ack | None) -> None:
            feed(socket, 2)

        ws, clock, _ = await self.session({"first": first, "then": then})
        ws.send_text('42["first"]')
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":1}]', b"reply"))
        clock.advance(0)  # the turn the reply was written to the socket in
        clock.advance(0)  # a turn after it: the reply has left on its own
        ws.send_text('42["then"]')
        self.assertEqual(await self.delivery(ws), ('451-["feed",{"n":2}]', b"feed"))

    async def test_a_confirmed_ack_holds_everything_after_it_until_the_pong(self) -> None:
        def subscribe(socket: NamespaceSocket, ack: Ack | None) -> None:
            assert ack is not None
            ack.confirm({"status": "added"})

        def other(socket: NamespaceSocket, ack: Ack | None) -> None:
            assert ack is not None
            ack("other")
            feed(socket, 1)

        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            clock.advance(OPTIONS.ping_interval)

        ws, clock, _ = await self.session({"subscribe": subscribe, "other": other, "go": go})
        ws.send_text('421["subscribe"]')
        self.assertEqual(await ws.text(), '431[{"status":"added"}]')
        self.assertEqual(await ws.text(), PING)
        clock.advance(0)
        clock.advance(0)  # turns later: still held, whatever the turn
        ws.send_text('422["other"]')
        ws.send_text('42["go"]')  # a heartbeat, written once both were handled
        self.assertEqual(await ws.text(), PING)  # the heartbeat; the ack and feed wait
        ws.send_text("3")
        self.assertEqual(await ws.text(), '432["other"]')
        self.assertEqual(await self.delivery(ws), ('451-["feed",{"n":1}]', b"feed"))

    async def test_an_unsolicited_pong_releases_nothing(self) -> None:
        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)
            feed(socket, 2)

        ws, clock, _ = await self.session({"go": go})
        ws.send_text("3")
        ws.send_text("3")
        ws.send_text('42["go"]')
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":1}]', b"reply"))
        self.assertEqual(await ws.text(), PING)
        clock.advance(OPTIONS.ping_interval)
        self.assertEqual(await ws.text(), PING)  # the feed is still held
        ws.send_text("3")
        self.assertEqual(await self.delivery(ws), ('451-["feed",{"n":2}]', b"feed"))

    async def test_closing_sends_what_was_held_before_the_close_frame(self) -> None:
        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)
            feed(socket, 2)

        ws, _, factory = await self.session({"go": go})
        ws.send_text('42["go"]')
        self.assertEqual(await self.delivery(ws), ('451-["_INBOX.x.*",{"n":1}]', b"reply"))
        self.assertEqual(await ws.text(), PING)
        factory.close_all()
        self.assertEqual(await self.delivery(ws), ('451-["feed",{"n":2}]', b"feed"))
        self.assertEqual(await ws.close_code(), 1000)

    async def test_a_client_that_never_answers_cannot_make_the_server_hold_without_bound(self) -> None:
        small = EngineOptions(ping_interval=10.0, ping_timeout=10.0, connect_timeout=10.0, max_backlog=10_000)

        def go(socket: NamespaceSocket, ack: Ack | None) -> None:
            reply(socket, 1)
            for _ in range(20):
                socket.emit_raw('451-["feed",{}]', b"x" * 1000, FEED, PLAIN)

        ws, _, factory = await self.session({"go": go}, small)
        ws.send_text('42["go"]')
        await ws.closed
        self.assertEqual(factory.slow_consumers, 1)
        self.assertEqual(factory.connections, set())


def require_node() -> str:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").exists():
        problem = "npm socket.io-client is not installed (make tests/node/node_modules/.installed)"
    if problem is not None:
        if CI:
            raise AssertionError(problem + " (CI=true: failing instead of skipping)")
        raise unittest.SkipTest(problem)
    assert node is not None
    return node


class ListenerAfterAckTests(unittest.TestCase):
    """npm socket.io-client, listening only once the ack or reply is in (like upstream)."""

    timeout = 60

    async def run_node(self, scenario: str, params: dict[str, Any]) -> Any:
        from tests.conat.test_interop import run_script

        return await run_script(self, [require_node(), str(BARRIERS_JS), scenario, json.dumps(params)])

    def hub(self) -> tuple[Any, str]:
        hub = start_hub(self, settings_for(self.mktemp()))
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        return hub, password

    async def test_a_message_in_the_same_turn_as_the_subscribe_ack_is_not_lost(self) -> None:
        hub, password = self.hub()
        r = await self.run_node("subscribe-then-publish",
                                {"url": hub.root, "cookie": f"hub_password={password}", "subject": "svc.first"})
        self.assertEqual(r["sub"], {"status": "added"})
        self.assertEqual(r["pub"], {"count": 1})
        self.assertEqual(r["got_at_pub_ack"], ['"first"'])

    async def test_an_update_right_behind_a_reply_is_not_lost(self) -> None:
        """The persist changefeed's shape: the reply, then at once an update on another subject."""
        hub, password = self.hub()
        service: Client = connect(reactor, hub.root, cookies={"hub_password": password},
                                  inbox_prefix="_INBOX.hub-hub")
        self.addCleanup(service.close)
        await service.signed_in()

        def answer(msg: Message) -> None:
            reply_to = msg.reply_subject
            assert reply_to is not None
            # one reactor turn, so one write: the hub reads and routes all three together
            service.publish_sync(reply_to, "created", encoding=JSON)
            service.publish_sync("feed.barriers", "update", encoding=JSON)
            service.publish_sync(reply_to, "second", encoding=JSON)

        await service.subscribe("svc.barriers", callback=answer)
        r = await self.run_node("reply-then-feed", {"url": hub.root, "cookie": f"hub_password={password}",
                                                    "service": "svc.barriers", "feed": "feed.barriers"})
        self.assertEqual(r["subs"], [{"status": "added"}, {"status": "added"}])
        self.assertEqual(r["count"], {"count": 1})
        self.assertEqual(r["replies"], ['"created"', '"second"'])
        self.assertEqual(r["updates_at_second_reply"], ['"update"'])
