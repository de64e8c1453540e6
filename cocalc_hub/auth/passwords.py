"""Password hashing: argon2id for new hashes, upstream's iterated HMAC for old ones.

Upstream (npm ``password-hash``) stores ``sha512$<salt>$<iterations>$<hex>``, where the
hex is ``iterations`` rounds of ``h = hex(HMAC-<algo>(key=salt, msg=h))`` starting from
the password. Those hashes are accepted so an upstream accounts table can be imported,
and are replaced by argon2id at the next successful sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import threads
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 64
# Iteration counts come from stored hashes and from cookies; cap them (upstream caps cookies
# at 10000, we cap everything).
MAX_ITERATIONS = 10000
LEGACY_ALGORITHMS = {"sha512": hashlib.sha512, "sha256": hashlib.sha256, "sha1": hashlib.sha1}

_COMMON = frozenset({
    "password", "password1", "password12", "password123", "12345678", "123456789", "1234567890", "qwerty123",
    "qwertyuiop", "iloveyou", "11111111", "00000000", "abc12345", "letmein1", "welcome1", "admin123",
    "sunshine", "football", "baseball", "princess", "passw0rd", "p@ssw0rd", "trustno1", "cocalc123",
})


class LegacyHashError(ValueError):
    """A legacy hash string is malformed or asks for too much work."""


def legacy_digest(secret: str, salt: str, iterations: int = 1000, algorithm: str = "sha512") -> str:
    """Upstream's iterated HMAC (see module docstring); returns the hex digest."""
    if algorithm not in LEGACY_ALGORITHMS:
        raise LegacyHashError(f"unsupported algorithm {algorithm!r}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise LegacyHashError("iteration count out of range")
    digest = LEGACY_ALGORITHMS[algorithm]
    key = salt.encode("utf-8")
    h = secret
    for _ in range(iterations):
        h = hmac.new(key, h.encode("utf-8"), digest).hexdigest()
    return h


def legacy_hash(secret: str, salt: str | None = None, iterations: int = 1000, algorithm: str = "sha512") -> str:
    """``algorithm$salt$iterations$hex`` (173 characters for sha512 with a 32-hex salt)."""
    salt = salt if salt is not None else secrets.token_hex(16)
    return f"{algorithm}${salt}${iterations}${legacy_digest(secret, salt, iterations, algorithm)}"


def parse_legacy(stored: str) -> tuple[str, str, int, str]:
    """(algorithm, salt, iterations, digest); a 3-part value means one iteration (upstream)."""
    parts = stored.split("$")
    if len(parts) == 3:
        parts.insert(2, "1")
    if len(parts) != 4:
        raise LegacyHashError("not algorithm$salt$iterations$digest")
    algorithm, salt, iterations, digest = parts
    if algorithm not in LEGACY_ALGORITHMS or not salt:
        raise LegacyHashError("unsupported algorithm or empty salt")
    if not iterations.isdigit() or len(iterations) > 6:
        raise LegacyHashError("bad iteration count")
    count = int(iterations) or 1
    if count > MAX_ITERATIONS:
        raise LegacyHashError("iteration count out of range")
    return algorithm, salt, count, digest


def verify_legacy(stored: str, secret: str) -> bool:
    """Constant-time check of a secret against a legacy hash; False for anything malformed."""
    if not stored or not secret:
        return False
    try:
        algorithm, salt, count, digest = parse_legacy(stored)
        computed = legacy_digest(secret, salt, count, algorithm)
    except LegacyHashError:
        return False
    return hmac.compare_digest(computed.encode(), digest.encode())


def is_legacy(stored: str | None) -> bool:
    return bool(stored) and stored.split("$", 1)[0] in LEGACY_ALGORITHMS  # type: ignore[union-attr]


def password_problem(password: object, *, email: str | None = None) -> str | None:
    """Why a new password is not acceptable, or None."""
    if not isinstance(password, str):
        return "the password must be a string"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must be at least {MIN_PASSWORD_LENGTH} characters long"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password must be at most {MAX_PASSWORD_LENGTH} characters long"
    lowered = password.lower()
    if len(set(password)) < 4 or lowered in _COMMON:
        return "this password is too easy to guess"
    if email and lowered in (email.lower(), email.split("@")[0].lower()):
        return "the password must not be your email address"
    return None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    needs_rehash: bool = False


class Passwords:
    """Hashes and verifies passwords in a small thread pool of its own.

    argon2id is deliberately expensive in CPU and memory, so hashing never runs on the
    reactor thread and at most ``threads`` hashes run at once.
    """

    def __init__(self, reactor: IReactorFromThreads, *, time_cost: int = 3, memory_cost: int = 65536,
                 parallelism: int = 4, threads_: int = 2) -> None:
        self.reactor = reactor
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
        self._threads = threads_
        self._pool: ThreadPool | None = None
        self._dummy: str | None = None

    def _run(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self._threads, name="cocalc-hub-passwords")
            self._pool.start()
        return threads.deferToThreadPool(self.reactor, self._pool, fn, *args)

    def stop(self) -> None:
        """Stop the hashing threads (the owning service calls this when it stops)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    async def hash(self, password: str) -> str:
        result: str = await self._run(self.hasher.hash, password)
        return result

    def _verify(self, stored: str, password: str) -> Verdict:
        if is_legacy(stored):
            return Verdict(verify_legacy(stored, password), needs_rehash=True)
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return Verdict(False)
        return Verdict(True, needs_rehash=self.hasher.check_needs_rehash(stored))

    async def verify(self, stored: str | None, password: str) -> Verdict:
        """Check a password; ``needs_rehash`` means: store a fresh argon2id hash now."""
        if not stored or not password:
            return Verdict(False)
        result: Verdict = await self._run(self._verify, stored, password)
        return result

    def _dummy_verify(self) -> None:
        if self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_hex(16))
        self._verify(self._dummy, "not the password")

    async def dummy_verify(self) -> None:
        """Spend the time a real verification would, so a missing account is not revealed by timing."""
        await self._run(self._dummy_verify)
