"""Reactor types for annotations, in one place: where one object needs several of Twisted's
reactor interfaces. Each is a zope interface extending those it combines, so (with
mypy-zope) a value typed with it is accepted wherever any of its parts is expected.
Nothing provides them at run time; they only document and check what is used, and any
Twisted reactor provides every interface they extend."""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUNIX,
)


class IReactorTimeTCP(IReactorTime, IReactorTCP):
    """A clock that also connects over TCP: the conat client's transport (its timers and
    backoff, and a ``HostnameEndpoint`` to the broker)."""


class IReactorTimeThreads(IReactorTime, IReactorFromThreads):
    """A clock that also takes calls from other threads (the revocations feed)."""


class IThreadPoolReactor(IReactorTimeThreads, IReactorCore):
    """A reactor that runs blocking work in its own thread pools: timers, a shutdown trigger
    that stops the pools, and ``callFromThread`` for results coming back."""


class IReactorListen(IReactorTimeTCP, IReactorSSL, IReactorUNIX):
    """What the hub's HTTP listener uses: TCP, TLS or unix endpoints, and a clock for its
    shutdown grace."""


class IHubReactor(IThreadPoolReactor, IReactorThreads, IReactorListen, IReactorProcess):
    """The reactor a whole hub runs on (cocalc_hub.tap): every interface its services use."""


def global_reactor() -> IHubReactor:
    """The process's reactor (``twisted.internet.reactor``, imported when called so that one
    installed first is the one used), typed with what the hub uses of it: Twisted types it
    with its common interfaces only (not threads, UNIX sockets or TLS)."""
    from twisted.internet import reactor

    return cast(IHubReactor, reactor)
