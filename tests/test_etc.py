"""The systemd units and example environment file in etc/."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from twisted.trial import unittest

from tests.support import REPO, TWISTD, http_client, spawn

ETC = REPO / "etc"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: [Section], Key=Value (keys may repeat), # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=Value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


class UnitTests(unittest.TestCase):
    def test_service_keys(self) -> None:
        unit = parse_unit(ETC / "cocalc-hub.service")
        svc = {k: v[-1] for k, v in unit["Service"].items()}
        self.assertEqual(svc["User"], "cocalc-hub")
        self.assertIn("twistd --nodaemon --pidfile= cocalc-hub", svc["ExecStart"])
        self.assertIn("--port systemd:domain=INET:index=0", svc["ExecStart"])
        self.assertEqual(svc["NoNewPrivileges"], "yes")
        self.assertEqual(svc["ProtectSystem"], "strict")
        self.assertEqual(svc["PrivateTmp"], "yes")
        self.assertEqual(svc["ProtectHome"], "yes")
        self.assertEqual(svc["StateDirectory"], "cocalc-hub")
        self.assertIn("/var/lib/cocalc-hub", svc["ReadWritePaths"])
        self.assertEqual(svc["KillSignal"], "SIGTERM")
        self.assertEqual(svc["KillMode"], "process")  # projects outlive a hub restart
        self.assertIn("DATA=/var/lib/cocalc-hub", unit["Service"]["Environment"])
        self.assertTrue(svc["EnvironmentFile"].startswith("-/etc/cocalc-hub/"))
        self.assertIn("cocalc-hub.socket", unit["Unit"]["Requires"][0])
        self.assertEqual(unit["Install"]["WantedBy"], ["multi-user.target"])

    def test_documentation_and_units_are_installed_by_pip(self) -> None:
        """Documentation= and the files the header's steps copy are data files pip installs under the
        prefix (tests/test_install.py checks the same in a real installation)."""
        cfg = configparser.ConfigParser()
        cfg.read(REPO / "setup.cfg")
        installed = {f"/opt/cocalc-hub/{target}/{Path(source).name}"
                     for target, sources in cfg["options.data_files"].items()
                     for source in sources.split() if (REPO / source).is_file()}
        text = (ETC / "cocalc-hub.service").read_text()
        (doc,) = parse_unit(ETC / "cocalc-hub.service")["Unit"]["Documentation"]
        self.assertEqual(doc, "file:///opt/cocalc-hub/share/doc/cocalc-hub/README.rst")
        self.assertIn(doc.removeprefix("file://"), installed)
        self.assertIn("cd /opt/cocalc-hub/share/cocalc-hub/systemd\n", text)
        for name in ("cocalc-hub.service", "cocalc-hub.socket", "cocalc-hub.env"):
            self.assertIn(f"/opt/cocalc-hub/share/cocalc-hub/systemd/{name}", installed)
            self.assertRegex(text, rf"#   install -[^\n]* {re.escape(name)} ")

    def test_socket_keys(self) -> None:
        unit = parse_unit(ETC / "cocalc-hub.socket")
        self.assertEqual(unit["Socket"]["ListenStream"], ["127.0.0.1:5000"])
        self.assertEqual(unit["Install"]["WantedBy"], ["sockets.target"])

    def test_env_file_names_only_known_variables(self) -> None:
        known = {"BASE_PATH", "DATA", "SECRETS", "PROJECTS", "COCALC_MODE", "PGHOST", "PGDATABASE", "PGUSER"}
        for raw in (ETC / "cocalc-hub.env").read_text().splitlines():
            line = raw.lstrip("#").strip()
            if "=" in line and line.split("=", 1)[0].isupper():
                self.assertIn(line.split("=", 1)[0], known, raw)
            elif raw.strip():
                self.assertTrue(raw.startswith("#"), raw)

    def test_systemd_analyze_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise unittest.SkipTest("systemd-analyze is not installed; key checks above still ran")
        tmp = Path(self.mktemp())
        tmp.mkdir()
        service = (ETC / "cocalc-hub.service").read_text().replace("/opt/cocalc-hub/bin/twistd", TWISTD)
        (tmp / "cocalc-hub.service").write_text(service)
        shutil.copy(ETC / "cocalc-hub.socket", tmp / "cocalc-hub.socket")
        proc = subprocess.run([analyze, "verify", "cocalc-hub.socket", "cocalc-hub.service"], cwd=tmp,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stderr.strip(), "", "systemd-analyze complained")


class SocketActivationTests(unittest.TestCase):
    timeout = 60

    async def test_systemd_endpoint_serves_inherited_socket(self) -> None:
        """What systemd does: a listening socket as fd 3, LISTEN_FDS=1, LISTEN_PID=<pid>."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        cmd = (f'LISTEN_PID=$$ exec "{TWISTD}" --nodaemon --pidfile= cocalc-hub '
               f'--port systemd:domain=INET:index=0 --data "{tmp}/data"')
        from twisted.internet import reactor

        from tests.support import ProcessOutput

        proto = ProcessOutput()
        env = {"PATH": os.environ["PATH"], "LISTEN_FDS": "1", "LISTEN_FDNAMES": "cocalc-hub.socket",
               "HOME": str(tmp)}
        transport = reactor.spawnProcess(proto, "/bin/sh", ["/bin/sh", "-c", cmd], env=env,
                                         childFDs={0: "w", 1: "r", 2: "r", 3: sock.fileno()})
        self.addCleanup(lambda: proto.ended if proto.exit_code is not None else
                        (transport.signalProcess("KILL"), proto.ended)[1])
        await proto.wait_for(rb"cocalc-hub [^ ]+ running")
        client = http_client(self)
        r = await client.get(f"http://127.0.0.1:{port}/alive")
        self.assertEqual((r.code, await r.text()), (200, "alive\n"))
        await client._agent._pool.closeCachedConnections()
        transport.signalProcess("TERM")
        await proto.ended
        self.assertIn(b"Server Shut Down.", proto.output)
        self.assertIsNotNone(spawn)
