"""Reactor types for annotations, in one place: where one object needs several of Twisted's
reactor interfaces. Each is a zope interface extending those it combines, so (with
mypy-zope) a value typed with it is accepted wherever any of its parts is expected.
Nothing provides them at run time; they only document and check what is used, and any
Twisted reactor provides every interface they extend."""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFDSet,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
)


class IReactorTimeTCP(IReactorTime, IReactorTCP):
    """Timers and outgoing TCP connections: the conat client's transport (its backoff, and a
    ``HostnameEndpoint`` to the broker), the proxy's backend pool, the hub's HTTP client of
    project programs, a project program's conat link."""


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


class IReactorTimeThreads(IReactorTime, IReactorFromThreads):
    """A clock that also takes calls from other threads (the revocations feed)."""


class IThreadPoolReactor(IReactorTimeThreads, IReactorCore):
    """A reactor that runs blocking work in its own thread pools: timers, a shutdown trigger
    that stops the pools, and ``callFromThread`` for results coming back."""


class IReactorListen(IReactorTimeTCP, IReactorSSL, IReactorUNIX):
    """What the hub's HTTP listener uses: TCP, TLS or unix endpoints, and a clock for its
    shutdown grace."""


class IHubReactor(IThreadPoolReactor, IReactorThreads, IReactorListen, IProjectsReactor):
    """The reactor a whole hub runs on (cocalc_hub.tap): every interface its services use."""


def global_reactor() -> IHubReactor:
    """The process's reactor (``twisted.internet.reactor``, imported when called so that one
    installed first is the one used), typed with what the hub uses of it: Twisted types it
    with its common interfaces only (not threads, UNIX sockets or TLS)."""
    from twisted.internet import reactor

    return cast(IHubReactor, reactor)
