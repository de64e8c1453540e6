"""The project program: set up the process, serve raw files and exec, tell the hub it is ready,
then join the hub's conat broker (answering the project API there, and keeping its info and
exec log in persist: :mod:`.records`)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import psutil
from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.web.server import Site

from cocalc_hub.internals.twisted import twisted_children
from cocalc_hub.project_agent import process
from cocalc_hub.project_agent.jobs import Jobs
from cocalc_hub.project_agent.raw import ProjectRoot
from cocalc_hub.reactors import IAgentReactor

log = Logger()

REQUIRED = ("COCALC_PROJECT_ID", "HOME", "COCALC_TOKEN_FD")
# Earlier versions wrote the token into HOME, where /raw/ served it to every member.
LEGACY_TOKEN_FILE = (".smc", "secret-token")
# Set by the hub for the program only; commands do not inherit them.
PROGRAM_ONLY = ("COCALC_READY_FD", "COCALC_TOKEN_FD", "COCALC_PROJECT_LIMITS", "COCALC_PROJECT_UID",
                "COCALC_PROJECT_GID")


class ProjectSite(Site):
    noisy = False

    def log(self, request: Any) -> None:  # the hub logs proxied requests; keep project logs quiet
        pass


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What commands run with: the project's environment minus what only the program needs."""
    return {k: v for k, v in env.items() if k not in PROGRAM_ONLY}


def read_token(env: Mapping[str, str]) -> str:
    """The secret token from the hub's pipe (``COCALC_TOKEN_FD``), which is then closed.

    It stays in this process's memory only: not in the environment or argv (which other
    processes may see), not in a file under HOME (which members read through /raw/)."""
    try:
        fd = int(env["COCALC_TOKEN_FD"])
    except ValueError:
        raise ValueError("COCALC_TOKEN_FD is not a file descriptor") from None
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 4096:
                raise ValueError("the token pipe holds more than a token")
    finally:
        os.close(fd)
    token = b"".join(chunks).decode("ascii", "replace").strip()
    if not token:
        raise ValueError("the token pipe was empty")
    return token


def forget_legacy_token(home: Path) -> None:
    try:
        home.joinpath(*LEGACY_TOKEN_FILE).unlink()
    except FileNotFoundError:
        pass


def announce(fd: int | None, message: dict[str, Any]) -> None:
    """One line on the ready pipe; the hub waits for it instead of polling files."""
    line = ("READY " + json.dumps(message, separators=(",", ":")) + "\n").encode()
    if fd is None:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        return
    os.write(fd, line)
    os.close(fd)


def run(env: Mapping[str, str]) -> int:
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        print(f"cocalc-project: missing environment: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        token = read_token(env)
    except (OSError, ValueError) as e:
        print(f"cocalc-project: cannot read the secret token: {e}", file=sys.stderr)
        return 3
    try:
        process.prepare(env)
    except (process.SetupError, OSError, ValueError) as e:
        print(f"cocalc-project: cannot set up the process: {e}", file=sys.stderr)
        return 3
    project_id = env["COCALC_PROJECT_ID"]
    home = Path(env["HOME"])
    ready_fd = int(env["COCALC_READY_FD"]) if env.get("COCALC_READY_FD") else None
    try:
        os.chdir(home)
        forget_legacy_token(home)
    except OSError as e:
        print(f"cocalc-project: cannot use HOME {home}: {e}", file=sys.stderr)
        return 4

    from twisted.internet import reactor as twisted_reactor

    # Twisted types its global reactor with a make-believe interface of its own: this names
    # what the program uses of it (which every reactor provides).
    reactor = cast(IAgentReactor, twisted_reactor)

    # When the process started (the hub's spawn), not when this line ran: importing Twisted
    # on a busy machine can take seconds, and project-info's `started` should not drift by them.
    started = process_started()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    jobs = Jobs(reactor, home, child_environment(env))
    root = ProjectRoot(home=home, project_id=project_id, base_path=env.get("BASE_PATH", "/"), token=token,
                       jobs=jobs)
    site = ProjectSite(root)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def listening(port: Any) -> None:
        number = port.getHost().port
        log.info("project {project_id} serving on 127.0.0.1:{port}", project_id=project_id, port=number)
        announce(ready_fd, {"http_port": number, "pid": os.getpid()})
        # Only now: the hub waits for the ready line, and conat is not needed for it.
        join_conat(reactor, env, token, home, jobs, started)

    def failed(f: Any) -> None:
        log.failure("cannot listen", f)
        reactor.stop()

    endpoint.listen(site).addCallbacks(listening, failed)
    # Shut down on SIGTERM (Twisted's handler stops the reactor), killing the jobs first.
    reactor.addSystemEventTrigger("before", "shutdown", jobs.stop_all)
    reaper = task.LoopingCall(reap_orphans)
    reaper.start(5.0, now=False)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reactor.run()
    return 0


def join_conat(reactor: IAgentReactor, env: Mapping[str, str], token: str, home: Path, jobs: Jobs,
               started: float) -> None:
    """Answer the project API on the hub's conat broker, if the hub said where it is."""
    from cocalc_hub.project_agent.api import ProjectApi
    from cocalc_hub.project_agent.conat_link import start_link
    from cocalc_hub.project_agent.records import ProjectRecords, project_info

    project_id = env["COCALC_PROJECT_ID"]
    api = ProjectApi(project_id=project_id, home=home, jobs=jobs, started=started)
    link = start_link(reactor, env, token, api.handle, started)
    if link is None:
        return
    # project-info and exec-log in persist, opened once joined; nothing waits for them
    records = ProjectRecords(reactor, project_id, project_info(home, started))
    api.ended.append(records.exec_ended)

    def joined_or_left(what: str) -> None:
        if what == "joined" and link.client is not None:
            records.joined(link.client)
        else:
            records.left()

    link.listeners.append(joined_or_left)

    async def stop() -> None:
        records.close()
        await link.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(stop()))


def reap_orphans() -> None:
    """As a subreaper we inherit orphaned descendants; reap the ones Twisted did not spawn.

    Called every few seconds: SIGCHLD is the event, but Twisted owns its handler and reaps
    only its own children with no hook for others, so a periodic look is the honest way."""
    known = twisted_children()
    try:
        children = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return
    me = os.getpid()
    for pid in children:
        if pid in known:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == me:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def process_started() -> float:
    """This process's start time (seconds since the epoch), or now if the OS will not say."""
    try:
        return float(psutil.Process().create_time())
    except (psutil.Error, OSError):
        return time.time()
