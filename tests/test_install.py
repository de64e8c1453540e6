"""A non-editable install works: sdist and wheel are complete, and the wheel, installed into a fresh
virtualenv outside the checkout, runs a hub that signs up, starts a project and stops on SIGTERM.

Every other test uses the editable install, where a file missing from the package data goes
unnoticed. ``python -m build`` builds the wheel from the sdist, so both are checked at once. PyPI
(or pip's cache) must be reachable for the build requirements and the dependencies: without it
the test is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import FirstError, ensureDeferred, gatherResults
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from cocalc_hub import __version__
from cocalc_hub.projects import processes
from tests.support import CI, REPO, ROOT_PROJECTS, ProcessOutput, spawn, until
from tests.web.api_client import ApiClient

NAME = f"cocalc_hub-{__version__}"
UNIT_FILES = ("cocalc-hub.service", "cocalc-hub.socket", "cocalc-hub.env")
UNITS_DIR = "share/cocalc-hub/systemd"
PREFIX = "/opt/cocalc-hub"
"""The install prefix the systemd unit and its instructions assume."""

WHERE = "import cocalc_hub, twisted.plugins.cocalc_hub_plugin as p; print(cocalc_hub.__file__, p.__file__)"
"""Prints where the package and the twistd plugin are imported from."""

# What pip and build print when they cannot reach an index (or find nothing in the cache).
NETWORK_TROUBLE = re.compile(
    rb"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    rb"Network is unreachable|ConnectTimeout|ReadTimeoutError|No matching distribution found|"
    rb"Could not find a version that satisfies")


def tool_env() -> dict[str, str]:
    """The caller's environment (pip's configuration, proxies, cache) without anything that would
    make Python find the checkout or this test's virtualenv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PIP_USER")
    return {k: v for k, v in os.environ.items() if k not in drop}


def tracked_files(*roots: str) -> list[str]:
    """Files under ``roots`` that belong to the project (git's list, else a walk without caches)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *roots], cwd=REPO, capture_output=True,
                             check=True, timeout=60).stdout
        return sorted(name for name in out.decode().split("\0") if name)
    except (OSError, subprocess.SubprocessError):
        found = []
        for root in roots:
            for path in (REPO / root).rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    found.append(str(path.relative_to(REPO)))
        return sorted(found)


def unit_paths(text: str) -> list[str]:
    """Every path under the install prefix that a unit file names (Documentation=, ExecStart=, and the
    installation steps in its header comment), as found in that text."""
    return sorted(set(re.findall(re.escape(PREFIX) + r"(/[\w./-]*[\w/-])", text)))


class InstallTests(unittest.TestCase):
    timeout = 600  # a cold pip cache downloads every dependency; warm, the whole test takes about 40 s

    def setUp(self) -> None:
        # Outside the checkout (trial's mktemp() is under _trial_temp/ inside it).
        self.tmp = Path(tempfile.mkdtemp(prefix="cocalc-hub-install-")).resolve()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.assertFalse(self.tmp.is_relative_to(REPO.resolve()))

    async def run_tool(self, args: list[str], step: str, *, env: Mapping[str, str] | None = None,
                       cwd: Path | None = None, timeout: float = 300) -> bytes:
        """Run a command to its end; network trouble skips (fails under CI), any other failure fails."""
        proc, _ = spawn(self, args, env=dict(tool_env() if env is None else env), cwd=str(cwd or self.tmp))
        code = await proc.ended.addTimeout(timeout, reactor)
        if code != 0:
            output = proc.output.decode(errors="replace")[-6000:]
            if NETWORK_TROUBLE.search(proc.output) and not CI:
                raise unittest.SkipTest(f"{step}: no package index reachable (set CI=true to fail instead):\n{output}")
            self.fail(f"{step} failed (exit status {code}):\n{output}")
        return proc.output

    async def build(self) -> tuple[Path, Path]:
        dist = self.tmp / "dist"
        await self.run_tool([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir",
                             str(dist), str(REPO)], "python -m build", cwd=self.tmp)
        sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
        self.assertEqual((len(sdists), len(wheels)), (1, 1), sorted(p.name for p in dist.iterdir()))
        return sdists[0], wheels[0]

    def check_sdist(self, sdist: Path) -> None:
        with tarfile.open(sdist) as tar:
            names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        wanted = ["README.rst", "setup.cfg", "pyproject.toml", "MANIFEST.in", "Makefile",
                  *(f"etc/{u}" for u in UNIT_FILES), *tracked_files("cocalc_hub", "twisted", "tests")]
        missing = [name for name in wanted if name not in names]
        self.assertEqual(missing, [], f"missing from {sdist.name}")

    def check_wheel(self, wheel: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
        # Every file of the package (modules, schema files, web assets, templates) and the plugin.
        wanted = tracked_files("cocalc_hub", "twisted")
        self.assertIn("twisted/plugins/cocalc_hub_plugin.py", wanted)
        self.assertTrue([n for n in wanted if re.fullmatch(r"cocalc_hub/db/schema/sqlite/\d{3}-.+\.sql", n)])
        self.assertTrue([n for n in wanted if re.fullmatch(r"cocalc_hub/db/schema/postgres/\d{3}-.+\.sql", n)])
        self.assertIn("cocalc_hub/web/assets/pages/layout.html", wanted)
        data = f"{NAME}.data/data/"
        wanted += [f"{data}share/doc/cocalc-hub/README.rst", *(f"{data}{UNITS_DIR}/{u}" for u in UNIT_FILES)]
        missing = [name for name in wanted if name not in names]
        self.assertEqual(missing, [], f"missing from {wheel.name}")
        # Nothing else of ours: twistd's dropin.cache from the checkout would replace Twisted's own.
        self.assertEqual(sorted(n for n in names if n.startswith("twisted/")), ["twisted/plugins/cocalc_hub_plugin.py"])
        self.assertEqual([n for n in names if n.endswith((".pyc", ".cache")) or "__pycache__" in n], [])

    async def make_venv(self) -> Path:
        venv = self.tmp / "venv"
        await self.run_tool([sys.executable, "-m", "venv", str(venv)], "python -m venv")
        return venv

    async def install(self, venv: Path, wheel: Path) -> None:
        await self.run_tool([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                            "pip install <wheel>")

    def clean_env(self, **extra: str) -> dict[str, str]:
        """What a service manager gives: no PYTHONPATH, no virtualenv, a home of its own."""
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}

    async def check_installed_files(self, venv: Path) -> None:
        """The package imports from the venv, the twistd plugin is found, the unit files are installed
        and every path under the prefix that they name (Documentation= included) exists."""
        out = await self.run_tool(
            [str(venv / "bin" / "python"), "-c", WHERE], "import cocalc_hub", env=self.clean_env())
        site = venv / "lib"
        for line in out.decode().split():
            path = Path(line).resolve()
            self.assertTrue(path.is_relative_to(site.resolve()), f"{path} is not in the fresh venv")
            self.assertFalse(path.is_relative_to(REPO.resolve()), f"{path} is in the checkout")
        out = await self.run_tool([str(venv / "bin" / "twistd"), "cocalc-hub", "--help"], "twistd cocalc-hub --help",
                                  env=self.clean_env())
        self.assertIn(b"--stop-projects-on-exit", out)
        for unit in UNIT_FILES:
            installed = venv / UNITS_DIR / unit
            self.assertEqual(installed.read_bytes(), (REPO / "etc" / unit).read_bytes(), unit)
        service = (venv / UNITS_DIR / "cocalc-hub.service").read_text()
        self.assertIn(f"Documentation=file://{PREFIX}/share/doc/cocalc-hub/README.rst", service)
        named = unit_paths(service)
        self.assertIn("/share/doc/cocalc-hub/README.rst", named)
        self.assertIn("/bin/twistd", named)
        for path in named:
            self.assertTrue((venv / path.lstrip("/")).exists(), f"{PREFIX}{path} (named by the unit) is not installed")

    async def run_hub(self, venv: Path) -> None:
        """``cocalc-hub`` from the venv: sign up, create and start a project, /healthcheck, SIGTERM."""
        args = [str(venv / "bin" / "cocalc-hub"), "--port", "0", "--stop-projects-on-exit", *ROOT_PROJECTS]
        hub, transport = spawn(self, args, env=self.clean_env(DATA=str(self.tmp / "data")), cwd=str(self.tmp))
        m = await hub.wait_for(rb"cocalc-hub listening on 127\.0\.0\.1:(\d+)", timeout=60)
        base = f"http://127.0.0.1:{int(m.group(1))}"
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = ApiClient(base, pool)
        client.headers["Origin"] = base  # anonymous POSTs must be same-origin
        r = await client.sign_up("admin@example.com")
        self.assertEqual(r.code, 201, r)
        r = await client.post("projects/create", {"title": "installed"})
        self.assertEqual(r.code, 201, r)
        project_id = r.json["project_id"]
        self.addCleanup(self.kill_project, project_id)
        r = await client.post("projects/start", {"project_id": project_id})
        self.assertEqual(r.code, 200, r)
        await self.wait_running(client, project_id)
        self.assertTrue(processes.project_processes(project_id), "no project process")
        r = await client.request("GET", "/healthcheck")
        self.assertEqual((r.code, r.json["status"]), (200, "ok"), r)
        self.assertIn("database", r.json["components"])
        # The web UI's pages and assets come from the installed package.
        r = await client.request("GET", "/")
        self.assertEqual(r.code, 200, r)
        self.assertIn(b"/static/app.css?v=", r.body)
        self.assertEqual((await client.request("GET", "/static/app.css")).code, 200)
        await pool.closeCachedConnections()
        transport.signalProcess("TERM")
        await hub.ended.addTimeout(30, reactor)  # the grace is 10 s, stopping the project a few more
        self.assertStopped(hub)
        self.assertEqual(processes.project_processes(project_id), [], "--stop-projects-on-exit left the project")

    async def wait_running(self, client: ApiClient, project_id: str, deadline: float = 60) -> None:
        """Ask projects/state until it says running (a real external process, no clock to drive)."""
        states: list[str] = []

        async def running() -> bool:
            r = await client.get(f"projects/state?project_id={project_id}")
            states.append(r.json.get("state") if r.code == 200 else f"{r.code} {r.body!r}")
            return states[-1] == "running"

        await until(running, timeout=deadline, interval=0.1, what="the project running")

    def assertStopped(self, hub: ProcessOutput) -> None:
        """twistd stops gracefully, then re-raises SIGTERM: status 143 (or 0), no traceback."""
        self.assertTrue(hub.exit_code == 0 or hub.exit_signal == 15, (hub.exit_code, hub.exit_signal))
        self.assertIn(b"Server Shut Down.", hub.output)
        self.assertNotIn(b"Traceback", hub.output, hub.output.decode(errors="replace"))

    def kill_project(self, project_id: str) -> None:
        for proc in processes.project_processes(project_id):
            try:
                os.kill(proc.pid, 9)
            except ProcessLookupError:
                pass

    async def test_wheel_installs_and_runs_outside_the_checkout(self) -> None:
        try:  # the two slowest steps that do not depend on each other, side by side
            (sdist, wheel), venv = await gatherResults([ensureDeferred(self.build()),
                                                        ensureDeferred(self.make_venv())], consumeErrors=True)
        except FirstError as e:
            raise e.subFailure.value from None  # a SkipTest stays a skip
        self.check_sdist(sdist)
        self.check_wheel(wheel)
        await self.install(venv, wheel)
        await self.check_installed_files(venv)
        await self.run_hub(venv)
