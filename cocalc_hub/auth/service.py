"""Assembles the auth parts from settings and runs their housekeeping as a service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cocalc_hub.auth.accounts import Accounts, SiteSettings
from cocalc_hub.auth.caller import Authenticator
from cocalc_hub.auth.cookies import CookieNames
from cocalc_hub.auth.csrf import Csrf
from cocalc_hub.auth.passwords import Passwords
from cocalc_hub.auth.secrets import read_or_create
from cocalc_hub.db.store import Store
from cocalc_hub.reactors import IReactorTimeThreads
from cocalc_hub.settings import Settings

log = Logger()

CLEANUP_INTERVAL = 3600.0


@dataclass
class AuthParts:
    names: CookieNames
    passwords: Passwords
    auth: Authenticator
    accounts: Accounts
    csrf: Csrf


def build_auth(settings: Settings, store: Store, reactor: IReactorTimeThreads, *,
               password_cost: dict[str, int] | None = None) -> AuthParts:
    names = CookieNames.for_base_path(settings.base_path, settings.remember_me_cookie_name)
    passwords = Passwords(reactor, **(password_cost or {}))
    hub_password = read_or_create(settings.secrets_dir, "conat-password")
    # The conat system account (cookie ``sys``): the broker's own clients and admin tools.
    system_password = read_or_create(settings.secrets_dir, "conat-system-password")
    auth = Authenticator(store, names, clock=reactor.seconds, hub_password=hub_password,
                         system_password=system_password)
    accounts = Accounts(store, passwords, auth, reactor, SiteSettings(store, reactor))
    csrf = Csrf(read_or_create(settings.secrets_dir, "csrf-key"))
    return AuthParts(names, passwords, auth, accounts, csrf)


class AuthService(service.MultiService):
    """Hourly removal of expired sessions and keys; stops the hashing threads on exit."""

    name = "auth"

    def __init__(self, parts: AuthParts, store: Store) -> None:
        service.MultiService.__init__(self)
        self.parts = parts
        self.store = store
        TimerService(CLEANUP_INTERVAL, self._cleanup).setServiceParent(self)

    def _cleanup(self) -> Deferred[None]:
        async def run() -> None:
            try:
                removed = await self.store.delete_expired()
            except Exception:
                log.failure("could not remove expired sessions")
                return
            if removed:
                log.info("removed {n} expired session(s) and API key(s)", n=removed)

        return Deferred.fromCoroutine(run())

    def stopService(self) -> Any:
        d = service.MultiService.stopService(self)
        self.parts.passwords.stop()
        return d
