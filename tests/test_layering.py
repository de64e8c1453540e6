"""Who may import whom (issue 15): conat is a library the hub uses, and the program inside
each project does not carry the hub's parts.

Every module is parsed with :mod:`ast`, so imports inside functions (lazy ones) count, and so
do ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from twisted.trial import unittest

PACKAGE = Path(__file__).resolve().parent.parent / "cocalc_hub"

HUB_PARTS = ("auth", "db", "projects", "project_agent", "web", "proxy", "settings", "tap", "admin*",
             "broker_link", "bus")
"""What conat must not import: the hub's parts (``admin*``: admin and admin_remote)."""

AGENT_FORBIDDEN = ("auth", "db", "web", "proxy", "projects", "tap", "settings", "admin*", "broker_link", "bus")
"""What the project program must not import: hub-only packages."""

AGENT_EXCEPTIONS = {
    # Imported before this rule was written; each is a small piece the project program needs
    # that lives in a hub package today. Move the piece to a neutral module, then drop the line.
    ("conat_link.py", "cocalc_hub.auth.cookies"),  # CookieNames (the cookie names it signs in with)
    ("raw.py", "cocalc_hub.web.files"),  # safe_resolve / serve_file (serving a project's files)
}


def _resolve(module: str | None, level: int, path: Path) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in the module at ``path``."""
    if level == 0:
        return module or ""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] != "__init__":
        parts.pop()  # a module's package
    else:
        parts.pop()  # the package itself
    base = parts[:len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(base + ([module] if module else []))


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imports_of(source: str, path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``source``: statements anywhere (module level or
    inside functions), ``from X import y`` as ``X`` and ``X.y``, and import_module/__import__
    calls with a literal name."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, path)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args:
                target = _literal(node.args[0])
                if target is None:
                    continue
                if target.startswith("."):
                    package = _literal(node.args[1]) if len(node.args) > 1 else next(
                        (_literal(k.value) for k in node.keywords if k.arg == "package"), None)
                    dots = len(target) - len(target.lstrip("."))
                    target = _resolve(target[dots:] or None, dots, PACKAGE.parent / (package or "").replace(
                        ".", "/") / "__init__.py") if package else target
                found.append((node.lineno, target))
    return found


def _hits(module: str, parts: Iterable[str]) -> bool:
    for part in parts:
        name = "cocalc_hub." + part
        if part.endswith("*"):
            if module.startswith(name[:-1]):
                return True
        elif module == name or module.startswith(name + "."):
            return True
    return False


def violations(root: Path, forbidden: Iterable[str]) -> list[str]:
    """``file:line: imports X`` for every import of a forbidden part under ``root``."""
    forbidden = tuple(forbidden)
    out = []
    for path in sorted(root.rglob("*.py")):
        seen: set[tuple[int, str]] = set()
        for line, module in imports_of(path.read_text(), path):
            if _hits(module, forbidden) and (line, module) not in seen:
                seen.add((line, module))
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    return out


def _top(modules: list[str]) -> list[str]:
    """Drop ``X.y`` entries whose ``X`` is listed for the same line (``from X import y``)."""
    keep = []
    for entry in modules:
        where, _, module = entry.partition(": imports ")
        parent = module.rsplit(".", 1)[0]
        if f"{where}: imports {parent}" not in modules:
            keep.append(entry)
    return keep


class ConatIsALibraryTests(unittest.TestCase):
    def test_conat_imports_nothing_of_the_hub(self) -> None:
        found = _top(violations(PACKAGE / "conat", HUB_PARTS))
        self.assertEqual(found, [], "cocalc_hub/conat is a library the hub uses: it must not import the hub's "
                                    "parts (" + ", ".join(HUB_PARTS) + "). Define a hook (a Protocol or "
                                    "callable) in conat and let the hub (cocalc_hub/bus) pass it in:\n  "
                         + "\n  ".join(found))


class ProjectAgentTests(unittest.TestCase):
    def test_project_agent_imports_no_hub_only_package(self) -> None:
        found = [v for v in _top(violations(PACKAGE / "project_agent", AGENT_FORBIDDEN))
                 if (Path(v.split(":")[0]).name, v.split(": imports ")[1]) not in AGENT_EXCEPTIONS]
        self.assertEqual(found, [], "cocalc_hub/project_agent (the program inside each project) must not import "
                                    "hub-only packages (" + ", ".join(AGENT_FORBIDDEN) + "):\n  "
                         + "\n  ".join(found))

    def test_exceptions_are_still_needed(self) -> None:
        """An exception whose import is gone must leave AGENT_EXCEPTIONS too."""
        found = {(Path(v.split(":")[0]).name, v.split(": imports ")[1])
                 for v in violations(PACKAGE / "project_agent", AGENT_FORBIDDEN)}
        self.assertEqual(AGENT_EXCEPTIONS - found, set())


class SharedSubjectsTests(unittest.TestCase):
    def test_subjects_import_neither_side(self) -> None:
        """cocalc_hub/subjects.py is shared by the hub and the project program: it imports
        nothing of the package (so neither side reaches into the other through it)."""
        path = PACKAGE / "subjects.py"
        found = [f"subjects.py:{line}: imports {m}" for line, m in imports_of(path.read_text(), path)
                 if m == "cocalc_hub" or m.startswith("cocalc_hub.")]
        self.assertEqual(found, [])


class DetectorTests(unittest.TestCase):
    """The checks above see every form of import."""

    path = PACKAGE / "conat" / "persist" / "example.py"

    def modules(self, source: str) -> set[str]:
        return {m for _, m in imports_of(source, self.path)}

    def test_statements_anywhere(self) -> None:
        source = ("import cocalc_hub.db.store\n"
                  "from cocalc_hub import settings\n"
                  "def f():\n    from cocalc_hub.auth.caller import Caller\n"
                  "class C:\n    def m(self):\n        import cocalc_hub.web as w\n")
        self.assertTrue({"cocalc_hub.db.store", "cocalc_hub.settings", "cocalc_hub.auth.caller",
                         "cocalc_hub.web"} <= self.modules(source))

    def test_relative_imports(self) -> None:
        self.assertIn("cocalc_hub.conat.persist.server", self.modules("from .server import PersistServer\n"))
        self.assertIn("cocalc_hub.projects", self.modules("from ... import projects\n"))
        self.assertIn("cocalc_hub.projects.operations", self.modules("from ...projects.operations import x\n"))

    def test_import_module_literals(self) -> None:
        source = ("import importlib\n"
                  "def f():\n    importlib.import_module('cocalc_hub.tap')\n"
                  "    __import__('cocalc_hub.proxy.core')\n"
                  "    import_module('.admin', 'cocalc_hub')\n"
                  "    import_module('.bus', package='cocalc_hub')\n")
        self.assertTrue({"cocalc_hub.tap", "cocalc_hub.proxy.core", "cocalc_hub.admin", "cocalc_hub.bus"}
                        <= self.modules(source))

    def test_matching(self) -> None:
        self.assertTrue(_hits("cocalc_hub.admin_remote", HUB_PARTS))
        self.assertTrue(_hits("cocalc_hub.db", HUB_PARTS))
        self.assertFalse(_hits("cocalc_hub.dbx", HUB_PARTS))
        self.assertFalse(_hits("cocalc_hub.conat.broker", HUB_PARTS))
        self.assertFalse(_hits("cocalc_hub.subjects", HUB_PARTS))
