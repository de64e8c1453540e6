"""The hub's side of live project state: every state change on conat, for collaborators.

A :class:`StatePublisher` is a project-manager listener. Each transition the store
accepted (``opened``, ``starting``, ``running``, ``stopping``, ``error``) is published on
``project.<project_id>.0.state.-`` as ``{state, time, error?, source: "hub", project_id}``;
the project program publishes its own events there too (``source: "project"``). Owners
and collaborators may subscribe (spec §5.4). Publishing is fire and forget: it never waits,
and a failure is logged, never raised into the transition that caused it. Subscribers see
only what happens while they listen; the latest state is also kept in the project's DKV
``project-status`` (:mod:`.status`) for clients that connect later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import Logger

from cocalc_hub.conat.client import Client
from cocalc_hub.project.subjects import state_subject

log = Logger()


class StatePublisher:
    def __init__(self, client_factory: Callable[[], Client]) -> None:
        self.client_factory = client_factory
        """Called on first use (the broker may be set up after the manager)."""
        self.client: Client | None = None
        self.closed = False
        self.published = 0
        self._warned = False

    def _client(self) -> Client:
        client = self.client
        if client is None or client.closed or client.error is not None:
            client = self.client = self.client_factory()
            client.listeners.append(lambda what, detail: self._lost(client, what, detail))
        return client

    def _lost(self, client: Client, what: str, detail: Any) -> None:
        """A socket client the broker disconnected: start afresh at the next event."""
        if what == "disconnected" and client is self.client:
            self.client = None
            client.close()

    def __call__(self, project_id: str, state: Mapping[str, Any]) -> None:
        if self.closed:
            return
        event = {**state, "source": "hub", "project_id": project_id}
        try:
            self._client().publish_sync(state_subject(project_id), event)
            self.published += 1
            self._warned = False
        except Exception as e:
            if not self._warned:  # once per outage, not once per event
                self._warned = True
                log.warn("cannot publish project state on conat: {e}", e=e)

    def close(self) -> None:
        self.closed = True
        client, self.client = self.client, None
        if client is not None:
            client.close()
