"""The process table, as far as projects are concerned (blocking: call from a thread).

A project's processes are found so that none is missed: the project program's process
tree (it is a child subreaper, so daemons stay its descendants), and in multi-user mode every
process of the project's uid, in single-user mode every process whose environment carries
``COCALC_PROJECT_ID=<id>`` (everything it starts inherits it). In multi-user mode that
marker is not believed: any process may set it, and a project must not be able to pass its
processes off as another project's (to have them adopted, or the other's killed with them).
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterable

import psutil

from cocalc_hub.projects.sockets import socket_inodes

MARKER = "COCALC_PROJECT_ID"


def project_uid(project_id: str) -> int:
    """Upstream's uid for a project in multi-user mode."""
    uid = int(hashlib.sha512(project_id.encode()).hexdigest()[:8], 16) // 8
    return uid + 65537 if uid <= 65537 else uid


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def belongs_to(pid: int, project_id: str, uid: int | None = None) -> bool:
    """Is ``pid`` a live process of this project (and not some recycled pid)?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if uid is not None:
            return bool(proc.uids().real == uid)
        return _environ(proc).get(MARKER) == project_id
    except psutil.Error:
        return False


def project_processes(project_id: str, *, root_pid: int | None = None, uid: int | None = None) -> list[psutil.Process]:
    """Every live process of the project (never the caller itself)."""
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            for proc in [root, *root.children(recursive=True)]:
                found[proc.pid] = proc
        except psutil.Error:
            pass
    for proc in psutil.process_iter(["uids"]):
        if proc.pid in found or proc.pid == me:
            continue
        try:
            if uid is not None:
                if proc.info["uids"] is not None and proc.info["uids"].real == uid:
                    found[proc.pid] = proc
            elif _environ(proc).get(MARKER) == project_id:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    found.pop(me, None)
    return [p for p in found.values() if _live(p)]


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_all(procs: Iterable[psutil.Process], sig: int = signal.SIGKILL) -> int:
    count = 0
    for proc in procs:
        try:
            proc.send_signal(sig)
            count += 1
        except psutil.Error:
            pass
    return count


def kill_project(project_id: str, *, root_pid: int | None = None, uid: int | None = None) -> int:
    """SIGKILL every process of the project; return how many were signalled."""
    return kill_all(project_processes(project_id, root_pid=root_pid, uid=uid))


_LOOPBACK_OR_ANY = {
    "00000000", "0100007F",  # 0.0.0.0, 127.0.0.1
    "00000000000000000000000000000000",  # ::
    "00000000000000000000000001000000",  # ::1
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}


def _listening_sockets() -> list[tuple[int, int, int]]:
    """(port, uid, inode) of every TCP socket in LISTEN on loopback or all interfaces."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] != "0A":  # LISTEN
                        continue
                    address, port = fields[1].split(":")
                    if address in _LOOPBACK_OR_ANY or (len(address) == 8 and address.endswith("7F")):
                        out.append((int(port, 16), int(fields[7]), int(fields[9])))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return out


def listening_ports(project_id: str, *, root_pid: int | None = None, uid: int | None = None) -> set[int]:
    """TCP ports on loopback (or all interfaces) that the project's processes listen on.

    Multi-user: every listening socket owned by the project's uid. Single-user: sockets
    held by the project program's process tree (it is a subreaper, so daemons it started
    stay in that tree). Reads /proc directly: this runs on proxy cache misses.
    """
    sockets = _listening_sockets()
    if uid is not None:
        return {port for port, owner, _ in sockets if owner == uid}
    if root_pid is None:
        return set()
    pids = [root_pid]
    try:
        pids += [child.pid for child in psutil.Process(root_pid).children(recursive=True)]
    except psutil.Error:
        return set()
    inodes = socket_inodes(pids)
    return {port for port, _, inode in sockets if inode in inodes}


def rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
