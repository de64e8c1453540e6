"""SQLite backend: one file per stream, upstream's schema (spec §6.5), so upstream files open.

Durability: WAL with ``synchronous=FULL`` and every acknowledgement after COMMIT. SQLite work
runs in a thread pool; the stream's operation queue keeps one stream's work serial and
commits waiting sets together (group commit). A corrupt file is moved aside, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.base import StorageBackend, StoredMessage, Stream
from cocalc_hub.conat.persist.storage.common import StorageSession
from cocalc_hub.conat.persist.storage.memory import memory_stream
from cocalc_hub.conat.persist.storage.stream import OpenStreams, QueuedStream, StreamStore, WorkerThreads
from cocalc_hub.reactors import IThreadPoolReactor

log = Logger()
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE, time INTEGER NOT NULL, headers TEXT,
  compress NUMBER NOT NULL, encoding NUMBER NOT NULL, raw BLOB NOT NULL, size NUMBER NOT NULL, ttl NUMBER);
CREATE TABLE IF NOT EXISTS config (field TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_messages_key ON messages(key);
CREATE INDEX IF NOT EXISTS idx_messages_time ON messages(time);
"""
COLUMNS = {"seq", "key", "time", "headers", "compress", "encoding", "raw", "size", "ttl"}
_SELECT = "SELECT seq, key, time, headers, compress, encoding, raw, ttl FROM messages"


class CorruptDatabase(Exception):
    """The file is not a usable stream database."""


def decompress(raw: bytes) -> bytes:
    """Upstream compresses large raws with zstd (compress=1)."""
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        raise ConatError("message is zstd-compressed (from upstream CoCalc) but the zstandard module "
                         "is not installed; pip install zstandard") from None
    out: bytes = zstandard.ZstdDecompressor().decompress(raw)
    return out


def _message(row: Any) -> StoredMessage:
    seq, key, t, headers, compress, encoding, raw, ttl = row
    raw = bytes(raw)
    if compress:
        raw = decompress(raw)
    return StoredMessage(int(seq), round(float(t) * 1000, 3), key, int(encoding), raw,
                         None if headers is None else json.loads(headers), None if ttl is None else int(ttl))


class SqliteStreamStore(StreamStore, StorageSession):
    """One stream file; used by one thread at a time (the stream queue guarantees it)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.conn = open_checked(file)

    def transact(self, fn: Callable[[StorageSession], T], *, write: bool) -> T:
        self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(self)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def vacuum(self) -> None:
        self.conn.execute("VACUUM")

    def close(self) -> None:
        self.conn.close()

    def savepoint(self) -> None:
        self.conn.execute("SAVEPOINT item")

    def release(self) -> None:
        self.conn.execute("RELEASE item")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK TO item")
        self.conn.execute("RELEASE item")

    def read_config(self) -> dict[str, str]:
        return {str(f): str(v) for f, v in self.conn.execute("SELECT field, value FROM config")}

    def write_config(self, field: str, value: str) -> None:
        self.conn.execute("INSERT INTO config (field, value) VALUES (?, ?) "
                          "ON CONFLICT(field) DO UPDATE SET value = excluded.value", (field, value))

    def seq_of_key(self, key: str) -> int | None:
        row = self.conn.execute("SELECT seq FROM messages WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def totals(self) -> tuple[int, int]:
        count, size = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages").fetchone()
        return int(count), int(size)

    def recent(self, since_ms: float) -> tuple[int, int]:
        count, size = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE time >= ?",
                                        (since_ms / 1000,)).fetchone()
        return int(count), int(size)

    def oldest(self, after_seq: int, limit: int) -> list[tuple[int, int]]:
        rows = self.conn.execute("SELECT seq, size FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                                 (after_seq, limit))
        return [(int(s), int(z)) for s, z in rows]

    def delete_seqs(self, seqs: list[int]) -> None:
        self.conn.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in seqs])

    def _delete(self, where: str, params: tuple[Any, ...]) -> list[int]:
        rows = self.conn.execute(f"DELETE FROM messages WHERE {where} RETURNING seq", params).fetchall()
        return sorted(int(r[0]) for r in rows)

    def delete_older_than(self, time_ms: float) -> list[int]:
        return self._delete("time < ?", (time_ms / 1000,))

    def delete_expired(self, now_ms: float) -> list[int]:
        return self._delete("ttl IS NOT NULL AND ttl > 0 AND time + ttl / 1000.0 < ?", (now_ms / 1000,))

    def delete_upto(self, last_seq: int | None) -> list[int]:
        return self._delete("1" if last_seq is None else "seq <= ?", () if last_seq is None else (last_seq,))

    def insert(self, *, key: str | None, time_ms: float, headers: str | None, encoding: int,
               raw: bytes, size: int, ttl: int | None) -> int:
        cur = self.conn.execute(
            "INSERT INTO messages (key, time, headers, compress, encoding, raw, size, ttl) "
            "VALUES (?, ?, ?, 0, ?, ?, ?, ?)", (key, time_ms / 1000, headers, encoding, raw, size, ttl))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def get(self, seq: int | None, key: str | None) -> StoredMessage | None:
        if seq is not None:
            row = self.conn.execute(f"{_SELECT} WHERE seq = ?", (seq,)).fetchone()
        else:
            row = self.conn.execute(f"{_SELECT} WHERE key = ?", (key,)).fetchone()
        return None if row is None else _message(row)

    def page(self, after_seq: int, end_seq: int | None, limit: int, max_bytes: int) -> list[StoredMessage]:
        rows = self.conn.execute(f"{_SELECT} WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                                 (after_seq, end_seq if end_seq is not None else 2**63 - 1, limit))
        out: list[StoredMessage] = []
        size = 0
        for r in rows:  # the cursor steps lazily: stop reading once the page is full
            out.append(_message(r))
            size += len(out[-1].raw)
            if size >= max_bytes:
                break
        rows.close()
        return out

    def keys(self) -> list[str]:
        return [str(r[0]) for r in self.conn.execute("SELECT key FROM messages WHERE key IS NOT NULL ORDER BY seq")]

    def last_seq(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])


def _connect(file: Path) -> sqlite3.Connection:
    # Only the hub's user may read streams (SQLite gives -wal and -shm the file's mode).
    os.close(os.open(file, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(str(file), isolation_level=None, check_same_thread=False)
    try:
        result = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            raise CorruptDatabase("; ".join(str(r) for r in result[:3]))
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables - {"sqlite_sequence"}:
            if not {"messages", "config"} <= tables:
                raise CorruptDatabase(f"not a stream database (tables: {', '.join(sorted(tables))})")
            columns = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
            if not COLUMNS <= columns:
                raise CorruptDatabase(f"messages table lacks {', '.join(sorted(COLUMNS - columns))}")
        conn.execute("PRAGMA journal_mode=WAL")  # only now: it rewrites the header of the file
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        return conn
    except sqlite3.DatabaseError as e:
        conn.close()
        raise CorruptDatabase(str(e)) from None
    except BaseException:
        conn.close()
        raise


def open_checked(file: Path) -> sqlite3.Connection:
    """Open (creating) a stream file; a corrupt one is moved aside and replaced by a fresh one."""
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return _connect(file)
    except CorruptDatabase as e:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = file.with_name(f"{file.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = file.with_name(f"{file.name}.corrupt-{stamp}.{n}")
            n += 1
        for suffix in ("-wal", "-shm", ""):
            src = Path(str(file) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        log.error("persist: corrupt stream database {file} ({reason}); moved it to {aside} and started "
                  "an empty stream", file=str(file), reason=str(e), aside=str(aside))
        return _connect(file)


MAX_NAME_BYTES = 255
"""A file name's limit on the file systems streams live on (ext4, xfs, btrfs, APFS)."""
MAX_FILE_BYTES = 4000
"""Encoded root + path + '.db' at most this many bytes (PATH_MAX is 4096 on Linux)."""
_LONG_PREFIX_BYTES = 160


def _unsafe(ch: str) -> bool:
    """Characters a file name never holds as they are: the escape itself, the backslash (a
    separator elsewhere), control characters and lone surrogates (not UTF-8)."""
    return ch in "%\\" or ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff"


def _tokens(segment: str) -> list[str]:
    return ["".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")) if _unsafe(ch) else ch
            for ch in segment]


def encode_segment(segment: str, last: bool) -> str:
    """One path segment as a file (``last``) or directory name.

    Percent-encoding of the characters of :func:`_unsafe` only, so the names of paths made
    of other characters (all paths that worked before) are the paths themselves, as
    upstream names its files, and existing streams stay where they are; ``%`` is always
    encoded, so different paths never share a name. A directory's name never contains
    ``.db`` (its ``.`` is encoded there), so no directory can take the name of a stream's
    file or its ``-wal``/``-shm`` companions (path ``a`` is ``a.db``, path ``a.db/x`` is in
    ``a%2Edb/``). A name too long for the file system keeps a readable prefix and ends in
    ``%~`` plus a SHA-256 of the segment (``%~`` is nothing the encoding produces)."""
    tokens = _tokens(segment)
    if not last:
        text = "".join(tokens)
        while ".db" in text:  # rare: encode the dot of every ".db"
            i = text.index(".db")
            text = text[:i] + "%2E" + text[i + 1:]
        tokens = [text]
    name = "".join(tokens) + (".db" if last else "")
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    prefix: list[str] = []
    size = 0
    for token in _tokens(segment):  # whole tokens: never half of an escape or of a character
        size += len(token.encode("utf-8"))
        if size > _LONG_PREFIX_BYTES:
            break
        prefix.append(token)
    digest = hashlib.sha256(segment.encode("utf-8", "surrogatepass")).hexdigest()
    short = "".join(prefix).replace(".db", "%2Edb") + "%~" + digest
    return short + (".db" if last else "")


def stream_file(root: Path, path: str) -> Path:
    """Where the stream at ``path`` lives: ``root/<path>.db`` with every segment encoded by
    :func:`encode_segment`, so a path is never used as a file system path: whatever its
    characters, the file is inside ``root`` and belongs to that path alone. Empty, ``.``
    and ``..`` segments (and NUL, which PostgreSQL cannot store either) are refused."""
    parts = path.split("/")
    if not path or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise ConatError(f"invalid storage path {path!r}: empty, '.' or '..' segments, a leading or trailing "
                         "'/' or NUL", 403)
    names = [encode_segment(p, i == len(parts) - 1) for i, p in enumerate(parts)]
    file = root.resolve().joinpath(*names)
    if len(str(file).encode("utf-8")) > MAX_FILE_BYTES:
        raise ConatError(f"storage path of {len(path)} characters is too long for a file name here "
                         f"(more than {MAX_FILE_BYTES} bytes once encoded)", 400)
    if not file.resolve().is_relative_to(root.resolve()):  # (a symlink inside root)
        raise ConatError(f"invalid storage path {path!r}: outside the storage root", 403)
    return file


class SqliteStorageBackend(OpenStreams, StorageBackend):
    """Streams as SQLite files under ``root``; ephemeral streams stay in memory."""

    name = "sqlite"

    def __init__(self, root: Path, reactor: IThreadPoolReactor, clock: Callable[[], float] | None = None,
                 *, threads: int = 4) -> None:
        super().__init__()
        self.root = Path(root)
        self.reactor = reactor
        self.clock: Callable[[], float] = clock or reactor.seconds
        self._threads = WorkerThreads(reactor, "cocalc-hub-persist-sqlite", threads)
        self._run = self._threads.run
        self._opening: dict[str, Deferred[QueuedStream]] = {}

    async def open(self, path: str, *, ephemeral: bool = False) -> Stream:
        stream = self._shared(path)
        if stream is not None:
            return stream
        if path in self._opening:  # someone else is opening it right now: share
            stream = await self._opening[path]
            return await self.open(path, ephemeral=ephemeral)
        if ephemeral:
            return self._keep(memory_stream(path, True, self.clock, self._forget, self.reactor))
        file = stream_file(self.root, path)
        d: Deferred[QueuedStream] = Deferred()
        self._opening[path] = d
        try:
            store: SqliteStreamStore = await self._run(lambda: SqliteStreamStore(file))
        except BaseException as e:
            del self._opening[path]
            d.errback(e)
            d.addErrback(lambda _: None)
            raise
        stream = self._keep(QueuedStream(path, False, store, self._run, self.clock, self._forget))
        del self._opening[path]
        d.callback(stream)
        return stream

    async def close(self) -> None:
        await self._shutdown_streams()
        await self._threads.stop()
