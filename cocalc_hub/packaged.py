"""Files shipped inside the package, found through ``importlib.resources``.

Web assets and page templates (``cocalc_hub/web/assets/``) and the schema files
(``cocalc_hub/db/schema/<backend>/NNN-*.sql``) are package data: MANIFEST.in grafts them into the
sdist and setup.cfg's ``[options.package_data]`` globs put them into the wheel. Nothing here assumes a
checkout: every path starts from ``importlib.resources.files()``.

The static file server stats, ranges and caches files, so it needs a real directory. Every normal
installation (from a wheel or an sdist, editable or not; setup.cfg says ``zip_safe = False``) keeps
the package as files on disk, where ``files()`` is a ``pathlib.Path``. Imported from a zip archive
there is no such directory (and ``as_file`` cannot extract one on Python 3.11), so
:func:`check_installation` refuses to start, with a sentence saying why, instead of serving nothing.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

REQUIRED: tuple[tuple[str, ...], ...] = (
    ("cocalc_hub.web", "assets", "index.html"),
    ("cocalc_hub.web", "assets", "pages", "layout.html"),
    ("cocalc_hub.db", "schema", "sqlite"),
    ("cocalc_hub.db", "schema", "postgres"),
)
"""(package, *path) of what start-up needs; one file or directory stands for each kind of data."""


class IncompleteInstall(Exception):
    """A file the hub needs at run time is not on disk where the package should have it."""


def package_file(package: str, *parts: str) -> Traversable:
    """A file or directory inside ``package`` (an importable package name)."""
    found = resources.files(package)
    for part in parts:
        found = found / part
    return found


def package_path(package: str, *parts: str) -> Path:
    """The same as a file system path. For a package imported from a zip archive this path does
    not exist; :func:`check_installation` catches that at start-up."""
    found = package_file(package, *parts)
    return found if isinstance(found, Path) else Path(str(found))


def check_installation(required: tuple[tuple[str, ...], ...] | None = None) -> None:
    """Raise IncompleteInstall, with one sentence, if package data is missing or not on disk."""
    for package, *parts in REQUIRED if required is None else required:
        found = package_file(package, *parts)
        if not isinstance(found, Path):
            raise IncompleteInstall(
                f"{package} is imported from {str(found)!r}, not from a directory on disk (a zip archive?); "
                "the hub serves its files from disk: install cocalc-hub with pip")
        if not found.exists():
            raise IncompleteInstall(
                f"{str(found)!r} is missing: this installation of cocalc-hub lacks its package data; "
                "reinstall it with pip from a checkout, or from an sdist or wheel built by 'python -m build'")
