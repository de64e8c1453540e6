"""Autobahn|Testsuite's fuzzing client against a WebSocket echo server behind the proxy."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.trial import unittest

from tests.proxy.support import Harness
from tests.support import CI, REPO, spawn

DRIVER = str(Path(__file__).resolve().parent / "wstest_driver.py")


def wstest_python() -> str | None:
    """The Python 2.7 with autobahntestsuite 0.8.2 (.ci/run installs it in .ci/cache/wstest)."""
    candidate = os.environ.get("COCALC_WSTEST_PYTHON") or str(REPO / ".ci" / "cache" / "wstest" / "bin" / "python")
    return candidate if os.access(candidate, os.X_OK) else None


def require_wstest() -> str:
    python = wstest_python()
    if python is None:
        message = "autobahntestsuite is not installed (.ci/run installs it into .ci/cache/wstest)"
        if CI:
            raise AssertionError(message + " (CI=true: failing instead of skipping)")
        raise unittest.SkipTest(message)
    return python


async def run_fuzzing_client(case: unittest.TestCase, url: str, headers: dict[str, str],
                             exclude: list[str]) -> dict[str, int]:
    """Run the suite against ``url``; the count of each behaviour (OK, NON-STRICT, FAILED…)."""
    python = require_wstest()
    tmp = Path(case.mktemp()).resolve()
    tmp.mkdir()
    spec = {"outdir": str(tmp / "reports"), "servers": [{"agent": "cocalc-hub", "url": url, "headers": headers}],
            "cases": ["*"], "exclude-cases": exclude, "exclude-agent-cases": {}}
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc, _ = spawn(case, [python, DRIVER, str(tmp / "spec.json")], cwd=str(tmp))
    code = await proc.ended
    case.assertEqual(code, 0, proc.output.decode(errors="replace")[-3000:])
    index = json.loads((tmp / "reports" / "index.json").read_text())
    counts: dict[str, int] = {}
    failed = []
    for results in index.values():
        for case_id, result in results.items():
            counts[result["behavior"]] = counts.get(result["behavior"], 0) + 1
            if result["behavior"] == "FAILED" or result.get("behaviorClose") == "FAILED":
                failed.append(case_id)
    case.assertEqual(failed, [], f"failed cases: {failed}")
    return counts


class ProxyFuzzingTests(unittest.TestCase):
    timeout = 600

    async def test_echo_behind_port_route(self) -> None:
        require_wstest()
        h = await Harness().setup(self)
        url = f"ws://127.0.0.1:{h.hub.port}/{h.a}/port/{h.port_a}/ws"
        counts = await run_fuzzing_client(self, url, {"Cookie": h.cookie(h.owner)}, ["12.*", "13.*"])
        self.assertGreater(sum(counts.values()), 280, counts)
