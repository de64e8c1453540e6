"""The first administrator, without handing the install to whoever signs up first.

Sign-up never grants admin. While no administrator exists, the hub logs (once per start)
a one-time link ``BASE_PATH/auth/setup#token=…`` (in the fragment, so the token never
reaches an access log or a Referer); its holder may create an administrator
account or promote their own. The token is random (256 bits), kept only as a SHA-256 hash in
the database (so any hub process of the installation accepts it), valid for
:data:`SETUP_TTL`, and deleted in the same transaction that grants admin, so it works once.
``cocalc-hub-admin setup-link`` prints a fresh one; ``cocalc-hub-admin create-account EMAIL
--admin`` and ``make-admin EMAIL`` do the same from the shell.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.auth.accounts import Accounts, AuthError, SignIn, clean_name, normalize_email
from cocalc_hub.auth.caller import Caller
from cocalc_hub.auth.passwords import password_problem
from cocalc_hub.auth.throttle import IP_RULES, Throttle
from cocalc_hub.db.store import Store

log = Logger()

SETUP_TTL = timedelta(hours=1)
SETUP_PATH = "/auth/setup"
MAX_TOKEN_LENGTH = 128


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AdminSetup:
    """Issue and redeem first-admin setup tokens."""

    def __init__(self, store: Store, accounts: Accounts, clock: IReactorTime) -> None:
        self.store = store
        self.accounts = accounts
        self.clock = clock
        self.throttle = Throttle(clock, IP_RULES)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    async def needed(self) -> bool:
        return await self.store.count_admins() == 0

    async def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        now = self.now()
        await self.store.create_setup_token(token_hash(token), now + SETUP_TTL, now)
        return token

    async def check(self, token: object, client_ip: str = "") -> str:
        """The token's hash if it may be used now; AuthError otherwise (409 once an admin exists)."""
        if client_ip and self.throttle.blocked(client_ip):
            raise AuthError(429, "too many wrong setup links from your address; wait a minute")
        if not await self.needed():
            raise AuthError(409, "an administrator already exists; ask them, or use cocalc-hub-admin make-admin")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(400, "the setup link has no token; copy the whole link from the hub's log")
        hashed = token_hash(token)
        if not await self.store.setup_token_valid(hashed, self.now()):
            if client_ip:
                self.throttle.record(client_ip)
            raise AuthError(403, "this setup link is not valid: it was used already, has expired (links last "
                                 f"{int(SETUP_TTL.total_seconds() // 60)} minutes) or was mistyped. "
                                 "Restart the hub or run cocalc-hub-admin setup-link for a new one")
        return hashed

    async def claim(self, token: object, caller: Caller, *, email: object = None, password: object = None,
                    first_name: object = None, last_name: object = None, client_ip: str = "") -> SignIn | None:
        """Make an administrator with a valid token: the signed-in caller, or the account with
        this email and password (signed in), or a new account with them (created).
        Returns the new session, or None when the caller was promoted in place."""
        hashed = await self.check(token, client_ip)
        if caller.is_account and caller.account_id is not None and email is None:
            account = await self.accounts.require_account(caller)
            session = None
        else:
            address = normalize_email(email)
            existing = await self.store.get_account_by_email(address)
            if existing is not None:
                session = await self.accounts.sign_in(email=address, password=password, client_ip=client_ip)
            else:
                problem = password_problem(password, email=address)
                if problem:
                    raise AuthError(400, problem)
                created = await self.accounts.create(address, password, clean_name(first_name, "first name")
                                                     or "Admin", clean_name(last_name, "last name") or "User")
                session = await self.accounts.start_session(created)
            account = session.account
        if not await self.store.redeem_setup_token(hashed, account.account_id, self.now()):
            raise AuthError(403, "this setup link was used a moment ago by someone else")
        self.accounts.auth.forget_account(account.account_id)
        log.warn("account {account_id} ({email}) is now an administrator (first-admin setup link)",
                 account_id=account.account_id, email=account.email_address)
        if session is not None:
            session = SignIn(await self.store.get_account(account.account_id) or account, session.session,
                             session.expire)
        return session


class AdminSetupService(service.Service):
    """At start, while no administrator exists: log a one-time setup link (once per start)."""

    name = "admin-setup"

    def __init__(self, setup: AdminSetup, link: Callable[[str], str]) -> None:
        self.setup = setup
        self.link = link
        """Turns a token into the URL to print (the hub's public address + SETUP_PATH)."""
        self.announced: Deferred[str | None] | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self.announced = Deferred.fromCoroutine(self._announce())
        self.announced.addErrback(lambda f: log.failure("could not make a first-admin setup link", f))

    def stopService(self) -> Deferred[None]:
        """Stopped before the store: a start-up check still in flight (a SIGTERM right after
        start) finishes on an open database."""
        service.Service.stopService(self)
        done: Deferred[None] = Deferred()
        if self.announced is None or self.announced.called:
            done.callback(None)
        else:

            def finished(result: str | Failure | None) -> str | Failure | None:
                done.callback(None)
                return result

            self.announced.addBoth(finished)
        return done

    async def _announce(self) -> str | None:
        if not await self.setup.needed() or not self.running:
            return None
        token = await self.setup.new_token()
        minutes = int(SETUP_TTL.total_seconds() // 60)
        log.warn("No administrator exists yet. Open this one-time link within {minutes} minutes to create the "
                 "first one (or make your account one): {link} . A new link: restart the hub or run "
                 "'cocalc-hub-admin setup-link'; from the shell: 'cocalc-hub-admin create-account EMAIL --admin'.",
                 minutes=minutes, link=self.link(token), log_unredacted=("link",))
        return token
