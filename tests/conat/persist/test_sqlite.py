"""SQLite-only behaviour: upstream files, corruption quarantine, durability, bounded memory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend, stream_file
from tests.conat.persist.support import START, fake_clock, make_sqlite, req
from tests.support import REPO


class SqliteTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = fake_clock()
        self.root = Path(self.mktemp())
        self.errors: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") == LogLevel.error and "corrupt" in str(event.get("log_format")):
                from twisted.logger import formatEvent
                self.errors.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def backend(self) -> SqliteStorageBackend:
        b = make_sqlite(self, self.clock, self.root)
        assert isinstance(b, SqliteStorageBackend)
        self.addCleanup(b.close)
        return b

    async def test_upstream_schema_file(self) -> None:
        b = self.backend()
        s = await b.open("projects/p/sub/dir/stream")
        await s.set(req(b"hello", key="k", headers={"a": "b"}))
        await b.close()
        file = self.root / "projects/p/sub/dir/stream.db"
        conn = sqlite3.connect(file)
        self.addCleanup(conn.close)
        row = conn.execute("SELECT seq, key, time, headers, compress, encoding, raw, size, ttl "
                           "FROM messages").fetchone()
        self.assertEqual(row, (1, "k", START, '{"a":"b"}', 0, 1, b"hello", 15, None))
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        self.assertTrue({"idx_messages_key", "idx_messages_time"} <= indexes)
        # a row as upstream writes it with zstd (compress=1)
        conn.execute("INSERT INTO messages (key, time, headers, compress, encoding, raw, size) "
                     "VALUES ('z', 1.5, NULL, 1, 1, x'28b52ffd2000', 1)")
        conn.commit()
        s = await self.backend().open("projects/p/sub/dir/stream")
        try:
            import zstandard  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            with self.assertRaises(ConatError) as e:
                await s.get(key="z")
            self.assertIn("zstandard", str(e.exception))
        else:
            m = await s.get(key="z")
            assert m is not None
            self.assertEqual((m.raw, m.time), (b"", 1500.0))

    async def test_path_outside_root_refused(self) -> None:
        b = self.backend()
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b"]:
            with self.assertRaises(ConatError) as e:
                await b.open(bad)
            self.assertEqual(e.exception.code, 403)
        self.assertFalse(self.root.exists() and any(self.root.iterdir()))

    async def _check_quarantine(self, file: Path, original: bytes) -> None:
        b = self.backend()
        s = await b.open("hub/s")
        self.assertEqual(await s.inventory(), {"bytes": 0, "count": 0, "limits": {}, "seq": 0})
        self.assertEqual((await s.set(req()))["seq"], 1)
        aside = [p for p in file.parent.iterdir() if p.name.startswith("s.db.corrupt-") and "-wal" not in p.name
                 and "-shm" not in p.name]
        self.assertEqual(len(aside), 1)
        self.assertEqual(aside[0].read_bytes(), original)  # moved, never rewritten or deleted
        self.assertEqual(len(self.errors), 1)
        self.assertIn(str(file), self.errors[0])
        self.assertIn(str(aside[0]), self.errors[0])

    async def test_corrupt_garbage_file(self) -> None:
        file = self.root / "hub/s.db"
        file.parent.mkdir(parents=True)
        garbage = os.urandom(5000)
        file.write_bytes(garbage)
        await self._check_quarantine(file, garbage)

    async def _real_db(self) -> Path:
        b = self.backend()
        s = await b.open("hub/s")
        await s.set_many([req(os.urandom(300), key=f"k{i}") for i in range(400)])
        await b.close()
        file = self.root / "hub/s.db"
        self.assertFalse(Path(str(file) + "-wal").exists() and Path(str(file) + "-wal").stat().st_size)
        return file

    async def test_truncated_database(self) -> None:
        file = await self._real_db()
        data = file.read_bytes()[: file.stat().st_size // 2]
        file.write_bytes(data)
        await self._check_quarantine(file, data)

    async def test_clobbered_page(self) -> None:
        file = await self._real_db()
        data = bytearray(file.read_bytes())
        page = int.from_bytes(data[16:18], "big")
        data[3 * page: 4 * page] = b"\xa5" * page
        file.write_bytes(bytes(data))
        await self._check_quarantine(file, bytes(data))

    async def test_foreign_database(self) -> None:
        file = self.root / "hub/s.db"
        file.parent.mkdir(parents=True)
        conn = sqlite3.connect(file)
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
        conn.close()
        await self._check_quarantine(file, file.read_bytes())

    async def test_get_all_memory_is_bounded(self) -> None:
        b = self.backend()
        s = await b.open("hub/big")
        chunk = b"x" * 100_000
        for _ in range(4):  # 40 MB
            await s.set_many([req(chunk) for _ in range(100)])
        tracemalloc.start()
        try:
            count = 0
            async for batch in s.get_all(batch_bytes=2_000_000):
                count += len(batch)
                self.assertLessEqual(sum(len(m.raw) for m in batch), 2_000_000)
                del batch
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual(count, 400)
        self.assertLess(peak, 12_000_000)  # a batch and a page, far below the 40 MB stored

    async def test_kill_9_keeps_acknowledged_writes(self) -> None:
        root = (self.root / "kill").resolve()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("writer.py")), str(root)],
                                stdout=subprocess.PIPE, cwd=str(REPO), text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        out = proc.stdout

        def read_until_killed() -> list[int]:
            assert out.readline().strip() == "ready"
            seen: list[int] = []
            for line in out:
                seen.append(int(line))
                if len(seen) == 3000:
                    proc.send_signal(signal.SIGKILL)  # mid-stream: writes are still in flight
            proc.wait()
            return seen

        acked = await deferToThread(read_until_killed)
        out.close()
        self.assertEqual(proc.returncode, -signal.SIGKILL)
        self.assertGreaterEqual(len(acked), 3000)
        backend = SqliteStorageBackend(root, reactor)
        self.addCleanup(backend.close)
        s = await backend.open("hub/durable")
        stored = {m.seq for batch in [b async for b in s.get_all()] for m in batch}
        self.assertEqual(sorted(set(acked) - stored)[:5], [], f"{len(stored)} stored, {len(acked)} acked")


class FileNameTests(unittest.TestCase):
    """Stream paths are encoded into file names, never used as file system paths."""

    def test_names_of_already_safe_paths_are_kept(self) -> None:
        root = Path(self.mktemp()).resolve()
        for path in ("projects/p/sub/dir/stream", "hub/sp ace/é☃𝄞", "hub/colon:star*q?", "hub/x.db-wal"):
            self.assertEqual(stream_file(root, path), root.joinpath(*path.split("/")[:-1], path.split("/")[-1] + ".db"))

    def test_odd_characters_are_percent_encoded(self) -> None:
        root = Path(self.mktemp()).resolve()
        cases = {"hub/back\\slash": "hub/back%5Cslash.db", "hub/per%cent": "hub/per%25cent.db",
                 "hub/per%25cent": "hub/per%2525cent.db", "hub/..\\..\\x": "hub/..%5C..%5Cx.db",
                 "hub/nl\nnul\x7f": "hub/nl%0Anul%7F.db", "hub/a.db/x": "hub/a%2Edb/x.db",
                 "hub/\ud800": "hub/%ED%A0%80.db"}
        for path, name in cases.items():
            self.assertEqual(stream_file(root, path), root / name, repr(path))

    def test_hostile_paths_are_refused_or_stay_inside_the_root(self) -> None:
        base = Path(self.mktemp()).resolve()
        root = base / "root"
        for path in ("..", "../x", "a/../../x", "/etc/passwd", "a//b", "a/", ".", "a/./b", "", "a\x00b", "hub/\x00"):
            with self.assertRaises(ConatError) as e:
                stream_file(root, path)
            self.assertEqual(e.exception.code, 403, repr(path))
        with self.assertRaises(ConatError) as e:
            stream_file(root, "/".join(["d" * 200] * 30))
        self.assertEqual(e.exception.code, 400)
        self.assertIn("too long", str(e.exception))
        long_a, long_b = "hub/" + "L" * 1000, "hub/" + "L" * 999 + "M"
        files = {stream_file(root, p) for p in (long_a, long_b, "hub/" + "é" * 300, "hub/" + "\\" * 300)}
        self.assertEqual(len(files), 4)
        for f in files:
            self.assertLessEqual(len(f.name.encode()), 255)
            self.assertTrue(f.name.endswith(".db") and "%~" in f.name)
            self.assertEqual(f.parent, root / "hub")

    async def test_opened_odd_paths_write_only_inside_the_root(self) -> None:
        base = Path(self.mktemp()).resolve()
        root = base / "root"
        backend = SqliteStorageBackend(root, reactor)
        self.addCleanup(backend.close)
        paths = ["hub/..\\..\\escape", "..\\..\\escape", "hub/a\\..\\..\\..\\b", "hub/" + "\\.." * 300, "hub/%2F"]
        for path in paths:
            s = await backend.open(path)
            await s.set(req(path.encode()))
        await backend.close()
        self.assertEqual(os.listdir(base), ["root"])
        written = [Path(d, f) for d, _, fs in os.walk(root) for f in fs]
        self.assertEqual(len([f for f in written if f.suffix == ".db"]), len(paths))
        for f in written:
            self.assertTrue(f.resolve().is_relative_to(root))
