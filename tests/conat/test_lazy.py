"""LazyClient: one conat client, replaced when it is no good any more."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from cocalc_hub.conat.broker import Broker
from cocalc_hub.conat.client import Client
from cocalc_hub.conat.lazy import LazyClient
from cocalc_hub.conat.local import LocalTransport
from cocalc_hub.conat.permissions import HUB_USER


class LazyClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.broker = Broker(reactor)
        self.made: list[Client] = []
        self.drops = 0

        def factory() -> Client:
            c = Client(reactor, LocalTransport(self.broker, HUB_USER))
            self.addCleanup(c.close)
            self.made.append(c)
            return c

        def dropped() -> None:
            self.drops += 1

        self.lazy = LazyClient(factory, on_drop=dropped)

    def test_made_on_first_use_and_kept(self) -> None:
        self.assertEqual(self.made, [])
        first = self.lazy.get()
        self.assertIs(self.lazy.get(), first)
        self.assertEqual((len(self.made), self.drops), (1, 1))  # the first get drops "nothing"

    def test_a_closed_client_is_replaced(self) -> None:
        first = self.lazy.get()
        first.close()
        second = self.lazy.get()
        self.assertIsNot(second, first)
        self.assertEqual(self.drops, 2)

    def test_a_disconnected_client_is_dropped_and_closed(self) -> None:
        first = self.lazy.get()
        first._notify("disconnected", "io server disconnect")
        self.assertTrue(first.closed)
        self.assertIsNone(self.lazy.client)
        self.assertIsNot(self.lazy.get(), first)

    def test_drop_closes_and_tells(self) -> None:
        first = self.lazy.get()
        self.lazy.drop()
        self.assertTrue(first.closed)
        self.assertIsNone(self.lazy.client)
        self.assertEqual(self.drops, 2)
