"""The admin CLI end to end, as a real subprocess, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from tests.db.support import fresh_postgres_url
from tests.support import drive_clocks, settings_for, spawn, start_hub
from tests.web.api_client import ApiClient


class AdminCliSuite:
    kind = "sqlite"

    async def setUp(self) -> None:  # type: ignore[override]
        case: unittest.TestCase = self  # type: ignore[assignment]
        self.tmp = Path(case.mktemp()).resolve()
        self.tmp.mkdir()
        self.options: dict[str, Any] = {}
        if self.kind == "postgres":
            self.options["database"] = await fresh_postgres_url(case)
        self.hub = start_hub(case, settings_for(self.tmp, self.options))
        self.clock = drive_clocks(case, self.hub)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        case.addCleanup(self.pool.closeCachedConnections)

    async def admin(self, *args: str, expect: int = 0) -> Any:
        case: Any = self
        cmd = [sys.executable, "-m", "cocalc_hub.admin", "--data", str(self.tmp / "data")]
        if "database" in self.options:
            cmd += ["--database", self.options["database"]]
        proc, _ = spawn(case, [*cmd, "--json", *args])
        code = await proc.ended
        out = proc.output.decode()
        case.assertEqual(code, expect, out)
        if expect != 0:
            case.assertNotIn("Traceback", out)
            return out.strip()
        return json.loads(out)

    async def test_cli_flow(self) -> None:
        t: Any = self
        root = await self.admin("create-account", "root@example.com", "--admin", "--password", "root-Secret-1")
        t.assertTrue(root["is_admin"])
        bob = await self.admin("create-account", "bob@example.com")
        bob_password = bob["password"]
        project = await self.admin("create-project", "root@example.com", "--title", "Lab")
        pid = project["project_id"]
        await self.admin("add-collaborator", pid.upper(), "bob@example.com")
        listed = await self.admin("list-projects", "--account", "bob@example.com")
        t.assertEqual([p["project_id"] for p in listed], [pid])
        key = await self.admin("create-api-key", "bob@example.com", "--name", "cli", "--project", pid)
        t.assertEqual(key["project_id"], pid)

        # What the CLI did is what the running hub sees.
        client = ApiClient(self.hub.base, self.pool)
        r = await client.sign_in("bob@example.com", bob_password)
        t.assertEqual(r.code, 200, r)
        r = await client.get("projects/get")
        t.assertEqual([p["title"] for p in r.json], ["Lab"])
        r = await ApiClient(self.hub.base, self.pool).post("projects/get", {"project_id": pid},
                                                           headers={"Authorization": f"Bearer {key['secret']}"})
        t.assertEqual(r.code, 200, r)

        reset = await self.admin("reset-password", "bob@example.com", "--password", "bobs-New-pass-2")
        t.assertEqual(reset["account_id"], bob["account_id"])
        # The old session is revoked (the hub's cache lasts at most a second).
        self.clock.advance(1.1)
        t.assertEqual((await client.get("accounts/profile")).code, 401)
        t.assertEqual((await client.sign_in("bob@example.com", "bobs-New-pass-2")).code, 200)

        made = await self.admin("make-admin", bob["account_id"])
        t.assertTrue(made["is_admin"])
        accounts = await self.admin("list-accounts")
        t.assertEqual({a["email_address"]: a["is_admin"] for a in accounts},
                      {"root@example.com": True, "bob@example.com": True})
        await self.admin("remove-collaborator", pid, "bob@example.com")
        token = await self.admin("create-registration-token", "--limit", "2")
        t.assertEqual(token["limit"], 2)

    async def test_cli_errors(self) -> None:
        t: Any = self
        out = await self.admin("create-project", "nobody@example.com", expect=1)
        t.assertIn("no account 'nobody@example.com'", out)
        out = await self.admin("add-collaborator", "not-a-uuid", "x@example.com", expect=1)
        t.assertIn("is not a project id", out)
        await self.admin("create-account", "dup@example.com")
        out = await self.admin("create-account", "dup@example.com", expect=1)
        t.assertIn("already exists", out)
        out = await self.admin("create-account", "weak@example.com", "--password", "short", expect=1)
        t.assertIn("at least 8", out)
        out = await self.admin("create-account", "not an email", expect=1)
        t.assertIn("not a valid email", out)


class SQLiteAdminCli(AdminCliSuite, unittest.TestCase):
    timeout = 120

    async def test_bad_database_one_line(self) -> None:
        proc, _ = spawn(self, [sys.executable, "-m", "cocalc_hub.admin", "--data", str(self.tmp / "data"),
                               "--database", "postgresql://nobody@127.0.0.1:1/nothing", "list-accounts"])
        self.assertEqual(await proc.ended, 2)
        out = proc.output.decode().strip()
        self.assertEqual(len(out.splitlines()), 1, out)
        self.assertIn("cocalc-hub-admin: --database: cannot open postgresql://nobody@127.0.0.1:1/nothing", out)


class PostgresAdminCli(AdminCliSuite, unittest.TestCase):
    kind = "postgres"
    timeout = 120


class RemoteHubTests(unittest.TestCase):
    """``--hub``: the CLI reaches a hub listening on a unix socket, or says clearly why not."""

    timeout = 120

    async def test_hub_on_a_unix_socket(self) -> None:
        from urllib.parse import quote

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        from cocalc_hub.tap import build_service
        from tests.support import FAST_ARGON2, socket_dir

        sock = socket_dir(self) / "hub.sock"

        hub = build_service(settings_for(tmp, {"port": f"unix:{sock}"}), reactor, password_cost=FAST_ARGON2)
        hub.startService()
        self.addCleanup(hub.stopService)
        store = hub.store
        owner = await store.create_account(email_address="o@example.com", password_hash="x")
        project = await store.create_project(owner_id=owner.account_id, title="on a socket")
        cli = [sys.executable, "-m", "cocalc_hub.admin", "--data", str(tmp / "data"), "--json"]
        for hub_arg in (f"unix:{sock}", f"http+unix://{quote(str(sock), safe='')}"):
            proc, _ = spawn(self, [*cli, "--hub", hub_arg, "state", project.project_id])
            self.assertEqual(await proc.ended, 0, proc.output)
            self.assertEqual(json.loads(proc.output)["state"], "opened")
        for bad, fragment in (("ftp://example.com", b"--hub: 'ftp://example.com' is not http[s]://"),
                              (f"unix:{sock.parent / 'nothing.sock'}", b"cannot reach the hub at unix:")):
            proc, _ = spawn(self, [*cli, "--hub", bad, "state", project.project_id])
            self.assertEqual(await proc.ended, 1, proc.output)
            self.assertIn(fragment, proc.output)
            self.assertEqual(len(proc.output.strip().splitlines()), 1, proc.output)
