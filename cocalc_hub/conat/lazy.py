"""A conat client made on first use and made afresh when it is no good any more.

For the hub's own writers (project state on conat and in persist): the broker may be set
up after them, and a socket client the broker disconnected does not reconnect (socket.io
semantics), so each use asks for a client that is open, signed in or on its way there.
"""

from __future__ import annotations

from collections.abc import Callable

from cocalc_hub.conat.client import Client


class LazyClient:
    def __init__(self, factory: Callable[[], Client], on_drop: Callable[[], None] | None = None) -> None:
        self.factory = factory
        self.on_drop = on_drop
        """Called whenever the client is dropped (what was opened on it is gone too)."""
        self.client: Client | None = None

    def get(self) -> Client:
        """The current client, or a new one if it closed, was refused or was disconnected."""
        client = self.client
        if client is None or client.closed or client.error is not None:
            self.drop()
            client = self.client = self.factory()
            client.listeners.append(lambda what, detail: self._event(client, what))
        return client

    def _event(self, client: Client, what: str) -> None:
        if what == "disconnected" and client is self.client:
            self.drop()

    def drop(self) -> None:
        client, self.client = self.client, None
        if self.on_drop is not None:
            self.on_drop()
        if client is not None:
            client.close()
