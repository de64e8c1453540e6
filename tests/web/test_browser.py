"""End to end in a real headless browser (Debian chromium driven by Playwright).

The hub runs in this test's reactor; the browser walk (``browser_flow.py``) runs as a child
process because Playwright's sync API cannot share trial's reactor thread. Screenshots of
every page land in ``artifacts/web/``. Without chromium or Playwright the test is skipped,
except under CI=true, where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests.support import CI, REPO, free_tcp_port, settings_for, spawn, start_hub

CHROMIUM = "/usr/bin/chromium"
FLOW = str(Path(__file__).resolve().parent / "browser_flow.py")
ARTIFACTS = REPO / "artifacts" / "web"


def missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is missing (pip install -e '.[test]')"
    return None


class BrowserTests(unittest.TestCase):
    timeout = 300

    def setUp(self) -> None:
        reason = missing()
        if reason is not None:
            if CI:
                self.fail(f"the browser test cannot run under CI: {reason}")
            raise unittest.SkipTest(reason)

    async def stop_projects(self, hub: Any) -> None:
        manager = hub.hub.projects.manager
        for project_id in list(manager.active):
            await manager.stop(project_id)

    async def test_sign_up_projects_proxy_and_isolation(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp(), {"project-stop-grace": "1"}))
        self.addCleanup(self.stop_projects, hub)
        port = free_tcp_port()
        env = {k: v for k, v in os.environ.items() if k.startswith(("PLAYWRIGHT", "XDG_", "DISPLAY"))}
        assert hub.hub.admin_setup is not None
        setup_link = hub.url("/auth/setup#token=" + await hub.hub.admin_setup.new_token())
        proto, _ = spawn(self, [sys.executable, FLOW, hub.url("/"), str(ARTIFACTS), str(port), setup_link], env=env,
                         cwd=str(REPO))
        code = await proto.ended
        steps: dict[str, dict[str, Any]] = {}
        for line in proto.output.decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                steps[item["step"]] = item
        output = proto.output.decode("utf-8", "replace")[-4000:]
        self.assertEqual(code, 0, output)
        self.assertNotIn("failure", steps, output)

        self.assertIn("8", steps["sign-up"]["error_shown"])  # the browser's own check, in words
        self.assertTrue(steps["sign-up"]["error_shown"][0].isupper())  # a sentence, not a code
        self.assertIn("password", steps["sign-in"]["error_shown"].lower())
        self.assertTrue(steps["sign-in"]["landed"].endswith("/settings"))
        self.assertEqual(steps["safe-next"]["landed"], hub.url("/"))
        self.assertEqual(steps["raw"]["text"].strip(), "hello from raw")
        web = steps["web-server"]
        self.assertEqual(web["server"], "Served from the project")
        self.assertEqual(web["port"], "Served under its base path")
        for running in (True, False):
            outsider = [s for s in self.outsider_steps(output) if s["running"] is running][0]
            self.assertEqual(set(outsider["statuses"].values()), {403}, outsider)
        self.assertEqual(steps["stopped"]["member_status"], 503)
        self.assertIn("start", steps["stopped"]["page"].lower())
        self.assertTrue(steps["manage"]["unknown_email_error"][0].isupper())
        self.assertIn("not valid", steps["setup-admin"]["wrong_token"])
        self.assertIn("already exists", steps["setup-admin"]["reused"])
        self.assertEqual(steps["manage"]["errors_shown"], 1)  # once, inside the form that failed
        self.assertEqual(steps["admin"]["accounts"], 2)
        self.assertTrue(steps["admin"]["signup_form_hidden"])
        self.assertEqual((steps["admin"]["token_errors"], steps["admin"]["admin_errors"]), (1, 1))
        self.assertGreaterEqual(steps["admin"]["openapi_paths"], 28)
        self.assertLessEqual(steps["phone"]["scroll_width"], 390)  # no sideways scrolling on a phone
        self.assertLessEqual(steps["phone"]["admin_width"], 390)
        self.assertEqual(set(steps["welcome"]["favicons"].values()), {200}, steps["welcome"])
        self.assertEqual(steps["site-404"]["status"], 404)
        self.assertEqual(steps["site-404"]["back"], hub.url("/"))
        self.assertEqual(steps["proxy-502"]["status"], 502)
        self.assertTrue(steps["shared"]["delete_hidden"])
        self.assertEqual(steps["signed-out"]["raw_status"], 401)
        self.assertEqual(steps["console"]["problems"], [])
        manager = hub.hub.projects.manager  # type: ignore[union-attr]
        self.assertEqual(list(manager.active), [])  # stopped from the page: nothing left running
        shots = sorted(p.name for p in ARTIFACTS.glob("*.png"))
        self.assertGreaterEqual(len(shots), 28, shots)
        for name in ("welcome", "site-404", "proxy-403", "proxy-502", "proxy-not-running", "dashboard-shared",
                     "api-error-in-form", "api-error-admin-token", "phone-admin"):
            self.assertTrue(any(shot.endswith(f"-{name}.png") for shot in shots), name)

    def outsider_steps(self, output: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in output.splitlines()
                if line.startswith('{"step": "outsider"')]
