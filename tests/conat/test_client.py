"""The Python conat client against a real hub, over sockets and in-process."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from cocalc_hub.conat.client import JSON, Client, ConatError, Message, connect
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.permissions import account_user
from tests.conat.support import sockets
from tests.support import RunningHub, settings_for, settle, start_hub, until

A = "aaaaaaaa-0000-4000-8000-000000000001"


class HubCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.hub: RunningHub = start_hub(self, settings_for(self.mktemp()))
        self.password = (self.hub.hub.settings.secrets_dir / "conat-password").read_text().strip()

    def client(self, **options: Any) -> Client:
        cookies = options.pop("cookies", {"hub_password": self.password})
        c = connect(reactor, self.hub.root, cookies=cookies, **options)
        self.addCleanup(c.close)
        return c

    def broker(self) -> Any:
        assert self.hub.hub.conat is not None
        return self.hub.hub.conat.broker

    def held(self, subject: str) -> bool:
        """Does the broker hold a wait-for-interest for this subject?"""
        return any(w.subject == subject for w in self.broker().waiters)

    def local(self, user: Any = None) -> Client:
        assert self.hub.hub.conat is not None
        transport = LocalTransport(self.hub.hub.conat.broker, *([user] if user is not None else []))
        c = Client(reactor, transport)
        self.addCleanup(c.close)
        return c

    async def pair(self) -> tuple[Client, Client]:
        a, b = self.client(), self.client()
        await a.signed_in()
        await b.signed_in()
        return a, b


class PubSubTests(HubCase):
    async def test_publish_subscribe_with_headers_and_both_encodings(self) -> None:
        a, b = await self.pair()
        self.assertEqual(a.user, {"hub_id": "hub"})
        sub = await b.subscribe("news.*")
        self.assertEqual(await a.publish("news.today", {"n": [1, 2.5, "x", None, b"\x00"]}, headers={"k": "v"}), 1)
        self.assertEqual(await a.publish("news.json", ["j", 1], encoding=JSON), 1)
        first, second = await sub.next(30), await sub.next(30)
        self.assertEqual((first.subject, first.data, first.headers), ("news.today", {"n": [1, 2.5, "x", None, b"\x00"]},
                                                                       {"k": "v"}))
        self.assertEqual((second.subject, second.encoding, second.raw, second.data),
                         ("news.json", 1, b'["j",1]', ["j", 1]))
        self.assertEqual(await a.publish("elsewhere", 1), 0)

    async def test_messages_larger_than_max_payload_are_chunked_and_reassembled(self) -> None:
        a, b = await self.pair()
        sub = await b.subscribe("big")
        blob = bytes(range(256)) * 80_000  # 20.48 MB: three chunks of at most 7.9 MB
        self.assertEqual(await a.publish("big", raw=blob, headers={"last": True}), 1)
        msg = await sub.next(30)
        self.assertEqual((len(msg.raw), msg.raw == blob, msg.headers), (len(blob), True, {"last": True}))

    async def test_an_empty_message_is_not_sent(self) -> None:
        a, b = await self.pair()
        await b.subscribe("e")
        self.assertEqual(await a.publish("e", raw=b""), 0)

    async def test_subscribe_twice_shares_one_server_subscription(self) -> None:
        a, b = await self.pair()
        s1 = await b.subscribe("t")
        s2 = await b.subscribe("t")
        self.assertEqual(await a.publish("t", 1), 1)
        self.assertEqual(((await s1.next(30)).data, (await s2.next(30)).data), (1, 1))
        s1.close()
        self.assertEqual(await a.publish("t", 2), 1)
        s2.close()  # the last one: the client unsubscribes (no answer comes back)
        await until(lambda: self.broker().index.get("t") is None, what="the broker to drop the subscription")
        self.assertEqual(await a.publish("t", 3), 0)

    async def test_async_iteration_ends_when_closed(self) -> None:
        a, b = await self.pair()
        sub = await b.subscribe("it")
        for i in range(3):
            a.publish_sync("it", i)
        got = []
        async for msg in sub:
            got.append(msg.data)
            if len(got) == 3:
                sub.close()
        self.assertEqual(got, [0, 1, 2])

    async def test_invalid_subjects_fail_locally(self) -> None:
        a, _ = await self.pair()
        for bad in ("a.*", "a..b", "", "a b"):
            with self.assertRaises(ConatError):
                await a.publish(bad, 1)
        with self.assertRaises(ConatError):
            await a.subscribe("a..b")


class RequestTests(HubCase):
    async def test_request_reply_request_many_and_services(self) -> None:
        a, b = await self.pair()

        async def echo(msg: Message) -> None:
            await msg.respond({"echo": msg.data}, headers={"from": "b"})

        await b.subscribe("echo", queue="0", callback=echo)
        reply = await a.request("echo", [1, 2])
        self.assertEqual((reply.data, reply.headers), ({"echo": [1, 2]}, {"from": "b"}))

        def stream(msg: Message) -> None:
            for i in range(3):
                msg.respond_sync(i)
            msg.respond_sync(None)

        await b.subscribe("stream", callback=stream)
        replies = await a.request_many("stream", 0, max_wait=5, max_messages=4)
        self.assertEqual([m.data async for m in replies], [0, 1, 2, None])

        def calc(name: str, args: list[Any], msg: Message) -> Any:
            if name == "add":
                return sum(args)
            raise ConatError(f"no method {name}", 404)

        await b.service("calc", calc)
        self.assertEqual(await a.call("calc", "add", 1, 2, 3), 6)
        with self.assertRaises(ConatError) as e:
            await a.call("calc", "mul", 2)
        self.assertEqual((str(e.exception), e.exception.code), ("Error: no method mul", 404))

    async def test_closing_the_client_ends_open_requests(self) -> None:
        a, b = await self.pair()
        silent = await b.subscribe("silent.x")  # a subscriber that never answers
        replies = await a.request_many("silent.x", 1, max_wait=60)
        pending = a.request("silent.x", 2, timeout=60)
        self.assertEqual([(await silent.next(30)).data for _ in range(2)], [1, 2])  # both are open
        a.close()
        with self.assertRaises(StopAsyncIteration):
            await replies.__anext__()
        with self.assertRaises(ConatError) as e:
            await pending
        self.assertEqual(str(e.exception), "client is closed")

    async def test_no_responders_is_503_and_silence_is_408(self) -> None:
        a, b = await self.pair()
        with self.assertRaises(ConatError) as e:
            await a.request("nobody.home", 1)
        self.assertEqual((str(e.exception), e.exception.code),
                         ("request -- no subscribers matching 'nobody.home'", 503))
        await b.subscribe("mute")
        with self.assertRaises(ConatError) as e:
            await a.request("mute", 1, timeout=0.3)
        self.assertEqual(e.exception.code, 408)
        with self.assertRaises(ConatError) as e:
            await a.request_many("nobody.home", 1)
        self.assertEqual(e.exception.code, 503)

    async def test_wait_for_interest(self) -> None:
        a, b = await self.pair()
        self.assertFalse(await a.wait_for_interest("later", timeout=0))
        waiting = a.wait_for_interest("later", timeout=30)
        await until(lambda: self.held("later"), what="the broker to hold the wait")
        self.assertFalse(waiting.called)
        await b.subscribe("later")
        self.assertTrue(await waiting)
        published = a.publish("later2", 1, wait_for_interest=True, timeout=30)
        await until(lambda: self.held("later2"), what="the broker to hold the wait")
        self.assertFalse(published.called)
        sub = await b.subscribe("later2")
        self.assertEqual(await published, 1)
        self.assertEqual((await sub.next(30)).data, 1)

    async def test_a_request_waiting_for_interest_reaches_a_later_responder(self) -> None:
        a, b = await self.pair()
        asked = a.request("later3", 2, wait_for_interest=True, timeout=30)
        await until(lambda: self.held("later3"), what="the broker to hold the wait")
        self.assertFalse(asked.called)
        await b.subscribe("later3", callback=lambda msg: msg.respond(msg.data * 10))
        self.assertEqual((await asked).data, 20)


class ConnectionTests(HubCase):
    async def test_closing_cancels_the_wait_before_a_subscription_sync_retry(self) -> None:
        c = self.local()
        await c.signed_in()
        self.patch(c, "_call", lambda event, args, timeout: defer.fail(ConatError("refused", 403)))
        defer.ensureDeferred(c._sync())  # as after a sign-in: it fails and waits to try again
        await until(lambda: c._backoff is not None, what="the sync to wait for its retry")
        c.close()
        self.assertIsNone(c._backoff)  # and trial finds no timer left behind

    async def test_reconnects_and_restores_subscriptions(self) -> None:
        a, b = await self.pair()
        sub = await b.subscribe("survive.*")
        events: list[str] = []
        b.listeners.append(lambda what, _: events.append(what))
        assert self.hub.hub.conat is not None
        before = {c.id for c in sockets(self.broker())}
        self.hub.hub.conat.close_connections()  # both clients lose their sockets
        await until(lambda: "info" in events and a.is_signed_in, what="both clients to be back")
        self.assertEqual(events[:1], ["disconnected"])
        # the old connections are gone and b restored its subscription on its new one
        await until(lambda: not before & set(self.broker().connections) and
                    any("survive.*" in c.subs for c in sockets(self.broker())), what="b's subscription to be restored")
        self.assertEqual(await a.publish("survive.x", "after"), 1)
        self.assertEqual((await sub.next(30)).data, "after")

        async def echo(msg: Message) -> None:
            await msg.respond(msg.data)

        await b.subscribe("echo2", callback=echo)
        self.assertEqual((await a.request("echo2", 5)).data, 5)  # the inbox came back too

    async def test_server_disconnect_means_no_reconnect(self) -> None:
        a = self.client()
        await a.signed_in()
        events: list[str] = []
        a.listeners.append(lambda what, detail: events.append(f"{what}:{detail}"))
        assert self.hub.hub.conat is not None
        broker = self.hub.hub.conat.broker
        self.assertEqual(broker.disconnect_ids([c.id for c in sockets(broker)]), 1)
        await until(lambda: bool(events), what="the client to hear of the disconnection")
        self.assertFalse(a.is_signed_in)
        # A bounded negative check: a reconnection would come within the client's first retry
        # delay; nothing may follow the disconnection.
        await settle(1.0)
        self.assertEqual(events, ["disconnected:io server disconnect"])

    async def test_a_wrong_password_fails_sign_in_without_a_retry_loop(self) -> None:
        bad = self.client(cookies={"hub_password": "wrong"})
        with self.assertRaises(ConatError) as e:
            await bad.signed_in()
        self.assertEqual(str(e.exception), "Error: invalid hub password")
        await until(lambda: sockets(self.broker()) == [], what="the refused socket to be gone")
        # A bounded negative check: a retry would come within the client's first retry delay.
        await settle(0.3)
        self.assertEqual(sockets(self.broker()), [])

    async def test_permission_denials_are_remembered_by_the_client(self) -> None:
        c = self.local(account_user(A))
        await c.signed_in()
        with self.assertRaises(ConatError) as e:
            await c.publish("hub.secret", 1)
        self.assertEqual(e.exception.code, 403)
        assert self.hub.hub.conat is not None
        conn = next(c for c in self.hub.hub.conat.broker.connections.values() if c.user == account_user(A))
        before = dict(conn.stats["send"])
        with self.assertRaises(ConatError) as e:
            await c.publish("hub.secret", 2)
        self.assertEqual(e.exception.code, 403)
        self.assertEqual(conn.stats["send"], before)  # refused locally this time


class LocalTests(HubCase):
    async def test_in_process_and_socket_clients_see_each_other(self) -> None:
        local, remote = self.local(), self.client()
        await local.signed_in()
        await remote.signed_in()
        self.assertEqual(local.user, {"hub_id": "hub"})
        sub = await local.subscribe("mixed.>")
        self.assertEqual(await remote.publish("mixed.a.b", {"x": 1}), 1)
        self.assertEqual((await sub.next(30)).data, {"x": 1})
        await local.service("svc.local", lambda name, args, msg: [name, *args])
        self.assertEqual(await remote.call("svc.local", "hi", 1), ["hi", 1])
        await remote.service("svc.remote", lambda name, args, msg: name.upper())
        self.assertEqual(await local.call("svc.remote", "shout"), "SHOUT")

    async def test_in_process_delivery_is_never_reentrant(self) -> None:
        local = self.local()
        await local.signed_in()
        seen: list[Any] = []
        in_callback = [False]

        def cb(msg: Message) -> None:
            self.assertFalse(in_callback[0])
            in_callback[0] = True
            seen.append(msg.data)
            if msg.data < 5:
                local.publish_sync("loop", msg.data + 1)
            in_callback[0] = False

        await local.subscribe("loop", callback=cb)
        local.publish_sync("loop", 0)
        await until(lambda: len(seen) == 6, what="six deliveries")
        self.assertEqual(seen, [0, 1, 2, 3, 4, 5])

    async def test_in_process_users_are_checked_like_everyone(self) -> None:
        c = self.local(account_user(A))
        info = await c.signed_in()
        self.assertEqual(info["user"], {"account_id": A})
        with self.assertRaises(ConatError) as e:
            await c.subscribe(f"hub.account.{A}.api")
        self.assertEqual(e.exception.code, 403)
        sub = await c.subscribe(f"account.{A}.mine")
        self.assertEqual(await c.publish(f"account.{A}.mine", 1), 1)
        self.assertEqual((await sub.next(30)).data, 1)
