"""A spawned project program as the manager sees it: its ready line (on ``READY_FD``), the
last lines of its output, its exit, and the end of its output once it has exited."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

READY_FD = 3
TOKEN_FD = 4
"""The project reads its secret token from this pipe (then closes it)."""
MAX_OUTPUT_LINES = 100
MAX_READY_LINE = 4096


class ProjectError(Exception):
    """A control request that cannot be done; ``status`` is the HTTP status to report."""

    def __init__(self, status: int, message: str, *, recorded: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.recorded = recorded
        """The error state (with the project's output) is already in the store."""


class ProjectProcess(ProcessProtocol):
    """One project program we spawned: its ready line, its output, its end."""

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.pid: int | None = None
        self.ready: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.exited: defer.Deferred[tuple[int | None, int | None]] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        """Fires once the process has exited and its output pipes are closed: all it wrote is read."""
        self.lines: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        self._partial: dict[int, bytes] = {}
        self._ready_buf = b""
        self.stopping = False
        self.info: dict[str, Any] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == READY_FD:
            self._ready_buf += data
            if self.ready.called:
                return
            if b"\n" in self._ready_buf:
                try:
                    info = parse_ready(self._ready_buf.split(b"\n", 1)[0])
                except ProjectError as e:
                    self.ready.errback(e)
                else:
                    self.ready.callback(info)
            elif len(self._ready_buf) > MAX_READY_LINE:
                self.ready.errback(ProjectError(500, "the project wrote garbage on its ready pipe"))
            return
        buf = self._partial.get(fd, b"") + data
        *complete, rest = buf.split(b"\n")
        for line in complete:
            self.lines.append(line[:2000].decode("utf-8", "replace"))
        # Bound a line without newline (a project printing megabytes in one line).
        self._partial[fd] = rest[-2000:]

    def output(self) -> list[str]:
        tail = [p.decode("utf-8", "replace") for p in self._partial.values() if p]
        return [*self.lines, *tail][-MAX_OUTPUT_LINES:]

    def processExited(self, reason: Failure) -> None:
        value = reason.value
        result = (getattr(value, "exitCode", None), getattr(value, "signal", None))
        if not self.ready.called:
            self.ready.errback(Exited(*result))
        if not self.exited.called:
            self.exited.callback(result)

    def processEnded(self, reason: Failure) -> None:
        self.processExited(reason)
        if not self.ended.called:
            self.ended.callback(None)


class Exited(Exception):
    def __init__(self, code: int | None, sig: int | None) -> None:
        super().__init__(f"exit code {code}" if code is not None else f"signal {sig}")
        self.code = code
        self.sig = sig


def parse_ready(line: bytes) -> dict[str, Any]:
    if not line.startswith(b"READY "):
        raise ProjectError(500, "the project wrote garbage on its ready pipe")
    try:
        info = json.loads(line[6:])
    except ValueError:
        raise ProjectError(500, "the project's ready line is not JSON") from None
    port = info.get("http_port") if isinstance(info, dict) else None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ProjectError(500, "the project reported an invalid port")
    return dict(info)
