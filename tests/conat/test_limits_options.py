"""--conat-max-subscriptions-per-client / --conat-max-subscriptions-per-hub (issue 14.5)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.client import Client, ConatError, connect
from cocalc_hub.settings import SettingsError
from tests.support import RunningHub, settings_for, start_hub, until
from tests.web.api_client import ApiClient

LIMIT_MESSAGE = ("there is a limit of at most {limit} subscriptions and you currently have {limit} subscriptions "
                 "-- subscription to '{subject}' denied")


class OptionTests(unittest.TestCase):
    def test_defaults_are_upstreams(self) -> None:
        s = settings_for(self.mktemp())
        self.assertEqual((s.conat_max_subscriptions_per_client, s.conat_max_subscriptions_per_hub), (500, 15000))
        s = settings_for(self.mktemp(), {"conat-max-subscriptions-per-client": "7",
                                         "conat-max-subscriptions-per-hub": "70"})
        self.assertEqual((s.conat_max_subscriptions_per_client, s.conat_max_subscriptions_per_hub), (7, 70))

    def test_only_positive_whole_numbers(self) -> None:
        for name in ("conat-max-subscriptions-per-client", "conat-max-subscriptions-per-hub"):
            for bad in ("0", "-1", "x", "1.5", "", "99999999999"):
                with self.assertRaises(SettingsError) as e:
                    settings_for(self.mktemp(), {name: bad})
                self.assertEqual(e.exception.setting, f"--{name}")
                self.assertIn("must be a whole number between 1 and", str(e.exception))


class HubLimitTests(unittest.TestCase):
    timeout = 60

    def connection_of(self, hub: RunningHub, hub_user: bool) -> Any:
        assert hub.hub.conat is not None
        found = [c for c in hub.hub.conat.broker.connections.values()
                 if c.user is not None and c.user.is_hub == hub_user and c.stats.get("address") != "in-process"]
        self.assertEqual(len(found), 1)
        return found[0]

    async def fill(self, hub: RunningHub, client: Client, hub_user: bool, limit: int, prefix: str) -> None:
        """Subscribe until refused: the (limit+1)-th subscription (the inbox counts) is a 429."""
        await client.signed_in()
        conn = self.connection_of(hub, hub_user)
        await until(lambda: len(conn.subs) == 1)  # the inbox
        for i in range(limit - 1):
            await client.subscribe(f"{prefix}.s{i}")
        self.assertEqual(len(conn.subs), limit)
        subject = f"{prefix}.one-more"
        with self.assertRaises(ConatError) as e:
            await client.subscribe(subject)
        self.assertEqual(e.exception.code, 429)
        self.assertIn(LIMIT_MESSAGE.format(limit=limit, subject=subject), str(e.exception))
        self.assertEqual(len(conn.subs), limit)

    async def test_a_hub_started_with_small_limits_refuses_one_more(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp(), {"conat-max-subscriptions-per-client": "3",
                                                           "conat-max-subscriptions-per-hub": "5"}))
        api = ApiClient(hub.base, HTTPConnectionPool(reactor, persistent=False))
        account_id = (await api.sign_up("limits@example.com")).json["account_id"]
        account = connect(reactor, hub.root, cookies={"remember_me": api.cookies["remember_me"]}, reconnect=False)
        self.addCleanup(account.close)
        await self.fill(hub, account, False, 3, f"account.{account_id}")
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        as_hub = connect(reactor, hub.root, cookies={"hub_password": password}, reconnect=False)
        self.addCleanup(as_hub.close)
        await self.fill(hub, as_hub, True, 5, "anything")
