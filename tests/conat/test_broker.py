"""The broker on its own: connections are fakes, time is a Clock, auth is controlled."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from cocalc_hub.conat.broker import Broker, BrokerConfig
from cocalc_hub.conat.connection import BrokerSubscription, Connection, Routed
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.permissions import HUB_USER, Permissions, User, account_user

A = "aaaaaaaa-0000-4000-8000-000000000001"
B = "bbbbbbbb-0000-4000-8000-000000000002"
P = "cccccccc-0000-4000-8000-000000000003"


class Fake(Connection):
    def __init__(self, broker: Broker, cid: str) -> None:
        super().__init__(broker, cid)
        self.events: list[tuple[str, Any, Any]] = []
        self.deliveries: list[tuple[str, str, list[Any]]] = []
        self.disconnected = False

    def deliver(self, sub: BrokerSubscription, msg: Routed) -> None:
        self.deliveries.append((sub.pattern, msg.subject, msg.data()))

    def emit(self, event: str, payload: Any, callback: Any = None) -> None:
        self.events.append((event, payload, callback))

    def disconnect(self) -> None:
        self.disconnected = True
        self.broker.detach(self)

    def named(self, event: str) -> list[Any]:
        return [payload for name, payload, _ in self.events if name == event]


class Acks:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any = None, *rest: Any) -> None:
        self.values.append(value)


class BrokerCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.members: dict[tuple[str, str], Deferred[bool]] = {}
        self.permissions = Permissions(self.is_member, self.clock.seconds)
        self.users: dict[str, Any] = {}
        self.broker = Broker(self.clock, authenticate=self.authenticate, permissions=self.permissions,
                             config=BrokerConfig(address="http://hub.test"))
        self.n = 0

    def is_member(self, project_id: str, account_id: str) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.members[(project_id, account_id)] = d
        return d

    def authenticate(self, credentials: Any) -> Any:
        result = self.users[credentials]
        if isinstance(result, Deferred):
            return result

        async def done() -> Any:
            return result

        return done()

    def connect(self, user: User | ConatError | Deferred[Any] = HUB_USER) -> Fake:
        self.n += 1
        key = f"cred{self.n}"
        self.users[key] = user
        conn = Fake(self.broker, f"c{self.n}")
        self.broker.attach(conn, key)
        return conn

    def sub(self, conn: Fake, subject: str, queue: str | None = None) -> Any:
        ack = Acks()
        conn.incoming("subscribe", [{"subject": subject, "queue": queue or f"q{self.n}-{subject}"}], ack)
        return ack.values[-1] if ack.values else None

    def pub(self, conn: Fake, subject: str, raw: bytes = b"x", **kw: Any) -> Any:
        ack = Acks()
        data = [subject, kw.get("mid", "m1"), kw.get("seq", 0), kw.get("done", 1), 0, raw]
        if "headers" in kw:
            data.append(kw["headers"])
        conn.incoming("publish", [data], ack)
        return ack.values[-1] if ack.values else None


class SignInTests(BrokerCase):
    def test_info_is_sent_with_an_ack_and_retried_until_acked(self) -> None:
        conn = self.connect(account_user(A))
        (event, payload, callback) = conn.events[0]
        self.assertEqual((event, payload), ("info", {"max_payload": 8000000, "id": "0", "user": {"account_id": A}}))
        self.assertIsNotNone(callback)
        self.clock.advance(7.5)       # no ack within 7.5 s: wait 6.5 s, then resend
        self.clock.advance(6.4)
        self.assertEqual(len(conn.named("info")), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(conn.named("info")), 2)
        conn.events[-1][2]([])        # acked: no more resends
        self.clock.advance(300)
        self.assertEqual(len(conn.named("info")), 2)

    def test_info_resends_give_up_after_two_minutes(self) -> None:
        conn = self.connect(account_user(A))
        self.clock.pump([1.0] * 400)
        sent = len(conn.named("info"))
        self.assertGreater(sent, 3)
        self.assertLess(sent, 10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_auth_failure_sends_info_without_ack_then_disconnects_and_leaves_nothing(self) -> None:
        conn = self.connect(ConatError("invalid hub password"))
        self.assertEqual(conn.events, [("info", {"max_payload": 8000000, "id": "0",
                                                 "user": {"error": "Error: invalid hub password"}}, None)])
        conn.incoming("subscribe", [{"subject": ">", "queue": "q"}], Acks())
        self.assertFalse(conn.disconnected)
        self.clock.advance(0.025)
        self.assertTrue(conn.disconnected)
        self.assertEqual((self.broker.connections, self.broker.per_user, self.broker.total, len(self.broker.index)),
                         ({}, {}, 0, 0))

    def test_packets_before_sign_in_wait_and_are_never_judged_as_anonymous(self) -> None:
        pending: Deferred[Any] = Deferred()
        other = self.connect()
        self.sub(other, f"account.{A}.x")
        conn = self.connect(pending)
        ack1, ack2 = Acks(), Acks()
        conn.incoming("publish", [[f"account.{A}.x", "m", 0, 1, 0, b"1"]], ack1)
        conn.incoming("publish", [[f"account.{A}.x", "m2", 0, 1, 0, b"2"]], ack2)
        self.assertEqual((ack1.values, conn.named("permission"), other.deliveries), ([], [], []))
        pending.callback(account_user(A))
        self.assertEqual((ack1.values, ack2.values), ([{"count": 1}], [{"count": 1}]))
        self.assertEqual([d[2][4] for d in other.deliveries], [b"1", b"2"])

    def test_queued_packets_are_dropped_when_sign_in_fails(self) -> None:
        pending: Deferred[Any] = Deferred()
        listener = self.connect()
        self.sub(listener, ">")
        conn = self.connect(pending)
        ack = Acks()
        conn.incoming("publish", [["a.b", "m", 0, 1, 0, b"1"]], ack)
        pending.callback(ConatError("nope"))
        self.assertEqual((ack.values, listener.deliveries, conn.named("permission")), ([], [], []))

    def test_disconnect_while_signing_in_leaves_nothing(self) -> None:
        pending: Deferred[Any] = Deferred()
        conn = self.connect(pending)
        self.broker.detach(conn)
        pending.callback(account_user(A))
        self.assertEqual((self.broker.connections, self.broker.per_user, conn.events), ({}, {}, []))

    def test_connection_limits(self) -> None:
        self.broker.config.max_connections_per_user = 2
        self.broker.config.max_connections = 3
        a1, a2, a3 = (self.connect(account_user(A)) for _ in range(3))
        self.assertEqual(a3.events[0][1]["user"], {
            "error": "Error: There is a per user limit of 2 connections to CoCalc.   Please close browser tabs "
                     "or files or come back later.", "code": 429})
        self.connect(account_user(B))
        b2 = self.connect(account_user(B))
        self.assertEqual(b2.events[0][1]["user"]["code"], 429)
        self.assertIn("global limit of 3 connections", b2.events[0][1]["user"]["error"])
        self.clock.advance(1)
        a1.disconnect()
        self.assertEqual(self.broker.total, 2)
        self.assertNotIn("error", self.connect(account_user(A)).events[0][1]["user"])


class RoutingTests(BrokerCase):
    def test_count_is_one_per_pattern_and_queue_group_but_not_for_the_silent_gt(self) -> None:
        pub = self.connect()
        s1, s2, s3, s4 = self.connect(), self.connect(), self.connect(), self.connect()
        self.sub(s1, "a.b")
        self.sub(s2, "a.*")
        self.sub(s3, ">")
        self.sub(s4, "a.>")
        self.assertEqual(self.pub(pub, "a.b", headers={"h": 1}), {"count": 3})
        for conn, pattern in ((s1, "a.b"), (s2, "a.*"), (s3, ">"), (s4, "a.>")):
            self.assertEqual(conn.deliveries, [(pattern, "a.b", ["m1", 0, 1, 0, b"x", {"h": 1}])])
        self.assertEqual(self.pub(pub, "zzz"), {"count": 0})   # only ">" hears it
        self.assertEqual(len(s3.deliveries), 2)

    def test_one_connection_matching_twice_gets_two_events(self) -> None:
        pub, sub = self.connect(), self.connect()
        self.sub(sub, "x.*")
        self.sub(sub, "x.y")
        self.assertEqual(self.pub(pub, "x.y"), {"count": 2})
        self.assertEqual(sorted(d[0] for d in sub.deliveries), ["x.*", "x.y"])

    def test_queue_group_members_share_messages_uniformly(self) -> None:
        pub = self.connect()
        members = [self.connect() for _ in range(3)]
        for m in members:
            self.sub(m, "svc", queue="0")
        loner = self.connect()
        self.sub(loner, "svc", queue="other")
        counts = [self.pub(pub, "svc", mid=f"m{i}")["count"] for i in range(3000)]
        self.assertEqual(set(counts), {2})
        got = [len(m.deliveries) for m in members]
        self.assertEqual(sum(got), 3000)
        self.assertTrue(all(800 < n < 1200 for n in got), got)
        self.assertEqual(len(loner.deliveries), 3000)

    def test_chunks_of_one_message_stay_with_one_queue_member(self) -> None:
        pub = self.connect()
        members = [self.connect() for _ in range(5)]
        for m in members:
            self.sub(m, "svc", queue="0")
        for i in range(50):
            for seq in range(4):
                self.pub(pub, "svc", mid=f"msg{i}", seq=seq, done=int(seq == 3))
        for m in members:
            by_message = Counter(d[2][0] for d in m.deliveries)
            self.assertTrue(all(n == 4 for n in by_message.values()), by_message)
        self.assertEqual(pub.sticky, {})

    def test_cluster_targets_from_a_client_are_ignored(self) -> None:
        pub, victim = self.connect(), self.connect()
        self.sub(victim, "secret.x")
        ack = Acks()
        pub.incoming("publish", [["other", "m", 0, 1, 0, b"x", None, [{"pattern": "secret.x", "target": "c3"}]]], ack)
        self.assertEqual((ack.values, victim.deliveries), ([{"count": 0}], []))

    def test_headers_are_any_json_value_and_reach_subscribers_unchanged(self) -> None:
        pub, sub = self.connect(), self.connect()
        self.sub(sub, "a.b")
        values: list[Any] = ["x", 7, [1, 2], True, False, 0, 1.5, {"CN-Reply": 5}, {"a": {"b": [None]}}]
        for headers in values:
            self.assertEqual(self.pub(pub, "a.b", headers=headers), {"count": 1}, headers)
        self.assertEqual([d[2][5] for d in sub.deliveries], values)

    def test_headers_that_cannot_be_json_get_an_error_and_are_counted(self) -> None:
        pub, sub = self.connect(), self.connect()
        self.sub(sub, "a.b")
        ack = Acks()
        pub.incoming("publish", [["a.b", "m", 0, 1, 0, b"x", float("nan")]], ack)
        self.assertEqual(ack.values, [{"error": "Error: invalid message headers"}])
        pub.incoming("publish", [["a.b", "m", 0, 1, 0, b"x", float("inf")]], None)  # no ack: counted, logged
        self.assertEqual((sub.deliveries, self.broker.invalid_messages), ([], 2))

    def test_invalid_publishes(self) -> None:
        pub = self.connect()
        for data in (None, "a.b", ["a.b", "m", 0, 1, 0], ["a.b", "m", 0, 1, 0, "not bytes"],
                     ["a.b", "m", -1, 1, 0, b"x"]):
            ack = Acks()
            pub.incoming("publish", [data], ack)
            self.assertEqual(ack.values, [{"error": "Error: invalid message"}], data)
        for subject in ("a.*", "a.b*c", "ab>", "a.>", "a..b", "", 5):
            ack = Acks()
            pub.incoming("publish", [[subject, "m", 0, 1, 0, b"x"]], ack)
            self.assertEqual(ack.values, [{"error": "Error: invalid subject"}], subject)

    def test_stats_and_cluster(self) -> None:
        conn = self.connect()
        conn.incoming("stats", [{"recv0": {"messages": 3, "bytes": 40}}], None)
        self.pub(conn, "a", raw=b"12345")
        self.pub(conn, "a", raw=b"123", done=0)
        self.assertEqual(conn.stats["recv"], {"messages": 3, "bytes": 40})
        self.assertEqual(conn.stats["send"], {"messages": 1, "bytes": 8})
        ack = Acks()
        conn.incoming("cluster", [], ack)
        self.assertEqual(ack.values, [["http://hub.test"]])
        stats = self.broker.connection_stats()["0"][conn.id]
        self.assertEqual(stats["user"], {"hub_id": "hub"})


class SubscriptionTests(BrokerCase):
    def test_subscribe_answers(self) -> None:
        conn = self.connect()
        self.assertEqual(self.sub(conn, "a.b"), {"status": "added"})
        self.assertEqual(self.sub(conn, "a.b", queue="other"), {"status": "already-added"})
        ack = Acks()
        conn.incoming("subscribe", [{"subject": "c", "queue": 5}], ack)
        conn.incoming("subscribe", [{"subject": "a..b", "queue": "q"}], ack)
        conn.incoming("subscribe", [{"subject": "connect", "queue": "q"}], ack)
        conn.incoming("subscribe", [[{"subject": "x", "queue": "q"}, {"subject": "a.b", "queue": "q"}, "junk"]], ack)
        self.assertEqual(ack.values[:2], [{"error": "Error: queue must be defined"},
                                          {"error": "Error: invalid subject"}])
        self.assertIn("reserved", ack.values[2]["error"])
        self.assertEqual(ack.values[3], [{"status": "added"}, {"status": "already-added"},
                                         {"error": "Error: invalid subscription"}])
        conn.incoming("subscriptions", [None], ack)
        self.assertEqual(sorted(ack.values[4]), ["a.b", "x"])

    def test_unsubscribe_single_and_many(self) -> None:
        pub, conn = self.connect(), self.connect()
        for s in ("a", "b", "c"):
            self.sub(conn, s)
        ack = Acks()
        conn.incoming("unsubscribe", [{"subject": "a"}], ack)
        conn.incoming("unsubscribe", [[{"subject": "b"}, {"subject": "nope"}]], ack)
        self.assertEqual(ack.values, [None, [None, None]])
        self.assertEqual(list(conn.subs), ["c"])
        self.assertEqual([self.pub(pub, s)["count"] for s in ("a", "b", "c")], [0, 0, 1])

    def test_unsubscribing_a_longer_pattern_keeps_the_shorter_one_working(self) -> None:
        pub, conn = self.connect(), self.connect()
        self.sub(conn, "a")
        self.sub(conn, "a.b")
        conn.incoming("unsubscribe", [{"subject": "a.b"}], None)
        self.assertEqual(self.pub(pub, "a"), {"count": 1})
        conn.incoming("unsubscribe", [{"subject": "a"}], None)
        self.assertEqual(len(self.broker.index), 0)

    def test_subscription_limits(self) -> None:
        client = self.connect(account_user(A))
        for i in range(499):
            self.assertEqual(self.sub(client, f"_INBOX.account-{A}.{i}"), {"status": "added"})
        self.assertEqual(self.sub(client, "public.last"), {"status": "added"})
        self.assertEqual(self.sub(client, "public.one-too-many"), {
            "error": "Error: there is a limit of at most 500 subscriptions and you currently have 500 subscriptions "
                     "-- subscription to 'public.one-too-many' denied", "code": 429})
        hub = self.connect()
        for i in range(15000):
            self.sub(hub, f"h.{i}")
        self.assertEqual(self.sub(hub, "h.more")["code"], 429)

    def test_disconnect_removes_every_subscription(self) -> None:
        pub, conn = self.connect(), self.connect()
        for s in ("a", "a.*", ">", "q"):
            self.sub(conn, s)
        conn.disconnect()
        self.assertEqual((len(self.broker.index), self.pub(pub, "a")), (0, {"count": 0}))


class PermissionTests(BrokerCase):
    def test_denied_publish_emits_permission_before_the_ack(self) -> None:
        conn = self.connect(account_user(A))
        order: list[str] = []
        conn.emit = lambda event, payload, callback=None: order.append(event)  # type: ignore[method-assign]
        ack = Acks()
        conn.incoming("publish", [[f"account.{B}.x", "m", 0, 1, 0, b"x"]], lambda v: (order.append("ack"), ack(v)))
        message = f"permission denied publishing to 'account.{B}.x' from {{\"account_id\":\"{A}\"}}"
        self.assertEqual(order, ["permission", "ack"])
        self.assertEqual(ack.values, [{"error": f"Error: {message}", "code": 403}])

    def test_denied_subscribe(self) -> None:
        conn = self.connect(account_user(A))
        result = self.sub(conn, f"hub.account.{A}.api")
        self.assertEqual(result["code"], 403)
        self.assertEqual(conn.named("permission"), [{
            "message": f"permission denied subscribing to 'hub.account.{A}.api' from {{\"account_id\":\"{A}\"}}",
            "subject": f"hub.account.{A}.api", "type": "sub"}])

    def test_membership_checks_hold_later_packets_in_order(self) -> None:
        conn = self.connect(account_user(A))
        listener = self.connect()
        self.sub(listener, ">")
        first, second = Acks(), Acks()
        conn.incoming("publish", [[f"project.{P}.x", "m1", 0, 1, 0, b"1"]], first)
        conn.incoming("publish", [[f"account.{A}.y", "m2", 0, 1, 0, b"2"]], second)
        self.assertEqual((first.values, second.values, listener.deliveries), ([], [], []))
        self.members[(P, A)].callback(True)
        self.assertEqual([d[1] for d in listener.deliveries], [f"project.{P}.x", f"account.{A}.y"])
        self.assertEqual((first.values, second.values), ([{"count": 0}], [{"count": 0}]))
        self.pub(conn, f"project.{P}.z")             # cached now: no new question
        self.assertEqual(list(self.members), [(P, A)])

    def test_wait_for_interest(self) -> None:
        conn, other = self.connect(), self.connect()
        self.sub(other, ">")
        ack = Acks()
        conn.incoming("wait-for-interest", [{"subject": "a.b", "timeout": 1000}], ack)
        self.assertEqual(ack.values, [True])          # the silent ">" counts as interest here
        other.disconnect()
        conn.incoming("wait-for-interest", [{"subject": "a.b", "timeout": 0}], ack)
        conn.incoming("wait-for-interest", [{"subject": "a.b", "timeout": 5000}], ack)
        conn.incoming("wait-for-interest", [{"subject": "c.d", "timeout": 5000}], ack)
        self.assertEqual(ack.values, [True, False])
        late = self.connect()
        self.sub(late, "a.*")
        self.assertEqual(ack.values, [True, False, True])
        self.clock.advance(10)                        # the c.d waiter expires without an answer
        self.assertEqual(ack.values, [True, False, True])
        self.assertEqual(self.broker.waiters, set())
        conn.incoming("wait-for-interest", [{"subject": "a.*", "timeout": 5}], ack)
        self.assertEqual(ack.values[-1], {"error": "invalid subject"})

    def test_wait_for_interest_is_authorised_and_dropped_on_disconnect(self) -> None:
        conn = self.connect(account_user(A))
        ack = Acks()
        conn.incoming("wait-for-interest", [{"subject": f"account.{B}.x", "timeout": 5000}], ack)
        self.assertEqual(ack.values, [{"error": f"permission denied waiting for interest in 'account.{B}.x' from "
                                                f"{{\"account_id\":\"{A}\"}}", "code": 403}])
        conn.incoming("wait-for-interest", [{"subject": f"account.{A}.x", "timeout": 5000}], ack)
        self.assertEqual(len(self.broker.waiters), 1)
        conn.disconnect()
        self.assertEqual((self.broker.waiters, self.clock.getDelayedCalls()), (set(), []))

    def test_revoking_a_connection(self) -> None:
        conn = self.connect(account_user(A))
        self.sub(conn, f"account.{A}.x")
        self.broker.revoke(conn, ConatError("remember me cookie expired"))
        self.assertEqual(conn.events[-1][1]["user"], {"error": "Error: remember me cookie expired"})
        self.assertEqual(len(self.broker.index), 0)
        self.clock.advance(0.03)
        self.assertTrue(conn.disconnected)
