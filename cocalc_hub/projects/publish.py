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
from cocalc_hub.conat.lazy import LazyClient
from cocalc_hub.subjects import state_subject

log = Logger()


class StatePublisher:
    def __init__(self, client_factory: Callable[[], Client]) -> None:
        self.clients = LazyClient(client_factory)
        """Made on first use (the broker may be set up after the manager)."""
        self.closed = False
        self.published = 0
        self._warned = False

    def __call__(self, project_id: str, state: Mapping[str, Any]) -> None:
        if self.closed:
            return
        event = {**state, "source": "hub", "project_id": project_id}
        try:
            self.clients.get().publish_sync(state_subject(project_id), event)
            self.published += 1
            self._warned = False
        except Exception as e:
            if not self._warned:  # once per outage, not once per event
                self._warned = True
                log.warn("cannot publish project state on conat: {e}", e=e)

    def close(self) -> None:
        self.closed = True
        self.clients.drop()
