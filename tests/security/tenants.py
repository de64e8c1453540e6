"""The cast of the hostile-tenant tests: a real hub in multi-user mode (as root, as CI runs),
a victim with project M1 and an attacker with project M2, both running as their own uids.
The attacker acts from inside M2 (commands it runs there, as M2's uid) or as a browser."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.projects import processes
from tests.support import RunningHub, settings_for, start_hub
from tests.web.api_client import ApiClient, Response


def require_root() -> None:
    if os.geteuid() != 0:
        raise unittest.SkipTest("multi-user mode needs root (CI runs as root)")


def private_tmp(case: unittest.TestCase) -> Path:
    """A directory under /tmp that project uids may pass through (trial's temp dir is private)."""
    tmp = Path(tempfile.mkdtemp(prefix="cocalc-sec-"))
    os.chmod(tmp, 0o711)
    case.addCleanup(shutil.rmtree, tmp, True)
    return tmp


def hub_in_mode(case: unittest.TestCase, *, multi_user: bool) -> RunningHub:
    """A hub in single-user or multi-user mode (then with project homes the projects' uids can
    reach), projects stopping within a second."""
    options: dict[str, Any] = {"project-stop-grace": "1"}
    env: dict[str, str] = {}
    if multi_user:
        require_root()
        options["mode"] = "multi-user"
        env["PROJECTS"] = str(private_tmp(case) / "[project_id]")
    return start_hub(case, settings_for(case.mktemp(), options, env))


class TenantCase(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        require_root()
        self.tmp = private_tmp(self)
        self.data = self.tmp / "data"
        self.data.mkdir()
        self.before_start()
        settings = settings_for(self.tmp, {"mode": "multi-user", "project-stop-grace": "2"},
                                {"COCALC_NO_IDLE_TIMEOUT": "1"})
        self.hub: RunningHub = start_hub(self, settings)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.victim = await self.account("victim@example.com")
        self.attacker = await self.account("attacker@example.com")
        self.m1 = (await self.victim.post("projects/create", {"title": "M1"})).json["project_id"]
        self.m2 = (await self.attacker.post("projects/create", {"title": "M2"})).json["project_id"]
        self.addCleanup(self.hub.stop_projects)
        for who, project in ((self.victim, self.m1), (self.attacker, self.m2)):
            r = await who.post("projects/start", {"project_id": project})
            assert r.code == 200, r

    def before_start(self) -> None:
        """Plant files in ``self.data`` before the hub starts (subclasses)."""

    async def account(self, email: str) -> ApiClient:
        c = ApiClient(self.hub.base, self.pool)
        r = await c.sign_up(email)
        assert r.code == 201, r
        return c

    @property
    def manager(self) -> Any:
        return self.hub.hub.projects.manager  # type: ignore[union-attr]

    def victim_token(self) -> str:
        target = self.manager.local_target(self.m1)
        assert target is not None
        return str(target[1])

    async def exec_in_m2(self, params: dict[str, Any]) -> Response:
        return await self.attacker.post("exec", {"project_id": self.m2, **params})

    async def attack(self, script: str) -> str:
        """Run a bash script inside M2 (as M2's uid, which it checks); its stdout."""
        r = await self.exec_in_m2({"command": "id -u\n" + script, "bash": True, "err_on_exit": False,
                                   "timeout": 60, "max_output": 16 * 1024 * 1024})
        assert r.code == 200, r
        first, _, rest = r.json["stdout"].partition("\n")
        assert first == str(processes.project_uid(self.m2)), f"the attack ran as uid {first}"
        return str(rest)


def try_read_script(paths: list[Path]) -> str:
    """Bash that prints ``READ <path>`` / ``LIST <dir>`` for each path it can read or list."""
    lines = []
    for path in paths:
        q = shlex.quote(str(path))
        if path.is_dir():
            lines.append(f"ls -a -- {q} >/dev/null 2>&1 && echo LIST {q}")
        else:
            lines.append(f"head -c 1 -- {q} >/dev/null 2>&1 && echo READ {q}")
    return "\n".join(lines) + "\ntrue\n"
