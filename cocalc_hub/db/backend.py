"""What a database backend gives the SQL store: a Dialect for the few differences between
SQLite and PostgreSQL, transactions (Tx) run in worker threads, and the schema files."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import resources
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Dialect(abc.ABC):
    """The differences between SQLite and PostgreSQL that the queries need."""

    name = "abstract"

    @abc.abstractmethod
    def sql(self, text: str) -> str:
        """Translate neutral SQL (``?`` placeholders) to this backend's syntax."""

    @abc.abstractmethod
    def ts_in(self, value: datetime | None) -> Any: ...

    @abc.abstractmethod
    def ts_out(self, value: Any) -> datetime | None: ...

    def json_in(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    @abc.abstractmethod
    def json_out(self, value: Any) -> Any: ...

    @abc.abstractmethod
    def groups_in(self, groups: Sequence[str]) -> Any: ...

    @abc.abstractmethod
    def groups_out(self, value: Any) -> tuple[str, ...]: ...

    # SQL fragments, each consuming the parameters named in its docstring ----------------

    @abc.abstractmethod
    def user_group(self) -> str:
        """Text of ``users[<account_id>].group``; params: account_id."""

    @abc.abstractmethod
    def has_user(self) -> str:
        """Boolean ``users`` has key; params: account_id."""

    @abc.abstractmethod
    def set_key(self, column: str) -> str:
        """``column`` with one key set to a JSON value; params: key, JSON text."""

    @abc.abstractmethod
    def remove_key(self, column: str) -> str:
        """``column`` without one key; params: key."""

    @abc.abstractmethod
    def merge(self, column: str) -> str:
        """``column`` (NULL as {}) with a JSON object's keys merged in; params: JSON text."""

    @abc.abstractmethod
    def state_name(self) -> str:
        """Text of ``state.state``; no params."""

    @abc.abstractmethod
    def has_group(self) -> str:
        """Boolean ``groups`` contains a group; params: group."""

    def announce(self) -> str | None:
        """A statement that tells other processes a revocation was committed (None: they poll)."""
        return None

    def serialize_revocations(self) -> str | None:
        """A statement, run before a revocation row is inserted, that makes transactions
        writing revocations commit in the order of their ``seq`` (None: writers are already
        serialised, as SQLite's ``BEGIN IMMEDIATE`` does). Without it a reader could see a
        later ``seq`` commit first, move past it, and never read the earlier one."""
        return None


class Tx:
    """One transaction's cursor with the dialect applied."""

    def __init__(self, cursor: Cursor, dialect: Dialect) -> None:
        self.cursor = cursor
        self.d = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Tx:
        self.cursor.execute(self.d.sql(sql), tuple(params))
        return self

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.execute(sql, params)
        return self.cursor.fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.execute(sql, params)
        return list(self.cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self.cursor.rowcount)


class Backend(abc.ABC):
    """Connections, threads and transactions for one kind of database."""

    dialect: Dialect
    kind = "abstract"

    @abc.abstractmethod
    def prepare(self) -> int:
        """Synchronously connect and apply migrations; return the schema version.
        Called before the reactor runs, so a bad database ends start-up with one line."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the worker thread(s)."""

    @abc.abstractmethod
    def stop(self) -> Deferred[None]:
        """Finish queued work, flush and close connections, stop threads."""

    @abc.abstractmethod
    def run(self, fn: Callable[[Tx], T], *, write: bool) -> Deferred[T]:
        """Run ``fn`` in one transaction in a worker thread."""

    def notification_conninfo(self) -> str | None:
        """Where to LISTEN for committed revocations (None: this backend has no notifications)."""
        return None


def migrations(dialect_name: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of the schema files shipped for a dialect, in order."""
    folder = resources.files("cocalc_hub.db") / "schema" / dialect_name
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"schema files for {dialect_name} are not numbered 001, 002, ...: {versions}")
    return found
