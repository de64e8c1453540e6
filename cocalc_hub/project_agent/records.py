"""What the project program keeps in persist while it is joined to conat.

* DKV ``project-info`` (persist path ``projects/<id>/project-info``), key ``"info"``:
  ``{pid, started (ms since the epoch), version (cocalc_hub's), home, hostname}``,
  written each time the program joins.
* DStream ``exec-log`` (``projects/<id>/exec-log``): one entry per command the conat
  ``exec`` API ran, once it has ended: ``{time (ms, start), command, args, exit_code
  (null if killed by a signal or the time-out), timed_out, duration_ms, cwd}`` — never
  its output or environment. A bash script is the ``command`` (``args`` empty); long
  commands and arguments are cut. The stream keeps the newest ``max_msgs`` (1000)
  entries: persist drops the oldest.

Who can read them: the project itself and the project's owners and collaborators (the
broker admits them to ``persist.project-<id>``, spec §5.4; the persist server keeps that
scope to ``projects/<id>/``, §6.4), and the hub; everyone else gets 403. Persist has no
read-only access, so collaborators could also write or delete entries: the log is a
convenience for members, not an audit trail.

All of it is an extra. Nothing waits for it: the program reports itself ready and
answers exec before (and whether or not) these streams open. When persist is
unavailable one line says so and entries wait (at most ``PENDING_MAX``) for the next
attempt, made with growing pauses while the program stays joined.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub import __version__
from cocalc_hub.conat.client import Client
from cocalc_hub.conat.persist.dstream import DKV, DStream
from cocalc_hub.conat.persist.outage import Outage
from cocalc_hub.project_agent.jobs import Job

log = Logger()

INFO_NAME = "project-info"
INFO_KEY = "info"
EXEC_LOG_NAME = "exec-log"
EXEC_LOG_MAX = 1000
PENDING_MAX = 100
MAX_COMMAND = 2000
MAX_ARGS = 100
MAX_ARG = 500


def project_info(home: Path, started: float) -> dict[str, Any]:
    return {"pid": os.getpid(), "started": int(started * 1000), "version": __version__, "home": str(home),
            "hostname": socket.gethostname()}


def exec_entry(job: Job) -> dict[str, Any]:
    """The exec log's entry for a job that has ended: what ran, never what it printed."""
    end = job.ended_at or time.time()
    code = job.exit_code
    return {"time": int(job.start * 1000), "command": job.command[:MAX_COMMAND],
            "args": [a[:MAX_ARG] for a in job.args[:MAX_ARGS]],
            "exit_code": code if code is not None and code >= 0 else None, "timed_out": job.timed_out,
            "duration_ms": max(0, round((end - job.start) * 1000)), "cwd": str(job.cwd)}


class ProjectRecords:
    """Open while the conat link is joined (:meth:`joined`, :meth:`left`)."""

    def __init__(self, reactor: IReactorTime, project_id: str, info: dict[str, Any], *, max_entries: int = EXEC_LOG_MAX,
                 outage: Outage | None = None) -> None:
        self.reactor = reactor
        self.project_id = project_id
        self.info = info
        self.max_entries = max_entries
        self.outage = outage or Outage(reactor, "project info and exec log (persist)")
        self.client: Client | None = None
        self.log: DStream | None = None
        self.info_written = False
        self.pending: deque[dict[str, Any]] = deque(maxlen=PENDING_MAX)
        self.closed = False
        self._busy = False
        self._retry: Any = None

    def joined(self, client: Client) -> None:
        self._drop()
        self.client = client
        self._kick()

    def left(self) -> None:
        self._drop()
        self.client = None

    def exec_ended(self, job: Job) -> None:
        if not self.closed:
            self.pending.append(exec_entry(job))
            self._kick()

    def _drop(self) -> None:
        """Forget the streams of a client that is gone (a new join opens them afresh)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.log is not None:
            self.log.close()
            self.log = None
        self.info_written = False

    def _kick(self) -> None:
        if self._busy or self.closed or self.client is None:
            return
        if self._retry is not None and self._retry.active():
            return
        if self.info_written and not self.pending:
            return
        self._busy = True
        ensureDeferred(self._write(self.client)).addErrback(lambda f: log.failure("project records", f))

    async def _write(self, client: Client) -> None:
        try:
            if not self.info_written:
                kv = DKV(client, INFO_NAME, project_id=self.project_id)
                try:  # written once per join: no need to keep it open
                    await kv.init()
                    await kv.set(INFO_KEY, self.info)
                finally:
                    kv.close()
                self.info_written = True
            while self.pending and client is self.client and not self.closed:
                stream = self.log
                if stream is None:
                    stream = self.log = DStream(client, EXEC_LOG_NAME, project_id=self.project_id,
                                                config={"max_msgs": self.max_entries})
                    await stream.init()
                entry = self.pending.popleft()
                try:
                    await stream.publish(entry)
                except BaseException:
                    self.pending.appendleft(entry)
                    raise
            self.outage.ok()
        except Exception as e:
            if client is self.client and not self.closed:
                if self.log is not None:
                    self.log.close()
                    self.log = None
                self._retry = self.reactor.callLater(self.outage.failed(e), self._retried)
        finally:
            self._busy = False
        self._kick()  # entries that came in meanwhile

    def _retried(self) -> None:
        self._retry = None
        self._kick()

    def close(self) -> None:
        self.closed = True
        self._drop()
        self.pending.clear()
