"""What the hub keeps on disk is readable by the hub's user only.

Projects run as other uids in multi-user mode (and any local user may be hostile), so the
data directory, the database with its ``-wal``/``-shm``, persist streams, secrets and logs
are 0700 directories and 0600 files. The hub creates them so (and runs with umask 077);
:func:`repair` fixes what an older version or an operator left group- or world-accessible,
at every start, and logs each change. Project homes are the projects' own and not touched.
The data directory itself is 0711 when project homes live under it in multi-user mode (the
projects' uids must pass through it to reach their homes; they still cannot list it).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from twisted.logger import Logger

from cocalc_hub.db.store import is_uuid
from cocalc_hub.settings import PROJECT_ID_MARKER, Settings

log = Logger()

UMASK = 0o077
MAX_LOGGED = 20


def projects_root(settings: Settings) -> Path:
    """The directory the project homes are made in (the part of PROJECTS before the id)."""
    template = settings.projects
    head = template[:template.index(PROJECT_ID_MARKER)]
    return Path(head if head.endswith("/") else os.path.dirname(head)).resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def data_dir_mode(settings: Settings) -> int:
    multi = settings.project_mode == "multi-user"
    return 0o711 if multi and _inside(projects_root(settings), settings.data_dir.resolve()) else 0o700


class Repair:
    def __init__(self) -> None:
        self.changed: list[tuple[str, int, int]] = []
        self.failed: list[tuple[str, str]] = []

    def fix(self, path: Path, allowed: int) -> None:
        """Take away every permission bit outside ``allowed`` (symlinks are left alone)."""
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~allowed == 0:
            return
        new = mode & allowed
        try:
            os.chmod(path, new)
        except OSError as e:
            self.failed.append((str(path), e.strerror or str(e)))
            return
        self.changed.append((str(path), mode, new))

    def tree(self, top: Path, skip: Path | None, top_allowed: int = 0o700) -> None:
        """``top`` and everything below it, except ``skip`` (project homes) and below."""
        self.fix(top, top_allowed)
        for dirpath, dirnames, filenames in os.walk(top, onerror=lambda e: None):
            here = Path(dirpath)
            keep = []
            for name in dirnames:
                child = here / name
                if skip is not None and (child == skip or (skip == top and here == top and is_uuid(name))):
                    continue
                self.fix(child, 0o700)
                keep.append(name)
            dirnames[:] = keep
            for name in filenames:
                self.fix(here / name, 0o700)


def repair(settings: Settings) -> Repair:
    """Make the hub's files private; log what was changed (blocking: runs before the reactor)."""
    data = settings.data_dir.resolve()
    root = projects_root(settings)
    fixes = Repair()
    fixes.tree(data, root if _inside(root, data) else None, data_dir_mode(settings))
    if data_dir_mode(settings) & 0o011:
        # Project uids pass through it to their homes (search only, no listing).
        try:
            os.chmod(data, stat.S_IMODE(os.stat(data).st_mode) | 0o011)
        except OSError:
            pass
    for extra in (settings.secrets_dir, settings.sync_dir):
        extra = Path(extra).resolve()
        if extra.is_dir() and not _inside(extra, data):
            fixes.tree(extra, None)
    if settings.database_kind == "sqlite":
        db = Path(settings.database).resolve()
        if not _inside(db, data):
            for suffix in ("", "-wal", "-shm"):
                fixes.fix(Path(str(db) + suffix), 0o700)
    for path, old, new in fixes.changed[:MAX_LOGGED]:
        log.warn("{path} was accessible to other users (mode {old:04o}); changed to {new:04o}",
                 path=path, old=old, new=new)
    if len(fixes.changed) > MAX_LOGGED:
        log.warn("… and {n} more files of the hub made private", n=len(fixes.changed) - MAX_LOGGED)
    for path, why in fixes.failed[:MAX_LOGGED]:
        log.error("{path} is accessible to other users and cannot be made private: {why}", path=path, why=why)
    return fixes
