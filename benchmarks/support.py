"""What the benchmark scripts share: a real ``twistd cocalc-hub`` process, free ports, RSS."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Hub:
    """A ``twistd cocalc-hub`` process. ``data`` (default: a new temporary directory) holds
    its DATA; ``args`` are extra options (mode flags, limits); ``http`` says whether it
    listens (a process with only ``--conat-persist`` does not); ``twistd_args`` go to
    twistd itself (e.g. ``--profile``)."""

    def __init__(self, args: list[str] | None = None, *, data: Path | None = None, env: dict[str, str] | None = None,
                 http: bool = True, name: str = "hub", tls: tuple[Path, Path] | None = None,
                 twistd_args: list[str] | None = None) -> None:
        self.owns_data = data is None
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-hub-")) if data is None else data
        self.data = self.tmp / "data" if data is None else data
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        if tls is not None:
            listen = f"ssl:{self.port}:interface=127.0.0.1:privateKey={tls[0]}:certKey={tls[1]}"
        self.log_path = self.data.parent / f"{name}-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", *(twistd_args or []), "cocalc-hub", "--port", listen,
             "--log-level", "warn", *(args or [])],
            env={**os.environ, "DATA": str(self.data), **(env or {})}, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid
        if http:
            self.wait_alive()
        self.password = self.wait_password()

    def wait_alive(self) -> None:
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/alive", timeout=1, context=self._unverified()) as r:
                    if r.status == 200:
                        return
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.url}/alive did not answer in 60 s") from None
            time.sleep(0.1)

    def _unverified(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def wait_password(self) -> str:
        path = self.data / "secrets" / "conat-password"
        for _ in range(600):
            if path.is_file() and path.read_text().strip():
                return path.read_text().strip()
            time.sleep(0.05)
        raise RuntimeError(f"{path} never appeared")

    def log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.kill()
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        if self.owns_data:
            shutil.rmtree(self.tmp, ignore_errors=True)
