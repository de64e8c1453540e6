"""ProjectManager: local projects as supervised child processes.

State lives in the store (``projects.state``/``status``/``secret_token``) so every hub
process sees the same truth; transitions are compare-and-set, so two concurrent starts
start one process. Every wait has a deadline: a start that does not report ready in
time is killed and put in the ``error`` state with the reason and the project's last
output; a stop escalates SIGTERM → SIGKILL and always ends in ``opened``.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.auth import project_tokens
from cocalc_hub.db.store import Project, Store, utcnow
from cocalc_hub.projects import processes, sockets
from cocalc_hub.projects.environment import project_environment
from cocalc_hub.projects.program import MAX_OUTPUT_LINES, READY_FD, TOKEN_FD, Exited, ProjectError, ProjectProcess
from cocalc_hub.projects.watch import ExitWatcher
from cocalc_hub.reactors import IProjectsReactor

log = Logger()

# Used when no key is configured (managers made by tests): good for this process's lifetime.
_PROCESS_TOKEN_KEY = secrets.token_bytes(32)
ROOT_REFUSAL = ("refusing to start projects as root: in single-user mode projects run as the hub's own user "
                "and this hub runs as root; use --multi-user, or --allow-root-projects to accept it")


@dataclass
class ManagerConfig:
    projects: str
    """HOME template containing ``[project_id]``."""
    multi_user: bool = False
    start_timeout: float = 30.0
    stop_grace: float = 5.0
    idle_interval: float = 60.0
    idle_timeout: float = 1800.0
    min_run_time: float = 600.0
    touch_interval: float = 30.0
    adopt: bool = True
    stop_on_exit: bool = False
    limits: Mapping[str, int] = field(default_factory=dict)
    program: tuple[str, ...] = (sys.executable, "-m", "cocalc_hub.project_agent")
    """argv of the project program (tests substitute misbehaving programs)."""
    base_path: str = "/"
    hub_url: Callable[[], str] = lambda: ""
    token_key: bytes = _PROCESS_TOKEN_KEY
    """Derives projects' secret tokens (``$SECRETS/project-token-key``); the store keeps hashes."""
    allow_root: bool = False
    """Single-user mode with the hub running as root: run projects as root anyway."""


@dataclass
class Running:
    """What this hub process knows about a project process it owns or adopted."""

    pid: int
    http_port: int
    token: str
    started: float
    proto: ProjectProcess | None = None
    watcher: ExitWatcher | None = None
    ended: defer.Deferred[None] = field(default_factory=defer.Deferred)
    stopping: bool = False
    released: bool = False
    """Left running for the next hub process to adopt; this one records nothing more."""


def state_view(project: Project) -> dict[str, Any]:
    """A project's state as callers see it: the state record and the status fields they may read."""
    out: dict[str, Any] = dict(project.state or {"state": "opened"})
    out.setdefault("state", "opened")
    status = dict(project.status or {})
    for key in ("project.pid", "browser-server.port", "start_ts", "last_output"):
        if key in status:
            out[key] = status[key]
    return out


class ProjectManager(service.Service):
    name = "project-manager"

    def __init__(self, store: Store, config: ManagerConfig, reactor: IProjectsReactor, *, procs: Any = processes,
                 blocking: Callable[..., defer.Deferred[Any]] = threads.deferToThread) -> None:
        self.store = store
        self.config = config
        self.reactor = reactor
        # The process table is read in threads; tests swap in a fake table and run it inline.
        self.ptable = procs
        self.blocking = blocking
        self.active: dict[str, Running] = {}
        self.starting: dict[str, ProjectProcess] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self._touched: dict[str, float] = {}
        self._idle: task.LoopingCall | None = None
        self.listeners: list[Callable[[str, Mapping[str, Any]], None]] = []
        self.on_stop: list[Callable[[], None]] = []
        """Called once the manager has stopped (e.g. to close the state publisher's client)."""

    # helpers -------------------------------------------------------------------------

    def home(self, project_id: str) -> Path:
        return Path(self.config.projects.replace("[project_id]", project_id))

    def uid(self, project_id: str) -> int | None:
        return processes.project_uid(project_id) if self.config.multi_user else None

    def _lock(self, project_id: str) -> defer.DeferredLock:
        return self._locks.setdefault(project_id, defer.DeferredLock())

    async def _project(self, project_id: str, *, deleted_ok: bool = False) -> Project:
        project = await self.store.get_project(project_id)
        if project is None or (project.deleted and not deleted_ok):
            raise ProjectError(404, "no such project")
        return project

    async def _set(self, project_id: str, name: str, *, expect: tuple[str, ...] | None = None,
                   error: str | None = None, **kw: Any) -> bool:
        state: dict[str, Any] = {"state": name, "time": utcnow().isoformat()}
        if error:
            state["error"] = error
        ok = await self.store.set_project_state(project_id, state, expect=expect, **kw)
        if ok:
            for listener in list(self.listeners):
                try:
                    listener(project_id, state)
                except Exception:
                    log.failure("project state listener failed")
        return ok

    def ensure_home(self, project_id: str) -> Path:
        home = self.home(project_id)
        uid = self.uid(project_id)
        if uid is not None:
            home.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            os.chmod(home.parent, 0o711)
            for ancestor in home.parent.parents:
                if not os.stat(ancestor).st_mode & 0o001:
                    raise ProjectError(500, f"in multi-user mode every directory above a project's home must be "
                                            f"searchable by others (o+x); {ancestor} is not")
            home.mkdir(exist_ok=True, mode=0o700)
            os.chown(home, uid, uid)
            os.chmod(home, 0o700)
        else:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return home

    # control ---------------------------------------------------------------------------

    async def state(self, project_id: str) -> dict[str, Any]:
        return state_view(await self._project(project_id))

    async def start(self, project_id: str) -> dict[str, Any]:
        await self._lock(project_id).acquire()
        try:
            return await self._start(project_id)
        finally:
            self._lock(project_id).release()

    def runs_as_root(self) -> bool:
        """Would projects run as root (single-user mode, hub started as root)?"""
        return not self.config.multi_user and os.geteuid() == 0

    async def _start(self, project_id: str) -> dict[str, Any]:
        project = await self._project(project_id)
        if self.runs_as_root() and not self.config.allow_root:
            raise ProjectError(500, ROOT_REFUSAL)
        if project.state_name == "running" and project_id in self.active:
            return await self.state(project_id)
        if project.state_name in ("running", "starting", "stopping"):
            project = await self._settle(project)
            if project.state_name == "running":
                return await self.state(project_id)
        if not await self._set(project_id, "starting", expect=("opened", "error"), status={}):
            return await self.state(project_id)
        try:
            return await self._spawn(project_id)
        except ProjectError as e:
            if not e.recorded:
                await self._fail(project_id, e.message, [])
            raise

    async def _settle(self, project: Project) -> Project:
        """A transition owned by someone else (another hub process, or one that died):
        wait for it to finish within its deadline; if its process is gone, reset to opened."""
        project_id = project.project_id
        uid = self.uid(project_id)
        limit = self.config.start_timeout + self.config.stop_grace + 5.0
        deadline = self.reactor.seconds() + limit
        while True:
            pid = project.status.get("project.pid") if project.status else None
            owned = isinstance(pid, int) and await self.blocking(self.ptable.belongs_to, pid, project_id, uid)
            if project.state_name == "running" and owned:
                return project
            if project.state_name not in ("running", "starting", "stopping"):
                return project
            # A process still starting may not show whose it is yet (between fork and exec it
            # has the hub's environment and uid): while it lives it is not taken for dead, or
            # this hub would start the project again and kill it as a leftover.
            gone = isinstance(pid, int) and not owned and not (
                project.state_name == "starting" and await self.blocking(self.ptable.alive, pid))
            if project.state_name == "running" or self.reactor.seconds() >= deadline or gone:
                await self._set(project_id, "opened", expect=(project.state_name,), clear_secret=True, status={})
                return await self._project(project_id)
            # The transition is another hub process's (this one's own hold the project's lock, as
            # this start does): only the store tells, and it has no change notification across
            # processes, so polling is the honest answer: look again (bounded by the deadline above).
            await task.deferLater(self.reactor, 0.1, lambda: None)
            project = await self._project(project_id)

    async def _spawn(self, project_id: str) -> dict[str, Any]:
        uid = self.uid(project_id)
        killed = await self.blocking(self.ptable.kill_project, project_id, uid=uid)
        if killed:
            log.warn("killed {n} leftover process(es) of project {project_id}", n=killed, project_id=project_id)
        try:
            home = await self.blocking(self.ensure_home, project_id)
        except OSError as e:
            raise ProjectError(500, f"cannot create the project's home directory: {e.strerror or e}") from None
        token, stored = project_tokens.new_token(self.config.token_key, project_id)
        project = await self._project(project_id)
        env = project_environment(project_id=project_id, home=home, base_path=self.config.base_path,
                                  hub_url=self.config.hub_url(), uid=uid, limits=self._limits(project),
                                  extra=project.env, ready_fd=READY_FD, token_fd=TOKEN_FD)
        proto = ProjectProcess(project_id)
        self.starting[project_id] = proto
        # The token travels on a pipe (never argv or the environment, which ps and /proc show).
        reader, writer = os.pipe()
        try:
            try:
                os.write(writer, token.encode() + b"\n")  # 44 bytes: never blocks
            finally:
                os.close(writer)
            argv = list(self.config.program)
            self.reactor.spawnProcess(proto, argv[0], argv, env=env, path=str(home),
                                      childFDs={0: "w", 1: "r", 2: "r", READY_FD: "r", TOKEN_FD: reader})
        except OSError as e:
            self.starting.pop(project_id, None)
            raise ProjectError(500, f"cannot start the project program: {e}") from None
        finally:
            os.close(reader)
        assert proto.pid is not None
        started = time.time()
        await self.store.set_project_state(
            project_id, {"state": "starting", "time": utcnow().isoformat()}, expect=("starting",),
            status={"project.pid": proto.pid}, secret_token=stored)
        try:
            proto.ready.addTimeout(self.config.start_timeout, self.reactor)
            info = await proto.ready
            ports = await self.blocking(self.ptable.listening_ports, project_id, root_pid=proto.pid, uid=uid)
            if info["http_port"] not in ports:
                raise ProjectError(500, f"the project reported port {info['http_port']}, which it does not "
                                        "listen on")
        except (defer.TimeoutError, defer.CancelledError):
            await self._kill(project_id, proto)
            message = f"the project did not report ready within {self.config.start_timeout:g} seconds and was stopped"
            await self._fail(project_id, message, proto.output())
            raise ProjectError(504, message, recorded=True) from None
        except Exited as e:
            self.starting.pop(project_id, None)
            await self.blocking(self.ptable.kill_project, project_id, uid=uid)
            how = f"with exit code {e.code}" if e.code is not None else f"by signal {e.sig}"
            if proto.stopping:
                return await self.state(project_id)
            await self._output_read(proto)
            await self._fail(project_id, f"the project exited {how} before it was ready", proto.output())
            raise ProjectError(500, f"the project exited {how} before it was ready", recorded=True) from None
        except ProjectError as e:
            await self._kill(project_id, proto)
            await self._fail(project_id, e.message, proto.output())
            raise ProjectError(e.status, e.message, recorded=True) from None
        self.starting.pop(project_id, None)
        running = Running(pid=proto.pid, http_port=info["http_port"], token=token, started=started, proto=proto)
        self.active[project_id] = running
        proto.exited.addCallback(lambda r: self._ended(project_id, running, r))
        status = {"project.pid": proto.pid, "browser-server.port": info["http_port"],
                  "start_ts": int(started * 1000)}
        if not await self._set(project_id, "running", expect=("starting",), status=status, last_started=utcnow()):
            # Stopped meanwhile (another hub process or a racing stop): honour that.
            await self._kill(project_id, proto)
            return await self.state(project_id)
        await self.store.touch_project(project_id)
        log.info("project {project_id} running (pid {pid}, port {port}) after {ms:.0f} ms", project_id=project_id,
                 pid=proto.pid, port=info["http_port"], ms=(time.time() - started) * 1000)
        return await self.state(project_id)

    def _limits(self, project: Project) -> dict[str, int]:
        limits = dict(self.config.limits)
        for name in ("memory", "processes", "cpu", "file_size", "open_files"):
            value = project.settings.get(name) if project.settings else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limits[name] = value
        return limits

    async def _fail(self, project_id: str, message: str, output: list[str]) -> None:
        self.starting.pop(project_id, None)
        log.warn("project {project_id}: {message}", project_id=project_id, message=message)
        await self._set(project_id, "error", error=message, status={"last_output": output[-MAX_OUTPUT_LINES:]},
                        clear_secret=True)

    async def _kill(self, project_id: str, proto: ProjectProcess) -> None:
        proto.stopping = True
        if proto.pid is not None:
            self.ptable.signal_group(proto.pid, signal.SIGKILL)
        await self.blocking(self.ptable.kill_project, project_id, root_pid=proto.pid, uid=self.uid(project_id))
        self.starting.pop(project_id, None)

    def _ended(self, project_id: str, running: Running, result: tuple[int | None, int | None]) -> None:
        """A project process we own or adopted is gone (we stopped it, or it died)."""
        if running.released:
            return
        if self.active.get(project_id) is running:
            del self.active[project_id]
        if running.watcher is not None:
            running.watcher.stop()
        stopping = running.stopping or (running.proto is not None and running.proto.stopping)
        if not running.ended.called:
            running.ended.callback(None)
        if stopping:
            return
        code, sig = result
        how = f"exit code {code}" if code is not None else (f"signal {sig}" if sig else "an unknown reason")

        async def record() -> None:
            await self.blocking(self.ptable.kill_project, project_id, uid=self.uid(project_id))
            output: list[str] = []
            if running.proto is not None:
                await self._output_read(running.proto)
                output = running.proto.output()
            await self._fail(project_id, f"the project stopped unexpectedly ({how})", output)

        defer.ensureDeferred(record()).addErrback(lambda f: log.failure("recording a project's end", f))

    async def _output_read(self, proto: ProjectProcess) -> None:
        """Wait until everything the exited project wrote has been read (its exit can be seen
        before its last lines): its pipes close once its processes are killed; at most the stop
        grace, should something else hold them open."""
        await _wait(proto.ended, self.config.stop_grace, self.reactor)

    async def stop(self, project_id: str) -> dict[str, Any]:
        await self._lock(project_id).acquire()
        try:
            return await self._stop(project_id)
        finally:
            self._lock(project_id).release()

    async def _stop(self, project_id: str) -> dict[str, Any]:
        # A deleted project's processes must still be stoppable.
        project = await self._project(project_id, deleted_ok=True)
        running = self.active.get(project_id)
        proto = running.proto if running else self.starting.get(project_id)
        pid = running.pid if running else (proto.pid if proto else project.status.get("project.pid"))
        if project.state_name != "opened":
            await self._set(project_id, "stopping", expect=(project.state_name,))
        if proto is not None:
            proto.stopping = True
        if running is not None:
            running.stopping = True
        uid = self.uid(project_id)
        if isinstance(pid, int) and (running is not None or proto is not None or await self.blocking(
                self.ptable.belongs_to, pid, project_id, uid)):
            self.ptable.signal_group(pid, signal.SIGTERM)
            ended = running.ended if running is not None else (proto.exited if proto is not None else None)
            if ended is not None:
                await _wait(ended, self.config.stop_grace, self.reactor)
            else:
                await self._foreign_exit(pid)
            self.ptable.signal_group(pid, signal.SIGKILL)
        await self.blocking(self.ptable.kill_project, project_id, root_pid=pid if isinstance(pid, int) else None,
                                    uid=uid)
        self.active.pop(project_id, None)
        self.starting.pop(project_id, None)
        await self._set(project_id, "opened", clear_secret=True, status={})
        log.info("project {project_id} stopped", project_id=project_id)
        if project.deleted:
            return {"state": "opened"}
        return await self.state(project_id)

    async def _foreign_exit(self, pid: int) -> None:
        """Wait, at most the stop grace, for a process this hub process did not spawn to exit."""
        exited: defer.Deferred[None] = defer.Deferred()
        watcher = ExitWatcher(self.reactor, pid, lambda: exited.callback(None), interval=0.25, alive=self.ptable.alive)
        watcher.start()
        try:
            await _wait(exited, self.config.stop_grace, self.reactor)
        finally:
            watcher.stop()

    async def restart(self, project_id: str) -> dict[str, Any]:
        await self.stop(project_id)
        return await self.start(project_id)

    async def delete(self, project_id: str) -> None:
        """Stop the project's processes (the caller marks it deleted)."""
        try:
            await self.stop(project_id)
        except ProjectError:
            pass

    # activity and idle stop ------------------------------------------------------------

    def touch(self, project_id: str, account_id: str | None = None) -> None:
        """Record activity (cheap: at most one write per project per touch interval)."""
        now = self.reactor.seconds()
        if now - self._touched.get(project_id, -1e18) < self.config.touch_interval:
            return
        self._touched[project_id] = now
        defer.ensureDeferred(self.store.touch_project(project_id, account_id)).addErrback(
            lambda f: log.failure("recording project activity", f))

    async def check_idle(self, now: datetime | None = None) -> list[str]:
        """Stop local running projects idle longer than their timeout; return their ids."""
        now = now or utcnow()
        stopped = []
        for project in await self.store.projects_in_states(("running",)):
            if project.project_id not in self.active:
                continue
            timeout = project.settings.get("idle_timeout", self.config.idle_timeout) if project.settings \
                else self.config.idle_timeout
            if not isinstance(timeout, (int, float)) or timeout <= 0:
                continue  # 0 = always running
            if project.last_started and now - project.last_started < timedelta(seconds=self.config.min_run_time):
                continue
            if project.last_edited and now - project.last_edited < timedelta(seconds=timeout):
                continue
            log.info("stopping idle project {project_id}", project_id=project.project_id)
            await self.stop(project.project_id)
            stopped.append(project.project_id)
        return stopped

    # proxy support ------------------------------------------------------------------------

    def local_target(self, project_id: str) -> tuple[int, str] | None:
        """(raw server port, secret token) of a project this process runs."""
        running = self.active.get(project_id)
        return (running.http_port, running.token) if running else None

    async def listening_ports(self, project_id: str) -> set[int]:
        running = self.active.get(project_id)
        if running is None:
            return set()
        result: set[int] = await self.blocking(self.ptable.listening_ports, project_id, root_pid=running.pid,
                                                       uid=self.uid(project_id))
        return result

    async def port_targets(self, project_id: str) -> dict[int, str]:
        """The project's listening ports -> the address the proxy connects to (see
        :func:`.sockets.port_targets`)."""
        running = self.active.get(project_id)
        if running is None:
            return {}
        result: dict[int, str] = await self.blocking(sockets.port_targets, root_pid=running.pid,
                                                     uid=self.uid(project_id))
        return result

    async def verify_connection(self, project_id: str, server: tuple[str, int], client: tuple[str, int]) -> str | None:
        """None if a new connection from ``client`` reached the project's own socket at
        ``server``; otherwise why not."""
        running = self.active.get(project_id)
        if running is None:
            return "the project is not running"
        result: str | None = await self.blocking(sockets.verify_peer, root_pid=running.pid, uid=self.uid(project_id),
                                                 server=server, client=client)
        return result

    # hub start and stop ---------------------------------------------------------------------

    def startService(self) -> None:
        service.Service.startService(self)
        defer.ensureDeferred(self.recover()).addErrback(lambda f: log.failure("recovering projects", f))
        if self.config.idle_interval > 0:
            self._idle = task.LoopingCall(lambda: defer.ensureDeferred(self.check_idle()).addErrback(
                lambda f: log.failure("idle check", f)))
            self._idle.clock = self.reactor
            self._idle.start(self.config.idle_interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop_service())

    async def _stop_service(self) -> None:
        service.Service.stopService(self)
        if self._idle is not None and self._idle.running:
            self._idle.stop()
        if self.config.stop_on_exit:
            await defer.gatherResults([defer.ensureDeferred(self.stop(pid)) for pid in list(self.active)],
                                      consumeErrors=True)
        self.release_all()
        for hook in self.on_stop:
            hook()

    def release_all(self) -> None:
        """Leave every project running for the next hub process, and stop watching them."""
        for running in self.active.values():
            running.released = True
            if running.watcher is not None:
                running.watcher.stop()
        self.active.clear()

    async def recover(self) -> None:
        """After a hub restart: adopt projects still running from before, stop the rest."""
        for project in await self.store.projects_in_states(("starting", "running", "stopping")):
            project_id = project.project_id
            if project_id in self.active or project_id in self.starting:
                continue
            status = project.status or {}
            pid, port = status.get("project.pid"), status.get("browser-server.port")
            uid = self.uid(project_id)
            alive = isinstance(pid, int) and await self.blocking(self.ptable.belongs_to, pid, project_id, uid)
            token = project_tokens.recover(self.config.token_key, project_id, project.secret_token)
            if (self.config.adopt and alive and project.state_name == "running" and isinstance(port, int)
                    and token and isinstance(pid, int)):
                self._adopt(project_id, pid, port, token)
                log.info("adopted project {project_id} (pid {pid})", project_id=project_id, pid=pid)
                continue
            await self.stop(project_id)
            why = " (its token cannot be derived: made by an older version, or with another project-token-key)" \
                if self.config.adopt and alive and project.secret_token and token is None else ""
            log.info("stopped project {project_id} left over from a previous hub{why}", project_id=project_id,
                     why=why)

    def _adopt(self, project_id: str, pid: int, port: int, token: str) -> None:
        running = Running(pid=pid, http_port=port, token=token, started=time.time())
        running.watcher = ExitWatcher(self.reactor, pid, lambda: self._ended(project_id, running, (None, None)),
                                      alive=self.ptable.alive)
        self.active[project_id] = running
        running.watcher.start()

    def memory(self) -> dict[str, int]:
        """RSS in bytes of each running project's main process (blocking: call in a thread)."""
        return {project_id: self.ptable.rss_bytes(r.pid) for project_id, r in self.active.items()}


async def _wait(d: defer.Deferred[Any], timeout: float, reactor: IReactorTime) -> None:
    """Wait for ``d`` at most ``timeout`` seconds without consuming its result."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def done(result: Any) -> Any:
        if not waiter.called:
            waiter.callback(None)
        return result

    d.addBoth(done)
    timer = reactor.callLater(timeout, lambda: None if waiter.called else waiter.callback(None))
    await waiter
    if timer.active():
        timer.cancel()
