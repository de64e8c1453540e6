"""API keys in upstream's format: ``sk-`` + 16 random characters + the row id in base62.

The id is the last six characters (npm ``base62`` alphabet: 0-9 = 0..9, a-z = 10..35,
A-Z = 36..61, most significant first). Keys are stored hashed (``sha512$salt$1000$hex``),
so a database leak does not leak usable keys.
"""

from __future__ import annotations

import secrets

from cocalc_hub.auth.passwords import legacy_hash, verify_legacy

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
ID_LENGTH = 6
RANDOM_LENGTH = 16
MAX_ID = 2147483647
MAX_KEY_LENGTH = 200


def base62_encode(number: int, width: int = ID_LENGTH) -> str:
    if number < 0:
        raise ValueError("negative")
    digits = ""
    while number:
        number, rem = divmod(number, 62)
        digits = ALPHABET[rem] + digits
    return (digits or "0").rjust(width, "0")


def base62_decode(text: str) -> int:
    value = 0
    for c in text:
        if c not in _VALUE:
            raise ValueError("not base62")
        value = value * 62 + _VALUE[c]
    return value


def new_secret(key_id: int) -> str:
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"sk-{random_part}{base62_encode(key_id)}"


def truncate(secret: str) -> str:
    """What the key list shows: ``sk-...<last 6>``."""
    return f"{secret[:3]}...{secret[-6:]}"


def secret_for_id(key_id: int) -> tuple[str, str, str]:
    """(secret, stored hash, trunc) for a new key row."""
    secret = new_secret(key_id)
    return secret, legacy_hash(secret), truncate(secret)


def key_id(secret: str) -> int | None:
    """The row id a key names, or None if it cannot be one of ours."""
    if not secret.startswith("sk-") or len(secret) < 9 or len(secret) > MAX_KEY_LENGTH:
        return None
    try:
        value = base62_decode(secret[-ID_LENGTH:])
    except ValueError:
        return None
    return value if 0 < value <= MAX_ID else None


def looks_like_key(secret: str) -> bool:
    return secret.startswith(("sk-", "sk_")) and 9 <= len(secret) <= MAX_KEY_LENGTH and secret.isprintable()


def matches(stored_hash: str | None, secret: str) -> bool:
    return bool(stored_hash) and verify_legacy(stored_hash, secret)  # type: ignore[arg-type]
