"""Which child processes does Twisted reap itself? (Twisted private internals.)

Touches :data:`twisted.internet.process.reapProcessHandlers`, read only: the module-level
dict (pid → process) of the children ``spawnProcess`` started and has not reaped yet. It
is not part of Twisted's documented API.

Why: the project program is a subreaper (:mod:`cocalc_hub.project_agent.process`), so
orphaned descendants of its commands become its children. Twisted's SIGCHLD handling
reaps only the children in that dict; the others would stay zombies. The program reaps
them itself, and must leave Twisted's own alone (reaping one of those would lose its exit
status and ``processEnded``).

tests/test_internals_twisted.py checks that the dict exists and holds a spawned child's
pid until Twisted has reaped it.
"""

from __future__ import annotations

from twisted.internet import process


def twisted_children() -> set[int]:
    """The pids of children Twisted spawned and will reap itself."""
    return set(process.reapProcessHandlers)
