"""upstream's isAllowed rules (spec §5.4) and the membership cache."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cocalc_hub.conat.permissions import (
    HUB_USER,
    OPEN_USER,
    PUB,
    SUB,
    SYSTEM_USER,
    Permissions,
    User,
    account_user,
    decide,
    is_uuid,
    project_user,
)

A = "0d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a60"  # an account
B = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"  # another account
P = "5c6d7e8f-1a2b-4c3d-8e4f-a1b2c3d4e5f6"  # a project
Q = "abcdef01-2345-4678-9abc-def012345678"  # another project
ACCOUNT = account_user(A)
ADMIN = account_user(A, admin=True)
PROJECT = project_user(P)
BOTH = (PUB, SUB)


class DecideTests(SynchronousTestCase):
    def assertDecides(self, user: User, subject: str, pub: bool | str, sub: bool | str) -> None:
        self.assertEqual((decide(user, subject, PUB), decide(user, subject, SUB)), (pub, sub), subject)

    def test_rule0_users_without_identity_are_denied(self) -> None:
        for user in (User("error"), User("account"), User("account", ""), User("project", None),
                     User("error", A), User("unknown", A, admin=True)):
            for subject in ("public.x", f"account.{A}.x", "_INBOX.x", f"project.{P}.x", "sys.x"):
                self.assertDecides(user, subject, False, False)

    def test_rule1_hubs_system_and_open_mode_allow_everything(self) -> None:
        for user in (HUB_USER, SYSTEM_USER, OPEN_USER):
            self.assertTrue(user.is_hub)
            for subject in (f"hub.account.{A}.api", "sys.conat.x", ">", f"_INBOX.account-{A}.x", "anything"):
                self.assertDecides(user, subject, True, True)
        self.assertFalse(ACCOUNT.is_hub)
        self.assertFalse(PROJECT.is_hub)
        self.assertEqual((HUB_USER.json, SYSTEM_USER.json, OPEN_USER.json, ACCOUNT.json, PROJECT.json),
                         ('{"hub_id":"hub"}', '{"hub_id":"system"}', "null", f'{{"account_id":"{A}"}}',
                          f'{{"project_id":"{P}"}}'))

    def test_rule3a_own_hub_api_subject_is_publish_only(self) -> None:
        self.assertDecides(ACCOUNT, f"hub.account.{A}.api", True, False)
        self.assertDecides(ACCOUNT, f"hub.account.{A}.a.b", True, False)
        self.assertDecides(PROJECT, f"hub.project.{P}.api", True, False)
        self.assertDecides(ACCOUNT, f"hub.account.{B}.api", False, False)
        self.assertDecides(ACCOUNT, f"hub.project.{A}.api", False, False)
        self.assertDecides(PROJECT, f"hub.project.{Q}.api", False, False)
        self.assertDecides(PROJECT, f"hub.account.{P}.api", False, False)
        self.assertDecides(ACCOUNT, f"hub.account.{A}", False, False)
        self.assertDecides(ACCOUNT, "hub.*.*.api", False, False)

    def test_rule3b_anyone_may_publish_to_any_inbox(self) -> None:
        for user in (ACCOUNT, PROJECT):
            self.assertDecides(user, f"_INBOX.account-{B}.k3.x", True, False)
            self.assertDecides(user, "_INBOX.whatever", True, False)
        self.assertDecides(PROJECT, f"_INBOX.project-{Q}.k3.x", True, False)
        # an account reaches a project's inbox through rule 5d (second token project-Q): membership decides
        self.assertDecides(ACCOUNT, f"_INBOX.project-{Q}.k3.x", True, Q)
        self.assertDecides(ACCOUNT, "_INBOX", False, False)
        self.assertDecides(ACCOUNT, "_inbox.x", False, False)

    def test_rule3c_subscribe_to_own_inbox_prefix(self) -> None:
        self.assertDecides(ACCOUNT, f"_INBOX.account-{A}.k3J9dQ2mXa.*", True, True)
        self.assertDecides(ACCOUNT, f"_INBOX.account-{A}", True, True)
        self.assertDecides(ACCOUNT, f"_INBOX.account-{A}x.y", True, True)  # a plain string prefix test
        self.assertDecides(PROJECT, f"_INBOX.project-{P}.k3.*", True, True)
        self.assertDecides(PROJECT, f"_INBOX.account-{P}.k3.*", True, False)
        self.assertDecides(ACCOUNT, f"_INBOX.project-{A}.k3.*", True, True)  # rule 5d with Q == A
        self.assertDecides(ACCOUNT, "_INBOX.>", True, False)

    def test_rule3d_public_is_subscribe_only(self) -> None:
        for user in (ACCOUNT, PROJECT):
            self.assertDecides(user, "public.news", False, True)
            self.assertDecides(user, "public.>", False, True)
            self.assertDecides(user, "public", False, False)
            self.assertDecides(user, "publicx.y", False, False)

    def test_rule4_project_subjects(self) -> None:
        for subject in (f"project.{P}.api", f"project.{P}.a.b", f"persist.project-{P}.x", f"foo.project-{P}.bar",
                        f"foo.project-{P}", f"x.project-{P}.>", f"project.{P}.>"):
            self.assertDecides(PROJECT, subject, True, True)
        for subject in (f"project.{Q}.api", f"persist.project-{Q}.x", f"project.{P}", f"project-{P}.x",
                        f"a.b.project-{P}", f"account.{P}.x", f"foo.account-{P}", "sys.conat.x", "foo.bar",
                        f"project.{P.upper()}.x", f"foo.project-{P}x.y", ">"):
            self.assertDecides(PROJECT, subject, False, False)

    def test_rule5ab_account_subjects(self) -> None:
        for subject in (f"account.{A}.api", f"account.{A}.a.b", f"persist.account-{A}.x", f"foo.account-{A}.bar",
                        f"foo.account-{A}"):
            self.assertDecides(ACCOUNT, subject, True, True)
        for subject in (f"account.{B}.api", f"persist.account-{B}.x", f"account.{A}", f"account-{A}.x",
                        f"a.b.account-{A}", f"foo.project-{A}x"):
            self.assertDecides(ACCOUNT, subject, False, False)

    def test_rule5c_sys_only_for_admins(self) -> None:
        for subject in ("sys.conat.node-0", "sys", "sys.>"):
            self.assertDecides(ADMIN, subject, True, True)
            self.assertDecides(ACCOUNT, subject, False, False)
        self.assertDecides(ADMIN, "foo.sys", False, False)
        self.assertDecides(ADMIN, "system.x", False, False)
        self.assertDecides(project_user(P), "sys.x", False, False)

    def test_rule5d_project_access_asks_membership(self) -> None:
        for subject in (f"project.{Q}.api", f"project.{Q}", f"persist.project-{Q}.x", f"foo.project-{Q}.bar",
                        f"project.{Q.upper()}.x", f"x.project-{Q.upper()}"):
            self.assertDecides(ACCOUNT, subject, Q, Q)
        self.assertDecides(ADMIN, f"project.{Q}.x", Q, Q)

    def test_rule5d_own_id_as_project_is_allowed(self) -> None:
        self.assertDecides(ACCOUNT, f"project.{A}.x", True, True)
        self.assertDecides(ACCOUNT, f"persist.project-{A.upper()}.x", True, True)

    def test_rule5d_only_real_uuids_count(self) -> None:
        bad = ["0d1e7f526a5e4c5b9c3a2f1d8e4b7a60", "0d1e7f52-6a5e4c5b-9c3a-2f1d-8e4b7a60",
               "0d1e7f5-26a5e-4c5b-9c3a-2f1d8e4b7a60", "0d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a6g",
               "0d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a6", "0d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a600", "",
               "٠d1e7f52-6a5e-4c5b-9c3a-2f1d8e4b7a60", "0d1e7f52_6a5e_4c5b_9c3a_2f1d8e4b7a60"]
        for q in bad:
            self.assertFalse(is_uuid(q), q)
            for subject in (f"project.{q}.x", f"persist.project-{q}.x"):
                self.assertDecides(ACCOUNT, subject, False, False)
        self.assertTrue(is_uuid(Q) and is_uuid(Q.upper()) and is_uuid("ABCDEF01-2345-4678-9abc-DEF012345678"))
        self.assertDecides(ACCOUNT, f"foo.{Q}.x", False, False)  # a bare uuid counts only after project.

    def test_rule5e_and_6_everything_else_is_denied(self) -> None:
        for subject in ("foo", "foo.bar", ">", "*.>", "account.*.x", f"x.y.account-{A}", "hub.api",
                        f"projects.{Q}.x", f"project.{Q}x.y"):
            self.assertDecides(ACCOUNT, subject, False, False)


def deferred(verdict: bool | Deferred[bool]) -> Deferred[bool]:
    assert isinstance(verdict, Deferred), verdict
    return verdict


class FakeDB:
    """is_member answered by hand through Deferreds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.pending: list[Deferred[bool]] = []

    async def is_member(self, project_id: str, account_id: str) -> bool:
        self.calls.append((project_id, account_id))
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return await d


class MembershipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.db = FakeDB()
        self.perms = Permissions(self.db.is_member, self.clock.seconds, ttl=5.0)

    def ask(self, subject: str = f"project.{Q}.x", kind: str = SUB, user: User = ACCOUNT) -> Any:
        return self.perms.allowed(user, subject, kind)

    def test_static_rules_answer_at_once(self) -> None:
        self.assertIs(self.ask(f"account.{A}.x"), True)
        self.assertIs(self.ask(f"account.{B}.x"), False)
        self.assertIs(self.ask(f"hub.account.{A}.api", PUB), True)
        self.assertIs(self.ask(f"project.{A}.x"), True)
        self.assertIs(self.ask(f"project.{Q}.x", user=HUB_USER), True)
        self.assertEqual(self.db.calls, [])

    def test_membership_is_asked_and_cached_until_ttl(self) -> None:
        d = self.ask(f"project.{Q.upper()}.x", PUB)
        self.assertIsInstance(d, Deferred)
        self.assertNoResult(d)
        self.assertEqual(self.db.calls, [(Q, A)])
        self.db.pending[0].callback(True)
        self.assertIs(self.successResultOf(d), True)
        self.assertIs(self.ask(f"persist.project-{Q}.y", SUB), True)
        self.clock.advance(4)
        self.assertIs(self.ask(), True)
        self.assertEqual(len(self.db.calls), 1)
        self.clock.advance(1)
        d2 = self.ask()
        self.assertEqual(self.db.calls, [(Q, A), (Q, A)])
        self.db.pending[1].callback(False)
        self.assertIs(self.successResultOf(d2), False)
        self.assertIs(self.ask(), False)
        self.assertEqual(len(self.db.calls), 2)

    def test_answers_are_per_project_and_account(self) -> None:
        d1 = self.ask(f"project.{Q}.x")
        d2 = self.ask(f"project.{P}.x")
        d3 = self.ask(f"project.{Q}.x", user=account_user(B))
        self.assertEqual(self.db.calls, [(Q, A), (P, A), (Q, B)])
        for pending, value in zip(self.db.pending, (True, False, False), strict=True):
            pending.callback(value)
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], [True, False, False])
        self.assertEqual((self.ask(f"project.{Q}.z"), self.ask(f"project.{P}.z")), (True, False))

    def test_concurrent_questions_share_one_lookup(self) -> None:
        d1 = self.ask(f"project.{Q}.x", PUB)
        d2 = self.ask(f"persist.project-{Q}.y", SUB)
        self.assertIsNot(d1, d2)
        self.assertEqual(self.db.calls, [(Q, A)])
        self.db.pending[0].callback(True)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (True, True))

    def test_errors_reach_every_waiter_and_are_not_cached(self) -> None:
        d1, d2 = self.ask(), self.ask()
        self.db.pending[0].errback(RuntimeError("database down"))
        for d in (d1, d2):
            self.assertEqual(str(self.failureResultOf(d, RuntimeError).value), "database down")
        d3 = self.ask()
        self.assertEqual(len(self.db.calls), 2)
        self.db.pending[1].callback(True)
        self.assertIs(self.successResultOf(d3), True)

    def test_synchronous_errors_from_is_member_propagate(self) -> None:
        async def broken(project_id: str, account_id: str) -> bool:
            raise ValueError(project_id)

        perms = Permissions(broken, self.clock.seconds)
        d = deferred(perms.allowed(ACCOUNT, f"project.{Q}.x", SUB))
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), Q)

    def test_forget_project_drops_answers_and_bumps_generation(self) -> None:
        d1, d2 = self.ask(f"project.{Q}.x"), self.ask(f"project.{P}.x")
        self.db.pending[0].callback(True)
        self.db.pending[1].callback(True)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (True, True))
        self.assertEqual(self.perms.generation, 0)
        self.perms.forget_project(Q)
        self.assertEqual(self.perms.generation, 1)
        self.assertIs(self.ask(f"project.{P}.x"), True)
        d3 = self.ask(f"project.{Q}.x")
        self.assertEqual(len(self.db.calls), 3)
        self.db.pending[2].callback(False)
        self.assertIs(self.successResultOf(d3), False)
        self.perms.forget_all()
        self.assertEqual(self.perms.generation, 2)
        self.assertIsInstance(self.ask(f"project.{P}.x"), Deferred)
        self.assertIsInstance(self.ask(f"project.{Q}.x"), Deferred)
        self.assertEqual(len(self.db.calls), 5)

    def test_lookup_finishing_after_forget_is_asked_again(self) -> None:
        d = self.ask()
        self.perms.forget_project(Q)
        self.db.pending[0].callback(True)  # read before the change: may be stale
        self.assertNoResult(d)
        self.assertEqual(len(self.db.calls), 2)
        self.db.pending[1].callback(False)
        self.assertIs(self.successResultOf(d), False)  # the answer after the change
        self.assertIs(self.ask(), False)
        self.assertEqual(len(self.db.calls), 2)

    def test_question_after_forget_does_not_join_an_older_lookup(self) -> None:
        old = self.ask()
        self.perms.forget_project(Q)
        new = self.ask()
        self.assertEqual(len(self.db.calls), 2)
        self.db.pending[0].callback(True)  # read before the change: stale, asked again
        self.assertNoResult(old)
        self.assertNoResult(new)
        self.assertEqual(len(self.db.calls), 2)  # (joining the lookup begun after the change)
        self.db.pending[1].callback(False)
        self.assertEqual((self.successResultOf(old), self.successResultOf(new)), (False, False))
        self.assertIs(self.ask(), False)
        self.assertEqual(len(self.db.calls), 2)

    def test_question_after_forget_all_does_not_join_an_older_lookup(self) -> None:
        old = self.ask()
        self.perms.forget_all()
        new = self.ask()
        self.assertEqual(len(self.db.calls), 2)
        self.db.pending[1].callback(False)
        self.db.pending[0].callback(True)  # stale: the question is answered from the newer lookup
        self.assertEqual((self.successResultOf(old), self.successResultOf(new)), (False, False))
        self.assertIs(self.ask(), False)

    def test_forget_other_project_keeps_lookup_shared(self) -> None:
        d1 = self.ask()
        self.perms.forget_project(P)
        d2 = self.ask()
        self.assertEqual(len(self.db.calls), 1)
        self.db.pending[0].callback(True)
        # the generation moved on meanwhile (for any project): asked again, once for both
        self.assertEqual(len(self.db.calls), 2)
        self.db.pending[1].callback(True)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (True, True))
        self.assertIs(self.ask(), True)
        self.assertEqual(len(self.db.calls), 2)

    def test_without_a_database_nobody_is_a_member(self) -> None:
        perms = Permissions(None, self.clock.seconds)
        self.assertIs(self.successResultOf(deferred(perms.allowed(ACCOUNT, f"project.{Q}.x", SUB))), False)
        self.assertIs(perms.allowed(ACCOUNT, f"project.{Q}.x", SUB), False)
        self.assertIs(perms.allowed(ACCOUNT, f"project.{A}.x", SUB), True)

    def test_cache_size_bound(self) -> None:
        perms = Permissions(self.db.is_member, self.clock.seconds, size=2)
        for i, project in enumerate((P, Q)):
            d = deferred(perms.allowed(ACCOUNT, f"project.{project}.x", SUB))
            self.db.pending[i].callback(True)
            self.successResultOf(d)
        self.assertIs(perms.allowed(ACCOUNT, f"project.{P}.x", SUB), True)
        third = "33333333-2222-4333-8444-555555555555"
        d = deferred(perms.allowed(ACCOUNT, f"project.{third}.x", SUB))
        self.db.pending[2].callback(True)
        self.assertIs(self.successResultOf(d), True)
        self.assertIsInstance(perms.allowed(ACCOUNT, f"project.{P}.x", SUB), Deferred)
        self.assertIs(perms.allowed(ACCOUNT, f"project.{third}.x", SUB), True)
