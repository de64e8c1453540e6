"""Attacker: a conat client that answers some of the victim's requests and wants to answer
others too. Upstream lets anyone publish to any ``_INBOX.…``; here a client may publish to
another's inbox only on the reply subject of a request delivered to it. And since a
responder sees the requester's reply subject, hence its inbox, the hub's clients also put
at least 128 random bits into the inbox and as many into every reply id.
"""

from __future__ import annotations

import math
import string
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import connect
from cocalc_hub.conat.connection import MAX_REPLIES, REPLY_IDLE, REPLY_TTL, Connection
from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.permissions import PUB, account_user
from tests.support import settings_for, start_hub, until
from tests.web.api_client import ApiClient

ALPHABETS = [set(string.hexdigits.lower()), set(string.ascii_letters + string.digits),
             set(string.ascii_letters + string.digits + "-_")]


def bits(token: str) -> float:
    """Entropy of a random token drawn from the smallest usual alphabet that holds it."""
    for alphabet in ALPHABETS:
        if set(token) <= alphabet:
            return len(token) * math.log2(len(alphabet))
    return len(token) * 8.0


class InboxSpoofingTests(unittest.TestCase):
    timeout = 60

    async def setup_pair(self) -> tuple[Any, Any, str, str, list[str]]:
        """victim (alice) and attacker (mallory), collaborators on one project, mallory serving
        ``project.<id>.helper`` and recording the reply subjects; alice has called it 20 times."""
        hub = start_hub(self, settings_for(self.mktemp()))
        pool = HTTPConnectionPool(reactor, persistent=False)
        victim, attacker = ApiClient(hub.base, pool), ApiClient(hub.base, pool)
        victim_id = (await victim.sign_up("victim@example.com")).json["account_id"]
        await attacker.sign_up("attacker@example.com")
        project = (await victim.post("projects/create", {"title": "shared"})).json["project_id"]
        r = await victim.post("projects/collaborators/add", {"project_id": project, "email": "attacker@example.com"})
        self.assertEqual(r.code, 200)

        def client(c: ApiClient) -> Any:
            conat = connect(reactor, hub.base, cookies={"remember_me": c.cookies["remember_me"]})
            self.addCleanup(conat.close)
            return conat

        mallory, alice = client(attacker), client(victim)
        await mallory.signed_in()
        await alice.signed_in()
        seen: list[str] = []

        def answer(name: str, args: Any, msg: Any) -> str:
            seen.append(msg.headers["CN-Reply"])
            return "ok"

        await mallory.service(f"project.{project}.helper", answer)
        for _ in range(20):
            self.assertEqual(await alice.call(f"project.{project}.helper", "call"), "ok")
        await until(lambda: len(seen) == 20, what="the attacker's service to see 20 requests")
        return alice, mallory, project, victim_id, seen

    async def test_reply_subjects_cannot_be_guessed_by_a_responder(self) -> None:
        _, _, _, victim_id, seen = await self.setup_pair()
        prefix = f"_INBOX.account-{victim_id}."
        inboxes = set()
        for subject in seen:
            self.assertTrue(subject.startswith(prefix), subject)
            inbox, reply = subject[len(prefix):].split(".")
            inboxes.add(inbox)
            self.assertGreaterEqual(bits(inbox), 128, f"inbox {inbox!r} is guessable")
            self.assertGreaterEqual(bits(reply), 128, f"reply id {reply!r} is guessable")
        self.assertEqual(len(inboxes), 1)
        self.assertEqual(len(set(seen)), 20)


    async def test_spoofed_reply_is_refused(self) -> None:
        alice, mallory, project, victim_id, seen = await self.setup_pair()
        inbox = seen[0].rsplit(".", 1)[0]
        # A reply to a request nobody gave the attacker is refused, even at the right inbox.
        for spoof in (f"{inbox}.{'0' * 32}", f"_INBOX.account-{victim_id}.x.y"):
            with self.assertRaises(ConatError) as refused:
                await mallory.publish(spoof, "forged")
            self.assertEqual(refused.exception.code, 403, spoof)
        # Answering what it was asked still works (the service above did, 20 times).
        self.assertEqual(await alice.call(f"project.{project}.helper", "call"), "ok")

    async def test_request_to_oneself_does_not_open_anothers_inbox(self) -> None:
        """Mallory sends herself a "request" naming the victim's inbox as its reply subject,
        receives it, and would then be "answering" it: the broker only takes a reply subject
        under the publisher's own inbox as answerable."""
        alice, mallory, project, victim_id, seen = await self.setup_pair()
        inbox = seen[0].rsplit(".", 1)[0]
        target = f"{inbox}.{'7' * 32}"
        own = f"{mallory.inbox}.selfrequest"  # her client's inbox subscription receives it
        count = await mallory.publish(own, "to myself", headers={"CN-Reply": target})
        self.assertEqual(count, 1)  # delivered to her own connection
        with self.assertRaises(ConatError) as refused:
            await mallory.publish(target, "forged")
        self.assertEqual(refused.exception.code, 403)
        # Genuine requests are still answered.
        self.assertEqual(await alice.call(f"project.{project}.helper", "call"), "ok")


class _Bare(Connection):
    pass


class ReplyLifetimeTests(unittest.TestCase):
    """A responder keeps the right to answer a request only while the answer may still be
    awaited: not for ever, and not for an unbounded number of requests."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.conn = _Bare(Broker(self.clock), "mallory")
        self.conn.user = account_user("a" * 8 + "-0000-4000-8000-" + "0" * 12)
        self.victim = "_INBOX.account-" + "b" * 8 + "-0000-4000-8000-" + "0" * 12 + ".inbox"

    def test_an_answered_request_lapses(self) -> None:
        reply = f"{self.victim}.r1"
        self.conn.may_answer(reply)
        self.assertIs(self.conn.allowed(reply, PUB), True)
        self.clock.advance(REPLY_IDLE + 1)
        self.assertIs(self.conn.allowed(reply, PUB), False)

    def test_an_unanswered_request_lapses(self) -> None:
        reply = f"{self.victim}.r2"
        self.conn.may_answer(reply)
        self.clock.advance(REPLY_TTL + 1)
        self.assertIs(self.conn.allowed(reply, PUB), False)

    def test_a_stream_of_replies_keeps_its_subject(self) -> None:
        reply = f"{self.victim}.r3"
        self.conn.may_answer(reply)
        for _ in range(3 * int(REPLY_TTL / REPLY_IDLE)):
            self.clock.advance(REPLY_IDLE - 1)
            self.assertIs(self.conn.allowed(reply, PUB), True)

    def test_memory_is_bounded(self) -> None:
        for i in range(3 * MAX_REPLIES):
            self.conn.may_answer(f"{self.victim}.flood{i}")
        self.assertLessEqual(len(self.conn.replies), MAX_REPLIES)
        self.assertLessEqual(MAX_REPLIES, 2000)
