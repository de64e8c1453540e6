"""What the operator runs: the hub's files are private from the first start of a new version
(older files repaired, and said so), and a hub running as root does not quietly run
single-user projects as root (issue 13 §1)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub import logs
from cocalc_hub.projects import processes
from tests.security.tenants import require_root
from tests.support import TWISTD, LogCapture, settings_for, spawn, start_hub, until
from tests.web.api_client import ApiClient


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def planted(path: Path, mode: int, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


class RepairTests(unittest.TestCase):
    timeout = 60

    async def test_start_up_makes_an_older_hubs_files_private_and_logs_it(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        data = tmp / "data"
        # What an older hub (umask 022) left behind: everything readable by every local user.
        data.mkdir(parents=True)
        os.chmod(data, 0o755)
        db = planted(data / "hub.db", 0o644, "")
        secret = planted(data / "secrets" / "conat-password", 0o644, "hunter2\n")
        os.chmod(secret.parent, 0o755)
        stream = planted(data / "sync" / "projects" / "p" / "status.db", 0o644, "")
        for d in (data / "sync", data / "sync" / "projects", data / "sync" / "projects" / "p"):
            os.chmod(d, 0o755)
        log = planted(data / "hub.log", 0o644)
        # A project's home is the project's: not touched.
        home = data / "projects" / str(uuid.uuid4())
        own = planted(home / "notes.txt", 0o644)
        os.chmod(home, 0o755)

        proc, _ = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--data", str(data),
                               "--port", "tcp:0:interface=127.0.0.1"], cwd=str(tmp))
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        output = proc.output.decode("utf-8", "replace")
        for path, old, new in ((data, 0o755, 0o700), (db, 0o644, 0o600), (secret, 0o644, 0o600),
                               (stream, 0o644, 0o600), (data / "sync", 0o755, 0o700), (log, 0o644, 0o600)):
            self.assertEqual(mode(path), new, path)
            self.assertIn(f"{path} was accessible to other users (mode {old:04o}); changed to {new:04o}", output)
        made = ("hub.db-wal", "hub.db-shm", "secrets/project-token-key")
        # The database may still be opening (in a thread) when the hub logs that it runs.
        await until(lambda: all((data / name).exists() for name in made), what="the hub's new files")
        for name in made:
            self.assertEqual(mode(data / name), 0o600, name)  # made private as they were made
        self.assertEqual((mode(home), mode(own)), (0o755, 0o644))
        # The hub's umask: whatever else it creates is its user's alone.
        assert proc.transport is not None
        with open(f"/proc/{proc.transport.pid}/status") as f:
            umask = [line.split()[1] for line in f if line.startswith("Umask:")]
        self.assertEqual(umask, ["0077"])

    def test_a_log_file_is_private(self) -> None:
        path = planted(Path(self.mktemp()).resolve() / "hub.log", 0o644)
        stream = logs.log_stream({"logfile": str(path), "nodaemon": False})
        self.addCleanup(stream.close)
        self.assertEqual(mode(path), 0o600)


class RootProjectsTests(unittest.TestCase):
    """Single-user mode runs projects as the hub's user; for a hub running as root that is root."""

    timeout = 60

    async def owner_with_project(self, allow: bool) -> tuple[ApiClient, str, LogCapture]:
        require_root()
        captured = LogCapture(self)
        hub = start_hub(self, settings_for(self.mktemp(), {"allow-root-projects": allow, "project-stop-grace": "2"}))
        owner = ApiClient(hub.base, HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual((await owner.sign_up("root-owner@example.com")).code, 201)
        project_id = (await owner.post("projects/create", {"title": "R"})).json["project_id"]
        self.addCleanup(processes.kill_project, project_id)
        return owner, project_id, captured

    async def test_refused_without_allow_root_projects(self) -> None:
        owner, project_id, captured = await self.owner_with_project(False)
        r = await owner.post("projects/start", {"project_id": project_id})
        self.assertEqual(r.code, 500, r)
        why = r.json["error"]
        self.assertTrue(why.startswith("refusing to start projects as root: ") and "--allow-root-projects" in why
                        and "\n" not in why, why)
        # The same line in the log, once, at start.
        line = await captured.wait_for("refusing to start projects as root")
        self.assertEqual(line, "cocalc-hub: " + why)
        self.assertEqual(processes.project_processes(project_id), [])

    async def test_runs_as_root_when_the_operator_says_so(self) -> None:
        owner, project_id, captured = await self.owner_with_project(True)
        await captured.wait_for("projects run as root")
        r = await owner.post("projects/start", {"project_id": project_id})
        self.assertEqual((r.code, r.json["state"]["state"]), (200, "running"), r)
        running = processes.project_processes(project_id)
        self.assertTrue(running)
        self.assertEqual({p.uids().real for p in running}, {0})
        r = await owner.post("projects/stop", {"project_id": project_id})
        self.assertEqual(r.code, 200, r)
