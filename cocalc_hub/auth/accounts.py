"""Account operations shared by the JSON API, the admin CLI and the conat hub API.

Each operation checks its own preconditions and raises :class:`AuthError` with an HTTP
status and a message that is safe to show; transports only translate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.auth import apikeys
from cocalc_hub.auth.caller import Authenticator, Caller
from cocalc_hub.auth.cookies import REMEMBER_ME_TTL, RememberMe, new_remember_me
from cocalc_hub.auth.passwords import MAX_PASSWORD_LENGTH, Passwords, password_problem
from cocalc_hub.auth.throttle import IP_RULES, SIGNUP_RULES, Backoff, Throttle, address_key, wait_text
from cocalc_hub.cache import TTLCache
from cocalc_hub.db.store import Account, ApiKey, Conflict, Store, utcnow

log = Logger()

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 254
MAX_KEY_NAME_LENGTH = 128
MAX_KEYS_PER_ACCOUNT = 1000
# Deliberately loose: one @, something before it, a dot in the domain, no spaces or controls.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class AuthError(Exception):
    """An operation was refused; ``status`` is the HTTP status, ``str()`` is safe to show."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds until trying again can succeed (429s; sent as Retry-After)."""


def normalize_email(value: object) -> str:
    if not isinstance(value, str):
        raise AuthError(400, "email address must be a string")
    email = value.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH:
        raise AuthError(400, f"email address is longer than {MAX_EMAIL_LENGTH} characters")
    if not _EMAIL.fullmatch(email) or any(ord(c) < 32 for c in email):
        raise AuthError(400, "that is not a valid email address")
    return email


def clean_name(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AuthError(400, f"{what} must be a string")
    value = " ".join(value.split())
    if len(value) > MAX_NAME_LENGTH:
        raise AuthError(400, f"{what} is longer than {MAX_NAME_LENGTH} characters")
    return value


class SiteSettings:
    """Server settings with a short cache (they are read on every sign-up)."""

    DEFAULTS = {"email_signup": "yes", "samesite_remember_me": "strict", "site_name": "CoCalc",
                "signup_hides_emails": "yes"}

    def __init__(self, store: Store, clock: IReactorTime, ttl: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._cache: TTLCache[str, dict[str, str]] = TTLCache(clock, ttl, 1)

    async def all(self) -> dict[str, str]:
        values = self._cache.get("all")
        if values is None:
            values = dict(self.DEFAULTS)
            values.update(await self.store.get_settings())
            self._cache.put("all", values)
        return dict(values)

    async def get(self, name: str) -> str | None:
        return (await self.all()).get(name)

    async def set(self, name: str, value: str | None) -> None:
        await self.store.set_setting(name, value)
        self._cache.clear()


@dataclass(frozen=True)
class SignIn:
    account: Account
    session: RememberMe
    expire: datetime


class Accounts:
    def __init__(self, store: Store, passwords: Passwords, auth: Authenticator, clock: IReactorTime,
                 settings: SiteSettings | None = None) -> None:
        self.store = store
        self.passwords = passwords
        self.auth = auth
        self.clock = clock
        self.settings = settings or SiteSettings(store, clock)
        self.failures = Backoff(clock)
        """Wrong passwords per (email, client address): growing delays for that pair only, so
        nobody can lock an owner out from elsewhere."""
        self.ip_throttle = Throttle(clock, IP_RULES)
        """Failed sign-ins per client address, whatever the email: the address's budget."""
        self.signup_throttle = Throttle(clock, SIGNUP_RULES)

    # sign-up / sign-in / sign-out -----------------------------------------------------

    async def signup_mode(self) -> str:
        """open, closed or token: the email_signup setting, then whether any registration token
        is in force (not disabled; see Store.registration_tokens_in_force)."""
        if (await self.settings.get("email_signup") or "yes").lower() in ("no", "false", "0", "off"):
            return "closed"
        if await self.store.registration_tokens_in_force() > 0:
            return "token"
        return "open"

    async def hides_emails(self) -> bool:
        """The signup_hides_emails setting (default yes): sign-up answers the same whether or
        not an account has the email address, and so does not sign anyone in."""
        return (await self.settings.get("signup_hides_emails") or "yes").lower() not in ("no", "false", "0", "off")

    async def sign_up(self, *, email: object, password: object, first_name: object = "", last_name: object = "",
                      registration_token: object = None, client_ip: str = "") -> Account | None:
        """The new account; None when sign-up hides whether emails exist (hides_emails): then
        an account was created only if none had the address, and the caller must not say which."""
        address = address_key(client_ip) if client_ip else ""
        if address and self.signup_throttle.blocked(address):
            wait = self.signup_throttle.retry_after(address)
            raise AuthError(429, f"too many sign-ups from your address; try again in {wait_text(wait)}",
                            retry_after=wait)
        email_address = normalize_email(email)
        problem = password_problem(password, email=email_address)
        if problem:
            raise AuthError(400, problem)
        first = clean_name(first_name, "first name") or "Anonymous"
        last = clean_name(last_name, "last name") or "User"
        # Sign-up never makes an administrator, not even the first account: that takes the
        # one-time setup link (cocalc_hub.auth.bootstrap) or cocalc-hub-admin.
        mode = await self.signup_mode()
        if mode == "closed":
            raise AuthError(403, "sign-up is closed on this server")
        token: str | None = None
        if mode == "token":
            if not isinstance(registration_token, str) or not registration_token.strip():
                raise AuthError(403, "a registration token is required to sign up")
            token = registration_token.strip()
            if not await self.store.redeem_registration_token(token, utcnow()):
                raise AuthError(403, "that registration token is not valid")
        if not await self.hides_emails():
            try:
                account = await self.create(email_address, password, first, last)
            except AuthError:
                if token is not None:  # no account was made: the token's use is given back
                    await self.store.return_registration_token(token)
                raise
            if address:
                self.signup_throttle.record(address)
            log.info("new account {account_id}", account_id=account.account_id)
            return account
        # Both outcomes do the same work (one password hash, one insert) and count against
        # the address's sign-up budget alike, so neither the answer nor its timing differs.
        if address:
            self.signup_throttle.record(address)
        assert isinstance(password, str)
        password_hash = await self.passwords.hash(password)
        try:
            account = await self.store.create_account(email_address=email_address, password_hash=password_hash,
                                                      first_name=first, last_name=last)
        except Conflict:
            if token is not None:  # redeemed only by an account actually made
                await self.store.return_registration_token(token)
            log.info("sign-up for an email address that has an account, from {ip} (not revealed)",
                     ip=client_ip or "-")
            return None
        log.info("new account {account_id}", account_id=account.account_id)
        return None

    async def create(self, email_address: str, password: object, first_name: str, last_name: str) -> Account:
        """Insert an account whose email and password have been checked."""
        assert isinstance(password, str)
        password_hash = await self.passwords.hash(password)
        try:
            return await self.store.create_account(email_address=email_address, password_hash=password_hash,
                                                   first_name=first_name, last_name=last_name)
        except Conflict:
            raise AuthError(409, "an account with this email address already exists") from None

    async def sign_in(self, *, email: object, password: object, client_ip: str = "") -> SignIn:
        """Verify the password (same answer and timing whether or not the email exists)."""
        wrong = AuthError(401, "incorrect email address or password")
        if not isinstance(email, str) or not isinstance(password, str) or not password:
            raise AuthError(400, "email and password are required")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise wrong
        email_key = email.strip().lower()[:MAX_EMAIL_LENGTH]
        address = address_key(client_ip) if client_ip else ""
        pair = (email_key, address)
        self._check_throttles(pair)
        account = await self.store.get_account_by_email(email_key)
        if account is None or not account.password_hash:
            await self.passwords.dummy_verify()
            self._failed(pair)
            raise wrong
        verdict = await self.passwords.verify(account.password_hash, password)
        if not verdict.ok:
            self._failed(pair)
            raise wrong
        self.failures.reset(pair)
        if account.banned or account.deleted:
            raise AuthError(403, "this account is banned")
        if verdict.needs_rehash:
            # Upgrade an upstream sha512 (or outdated argon2) hash, unless it changed meanwhile.
            new_hash = await self.passwords.hash(password)
            await self.store.set_password_hash(account.account_id, new_hash, expected=account.password_hash)
        return await self.start_session(account)

    def _check_throttles(self, pair: tuple[str, str]) -> None:
        """429 with how long to wait, before any password is checked (the same for every email)."""
        address = pair[1]
        wait = self.ip_throttle.retry_after(address) if address else 0.0
        if wait > 0:
            raise AuthError(429, f"too many failed sign-ins from your address; try again in {wait_text(wait)}",
                            retry_after=wait)
        wait = self.failures.wait(pair)
        if wait > 0:
            raise AuthError(429, f"too many wrong passwords for this account from your address; try again in "
                                 f"{wait_text(wait)}, or ask an administrator to reset your password",
                            retry_after=wait)

    def _failed(self, pair: tuple[str, str]) -> None:
        self.failures.record(pair)
        if pair[1]:
            self.ip_throttle.record(pair[1])

    async def start_session(self, account: Account) -> SignIn:
        if account.banned:
            raise AuthError(403, "this account is banned")
        session = new_remember_me()
        expire = utcnow() + REMEMBER_ME_TTL
        await self.store.create_session(session.session_hash, account.account_id, expire)
        await self.store.touch_account(account.account_id)
        return SignIn(account, session, expire)

    async def sign_out(self, caller: Caller, *, everywhere: bool = False) -> int:
        """Revoke the caller's session (or all of the account's sessions)."""
        if not caller.is_account or caller.account_id is None:
            return 0
        if everywhere:
            count = await self.store.delete_sessions(caller.account_id)
            self.auth.forget_account(caller.account_id)
            return count
        if caller.session_hash is None:
            return 0
        removed = await self.store.delete_session(caller.session_hash)
        self.auth.forget_session(caller.session_hash)
        return int(removed)

    async def change_password(self, caller: Caller, current: object, new: object) -> int:
        """Set a new password and revoke every other session (upstream keeps them: #6085)."""
        account = await self.require_account(caller)
        if not isinstance(new, str):
            raise AuthError(400, "the new password must be a string")
        problem = password_problem(new, email=account.email_address)
        if problem:
            raise AuthError(400, problem)
        if account.password_hash:
            if not isinstance(current, str) or not (await self.passwords.verify(account.password_hash, current)).ok:
                raise AuthError(403, "the current password is not correct")
        await self.store.set_password_hash(account.account_id, await self.passwords.hash(new))
        revoked = await self.store.delete_sessions(account.account_id, keep_hash=caller.session_hash)
        self.auth.forget_account(account.account_id)
        return revoked

    async def reset_password(self, account_id: str, new: str) -> None:
        """Admin path: set a password and revoke every session."""
        problem = password_problem(new)
        if problem:
            raise AuthError(400, problem)
        await self.store.set_password_hash(account_id, await self.passwords.hash(new))
        await self.store.delete_sessions(account_id)
        self.auth.forget_account(account_id)

    async def require_account(self, caller: Caller) -> Account:
        if not caller.is_account or caller.account_id is None:
            raise AuthError(401, "you must be signed in")
        account = await self.store.get_account(caller.account_id)
        if account is None or account.banned:
            raise AuthError(401, "you must be signed in")
        return account

    async def require_admin(self, caller: Caller) -> Account:
        account = await self.require_account(caller)
        if not account.is_admin:
            raise AuthError(403, "only administrators may do this")
        return account

    # API keys --------------------------------------------------------------------------

    async def create_api_key(self, caller: Caller, *, name: object = "", expire: object = None,
                             project_id: str | None = None) -> tuple[ApiKey, str]:
        account = await self.require_account(caller)
        if name is None:
            name = ""
        if not isinstance(name, str) or len(name) > MAX_KEY_NAME_LENGTH:
            raise AuthError(400, f"name must be a string of at most {MAX_KEY_NAME_LENGTH} characters")
        expires = parse_expire(expire)
        if project_id is not None:
            exists, group = await self.store.project_group(project_id, account.account_id)
            if not exists:
                raise AuthError(404, "no such project")
            if group not in ("owner", "collaborator"):
                raise AuthError(403, "you must be a collaborator on the project to create a key for it")
        if len(await self.store.list_api_keys(account.account_id)) >= MAX_KEYS_PER_ACCOUNT:
            raise AuthError(429, f"at most {MAX_KEYS_PER_ACCOUNT} API keys per account")
        return await self.store.create_api_key(account_id=account.account_id, project_id=project_id, name=name,
                                               expire=expires, secret_for_id=apikeys.secret_for_id)

    async def list_api_keys(self, caller: Caller) -> list[ApiKey]:
        account = await self.require_account(caller)
        return await self.store.list_api_keys(account.account_id)

    async def delete_api_key(self, caller: Caller, key_id: int) -> None:
        account = await self.require_account(caller)
        if not await self.store.delete_api_key(key_id, account_id=account.account_id):
            raise AuthError(404, "no such API key")
        self.auth.forget_key(key_id)

    async def edit_api_key(self, caller: Caller, key_id: int, *, name: object = None, expire: object = None,
                           clear_expire: bool = False) -> None:
        account = await self.require_account(caller)
        if name is not None and (not isinstance(name, str) or len(name) > MAX_KEY_NAME_LENGTH):
            raise AuthError(400, f"name must be a string of at most {MAX_KEY_NAME_LENGTH} characters")
        found = await self.store.update_api_key(account.account_id, key_id, name=name,
                                                expire=parse_expire(expire), clear_expire=clear_expire)
        if not found:
            raise AuthError(404, "no such API key")
        self.auth.forget_key(key_id)


def parse_expire(value: object) -> datetime | None:
    """An expiry given as ISO 8601 text or milliseconds since the epoch (upstream sends ms)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            when = datetime.fromtimestamp(float(value) / 1000.0, tz=utcnow().tzinfo)
        elif isinstance(value, str):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=utcnow().tzinfo)
        else:
            raise ValueError
    except (ValueError, OverflowError, OSError):
        raise AuthError(400, "expire must be an ISO 8601 time or milliseconds since 1970") from None
    if when <= utcnow():
        raise AuthError(400, "expire must be in the future")
    if when > utcnow() + timedelta(days=366 * 100):
        raise AuthError(400, "expire is too far in the future")
    return when
