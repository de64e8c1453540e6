"""The hub's record of each project's current state, in the project's persist DKV.

Subscribers of ``project.<id>.0.state.-`` (:mod:`.publish`) see only the transitions
that happen while they listen. So the hub also keeps the latest one in the project's
DKV ``project-status`` (persist path ``projects/<id>/project-status``), key ``"state"``,
value ``{state, time, error?}`` as the manager set it: a client that connects later
reads the current state there and follows changes through the DKV's changefeed.

Who can read it: the persist server and the broker admit the hub, the project itself
and the project's owners and collaborators to the scope ``project-<id>`` (spec §5.4
rule 5d, §6.4); everyone else gets 403. Persist has no read-only access, so members
and the project could also write there: the record is for display, the store stays
the authority on a project's state.

Writing is fire and forget, as for :class:`.publish.StatePublisher`: a transition never
waits for it or fails because of it. DKVs are opened on a project's first transition,
reused, and closed after ``idle`` seconds without one and when the service stops.
When persist is unavailable one line says so (see :class:`~cocalc_hub.conat.persist.
outage.Outage`); the newest state of each project is kept and written once it is back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cocalc_hub.conat.client import Client
from cocalc_hub.conat.lazy import LazyClient
from cocalc_hub.conat.persist.dstream import DKV
from cocalc_hub.conat.persist.outage import Outage

log = Logger()

NAME = "project-status"
KEY = "state"
FIELDS = ("state", "time", "error")
IDLE_CLOSE = 600.0
SWEEP_EVERY = 60.0
STARTUP_GRACE = 10.0
QUEUE_MAX = 16
"""Transitions of one project waiting to be written (they come seconds apart, so this is
only reached while persist is away; then only the newest matters)."""


class _Project:
    def __init__(self) -> None:
        self.kv: DKV | None = None
        self.queue: deque[dict[str, Any]] = deque(maxlen=QUEUE_MAX)
        self.busy = False
        self.last_write = 0.0


class StatusRecorder(Service):
    """A project-manager listener (``manager.listeners``) and a service of its own, added
    after the broker and persist server it writes to so that it stops before them."""

    name = "project-status"

    def __init__(self, client_factory: Callable[[], Client], reactor: IReactorTime, *, idle: float = IDLE_CLOSE,
                 sweep_every: float = SWEEP_EVERY, grace: float = STARTUP_GRACE) -> None:
        self.clients = LazyClient(client_factory, on_drop=self._drop_kvs)
        """Made on first use (the broker may be set up after the manager)."""
        self.reactor = reactor
        self.idle = idle
        self.sweep_every = sweep_every
        self.projects: dict[str, _Project] = {}
        self.outage = Outage(reactor, "project state (DKV project-status)", grace=grace)
        self.closed = False
        self.written = 0
        self._retry: Any = None
        self._sweeper: task.LoopingCall | None = None

    @property
    def client(self) -> Client | None:
        return self.clients.client

    def _drop_kvs(self) -> None:
        """The client is being replaced or closed: the DKVs on it go with it."""
        for project in self.projects.values():
            if project.kv is not None:
                project.kv.close()
                project.kv = None

    # writing ---------------------------------------------------------------------------------

    def __call__(self, project_id: str, state: Mapping[str, Any]) -> None:
        if self.closed:
            return
        project = self.projects.get(project_id)
        if project is None:
            project = self.projects[project_id] = _Project()
        project.queue.append({k: state[k] for k in FIELDS if k in state})
        self._kick(project_id, project)

    def _kick(self, project_id: str, project: _Project) -> None:
        if project.busy or not project.queue or self.closed:
            return
        if self._retry is not None and self._retry.active():
            return  # persist is away: the retry writes every project's newest state
        project.busy = True
        ensureDeferred(self._write(project_id, project)).addErrback(
            lambda f: log.failure("recording the state of project {p}", f, p=project_id))

    async def _write(self, project_id: str, project: _Project) -> None:
        try:
            while project.queue and not self.closed:
                if project.kv is None:
                    kv = project.kv = DKV(self.clients.get(), NAME, project_id=project_id)
                    await kv.init()
                value = project.queue.popleft()
                try:
                    await project.kv.set(KEY, value)
                except BaseException:
                    if not project.queue:
                        project.queue.append(value)
                    raise
                project.last_write = self.reactor.seconds()
                self.written += 1
                self.outage.ok()
        except Exception as e:
            if self.closed:
                return
            if project.kv is not None:
                project.kv.close()
                project.kv = None
            while len(project.queue) > 1:  # what is current is all that is worth keeping
                project.queue.popleft()
            self._schedule_retry(e)
        finally:
            project.busy = False
        self._start_sweeper()

    def _schedule_retry(self, error: Exception) -> None:
        if self._retry is not None and self._retry.active():
            return
        self._retry = self.reactor.callLater(self.outage.failed(error), self._retry_all)

    def _retry_all(self) -> None:
        self._retry = None
        for project_id, project in list(self.projects.items()):
            self._kick(project_id, project)

    # closing ---------------------------------------------------------------------------------

    def _start_sweeper(self) -> None:
        if self._sweeper is None and not self.closed:
            self._sweeper = task.LoopingCall(self.sweep)
            self._sweeper.clock = self.reactor
            self._sweeper.start(self.sweep_every, now=False)

    def sweep(self) -> None:
        """Close the DKVs of projects without a transition for ``idle`` seconds."""
        now = self.reactor.seconds()
        for project_id, project in list(self.projects.items()):
            if project.busy or project.queue:
                continue
            if project.kv is not None and now - project.last_write < self.idle:
                continue
            if project.kv is not None:
                project.kv.close()
            del self.projects[project_id]
        if not self.projects and self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
            self._sweeper = None

    def startService(self) -> None:
        super().startService()
        self.outage.begin()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.close()
        return None

    def close(self) -> None:
        self.closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.clients.drop()
        self.projects.clear()
