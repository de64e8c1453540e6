"""Helpers shared by the test suite: settings, in-process hubs, HTTP clients, raw sockets."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from cocalc_hub.settings import Settings, from_options
from cocalc_hub.tap import HubService, build_service

VENV_BIN = Path(sys.executable).parent
TWISTD = str(VENV_BIN / "twistd")
REPO = Path(__file__).resolve().parent.parent

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Tests run as root in CI, where single-user projects would run as root: say that is meant.
ROOT_PROJECTS = ["--allow-root-projects"] if os.geteuid() == 0 else []
ROOT_PROJECTS_ENV = {"COCALC_ALLOW_ROOT_PROJECTS": "1"} if os.geteuid() == 0 else {}


def settings_for(tmp: str | Path, options: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a test hub on a free loopback port, data under ``tmp``."""
    opts: dict[str, Any] = {"port": "tcp:0:interface=127.0.0.1", "data": str(Path(tmp) / "data"),
                            "allow-root-projects": bool(ROOT_PROJECTS)}
    opts.update(options or {})
    return from_options(opts, dict(env or {}))


class RunningHub:
    def __init__(self, hub: HubService) -> None:
        self.hub = hub
        assert hub.web is not None and hub.web.port is not None
        self.port: int = hub.web.port.getHost().port
        base = hub.settings.base_path
        self.root = f"http://127.0.0.1:{self.port}"
        self.base = self.root + ("" if base == "/" else base)

    def url(self, path: str) -> str:
        """URL of a path under the base path."""
        return self.base + path

    async def stop_projects(self) -> None:
        """Stop every project this hub runs (a test's clean-up)."""
        projects = self.hub.projects
        if projects is None:
            return
        for project_id in list(projects.manager.active):
            await projects.manager.stop(project_id)


async def make_admin(hub: RunningHub, account_id: str) -> None:
    """What ``cocalc-hub-admin make-admin`` does (sign-up never makes an administrator)."""
    store, auth = hub.hub.store, hub.hub.auth
    account = await store.get_account(account_id)
    assert account is not None and auth is not None
    await store.set_groups(account_id, (*account.groups, "admin"))
    auth.auth.forget_account(account_id)


# argon2id with small costs, so tests that sign up many users stay fast.
FAST_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}


def start_hub(case: unittest.TestCase, settings: Settings) -> RunningHub:
    """Start a hub in this process and stop it when the test ends."""
    hub = build_service(settings, reactor, password_cost=FAST_ARGON2)
    hub.startService()
    case.addCleanup(hub.stopService)
    return RunningHub(hub)


def http_client(case: unittest.TestCase) -> HTTPClient:
    """A treq client whose connections are closed when the test ends."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


class _Collect(protocol.Protocol):
    def __init__(self, payload: bytes, done: defer.Deferred[bytes]) -> None:
        self.payload = payload
        self.done = done
        self.data: list[bytes] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.data))


async def raw_http(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and collect everything until the server closes."""
    return await raw_stream(TCP4ClientEndpoint(reactor, "127.0.0.1", port), payload, timeout)


async def raw_stream(endpoint: Any, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to a client endpoint and collect everything until the server closes."""
    done: defer.Deferred[bytes] = defer.Deferred()
    proto = await endpoint.connect(protocol.Factory.forProtocol(lambda: _Collect(payload, done)))
    timer = reactor.callLater(timeout, proto.transport.loseConnection)
    try:
        return await done
    finally:
        if timer.active():
            timer.cancel()


def raw_get(path: bytes | str, *, headers: Mapping[str, str] | None = None, method: str = "GET") -> bytes:
    """A one-shot HTTP/1.1 request with ``Connection: close``, path sent exactly as given."""
    if isinstance(path, str):
        path = path.encode("latin-1")
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of a raw HTTP/1.1 response (no chunked decoding)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    assert m, f"not an HTTP response: {lines[0]!r}"
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


WAIT = 30.0
"""How long :func:`until` waits by default: generous, for a loaded machine (it returns as soon
as the condition holds, so a passing test does not wait for it)."""


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT, what: str = "the condition",
                interval: float = 0.01) -> None:
    """Wait until ``check()`` holds, polled every ``interval`` seconds on the real reactor;
    ``check`` may be async. Fails after ``timeout`` seconds, naming ``what`` was awaited.

    The one way tests wait for something that happens asynchronously and has no Deferred
    to await: never a fixed sleep."""
    deadline = reactor.seconds() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if reactor.seconds() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        await task.deferLater(reactor, interval, lambda: None)


def settle(seconds: float) -> defer.Deferred[None]:
    """Let the real reactor run for ``seconds``: only for a bounded *negative* check (something
    that must not happen, e.g. a duplicate event, is given this long to show up). Never use it
    to wait for something to happen: that is :func:`until`'s job."""
    return task.deferLater(reactor, seconds, lambda: None)


class DrivenClock:
    """Real time plus an offset the test advances: a cache lifetime or a deadline passes
    without the test sleeping through it. ``seconds`` is an ``IReactorTime.seconds``; ``now``
    the matching UTC datetime."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return float(reactor.seconds()) + self.offset

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def drive_clocks(case: unittest.TestCase, running: RunningHub) -> DrivenClock:
    """Give the hub's credential and proxy-access caches a clock this test drives."""
    clock = DrivenClock()
    hub = running.hub
    if hub.auth is not None:
        case.patch(hub.auth.auth, "clock", clock.seconds)
        case.patch(hub.auth.auth, "now", clock.now)
    if hub.proxy is not None:
        case.patch(hub.proxy.access, "clock", clock)
    return clock


class LogCapture:
    """Formatted log lines of this process, and a way to wait for one."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.lines: list[str] = []
        self.waiters: list[tuple[str, defer.Deferred[str]]] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        self.lines.append(text)
        for item in list(self.waiters):
            if item[0] in text:
                self.waiters.remove(item)
                item[1].callback(text)

    def wait_for(self, fragment: str, timeout: float = 20.0) -> defer.Deferred[str]:
        for line in self.lines:
            if fragment in line:
                return defer.succeed(line)
        d: defer.Deferred[str] = defer.Deferred()
        self.waiters.append((fragment, d))
        return d.addTimeout(timeout, reactor)


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def socket_dir(case: unittest.TestCase) -> Path:
    """A fresh directory for unix sockets, removed after the test. It lives under /tmp, not
    the test's own temp dir: an absolute path inside a deep checkout (CI builds in one) can
    pass the 107 bytes AF_UNIX allows."""
    path = Path(tempfile.mkdtemp(prefix="cchub-"))
    case.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway key and self-signed certificate for 127.0.0.1 / localhost."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class ProcessOutput(protocol.ProcessProtocol):
    """Collects a child's output; lets a test wait for a line pattern or for the exit."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self._waiters: list[tuple[re.Pattern[bytes], defer.Deferred[re.Match[bytes]]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        for item in list(self._waiters):
            m = item[0].search(self.output)
            if m:
                self._waiters.remove(item)
                item[1].callback(m)

    def wait_for(self, pattern: bytes, timeout: float = 20.0) -> defer.Deferred[re.Match[bytes]]:
        d: defer.Deferred[re.Match[bytes]] = defer.Deferred()
        self._waiters.append((re.compile(pattern), d))
        self._check()
        if not d.called:
            d.addTimeout(timeout, reactor)
        return d

    def processEnded(self, reason: Any) -> None:
        self.exit_code = reason.value.exitCode if reason.value.exitCode is not None else -1
        self.exit_signal = reason.value.signal
        for _, d in self._waiters:
            if not d.called:
                output = self.output.decode(errors="replace")
                d.errback(AssertionError(f"process ended before pattern; output:\n{output}"))
        self._waiters = []
        self.ended.callback(self.exit_code)


def spawn(case: unittest.TestCase, args: list[str], env: Mapping[str, str] | None = None,
          cwd: str | None = None) -> tuple[ProcessOutput, Any]:
    """Start a child process; it is killed at the end of the test if still running."""
    proto = ProcessOutput()
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    transport = reactor.spawnProcess(proto, args[0], args, env=full_env, path=cwd)

    async def cleanup() -> None:
        if proto.exit_code is None:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
            await proto.ended

    case.addCleanup(lambda: defer.ensureDeferred(cleanup()))
    return proto, transport
