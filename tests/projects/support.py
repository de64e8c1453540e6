"""Managers over real stores for tests, and process-table assertions."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor, task
from twisted.trial import unittest

from cocalc_hub.projects import processes
from cocalc_hub.projects.manager import ManagerConfig, ProjectManager
from tests.db.support import open_store
from tests.support import until

FAKE = str(Path(__file__).resolve().parent / "fake_project.py")


def fake_program(how: str) -> tuple[str, ...]:
    return (sys.executable, FAKE, how)


class ClockedReactor:
    """The real reactor for processes and I/O, with time (``callLater``, ``seconds``) from a
    clock the test advances: a manager's deadlines pass when the test says, not by waiting."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(reactor.seconds())

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


async def make_manager(case: unittest.TestCase, *, kind: str = "sqlite", clock: ClockedReactor | None = None,
                       **config: Any) -> tuple[Any, ProjectManager]:
    store = await open_store(case, kind)
    if config.get("multi_user"):
        # Project users must be able to reach their homes: trial's temp dirs are private.
        tmp = Path(tempfile.mkdtemp(prefix="cocalc-mu-"))
        os.chmod(tmp, 0o711)
        case.addCleanup(shutil.rmtree, tmp, True)
    else:
        tmp = Path(case.mktemp()).resolve()
        tmp.mkdir()
    defaults: dict[str, Any] = {"projects": str(tmp / "projects" / "[project_id]"), "start_timeout": 10.0,
                                "stop_grace": 2.0, "idle_interval": 0.0, "allow_root": True}
    defaults.update(config)
    manager = ProjectManager(store, ManagerConfig(**defaults), clock or reactor)
    case.addCleanup(stop_everything, manager)
    return store, manager


async def stop_everything(manager: ProjectManager) -> None:
    for project_id in list(manager.active) + list(manager.starting):
        try:
            await manager.stop(project_id)
        except Exception:
            pass
    if manager.running:
        await manager.stopService()


async def new_project(store: Any, title: str = "t") -> str:
    account = await store.create_account(email_address=f"{title}-{id(store)}-{len(title)}@example.com",
                                         password_hash="x")
    project = await store.create_project(owner_id=account.account_id, title=title)
    return str(project.project_id)


def project_pids(project_id: str, uid: int | None = None) -> list[int]:
    return [p.pid for p in processes.project_processes(project_id, uid=uid)]


async def gone(project_id: str) -> None:
    """Wait until the project left no process and no zombie behind (killed processes take a
    moment to disappear from the process table); fail if some stay."""
    await until(lambda: project_pids(project_id) == [] and zombies() == [],
                what=f"the processes of project {project_id} to be gone (no leftovers, no zombies)")


def zombies() -> list[int]:
    out = []
    for child in psutil.Process().children(recursive=False):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.Error:
            pass
    return out
