"""The project's API over conat, answered on ``project.<project_id>.0.api.-``.

Requests are ``[name, args]`` (``client.service``); the broker only lets the project's
owners and collaborators (and the hub) publish there, so every caller gets every function.
Errors come back as conat errors with an HTTP-like ``code`` (400 bad arguments, 403
outside HOME, 404 missing, 413 too large, 422 non-zero exit, 504 timeout). Each command
``exec`` starts is told to the ``ended`` listeners once it has finished (the project's exec
log in persist, :mod:`.records`).

=============================  ================================================================
``ping()``                     ``{pong: true, project_id, pid, start_ts (ms), now (ms)}``
``exec(opts)``                 upstream's exec options (``command, args, bash, path`` (cwd
                               under HOME), ``timeout, max_output, env, err_on_exit,
                               async_call, async_get, async_await``) → ``{type, stdout,
                               stderr, exit_code, truncated?, …}`` (the HTTP exec's shape)
``listing(path?, hidden?)``    ``[{name, isdir?, size, mtime (s), issymlink?, link_target?}]``
``readFile(path, encoding?)``  bytes, or text with ``encoding`` ``"utf8"`` (at most 16 MB)
``writeFile(path, data)``      text (UTF-8) or bytes (at most 16 MB); ``{path, bytes}``
=============================  ================================================================
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.logger import Logger

from cocalc_hub.conat.errors import ConatError
from cocalc_hub.project_agent import files
from cocalc_hub.project_agent.jobs import ExecError, Job, Jobs

log = Logger()

MAX_ERROR_OUTPUT = 2000


class ProjectApi:
    def __init__(self, *, project_id: str, home: Path, jobs: Jobs, started: float) -> None:
        self.project_id = project_id
        self.home = home.resolve()
        self.jobs = jobs
        self.started = started
        # name -> (function, least and most positional arguments)
        self.functions: dict[str, tuple[Callable[..., Awaitable[Any]], int, int]] = {
            "ping": (self.ping, 0, 0),
            "exec": (self.exec, 1, 1),
            "listing": (self.listing, 0, 2),
            "readFile": (self.read_file, 1, 2),
            "writeFile": (self.write_file, 2, 2),
        }
        self.ended: list[Callable[[Job], None]] = []
        """Told of each job ``exec`` started, once it has ended."""

    async def handle(self, name: str, args: list[Any], msg: Any = None) -> Any:
        """The ``client.service`` handler: known errors become ConatErrors with a code."""
        entry = self.functions.get(name)
        if entry is None:
            raise ConatError(f"unknown function {name!r}; known: {', '.join(sorted(self.functions))}", 404)
        function, least, most = entry
        if not least <= len(args) <= most:
            raise ConatError(f"{name} takes {least}{'' if least == most else f' to {most}'} argument(s), "
                             f"not {len(args)}", 400)
        try:
            return await function(*args)
        except files.FileError as e:
            raise ConatError(e.message, e.status) from None
        except ExecError as e:
            message = e.message
            stderr = e.extra.get("stderr")
            if isinstance(stderr, str) and stderr.strip():
                message += ": " + stderr.strip()[-MAX_ERROR_OUTPUT:]
            raise ConatError(message, e.status) from None

    async def ping(self) -> dict[str, Any]:
        return {"pong": True, "project_id": self.project_id, "pid": os.getpid(),
                "start_ts": int(self.started * 1000), "now": int(time.time() * 1000)}

    async def exec(self, opts: Any) -> dict[str, Any]:
        if not isinstance(opts, dict):
            raise ConatError("exec takes one object of options, e.g. {command: 'ls', args: ['-l']}", 400)
        return await self.jobs.handle(opts, on_spawn=self._spawned)

    def _spawned(self, job: Job) -> None:
        def ended(_: None) -> None:
            for listener in list(self.ended):
                try:
                    listener(job)
                except Exception:
                    log.failure("exec listener failed")

        job.wait().addCallback(ended)

    async def listing(self, path: Any = None, hidden: Any = True) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await threads.deferToThread(files.listing, self.home, path, bool(hidden))
        return entries

    async def read_file(self, path: Any, encoding: Any = None) -> str | bytes:
        return await files.read_file(self.home, path, encoding)

    async def write_file(self, path: Any, data: Any) -> dict[str, Any]:
        return await files.write_file(self.home, path, data)
