"""Reactor types for annotations, where one object needs several of Twisted's interfaces.

Twisted's interfaces are zope ones, so an intersection is an interface that extends them:
a type for mypy (with mypy-zope) only. No reactor declares it and nothing checks
``providedBy`` against it; any Twisted reactor provides every interface it extends.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTCP, IReactorTime


class IReactorTimeTCP(IReactorTime, IReactorTCP):
    """A clock that also connects over TCP: the conat client's transport (its timers and
    backoff, and a ``HostnameEndpoint`` to the broker)."""
