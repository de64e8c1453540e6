"""Package data is found through importlib.resources, and an incomplete installation says so."""

from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path

from twisted.trial import unittest

from cocalc_hub import packaged
from cocalc_hub.settings import SettingsError, from_options, package_static_dir


class PackagedTests(unittest.TestCase):
    def test_this_installation_is_complete(self) -> None:
        packaged.check_installation()
        assets = package_static_dir()
        self.assertTrue((assets / "pages" / "layout.html").is_file())
        self.assertEqual(assets, packaged.package_path("cocalc_hub.web", "assets"))
        schema = packaged.package_path("cocalc_hub.db", "schema", "sqlite")
        self.assertTrue(sorted(schema.glob("[0-9][0-9][0-9]-*.sql")))

    def test_missing_package_data_is_one_line_at_start(self) -> None:
        """What a wheel built without its package data used to do: a traceback at the first query."""
        self.patch(packaged, "REQUIRED", (*packaged.REQUIRED, ("cocalc_hub.db", "schema", "nosuchdb")))
        tmp = Path(self.mktemp())
        e = self.assertRaises(SettingsError, from_options, {"data": str(tmp / "data")}, {})
        self.assertEqual(e.setting, "installation")
        self.assertIn("nosuchdb", str(e))
        self.assertIn("lacks its package data", str(e))
        self.assertNotIn("\n", str(e))
        self.assertFalse((tmp / "data").exists(), "nothing is created before the check")

    def test_package_in_a_zip_archive_is_refused_with_a_reason(self) -> None:
        archive = Path(self.mktemp() + ".zip").resolve()
        archive.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("zipped_hub_fixture/__init__.py", "")
            zf.writestr("zipped_hub_fixture/assets/index.html", "<p>hi</p>")
        sys.path.insert(0, str(archive))
        self.addCleanup(sys.modules.pop, "zipped_hub_fixture", None)
        self.addCleanup(sys.path.remove, str(archive))
        importlib.invalidate_caches()
        found = packaged.package_file("zipped_hub_fixture", "assets", "index.html")
        self.assertEqual(found.read_text(), "<p>hi</p>")
        self.assertFalse(packaged.package_path("zipped_hub_fixture", "assets").exists())
        e = self.assertRaises(packaged.IncompleteInstall, packaged.check_installation,
                              (("zipped_hub_fixture", "assets"),))
        self.assertIn("zip archive", str(e))
        self.assertIn(str(archive), str(e))
