"""The project API's functions through the broker, as a collaborator: exec, listing, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cocalc_hub.conat.client import Client, ConatError
from cocalc_hub.project_agent import files
from cocalc_hub.project_agent.jobs import MAX_MAX_OUTPUT
from tests.project_agent.support import ProjectConatCase


class ApiCase(ProjectConatCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.start(await self.watch(self.owner))
        self.friend_client: Client = self.browser(self.friend)
        self.home = Path(self.manager.home(self.project)).resolve()

    async def call(self, name: str, *args: Any) -> Any:
        return await self.friend_client.call(self.api, name, *args)

    async def refused(self, code: int, name: str, *args: Any) -> str:
        with self.assertRaises(ConatError) as e:
            await self.call(name, *args)
        self.assertEqual(e.exception.code, code, str(e.exception))
        return str(e.exception)


class ExecTests(ApiCase):
    async def test_command_with_args_bash_and_cwd(self) -> None:
        r = await self.call("exec", {"command": "echo", "args": ["a b", "c"]})
        self.assertEqual((r["type"], r["stdout"], r["stderr"], r["exit_code"]), ("blocking", "a b c\n", "", 0))
        (self.home / "sub").mkdir()
        r = await self.call("exec", {"command": "pwd; echo $HOME; echo err >&2", "bash": True, "path": "sub"})
        self.assertEqual(r["stdout"], f"{self.home / 'sub'}\n{self.home}\n")
        self.assertEqual(r["stderr"], "err\n")
        message = await self.refused(422, "exec", {"command": "ls /no/such/dir"  , "bash": True})
        self.assertIn("command exited with code 2: ls: cannot access", message)
        r = await self.call("exec", {"command": "false", "err_on_exit": False})
        self.assertEqual(r["exit_code"], 1)
        await self.refused(400, "exec", {"command": "no-such-command-here"})
        await self.refused(400, "exec", "ls")

    async def test_cwd_is_confined_to_home(self) -> None:
        (self.home / "out").symlink_to("/etc")
        for path in ("..", "../..", "/etc", "out", "sub/../../x"):
            message = await self.refused(403, "exec", {"command": "pwd", "path": path})
            self.assertIn("outside the project's home directory", message)
        r = await self.call("exec", {"command": "pwd", "path": str(self.home)})
        self.assertEqual(r["stdout"], f"{self.home}\n")

    async def test_timeout_and_output_limits(self) -> None:
        started = self.hub.hub.reactor.seconds()
        message = await self.refused(504, "exec", {"command": "sleep 30", "bash": True, "timeout": 0.5})
        self.assertIn("command timed out after 0.5 seconds", message)
        self.assertLess(self.hub.hub.reactor.seconds() - started, 10)
        r = await self.call("exec", {"command": "head -c 100000 /dev/zero | tr '\\0' x", "bash": True,
                                     "max_output": 1000})
        self.assertEqual((len(r["stdout"]), r["truncated"]), (1000, True))
        message = await self.refused(400, "exec", {"command": "true", "max_output": MAX_MAX_OUTPUT + 1})
        self.assertIn("max_output must be between", message)
        await self.refused(400, "exec", {"command": "true", "timeout": -1})


class FileTests(ApiCase):
    async def test_write_read_and_list(self) -> None:
        self.assertEqual(await self.call("writeFile", "notes/a.txt", "héllo\n"), {"path": "notes/a.txt", "bytes": 7})
        self.assertEqual((self.home / "notes" / "a.txt").read_text(), "héllo\n")
        self.assertEqual(await self.call("readFile", "notes/a.txt", "utf8"), "héllo\n")
        self.assertEqual(await self.call("readFile", "notes/a.txt"), "héllo\n".encode())
        blob = bytes(range(256)) * 4
        self.assertEqual((await self.call("writeFile", str(self.home / "b.bin"), blob))["bytes"], 1024)
        self.assertEqual(await self.call("readFile", "b.bin"), blob)
        await self.refused(415, "readFile", "b.bin", "utf8")
        (self.home / "link").symlink_to("notes/a.txt")
        (self.home / ".smc").mkdir(exist_ok=True)  # a hidden directory
        entries = {e["name"]: e for e in await self.call("listing")}
        self.assertTrue(entries["notes"]["isdir"])
        self.assertEqual((entries["b.bin"]["size"], entries["b.bin"].get("isdir")), (1024, None))
        self.assertEqual((entries["link"]["issymlink"], entries["link"]["link_target"]), (True, "notes/a.txt"))
        self.assertIn(".smc", entries)
        self.assertNotIn(".smc", [e["name"] for e in await self.call("listing", ".", False)])
        self.assertEqual([e["name"] for e in await self.call("listing", "notes")], ["a.txt"])
        await self.refused(404, "readFile", "missing.txt")
        await self.refused(400, "readFile", "notes")
        await self.refused(400, "listing", "b.bin")
        await self.refused(400, "writeFile", "x.txt", {"not": "data"})

    async def test_paths_outside_home_are_refused(self) -> None:
        (self.home / "etc").symlink_to("/etc")
        (self.home / "passwd").symlink_to("/etc/passwd")
        (self.home / "dangling").symlink_to("/tmp/cocalc-test-should-not-exist")
        outside = ["../x", "../../etc/passwd", "/etc/passwd", "etc/passwd", "passwd", "a/../../x"]
        for path in outside:
            self.assertIn("outside the project's home directory", await self.refused(403, "readFile", path))
            await self.refused(403, "writeFile", path, "x")
        for path in ("..", "/", "/etc", "etc"):
            await self.refused(403, "listing", path)
        await self.refused(403, "writeFile", "dangling", "x")
        self.assertFalse(Path("/tmp/cocalc-test-should-not-exist").exists())
        await self.refused(400, "readFile", 42)

    async def test_size_limits(self) -> None:
        # sparse, so the file costs nothing on disk
        await self.call("exec", {"command": "truncate", "args": ["-s", str(files.MAX_READ + 1), "big"]})
        message = await self.refused(413, "readFile", "big")
        self.assertIn(f"readFile reads at most {files.MAX_READ} bytes", message)
        message = await self.refused(413, "writeFile", "big2", b"x" * (files.MAX_WRITE + 1))
        self.assertIn(f"writeFile writes at most {files.MAX_WRITE} bytes", message)
        self.assertFalse((self.home / "big2").exists())
        # just under the limits: several broker chunks each way
        data = b"y" * (9 * 1024 * 1024)
        self.assertEqual((await self.call("writeFile", "nine", data))["bytes"], len(data))
        self.assertEqual(await self.call("readFile", "nine"), data)
