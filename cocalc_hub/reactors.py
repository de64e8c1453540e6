"""Reactor types for annotations, where one object needs several of Twisted's interfaces.

Each is a zope interface extending those it combines, so (with mypy-zope) a value typed
with it is accepted wherever any of its parts is expected, and any Twisted reactor is one.
Nothing provides them at run time or checks ``providedBy`` against them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorCore, IReactorFDSet, IReactorProcess, IReactorTCP, IReactorTime


class IReactorTimeTCP(IReactorTime, IReactorTCP):
    """Timers and outgoing TCP connections: the proxy's backend pool, the hub's HTTP client
    of project programs, a project program's conat link."""


class IReactorTimeProcess(IReactorTime, IReactorProcess):
    """Timers and child processes: a project program's commands."""


class IReactorTimeFDSet(IReactorTime, IReactorFDSet):
    """Timers and file descriptors to watch: noticing that an adopted project exited (a pidfd)."""


class IProjectsReactor(IReactorTimeProcess, IReactorTimeFDSet):
    """The project manager's: it spawns project programs, holds them to deadlines and
    watches those it adopted."""


class IAgentReactor(IReactorCore, IReactorTimeTCP, IReactorTimeProcess):
    """The project program's (cocalc_hub.project_agent.main): it runs and stops the reactor,
    serves and connects over TCP, runs commands and times them."""
