"""A stream of revocations (anyone signing out, over and over, bumps the generation every
decision checks) must not keep the proxy's or the broker's sign-in busy forever: each
decides again at most a few times, then answers without caching what it decided, and the
answer is re-checked once the channel is open."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial import unittest

from cocalc_hub.auth.caller import Caller
from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.bus.gateway import ConatAuth
from cocalc_hub.conat.transport.socket import Handshake
from cocalc_hub.proxy.access import ProxyAccess

PROJECT = "00000000-0000-4000-8000-000000000001"
ENOUGH = 20
"""Identifications after which the loop is taken to be endless."""


class Storm:
    """An authenticator during which a revocation arrives while every identification runs."""

    def __init__(self) -> None:
        self.calls = 0
        self.generation = 0
        self.revoked: list[Any] = []
        """Also told (forget_all) of each revocation, like the proxy's decision cache."""

    async def identify(self, cookies: Any, authorization: Any, schemes: Any) -> Caller:
        self.calls += 1
        if self.calls > ENOUGH:
            raise RuntimeError(f"identified {self.calls} times: decides again without end")
        self.generation += 1
        for forget in self.revoked:
            forget()
        return Caller(kind="account", account_id="11111111-1111-4111-8111-111111111111", is_admin=True)


class Members:
    async def project_group(self, project_id: str, account_id: str) -> tuple[bool, str | None]:
        return True, "owner"


class RevocationStormTests(unittest.TestCase):
    async def test_a_proxy_decision_is_not_retried_without_end(self) -> None:
        storm = Storm()
        access = ProxyAccess(storm, Members(), CookieNames.for_base_path("/"), task.Clock())  # type: ignore[arg-type]
        storm.revoked.append(access.forget_all)
        decision = await access.authorize(b"remember_me=x", None, PROJECT)
        self.assertLessEqual(storm.calls, 3)
        self.assertEqual(decision.status, 0)
        self.assertFalse(access.current(decision), "the guard re-checks a channel opened on it")
        self.assertIsNone(access.cached(b"remember_me=x", None, PROJECT), "not cached")

    async def test_a_conat_sign_in_is_not_retried_without_end(self) -> None:
        storm = Storm()
        names = CookieNames.for_base_path("/")
        authenticate = ConatAuth(storm, names)  # type: ignore[arg-type]
        user = await authenticate(Handshake(cookies={names.remember_me: "x"}, headers={b"cookie": b"remember_me=x"}))
        self.assertLessEqual(storm.calls, 3)
        caller = getattr(user, "caller", None)
        self.assertTrue(caller is not None and caller.stale, "re-checked once signed in")
