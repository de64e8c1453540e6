"""End to end: ``twistd -n cocalc-hub`` as a real subprocess."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests.support import ROOT_PROJECTS, TWISTD, ProcessOutput, http_client, spawn


class DaemonTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp()).resolve()
        self.tmp.mkdir()

    def assertStoppedBySigterm(self, proc: ProcessOutput) -> None:
        """twistd shuts down gracefully, then re-raises SIGTERM (exit status 143; systemd: success)."""
        self.assertTrue(proc.exit_code == 0 or proc.exit_signal == 15, (proc.exit_code, proc.exit_signal))
        self.assertIn(b"Server Shut Down.", proc.output)
        self.assertNotIn(b"Traceback", proc.output)

    def hub_args(self, *extra: str) -> list[str]:
        return [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--data", str(self.tmp / "data"), *extra]

    async def test_serves_then_stops_cleanly_on_sigterm(self) -> None:
        proc, transport = spawn(self, self.hub_args("--port", "tcp:0:interface=127.0.0.1"), cwd=str(self.tmp))
        m = await proc.wait_for(rb"listening on 127\.0\.0\.1:(\d+)")
        port = int(m.group(1))
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        # The operator's log shows the first-admin link whole (the scrubber leaves it alone).
        await proc.wait_for(rb"No administrator exists yet.*http://127\.0\.0\.1:" + str(port).encode()
                            + rb"/auth/setup#token=[A-Za-z0-9_-]{43} ")
        client = http_client(self)
        r = await client.get(f"http://127.0.0.1:{port}/alive")
        self.assertEqual((r.code, await r.text()), (200, "alive\n"))
        r = await client.get(f"http://127.0.0.1:{port}/static/hub.css")
        self.assertEqual(r.code, 200)
        self.assertIn("font-family", await r.text())
        r = await client.get(f"http://127.0.0.1:{port}/")
        self.assertIn("Welcome to CoCalc", await r.text())  # the welcome page
        await client._agent._pool.closeCachedConnections()
        transport.signalProcess("TERM")
        await proc.ended
        self.assertStoppedBySigterm(proc)
        out = proc.output.decode()
        self.assertIn("cocalc-hub stopped", out)
        self.assertIn("Server Shut Down.", out)
        self.assertNotIn("Traceback", out)
        self.assertFalse((self.tmp / "twistd.pid").exists())

    async def test_json_logs(self) -> None:
        proc, transport = spawn(self, self.hub_args("--port", "tcp:0:interface=127.0.0.1", "--log-format", "json"),
                                cwd=str(self.tmp))
        m = await proc.wait_for(rb'"text": "cocalc-hub listening on 127\.0\.0\.1:(\d+)')
        port = int(m.group(1))
        client = http_client(self)
        r = await client.get(f"http://127.0.0.1:{port}/static/hub.css?api_key=sk-abcdefghijklmnop")
        await r.content()
        await client._agent._pool.closeCachedConnections()
        await proc.wait_for(rb'"route": "static"')
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        transport.signalProcess("TERM")
        await proc.ended
        lines = [json.loads(line) for line in proc.output.decode().splitlines() if line.startswith("{")]
        self.assertTrue(lines)
        access = [e for e in lines if e["namespace"] == "cocalc_hub.access"]
        self.assertEqual(len(access), 1)
        self.assertEqual(access[0]["code"], 200)
        self.assertEqual(access[0]["level"], "info")
        self.assertIn("GET /static/hub.css?api_key=<redacted> 200", access[0]["text"])
        self.assertRegex(access[0]["time"], r"^\d{4}-\d\d-\d\dT")
        self.assertNotIn("sk-abcdefghijklmnop", proc.output.decode())

    async def check_refuses(self, args: list[str], env: dict[str, str] | None, expected: str) -> None:
        proc, _ = spawn(self, args, env=env, cwd=str(self.tmp))
        code = await proc.ended
        out = proc.output.decode().strip()
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", out)
        self.assertEqual(len(out.splitlines()), 1, out)
        self.assertIn(expected, out)

    async def test_bad_base_path_one_line(self) -> None:
        await self.check_refuses(self.hub_args(), {"BASE_PATH": "nope"}, "cocalc-hub: BASE_PATH: 'nope' must start")

    async def test_bad_mode_one_line(self) -> None:
        await self.check_refuses(self.hub_args("--mode", "kucalc"), None, "cocalc-hub: --mode: unknown mode")

    async def test_unreadable_key_one_line(self) -> None:
        await self.check_refuses(
            self.hub_args("--https-key", str(self.tmp / "nokey.pem"), "--https-cert", str(self.tmp / "nocert.pem")),
            None, "cocalc-hub: --https-key: cannot read")

    async def test_unwritable_data_dir_one_line(self) -> None:
        (self.tmp / "afile").write_text("x")
        args = [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--data", str(self.tmp / "afile")]
        await self.check_refuses(args, None, "cocalc-hub: --data: ")

    async def test_port_in_use_one_line(self) -> None:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        await self.check_refuses(self.hub_args("--port", str(port)), None,
                                 f"cocalc-hub: --port: cannot listen on tcp:{port}:interface=127.0.0.1")

    async def test_unknown_option_one_line_with_hint(self) -> None:
        script = str(Path(TWISTD).parent / "cocalc-hub")
        await self.check_refuses([script, "--prot", "5000"], None,
                                 "cocalc-hub: unknown option --prot (did you mean --port? cocalc-hub --help lists")
        await self.check_refuses([script, "--conat-servr"], None, "did you mean --conat-server?")
        await self.check_refuses([script, "--port"], None, "cocalc-hub: option --port requires argument")
        await self.check_refuses([script, "5000"], None, "cocalc-hub: unexpected argument '5000'")

    async def test_upstream_names_run_the_broker(self) -> None:
        for script, flag in (("cocalc-hub-server", "--conat-router"), ("cocalc-hub", "--conat-core")):
            proc, transport = spawn(self, [str(Path(TWISTD).parent / script), flag, "--data", str(self.tmp / "d"),
                                           "--port", "tcp:0:interface=127.0.0.1"], cwd=str(self.tmp))
            await proc.wait_for(rb"cocalc-hub [^ ]+ running: conat-server\n")
            self.assertIn(f"cocalc-hub: {flag} is upstream's name for --conat-server".encode(), proc.output)
            transport.signalProcess("TERM")
            await proc.ended
            self.assertStoppedBySigterm(proc)

    async def test_console_script_alias(self) -> None:
        script = str(Path(TWISTD).parent / "cocalc-hub")
        self.assertTrue(os.access(script, os.X_OK))
        proc, transport = spawn(self, [script, "--port", "tcp:0:interface=127.0.0.1", "--data", str(self.tmp / "d")],
                                cwd=str(self.tmp))
        await proc.wait_for(rb"listening on 127\.0\.0\.1:(\d+)")
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        transport.signalProcess("TERM")
        await proc.ended
        self.assertStoppedBySigterm(proc)
        self.assertFalse((self.tmp / "twistd.pid").exists())


class HubRestartTests(unittest.TestCase):
    """A real hub is killed while a project runs; the next hub adopts it (one copy only)."""

    timeout = 90

    async def start_hub_process(self, data: Path) -> tuple[ProcessOutput, Any, int]:
        proc, transport = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--data", str(data),
                                       "--port", "tcp:0:interface=127.0.0.1", *ROOT_PROJECTS], cwd=str(data.parent))
        m = await proc.wait_for(rb"listening on 127\.0\.0\.1:(\d+)")
        await proc.wait_for(rb"cocalc-hub [^ ]+ running")
        return proc, transport, int(m.group(1))

    async def test_kill_hub_then_adopt(self) -> None:
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        from cocalc_hub.projects import processes
        from tests.web.api_client import ApiClient

        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        data = tmp / "data"
        pool = HTTPConnectionPool(reactor, persistent=False)
        proc, transport, port = await self.start_hub_process(data)
        api = ApiClient(f"http://127.0.0.1:{port}", pool)
        self.assertEqual((await api.sign_up("a@example.com")).code, 201)
        pid = (await api.post("projects/create", {"title": "survivor"})).json["project_id"]
        self.addCleanup(processes.kill_project, pid)
        state = (await api.post("projects/start", {"project_id": pid})).json["state"]
        main = state["project.pid"]
        transport.signalProcess("KILL")
        await proc.ended
        self.assertTrue(processes.belongs_to(main, pid), "the project outlives its hub")

        proc2, transport2, port2 = await self.start_hub_process(data)
        await proc2.wait_for(b"adopted project " + pid.encode())
        api.base = f"http://127.0.0.1:{port2}"
        r = await api.get(f"projects/state?project_id={pid}")
        self.assertEqual((r.json["state"], r.json["project.pid"]), ("running", main))
        r = await api.post("exec", {"project_id": pid, "command": "echo", "args": ["still here"]})
        self.assertEqual((r.code, r.json.get("stdout")), (200, "still here\n"), r)
        r = await api.post("projects/start", {"project_id": pid})
        self.assertEqual(r.json["state"]["project.pid"], main)
        mains = [p for p in processes.project_processes(pid) if "cocalc_hub.project_agent" in " ".join(p.cmdline())]
        self.assertEqual([p.pid for p in mains], [main], "exactly one project program")
        r = await api.post("projects/stop", {"project_id": pid})
        self.assertEqual(r.json["state"]["state"], "opened")
        self.assertEqual(processes.project_processes(pid), [])
        transport2.signalProcess("TERM")
        await proc2.ended
