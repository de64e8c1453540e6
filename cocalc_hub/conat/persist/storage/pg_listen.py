"""The LISTEN side of the PostgreSQL persist backend (:mod:`.postgres`): one dedicated
connection per backend, in its own thread, waiting on its socket and a wake-up socket (so it
stops at once), handing notification payloads to the reactor in batches."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Protocol

import psycopg
from psycopg import pq
from twisted.logger import Logger

from cocalc_hub.reactors import IThreadPoolReactor

log = Logger()

CHANNEL = "cocalc_persist"
LISTEN_STABLE = 10.0  # a connection that lived this long resets the backoff
LISTEN_RETRY_MAX = 5.0  # listener reconnection backoff at most, seconds
IDLE_CHECK = 30.0  # seconds without traffic before the listener checks its connection


class ListenerOwner(Protocol):
    reactor: IThreadPoolReactor

    def listen_connection(self) -> psycopg.Connection[Any]: ...
    def notified(self, payloads: list[str]) -> None: ...
    def listening(self, outage: float | None) -> None: ...
    def run(self, fn: Any) -> Any: ...


class Listener:
    """LISTEN on a dedicated connection in its own thread; payloads go to the reactor in batches.
    Reconnects with backoff (one log line per outage); after every (re)connection the backend
    makes its streams catch up."""

    def __init__(self, backend: ListenerOwner, retry: float) -> None:
        self.backend = backend
        self.reactor = backend.reactor
        self.retry = retry
        self.pid: int | None = None  # the listening connection's backend pid, while connected
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._main, name="cocalc-hub-persist-listen", daemon=True)
        self._trigger: Any = self.reactor.addSystemEventTrigger("during", "shutdown", self._signal)
        self._thread.start()

    def _signal(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")

    async def stop(self) -> None:
        """Stop and join the thread (joined in a pool thread: never on the reactor)."""
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        self._signal()
        await self.backend.run(self._thread.join)
        self._wake_r.close()
        self._wake_w.close()

    def _main(self) -> None:
        delay, lost_at = self.retry, None
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                conn = self.backend.listen_connection()
                with conn:
                    self._serve(conn, lost_at)
                return  # stopping
            except Exception as e:  # psycopg.Error, OSError from select, ...
                was_listening, self.pid = self.pid is not None, None
                if self._stopping.is_set():
                    return
                if was_listening:  # a new outage (not another failed attempt in the same one)
                    lost_at = None
                if lost_at is None:
                    lost_at = time.monotonic()
                    error = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    self.reactor.callFromThread(
                        log.warn, "persist: lost the PostgreSQL notification connection ({error}); reconnecting with"
                        " backoff, open streams catch up when it is back", error=error)
                delay = self.retry if time.monotonic() - began > LISTEN_STABLE else delay
                self._stopping.wait(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX)

    def _serve(self, conn: psycopg.Connection[Any], lost_at: float | None) -> None:
        pending: list[str] = []
        conn.add_notify_handler(lambda n: pending.append(n.payload))  # those that come during execute()
        conn.execute(f"LISTEN {CHANNEL}".encode())
        self.pid = conn.info.backend_pid
        outage = None if lost_at is None else time.monotonic() - lost_at
        self.reactor.callFromThread(self.backend.listening, outage)
        pg = conn.pgconn
        while True:
            if pending:
                self.reactor.callFromThread(self.backend.notified, pending[:])
                pending.clear()
            ready, _, _ = select.select([pg.socket, self._wake_r.fileno()], [], [], IDLE_CHECK)
            if self._stopping.is_set():
                return
            if not ready:
                conn.execute("SELECT 1")  # is the connection still there?
                continue
            pg.consume_input()  # raises once the server has gone
            while (n := pg.notifies()) is not None:
                pending.append(n.extra.decode("utf-8", "replace"))
            if pg.status == pq.ConnStatus.BAD:
                raise psycopg.OperationalError("connection lost")
