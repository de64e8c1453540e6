"""Static checks that must stay clean: mypy --strict and ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

from tests.support import REPO


class StaticChecks(unittest.TestCase):
    timeout = 300

    def run_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=280)

    def test_mypy_strict(self) -> None:
        proc = self.run_tool("mypy", "--strict", "cocalc_hub")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_ruff(self) -> None:
        if shutil.which("ruff", path=str(Path(sys.executable).parent)) is None:
            raise unittest.SkipTest("ruff is not installed")
        proc = self.run_tool("ruff", "check", "cocalc_hub", "twisted", "tests", "benchmarks")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
