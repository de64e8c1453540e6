"""Semantics shared by every backend (spec §6.5): configuration, request validation, the
msgID dedup cache, limit enforcement and changefeed events.

Backends only provide a :class:`StorageSession` (synchronous primitives inside one transaction);
everything that decides *what* to store, delete or reject lives here, so the three backends
cannot drift apart.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.base import SetRequest, StoredMessage

EPHEMERAL_MAX_BYTES = 64_000_000
MSG_ID_CACHE_MS = 120_000  # how long a msgID is remembered (upstream: 2 minutes, in memory)
DEFAULT_BATCH_BYTES = 20_000_000

DEFAULTS: dict[str, Any] = {
    "max_msgs": -1,
    "max_age": 0,
    "max_bytes": -1,
    "max_msg_size": -1,
    "max_bytes_per_second": -1,
    "max_msgs_per_second": -1,
    "discard_policy": "old",
    "allow_msg_ttl": False,
    "desc": None,
}
_INT_FIELDS = ("max_msgs", "max_age", "max_bytes", "max_msg_size", "max_bytes_per_second", "max_msgs_per_second")


class StorageSession(Protocol):
    """Primitives of one stream inside one open transaction (called off the reactor thread
    for SQLite/PostgreSQL). Times are ms since the epoch."""

    def read_config(self) -> dict[str, str]: ...
    def write_config(self, field: str, value: str) -> None: ...
    def seq_of_key(self, key: str) -> int | None: ...
    def totals(self) -> tuple[int, int]: ...  # (count, bytes)
    def recent(self, since_ms: float) -> tuple[int, int]: ...  # (count, bytes) with time >= since
    def oldest(self, after_seq: int, limit: int) -> list[tuple[int, int]]: ...  # (seq, size), ascending
    def delete_seqs(self, seqs: list[int]) -> None: ...
    def delete_older_than(self, time_ms: float) -> list[int]: ...
    def delete_expired(self, now_ms: float) -> list[int]: ...
    def delete_upto(self, last_seq: int | None) -> list[int]: ...  # None: everything
    def insert(self, *, key: str | None, time_ms: float, headers: str | None, encoding: int,
               raw: bytes, size: int, ttl: int | None) -> int: ...
    def savepoint(self) -> None: ...
    def release(self) -> None: ...
    def rollback(self) -> None: ...
    def get(self, seq: int | None, key: str | None) -> StoredMessage | None: ...
    def page(self, after_seq: int, end_seq: int | None, limit: int, max_bytes: int) -> list[StoredMessage]: ...
    # ascending; stops after ``limit`` rows or once the raws reach ``max_bytes`` (at least one row)
    def keys(self) -> list[str]: ...
    def last_seq(self) -> int: ...


# ---------------------------------------------------------------------------------------------
# configuration


def _int_value(field: str, value: Any) -> int:
    """Any integer, as upstream takes it: the limits compare with ``> -1`` (``max_age``:
    ``> 0``), so every smaller value means "no limit" (``max_age: -1`` included)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ConatError(f"config: {field} must be an integer, not {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ConatError(f"config: {field} must be an integer, not {value!r}")
    return int(value)


def validate_partial(partial: Any) -> dict[str, Any]:
    """The known, non-null fields of a client's partial config, checked. Unknown fields are
    ignored (as upstream does), so newer clients keep working."""
    if partial is None:
        return {}
    if not isinstance(partial, dict):
        raise ConatError(f"config must be an object, not {type(partial).__name__}")
    out: dict[str, Any] = {}
    for field, value in partial.items():
        if field not in DEFAULTS or value is None:
            continue
        if field in _INT_FIELDS:
            out[field] = _int_value(field, value)
        elif field == "discard_policy":
            if value not in ("old", "new"):
                raise ConatError(f"config: discard_policy must be 'old' or 'new', not {value!r}")
            out[field] = value
        elif field == "allow_msg_ttl":
            if not isinstance(value, bool):
                raise ConatError(f"config: allow_msg_ttl must be true or false, not {value!r}")
            out[field] = value
        else:  # desc: any JSON value
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise ConatError(f"config: desc must be JSON-serializable, not {value!r}") from None
            out[field] = value
    return out


def to_db(field: str, value: Any) -> str:
    """The string upstream stores in the config table."""
    if field == "allow_msg_ttl":
        return "true" if value else "false"
    if field == "desc":
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def from_db(stored: dict[str, str]) -> dict[str, Any]:
    """Stored strings to values; unparsable values fall back to the default."""
    out: dict[str, Any] = {}
    for field, text in stored.items():
        if field not in DEFAULTS:
            continue
        try:
            if field in _INT_FIELDS:
                out[field] = int(float(text))
            elif field == "allow_msg_ttl":
                out[field] = text == "true"
            elif field == "desc":
                out[field] = json.loads(text)
            elif text in ("old", "new"):
                out[field] = text
        except ValueError:
            continue
    return out


@dataclass(slots=True, frozen=True)
class Config:
    """The effective configuration of a stream."""

    max_msgs: int = -1
    max_age: int = 0
    max_bytes: int = -1
    max_msg_size: int = -1
    max_bytes_per_second: int = -1
    max_msgs_per_second: int = -1
    discard_policy: str = "old"
    allow_msg_ttl: bool = False
    desc: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in DEFAULTS}

    def trims(self) -> bool:
        """True if a set may delete other rows (so a rejection needs a rollback)."""
        return self.max_msgs > -1 or self.max_age > 0 or self.max_bytes > -1 or self.allow_msg_ttl


def effective(stored: dict[str, Any], ephemeral: bool) -> Config:
    """Defaults, overlaid with stored values, plus the ephemeral max_bytes cap (never stored)."""
    values = {**DEFAULTS, **stored}
    if ephemeral and (values["max_bytes"] <= 0 or values["max_bytes"] > EPHEMERAL_MAX_BYTES):
        values["max_bytes"] = EPHEMERAL_MAX_BYTES
    return Config(**values)


def apply_config(s: StorageSession, partial: dict[str, Any], ephemeral: bool,
                 now_ms: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Store the changed fields, enforce the (new) limits; returns (full config, events)."""
    stored = from_db(s.read_config())
    for field, value in partial.items():
        if stored.get(field, DEFAULTS[field]) != value:
            s.write_config(field, to_db(field, value))
            stored[field] = value
    cfg = effective(stored, ephemeral)
    deleted = enforce_limits(s, cfg, now_ms, None)
    return cfg.as_dict(), ([delete_event(deleted)] if deleted else [])


def limits_of(s: StorageSession) -> dict[str, Any]:
    """Non-default stored fields (``inventory.limits``)."""
    stored = from_db(s.read_config())
    return {f: v for f, v in stored.items() if v != DEFAULTS[f]}


# ---------------------------------------------------------------------------------------------
# requests


def check_seq(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConatError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def validate_request(req: SetRequest) -> None:
    """Reject malformed sets before they reach storage."""
    if not isinstance(req.raw, bytes | bytearray | memoryview):
        raise ConatError(f"raw must be bytes, not {type(req.raw).__name__}")
    if isinstance(req.encoding, bool) or not isinstance(req.encoding, int) or req.encoding < 0:
        raise ConatError(f"encoding must be a non-negative integer, not {req.encoding!r}")
    if req.key is not None and not isinstance(req.key, str):
        raise ConatError(f"key must be a string, not {req.key!r}")
    if req.headers is not None:
        if not isinstance(req.headers, dict):
            raise ConatError(f"headers must be an object, not {type(req.headers).__name__}")
        try:
            json.dumps(req.headers)
        except (TypeError, ValueError) as e:
            raise ConatError(f"headers must be JSON-serializable: {e}") from None
    if req.ttl is not None and (isinstance(req.ttl, bool) or not isinstance(req.ttl, int | float)
                                or req.ttl != req.ttl or req.ttl in (float("inf"), float("-inf"))):
        raise ConatError(f"ttl must be a number of ms, not {req.ttl!r}")
    if req.previous_seq is not None:
        check_seq("previousSeq", req.previous_seq)
    if req.msg_id is not None and not isinstance(req.msg_id, str):
        raise ConatError(f"msgID must be a string, not {req.msg_id!r}")


def js_length(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript's ``String.length``."""
    return len(text.encode("utf-16-le")) // 2


def headers_json(headers: dict[str, Any] | None) -> str | None:
    return None if headers is None else json.dumps(headers, separators=(",", ":"), ensure_ascii=False)


def message_size(key: str | None, headers: str | None, raw: bytes) -> int:
    """Upstream's ``size``: headers JSON + raw + key lengths."""
    return (js_length(headers) if headers else 0) + len(raw) + (js_length(key) if key else 0)


def _reject(message: str) -> ConatError:
    return ConatError(message, "reject")


def enforce_limits(s: StorageSession, cfg: Config, now_ms: float, incoming: int | None) -> list[int]:
    """Trim (or reject, under discard_policy 'new') so a message of ``incoming`` bytes fits;
    ``incoming=None`` means only trimming (after a config change). Returns deleted seqs."""
    deleted: list[int] = []
    reject_new = incoming is not None and cfg.discard_policy == "new"
    if cfg.max_msgs > -1:
        count, _ = s.totals()
        over = count + (1 if incoming is not None else 0) - cfg.max_msgs
        if over > 0:
            if reject_new:
                raise _reject("max_msgs limit reached")
            victims = [seq for seq, _ in s.oldest(0, min(over, count))]
            s.delete_seqs(victims)
            deleted += victims
    if cfg.max_age > 0:
        deleted += s.delete_older_than(now_ms - cfg.max_age)
    if cfg.max_bytes > -1:
        size = incoming or 0
        _, total = s.totals()
        if size > cfg.max_bytes:
            if reject_new:
                raise _reject("max_bytes limit reached")
            deleted += s.delete_upto(None)
        elif total + size > cfg.max_bytes:
            if reject_new:
                raise _reject("max_bytes limit reached")
            need, after, victims = total + size - cfg.max_bytes, 0, []
            while need > 0:
                rows = s.oldest(after, 1000)
                if not rows:
                    break
                for seq, row_size in rows:
                    victims.append(seq)
                    need -= row_size
                    if need <= 0:
                        break
                after = rows[-1][0]
            s.delete_seqs(victims)
            deleted += victims
    if cfg.allow_msg_ttl:
        deleted += s.delete_expired(now_ms)
    if incoming is not None and cfg.max_msg_size > -1 and incoming > cfg.max_msg_size:
        raise _reject(f"max_msg_size of {cfg.max_msg_size} bytes exceeded")
    return deleted


def apply_set(s: StorageSession, cfg: Config, req: SetRequest,
              now_ms: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Store one validated message; returns ({seq, time}, events). May write before raising,
    so callers run it inside a savepoint when ``needs_savepoint``."""
    current = s.seq_of_key(req.key) if req.key is not None else None
    if req.key is not None and req.previous_seq is not None and current != req.previous_seq:
        raise ConatError("wrong last sequence", "wrong-last-sequence")
    raw = bytes(req.raw)
    hdrs = headers_json(req.headers)
    size = message_size(req.key, hdrs, raw)
    if cfg.max_msgs_per_second > -1 or cfg.max_bytes_per_second > -1:
        count, total = s.recent(now_ms - 1000)
        # As upstream: the rows of the last second are compared, so the limit itself still fits.
        if -1 < cfg.max_msgs_per_second < count:
            raise _reject("max_msgs_per_second exceeded")
        if -1 < cfg.max_bytes_per_second < total:
            raise _reject("max_bytes_per_second exceeded")
    if current is not None:
        s.delete_seqs([current])  # at most one row per key; no event (clients replace by key)
    deleted = enforce_limits(s, cfg, now_ms, size)
    # A message's ttl is stored whatever the config (as upstream), and honoured only while the
    # stream's allow_msg_ttl is true: enforce_limits deletes expired rows (ttl > 0) only then,
    # so turning allow_msg_ttl on later expires the messages stored with a ttl before.
    ttl = None if req.ttl is None else int(req.ttl)
    seq = s.insert(key=req.key, time_ms=now_ms, headers=hdrs, encoding=req.encoding, raw=raw, size=size, ttl=ttl)
    event: dict[str, Any] = {"seq": seq, "time": now_ms}
    if req.key is not None:
        event["key"] = req.key
    event["encoding"] = req.encoding
    event["raw"] = raw
    if req.headers is not None:
        event["headers"] = req.headers
    if req.msg_id is not None:
        event["msgID"] = req.msg_id
    events = [delete_event(deleted), event] if deleted else [event]
    return {"seq": seq, "time": now_ms}, events


def needs_savepoint(cfg: Config, req: SetRequest) -> bool:
    """Whether apply_set may write something before rejecting this request."""
    return req.key is not None or cfg.trims()


def apply_sets(s: StorageSession, reqs: list[SetRequest], now_ms: float,
               ephemeral: bool) -> list[tuple[dict[str, Any], list[dict[str, Any]]] | ConatError]:
    """A group commit: each request succeeds or fails alone (savepoints), in one transaction."""
    cfg = effective(from_db(s.read_config()), ephemeral)
    out: list[tuple[dict[str, Any], list[dict[str, Any]]] | ConatError] = []
    for req in reqs:
        guarded = needs_savepoint(cfg, req)
        if guarded:
            s.savepoint()
        try:
            out.append(apply_set(s, cfg, req, now_ms))
        except ConatError as e:
            if guarded:
                s.rollback()
            out.append(e)
        else:
            if guarded:
                s.release()
    return out


def delete_event(seqs: list[int]) -> dict[str, Any]:
    return {"op": "delete", "seqs": seqs}


class MsgIdCache:
    """msgID -> result for 2 minutes, so a resent set is not stored twice."""

    def __init__(self, clock_ms: Callable[[], float], ttl_ms: float = MSG_ID_CACHE_MS) -> None:
        self._clock_ms = clock_ms
        self._ttl_ms = ttl_ms
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def _prune(self) -> None:
        cutoff = self._clock_ms() - self._ttl_ms
        while self._items:
            msg_id, (when, _) = next(iter(self._items.items()))
            if when >= cutoff:
                break
            del self._items[msg_id]

    def get(self, msg_id: str) -> dict[str, Any] | None:
        self._prune()
        hit = self._items.get(msg_id)
        return None if hit is None else dict(hit[1])

    def put(self, msg_id: str, result: dict[str, Any]) -> None:
        self._items[msg_id] = (self._clock_ms(), dict(result))
        self._items.move_to_end(msg_id)
        self._prune()
