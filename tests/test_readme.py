"""README.rst's "Running the parts as separate processes" example, run as written (on free
ports, from one directory) and checked to work together: the broker, a persist server and the
web/API process; an account signs up, starts a project, uses the hub API and persist over
conat through the web process; every process stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub.conat.client import connect
from cocalc_hub.conat.persist.dstream import DKV
from cocalc_hub.projects import processes
from tests.support import REPO, ROOT_PROJECTS_ENV, VENV_BIN, ProcessOutput, free_tcp_port, http_client, spawn, until
from tests.web.api_client import ApiClient

SECTION = "Running the parts as separate processes"


def readme_commands(text: str) -> list[str]:
    """The shell lines of the first literal block in SECTION, continuation lines joined,
    comments dropped."""
    section = text.split(SECTION + "\n", 1)[1]
    block = section.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    joined = "\n".join(lines).replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", c).strip() for c in joined.splitlines() if c.strip()]


def as_argv(command: str) -> tuple[dict[str, str], list[str]]:
    """``VAR=value … cocalc-hub … &`` → (environment, argv), exactly as a shell would run it."""
    words = shlex.split(command.rstrip("&").strip())
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


class ReadmeSplitProcessTests(unittest.TestCase):
    timeout = 180

    async def test_readme_split_processes_work_together(self) -> None:
        commands = readme_commands((REPO / "README.rst").read_text())
        self.assertEqual(len(commands), 3, commands)
        self.assertTrue(all(c.endswith("&") for c in commands), "each line starts a process in the background")
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        ports = {"5000": str(free_tcp_port()), "5001": str(free_tcp_port()), "5002": str(free_tcp_port())}
        procs: list[tuple[ProcessOutput, Any, list[str]]] = []
        for command in commands:
            for documented, free in ports.items():
                command = command.replace(documented, free)
            env, argv = as_argv(command)
            self.assertIn(argv[0], ("cocalc-hub", "cocalc-hub-server"), command)
            argv[0] = str(VENV_BIN / argv[0])
            env.update({"DATA": str(tmp / "data"), "COCALC_NO_IDLE_TIMEOUT": "1", **ROOT_PROJECTS_ENV})
            proc, transport = spawn(self, argv, env=env, cwd=str(tmp))  # one directory for all of them
            procs.append((proc, transport, argv))
            await proc.wait_for(rb"cocalc-hub [^ ]+ running: ")
        broker, persist, web = (f"http://127.0.0.1:{ports[p]}" for p in ("5000", "5002", "5001"))

        http = http_client(self)

        async def health(url: str) -> tuple[int, dict[str, Any]]:
            r = await http.get(url + "/healthcheck")
            return r.code, json.loads(await r.content())

        code, body = await health(broker)
        self.assertEqual((code, body["parts"]), (200, ["conat-server"]), body)
        for url, parts in ((persist, ["conat-persist"]), (web, ["conat-api", "proxy-server"])):
            body = await wait_healthy(health, url)
            self.assertEqual(body["parts"], parts)
            self.assertTrue(body["components"]["conat-broker"]["ok"])

        # an account, a running project: through the web process
        pool = HTTPConnectionPool(reactor, persistent=False)
        api = ApiClient(web, pool)
        r = await api.sign_up("split@example.com")
        self.assertEqual(r.code, 201, r)
        account_id = r.json["account_id"]
        project_id = (await api.post("projects/create", {"title": "split"})).json["project_id"]
        self.addCleanup(processes.kill_project, project_id)
        r = await api.post("projects/start", {"project_id": project_id})
        self.assertEqual((r.code, r.json["state"]["state"]), (200, "running"), r)

        # conat through the web process: the hub API (--conat-api) and persist (its own process)
        client = connect(reactor, web, cookies=dict(api.cookies))
        self.addCleanup(client.close)
        await client.signed_in()
        pong = await client.request(f"hub.account.{account_id}.api", {"name": "system.ping", "args": []}, timeout=20)
        self.assertIn("now", pong.data)
        kv = DKV(client, "readme", account_id=account_id)
        self.addCleanup(kv.close)
        await kv.init()
        await kv.set("works", True)
        self.assertTrue((tmp / "data" / "sync" / "accounts" / account_id / "readme.db").is_file())
        reader = connect(reactor, web, cookies=dict(api.cookies))
        self.addCleanup(reader.close)
        again = DKV(reader, "readme", account_id=account_id)
        self.addCleanup(again.close)
        await again.init()
        self.assertTrue(again.get("works"))

        r = await api.post("projects/stop", {"project_id": project_id})
        self.assertEqual(r.json["state"]["state"], "opened")
        client.close()
        reader.close()
        for proc, transport, argv in reversed(procs):
            transport.signalProcess("TERM")
            await proc.ended
            self.assertTrue(proc.exit_code == 0 or proc.exit_signal == 15, (argv, proc.exit_code, proc.exit_signal))
            self.assertNotIn(b"Traceback", proc.output, argv)
        self.assertFalse((tmp / "twistd.pid").exists())


async def wait_healthy(health: Any, url: str, timeout: float = 30.0) -> dict[str, Any]:
    """Ask ``url``'s /healthcheck until it answers 200 (a process that is still connecting)."""
    last: list[tuple[int, dict[str, Any]]] = []

    async def healthy() -> bool:
        last.append(await health(url))
        return last[-1][0] == 200

    await until(healthy, timeout=timeout, what=f"{url}/healthcheck answering 200")
    return last[-1][1]


class ReadmeParsingTests(unittest.TestCase):
    def test_commands_are_found_and_split_like_a_shell(self) -> None:
        commands = readme_commands((REPO / "README.rst").read_text())
        env, argv = as_argv(commands[1])
        self.assertEqual(env, {"CONAT_SERVER": "http://127.0.0.1:5000"})
        self.assertEqual(argv[:2], ["cocalc-hub", "--conat-persist"])


class ReadmeRenderingTests(unittest.TestCase):
    """README.rst is the package's long description: PyPI (and every RST viewer) renders it,
    and a malformed table or section there is shown as an error or raw text."""

    def test_readmes_render_without_warnings(self) -> None:
        import io

        import docutils.core

        for name in ("README.rst", "benchmarks/README.rst"):
            problems = io.StringIO()
            docutils.core.publish_doctree((REPO / name).read_text(), source_path=name,
                                          settings_overrides={"report_level": 2, "halt_level": 5,
                                                              "warning_stream": problems})
            self.assertEqual(problems.getvalue(), "", name)


class ReadmeMapTests(unittest.TestCase):
    """README.rst's map ("Layout: a map") names every subpackage and top-level module, so a
    new room cannot be added without a line saying what it is for."""

    def test_the_map_names_every_subpackage_and_top_level_module(self) -> None:
        text = (REPO / "README.rst").read_text()
        section = text.split("Layout: a map\n", 1)[1].split("\nAn HTTP request", 1)[0]
        package = REPO / "cocalc_hub"
        wanted = {f"cocalc_hub/{init.parent.relative_to(package).as_posix()}/"
                  for init in package.rglob("__init__.py") if init.parent != package}
        wanted |= {f"cocalc_hub/{module.name}" for module in package.glob("*.py")
                   if module.name not in ("__init__.py", "__main__.py")}
        missing = sorted(name for name in wanted if name not in section)
        self.assertEqual(missing, [], "README.rst's map does not name these: add a line for each")
        self.assertLess(text.index("Layout: a map\n"), text.index("Configuration\n"), "the map is near the top")
