"""Notice at once when a process we did not spawn (an adopted project) exits.

Linux's pidfd becomes readable when the process ends; the reactor watches it like a
socket. Where pidfd is missing, poll once a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure

from cocalc_hub.projects import processes
from cocalc_hub.reactors import IReactorTimeFDSet


class _PidFd(FileDescriptor):
    def __init__(self, reactor: IReactorFDSet, fd: int, on_exit: Callable[[], None]) -> None:
        FileDescriptor.__init__(self, reactor)
        self._fd = fd
        self._on_exit = on_exit
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        self.stopReading()
        self._close()
        self._on_exit()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def connectionLost(self, reason: Failure) -> None:
        self._close()


class ExitWatcher:
    def __init__(self, reactor: IReactorTimeFDSet, pid: int, on_exit: Callable[[], None], interval: float = 1.0,
                 alive: Callable[[int], bool] = processes.alive) -> None:
        self.alive = alive
        self.reactor = reactor
        self.pid = pid
        self.on_exit = on_exit
        self.interval = interval
        self._pidfd: _PidFd | None = None
        self._poll: task.LoopingCall | None = None
        self._fired = False

    def _fire(self) -> None:
        if not self._fired:
            self._fired = True
            self.stop()
            self.on_exit()

    def start(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            fd = -1
        if fd >= 0:
            self._pidfd = _PidFd(self.reactor, fd, self._fire)
            self._pidfd.startReading()
            return
        # No pidfd (not Linux, or older than 5.3): nothing tells us that a process we did not
        # spawn has exited (SIGCHLD only comes for our own children), so look once per interval.
        self._poll = task.LoopingCall(self._check)
        self._poll.clock = self.reactor
        self._poll.start(self.interval, now=True)

    def _check(self) -> None:
        if not self.alive(self.pid):
            self._fire()

    def stop(self) -> None:
        if self._pidfd is not None:
            self._pidfd.stopReading()
            self._pidfd._close()
            self._pidfd = None
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
