"""Running commands for project members: synchronous calls and background jobs.

Parameter names and result shapes follow upstream's ``exec`` (``command, args, path,
env, timeout, max_output, bash, err_on_exit, async_call, async_get, async_await``;
results ``{type: "blocking"|"async", stdout, stderr, exit_code, …}``). Each command
runs in a session of its own, so a timeout or the project's shutdown kills the whole
tree it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cocalc_hub.project_agent.files import FileError, confine
from cocalc_hub.reactors import IReactorTimeProcess

log = Logger()

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
DEFAULT_MAX_OUTPUT = 1024 * 1024
MAX_MAX_OUTPUT = 16 * 1024 * 1024
MAX_RUNNING_JOBS = 100
KEEP_FINISHED_JOBS = 200
MAX_ARGS = 10000
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Who the project is: set by the hub, never by a caller's ``env`` (plus every COCALC_* name).
IDENTITY = frozenset({"HOME", "USER", "LOGNAME", "BASE_PATH", "DATA", "CONAT_SERVER"})


def identity_variable(name: str) -> bool:
    return name in IDENTITY or name.upper().startswith("COCALC_")


class ExecError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _setsid_prefix() -> list[str]:
    """Run each command as a session leader so its whole tree can be signalled."""
    found = shutil.which("setsid")
    if found:
        return [found]
    return [sys.executable, "-c", "import os,sys;os.setsid();os.execvp(sys.argv[1],sys.argv[1:])"]


class Job(ProcessProtocol):
    def __init__(self, jobs: Jobs, job_id: str, max_output: int, timeout: float, script: Path | None, *,
                 command: str = "", args: list[str] | None = None, cwd: Path | None = None) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.max_output = max_output
        self.timeout = timeout
        self.script = script
        self.command = command
        self.args = args or []
        """As the caller gave them (a bash script is the command, with no args)."""
        self.cwd = cwd or jobs.home
        self.timed_out = False
        self.start = time.time()
        self.ended_at: float | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self.exit_code: int | None = None
        self.status = "running"
        self.error: str | None = None
        self.pid: int | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._timer: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()
        if self.timeout > 0:
            self._timer = self.jobs.reactor.callLater(self.timeout, self._timed_out)

    def _append(self, buf: bytearray, data: bytes) -> None:
        room = self.max_output - len(buf)
        if room > 0:
            buf += data[:room]
        if len(data) > max(room, 0):
            self.truncated = True

    def outReceived(self, data: bytes) -> None:
        self._append(self.stdout, data)

    def errReceived(self, data: bytes) -> None:
        self._append(self.stderr, data)

    def _timed_out(self) -> None:
        self._timer = None
        if self.status == "running":
            self.timed_out = True
            self.error = f"command timed out after {self.timeout:g} seconds"
            self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.pid is not None and self.ended_at is None:
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def processExited(self, reason: Failure) -> None:
        # The command is done; kill what it left running in its session, which also closes
        # the output pipes those leftovers held (processEnded waits for them).
        self.kill()

    def processEnded(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.kill()
        self.ended_at = time.time()
        value = reason.value
        code = getattr(value, "exitCode", None)
        sig = getattr(value, "signal", None)
        self.exit_code = code if code is not None else (-sig if sig else -1)
        if self.error is None and not isinstance(value, ProcessDone) and code is None:
            self.error = f"command was killed by signal {sig}"
        self.status = "error" if self.error else "completed"
        if self.script is not None:
            try:
                self.script.unlink()
            except OSError:
                pass
        self.jobs.finished(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended_at is not None:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def result(self, kind: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": kind,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "exit_code": self.exit_code,
        }
        if self.truncated:
            out["truncated"] = True
        if kind == "async":
            end = self.ended_at or time.time()
            out.update(job_id=self.job_id, status=self.status, start=int(self.start * 1000), pid=self.pid,
                       elapsed_s=round(end - self.start, 3))
            if self.error:
                out["error"] = self.error
        return out


class Jobs:
    """Validates exec parameters and runs commands in HOME."""

    def __init__(self, reactor: IReactorTimeProcess, home: Path, env: Mapping[str, str]) -> None:
        self.reactor = reactor
        self.home = home.resolve()
        self.env = dict(env)
        self.running: dict[str, Job] = {}
        self.done: OrderedDict[str, Job] = OrderedDict()
        self.prefix = _setsid_prefix()

    # parameters -------------------------------------------------------------------

    def _number(self, params: Mapping[str, Any], name: str, default: float, limit: float,
                allow_zero: bool = False) -> float:
        value = params.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExecError(400, f"{name} must be a number")
        if value < 0 or (value == 0 and not allow_zero) or value > limit:
            raise ExecError(400, f"{name} must be between {'0' if allow_zero else 'above 0'} and {limit:g}")
        return float(value)

    def _directory(self, raw: object) -> Path:
        try:
            candidate = confine(self.home, raw)
        except FileError as e:
            raise ExecError(e.status, e.message) from None
        if not candidate.is_dir():
            raise ExecError(400, "path is not a directory")
        return candidate

    def _environment(self, raw: object) -> dict[str, str]:
        env = dict(self.env)
        if raw is None:
            return env
        if not isinstance(raw, dict):
            raise ExecError(400, "env must be an object of strings")
        for key, value in raw.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key) or not isinstance(value, str) \
                    or "\x00" in value:
                raise ExecError(400, "env must map variable names to strings")
            if identity_variable(key) and value != env.get(key):
                raise ExecError(400, f"env may not change {key}: the project's identity variables are set by the hub")
            env[key] = value
        return env

    def _argv(self, params: Mapping[str, Any], cwd: Path, env: Mapping[str, str],
              job_id: str) -> tuple[list[str], Path | None]:
        command = params.get("command")
        if not isinstance(command, str) or not command.strip() or "\x00" in command:
            raise ExecError(400, "command must be a non-empty string")
        if params.get("bash"):
            # Upstream writes the script to a file and runs bash on it (no ARG_MAX trouble).
            smc = self.home / ".smc"
            smc.mkdir(mode=0o700, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"exec-{job_id}-", suffix=".sh", dir=smc)
            with os.fdopen(fd, "w") as f:
                f.write(command)
            bash = shutil.which("bash", path=env.get("PATH")) or "/bin/bash"
            return [bash, name], Path(name)
        args = params.get("args") or []
        if not isinstance(args, list) or len(args) > MAX_ARGS or \
                not all(isinstance(a, str) and "\x00" not in a for a in args):
            raise ExecError(400, "args must be a list of strings")
        if "/" in command:
            resolved = os.path.realpath(cwd / command) if not command.startswith("/") else command
            if not os.access(resolved, os.X_OK) or os.path.isdir(resolved):
                raise ExecError(400, f"command not found or not executable: {command}", exit_code=127)
        else:
            found = shutil.which(command, path=env.get("PATH"))
            if found is None:
                raise ExecError(400, f"command not found: {command}", exit_code=127)
            resolved = found
        return [resolved, *args], None

    # running ----------------------------------------------------------------------------

    def spawn(self, params: Mapping[str, Any], *, background: bool,
              on_spawn: Callable[[Job], None] | None = None) -> Job:
        if len(self.running) >= MAX_RUNNING_JOBS:
            raise ExecError(429, f"at most {MAX_RUNNING_JOBS} commands may run at once")
        timeout = self._number(params, "timeout", 0.0 if background else DEFAULT_TIMEOUT, MAX_TIMEOUT,
                               allow_zero=background)
        max_output = int(self._number(params, "max_output", DEFAULT_MAX_OUTPUT, MAX_MAX_OUTPUT))
        cwd = self._directory(params.get("path"))
        env = self._environment(params.get("env"))
        job_id = str(uuid.uuid4())
        argv, script = self._argv(params, cwd, env, job_id)
        job = Job(self, job_id, max_output, timeout, script, command=str(params.get("command")),
                  args=[] if script is not None else list(params.get("args") or []), cwd=cwd)
        full = [*self.prefix, *argv]
        self.reactor.spawnProcess(job, full[0], full, env=env, path=str(cwd))
        self.running[job_id] = job
        if on_spawn is not None:
            on_spawn(job)
        return job

    def finished(self, job: Job) -> None:
        self.running.pop(job.job_id, None)
        self.done[job.job_id] = job
        while len(self.done) > KEEP_FINISHED_JOBS:
            self.done.popitem(last=False)

    async def handle(self, params: Mapping[str, Any],
                     on_spawn: Callable[[Job], None] | None = None) -> dict[str, Any]:
        """One exec request: synchronous, ``async_call`` or ``async_get``. ``on_spawn`` is
        told of the job a request started (the conat API logs it once it has ended)."""
        job_id = params.get("async_get")
        if job_id is not None:
            if not isinstance(job_id, str):
                raise ExecError(400, "async_get must be a job id")
            job = self.running.get(job_id) or self.done.get(job_id)
            if job is None:
                raise ExecError(404, "no such job (finished jobs are kept for a while only)")
            if params.get("async_await") and job.ended_at is None:
                wait = self._number(params, "timeout", 30.0, MAX_TIMEOUT)
                d = job.wait()
                d.addTimeout(wait, self.reactor)
                try:
                    await d
                except defer.TimeoutError:
                    pass
            return job.result("async")
        if params.get("async_call"):
            return self.spawn(params, background=True, on_spawn=on_spawn).result("async")
        job = self.spawn(params, background=False, on_spawn=on_spawn)
        await job.wait()
        result = job.result("blocking")
        if job.error:
            raise ExecError(504 if "timed out" in job.error else 500, job.error, **result)
        err_on_exit = params.get("err_on_exit", True)
        if err_on_exit and job.exit_code != 0:
            raise ExecError(422, f"command exited with code {job.exit_code}", **result)
        return result

    def stop_all(self) -> None:
        for job in list(self.running.values()):
            job.kill(signal.SIGTERM)
            job.kill(signal.SIGKILL)
            try:
                if job.transport is not None:
                    job.transport.signalProcess("KILL")
            except (ProcessExitedAlready, OSError):
                pass
