"""Reactor types for annotations, where one object needs several of Twisted's interfaces.

Twisted's interfaces are zope ones, so an intersection is an interface that extends them:
a type for mypy (with mypy-zope) only. No reactor declares it and nothing checks
``providedBy`` against it; any Twisted reactor provides every interface it extends.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTCP, IReactorTime


class IReactorTimeTCP(IReactorTime, IReactorTCP):
    """A clock that also connects over TCP: the conat client's transport (its timers and
    backoff, and a ``HostnameEndpoint`` to the broker)."""


class IThreadPoolReactor(IReactorTime, IReactorCore, IReactorFromThreads):
    """A reactor that runs blocking work in its own thread pools: timers, a shutdown trigger
    that stops the pools, and ``callFromThread`` for results coming back."""
