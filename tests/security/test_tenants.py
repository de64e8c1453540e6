"""Hostile tenants (issue 13 §1): a process inside project M2, running as M2's uid on a
multi-user hub, tries to read the hub's files and M1's secret token, to act as M1, or to have
the hub take its processes for M1's; a collaborator of M1 tries to fetch M1's token."""

from __future__ import annotations

import os
import signal

import psutil

from cocalc_hub.private_files import projects_root
from cocalc_hub.projects import processes
from tests.security.tenants import TenantCase, try_read_script
from tests.support import settle, until


class HubFilesTests(TenantCase):
    def before_start(self) -> None:
        # A log the operator keeps in the data directory, world-readable as an older hub left it.
        (self.data / "hub.log").write_text("2026-12-03 hub log\n")
        os.chmod(self.data / "hub.log", 0o644)

    async def test_nothing_of_the_hub_is_readable_from_a_project(self) -> None:
        data = self.hub.hub.settings.data_dir
        sync = self.hub.hub.settings.sync_dir
        # Persist keeps each project's status in a stream file; wait for M1's.
        await until(lambda: any(p.is_file() for p in sync.rglob("*.db")), what="a persist stream file")
        skip = projects_root(self.hub.hub.settings)
        paths = [data] + sorted(p for p in data.rglob("*") if skip not in (p, *p.parents))
        names = {p.name for p in paths}
        for expected in ("hub.db", "hub.db-wal", "hub.db-shm", "secrets", "conat-password", "sync", "hub.log"):
            self.assertIn(expected, names)  # the attack below tries each of them
        found = await self.attack(try_read_script(paths))
        self.assertEqual(found, "", "a project could read or list the hub's files")

    async def test_the_victims_token_is_nowhere_a_project_can_look(self) -> None:
        token = self.victim_token()
        # The victim's project runs a command, so it has children too.
        r = await self.victim.post("exec", {"project_id": self.m1, "command": "sleep", "args": ["300"],
                                            "async_call": True})
        self.assertEqual(r.code, 200, r)
        seen = await self.attack(
            "for d in /proc/[0-9]*; do cat $d/environ $d/cmdline 2>/dev/null | tr '\\0' '\\n'; done\n"
            "ps auxwwe 2>/dev/null\n"
            f"cat {self.hub.hub.settings.data_dir}/hub.db* 2>/dev/null | tr -c '[:print:]' '\\n'\n")
        self.assertFalse(token in seen, "M2 found M1's token")
        # Nor does the database hold it, for whoever reads a copy of it (a backup, say).
        for name in ("hub.db", "hub.db-wal"):
            stored = (self.hub.hub.settings.data_dir / name).read_bytes()
            self.assertFalse(token.encode() in stored, f"M1's token is in {name}")


class TokenFileTests(TenantCase):
    async def test_a_collaborator_cannot_fetch_the_projects_token(self) -> None:
        r = await self.victim.post("projects/collaborators/add", {"project_id": self.m1,
                                                                  "email": "attacker@example.com"})
        self.assertEqual(r.code, 200, r)
        # A token file an older version left in HOME is not served either.
        home = self.manager.home(self.m1)
        uid = processes.project_uid(self.m1)
        await self.victim.post("projects/stop", {"project_id": self.m1})
        (home / ".smc").mkdir(exist_ok=True)
        (home / ".smc" / "secret-token").write_text("legacy-token\n")
        for path in (home / ".smc", home / ".smc" / "secret-token"):
            os.chown(path, uid, uid)
        r = await self.victim.post("projects/start", {"project_id": self.m1})
        self.assertEqual(r.code, 200, r)
        token = self.victim_token()
        for path in (".smc/secret-token", ".smc/", ".smc/secret-token?download"):
            r = await self.attacker.request("GET", f"/{self.m1}/raw/{path}")
            self.assertNotIn(token, r.body.decode("utf-8", "replace"), path)
            self.assertNotIn("secret-token", r.body.decode("utf-8", "replace"), path)
        r = await self.attacker.request("GET", f"/{self.m1}/raw/.smc/secret-token")
        self.assertEqual(r.code, 404, r)
        # Nor through a command the collaborator runs in M1 (as M1's own uid): no token file, and
        # the project program's environment and memory are closed to its own uid.
        program = self.manager.active[self.m1].pid
        script = (f"cat ~/.smc/secret-token 2>/dev/null\n"
                  f"for d in /proc/[0-9]*; do cat $d/environ $d/cmdline 2>/dev/null | tr '\\0' '\\n'; done\n"
                  f"head -c 1 /proc/{program}/mem >/dev/null 2>&1 && echo MEM\n"
                  f"ls /proc/{program}/fd >/dev/null 2>&1 && echo FD\n")
        r = await self.attacker.post("exec", {"project_id": self.m1, "command": script, "bash": True,
                                              "err_on_exit": False, "max_output": 16 * 1024 * 1024})
        self.assertEqual(r.code, 200, r)
        self.assertFalse(token in r.json["stdout"], "a member's command found the project's token")
        self.assertNotIn("MEM", r.json["stdout"].split())
        self.assertNotIn("FD", r.json["stdout"].split())


class IdentityTests(TenantCase):
    async def test_exec_env_cannot_change_who_the_project_is(self) -> None:
        m1_home = str(self.manager.home(self.m1))
        for env in ({"COCALC_PROJECT_ID": self.m1}, {"HOME": m1_home}, {"COCALC_USERNAME": "x"},
                    {"cocalc_project_id": self.m1}, {"USER": "root"}):
            r = await self.exec_in_m2({"command": "env", "env": env})
            self.assertEqual(r.code, 400, (env, r))
            self.assertIn("identity variables are set by the hub", r.json["error"])
        r = await self.exec_in_m2({"command": "printenv", "args": ["MINE", "COCALC_PROJECT_ID"],
                                   "env": {"MINE": "ok", "COCALC_PROJECT_ID": self.m2}})
        self.assertEqual((r.code, r.json["stdout"]), (200, f"ok\n{self.m2}\n"), r)

    async def test_a_disguised_process_is_not_taken_for_another_projects(self) -> None:
        # M2 starts a process that claims to be M1's (the marker the hub looks for).
        r = await self.exec_in_m2({"command": "env", "args": [f"COCALC_PROJECT_ID={self.m1}", "sleep", "600"],
                                   "async_call": True})
        self.assertEqual(r.code, 200, r)
        pid = r.json["pid"]
        self.addCleanup(lambda: os.kill(pid, signal.SIGKILL) if psutil.pid_exists(pid) else None)

        def disguised() -> bool:
            try:
                return psutil.Process(pid).environ().get("COCALC_PROJECT_ID") == self.m1
            except psutil.Error:
                return False

        await until(disguised, what="M2's process to carry M1's marker")
        uid1, uid2 = processes.project_uid(self.m1), processes.project_uid(self.m2)
        self.assertEqual(psutil.Process(pid).uids().real, uid2)
        self.assertFalse(processes.belongs_to(pid, self.m1, uid1))
        self.assertNotIn(pid, [p.pid for p in processes.project_processes(self.m1, uid=uid1)])
        # Stopping M1 kills M1's processes only.
        r = await self.victim.post("projects/stop", {"project_id": self.m1})
        self.assertEqual(r.code, 200, r)
        await settle(0.5)
        self.assertTrue(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE,
                        "stopping M1 killed a process of M2")
        self.assertEqual(processes.project_processes(self.m1, uid=uid1), [])
