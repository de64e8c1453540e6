"""Files of the project over conat: paths confined to HOME, sizes bounded.

Every path a caller gives is resolved with symlinks followed and must stay inside HOME,
so ``..``, absolute paths elsewhere and symlinks pointing out are refused the same way.
(Code running in the project can reach anything the project's user can anyway; the
point is that the API never becomes a way out of HOME for callers who only have it.)
Reads and writes run in a thread: a 16 MB file must not stall the reactor.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import threads

MAX_READ = 16 * 1024 * 1024
MAX_WRITE = 16 * 1024 * 1024
MAX_LISTING = 10_000


class FileError(Exception):
    """A refused or failed file operation; ``status`` is an HTTP-like code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def confine(home: Path, raw: object, *, name: str = "path") -> Path:
    """The real path of ``raw`` (relative to HOME, or absolute inside it), or FileError 403."""
    if raw in (None, "", "."):
        return home
    if not isinstance(raw, str) or "\x00" in raw:
        raise FileError(400, f"{name} must be a string")
    candidate = Path(os.path.realpath(home / raw))
    if candidate != home and not candidate.is_relative_to(home):
        raise FileError(403, f"{name} {raw!r} is outside the project's home directory")
    return candidate


def relative(home: Path, path: Path) -> str:
    return "." if path == home else str(path.relative_to(home))


def _os_error(e: OSError, raw: object) -> FileError:
    what = e.strerror or str(e)
    code = 404 if isinstance(e, FileNotFoundError) else 403 if isinstance(e, PermissionError) else 500
    return FileError(code, f"{raw}: {what}")


def listing(home: Path, raw: object = None, hidden: bool = True) -> list[dict[str, Any]]:
    """Upstream's directory-listing entries: ``{name, isdir?, size, mtime (s), issymlink?, link_target?}``."""
    directory = confine(home, raw)
    try:
        if not directory.is_dir():
            raise FileError(400, f"{raw} is not a directory")
        with os.scandir(directory) as it:
            entries: list[os.DirEntry[str]] = []
            for entry in it:
                if len(entries) >= MAX_LISTING:
                    raise FileError(413, f"{raw or '.'} has more than {MAX_LISTING} entries")
                if not hidden and entry.name.startswith("."):
                    continue
                entries.append(entry)
    except OSError as e:
        raise _os_error(e, raw or ".") from None
    out = []
    for entry in sorted(entries, key=lambda e: e.name):
        item: dict[str, Any] = {"name": entry.name}
        try:
            info = entry.stat(follow_symlinks=True)
        except OSError:
            info = entry.stat(follow_symlinks=False)
            item["error"] = "broken symlink"
        if stat.S_ISDIR(info.st_mode):
            item["isdir"] = True
        item["size"] = info.st_size
        item["mtime"] = info.st_mtime
        if entry.is_symlink():
            item["issymlink"] = True
            try:
                item["link_target"] = os.readlink(entry.path)
            except OSError:
                pass
        out.append(item)
    return out


def _read(home: Path, raw: object, limit: int) -> bytes:
    path = confine(home, raw)
    try:
        # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: the last component was resolved.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _os_error(e, raw) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(400, f"{raw} is not a regular file")
        if st.st_size > limit:
            raise FileError(413, f"{raw} is {st.st_size} bytes; readFile reads at most {limit} bytes")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileError(413, f"{raw} is larger than {limit} bytes; readFile reads at most {limit} bytes")
    return data


def _write(home: Path, raw: object, data: bytes) -> Path:
    path = confine(home, raw)
    if path == home:
        raise FileError(400, "path must name a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise FileError(400, f"{raw} is a directory")
        # Write next to it and rename: readers never see half a file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            except FileNotFoundError:
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise _os_error(e, raw) from None
    return path


async def read_file(home: Path, raw: object, encoding: object = None, limit: int = MAX_READ) -> str | bytes:
    """Bytes, or text when ``encoding`` is ``utf8``/``utf-8`` (as node's ``fs.readFile``)."""
    if encoding not in (None, "utf8", "utf-8"):
        raise FileError(400, "encoding must be utf8 or omitted (bytes)")
    data: bytes = await threads.deferToThread(_read, home, raw, limit)
    if encoding is None:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(415, f"{raw} is not UTF-8 text; read it without an encoding") from None


async def write_file(home: Path, raw: object, data: object, limit: int = MAX_WRITE) -> dict[str, Any]:
    """Write text (as UTF-8) or bytes, creating missing directories inside HOME."""
    if isinstance(data, str):
        blob = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray)):
        blob = bytes(data)
    else:
        raise FileError(400, "data must be a string or bytes")
    if len(blob) > limit:
        raise FileError(413, f"{len(blob)} bytes is too much; writeFile writes at most {limit} bytes")
    path: Path = await threads.deferToThread(_write, home, raw, blob)
    return {"path": relative(home, path), "bytes": len(blob)}
