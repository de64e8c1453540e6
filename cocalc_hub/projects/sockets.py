"""Whose TCP socket is whose, read from /proc/net/tcp{,6} (blocking: call from a thread).

The proxy must only ever talk to a project's own servers. A port number alone does not say
whose server answers: a project listening on ``127.0.0.2:P`` or ``[::1]:P`` does not own
``127.0.0.1:P``, which may be another project's server or PostgreSQL. So the proxy connects
to an exact address where the project itself listens (:func:`port_targets`), and after each
new connection checks that the socket it reached belongs to the project
(:func:`verify_peer`), which closes the window between reading the table and connecting.

Ownership: in multi-user mode a socket belongs to a project if the project's uid owns it
(an accepted or still queued connection carries the uid of the listener that took it). In
single-user mode every project runs as the hub's uid, so a socket belongs to the project if
one of the processes in its tree holds it (its inode is among their file descriptors).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

LISTEN = 0x0A
IPV4 = "127.0.0.1"
IPV6 = "::1"
ANY4 = "0.0.0.0"
ANY6 = "::"
TARGETS = {IPV4: (IPV4, ANY4), IPV6: (IPV6, ANY6)}
"""Where the proxy may connect, and the listening addresses of the project's that cover it."""
RIVALS = {IPV4: (IPV4, ANY4, ANY6), IPV6: (IPV6, ANY6)}
"""Listening addresses that could take a connection to a target (a dual-stack ``::`` listener
may take IPv4 ones: counted, to be safe)."""
ELSEWHERE = ""
"""A port the project listens on, but not where the proxy may connect (see port_targets)."""


@dataclass(frozen=True)
class Entry:
    """One line of /proc/net/tcp or tcp6 (IPv4-mapped IPv6 addresses written as IPv4)."""

    local: str
    port: int
    remote: str
    remote_port: int
    state: int
    uid: int
    inode: int


def _address(hexed: str) -> str:
    raw = bytes.fromhex(hexed)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # Four 32-bit words, each in host (little-endian) order.
    address = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def parse(lines: Iterable[str]) -> list[Entry]:
    out = []
    for line in lines:
        fields = line.split()
        try:
            local, port = fields[1].split(":")
            remote, remote_port = fields[2].split(":")
            out.append(Entry(_address(local), int(port, 16), _address(remote), int(remote_port, 16),
                             int(fields[3], 16), int(fields[7]), int(fields[9])))
        except (IndexError, ValueError):
            continue  # the heading, or a line this parser does not understand
    return out


def table() -> list[Entry]:
    entries: list[Entry] = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                entries += parse(f)
        except OSError:
            continue
    return entries


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


class Owner:
    """Tells whether a socket belongs to a project (see the module's docstring)."""

    def __init__(self, *, root_pid: int | None, uid: int | None) -> None:
        self.uid = uid
        self.inodes: set[int] = set()
        if uid is None and root_pid is not None:
            pids = [root_pid]
            try:
                pids += [child.pid for child in psutil.Process(root_pid).children(recursive=True)]
            except psutil.Error:
                pids = []
            self.inodes = _socket_inodes(pids)

    def owns(self, entry: Entry) -> bool:
        if self.uid is not None:
            return entry.uid == self.uid
        return entry.inode != 0 and entry.inode in self.inodes


def _listeners(entries: list[Entry], port: int, addresses: Iterable[str]) -> list[Entry]:
    wanted = set(addresses)
    return [e for e in entries if e.state == LISTEN and e.port == port and e.local in wanted]


def choose(entries: list[Entry], owner: Owner, port: int) -> str | None:
    """The address the proxy may connect to for ``port``, or None.

    The project must listen there itself (exactly, or on the matching wildcard), and every
    listener that could take the connection must be the project's."""
    for target, covering in TARGETS.items():
        if not any(owner.owns(e) for e in _listeners(entries, port, covering)):
            continue
        if all(owner.owns(e) for e in _listeners(entries, port, RIVALS[target])):
            return target
    return None


def port_targets(*, root_pid: int | None, uid: int | None) -> dict[int, str]:
    """Every port the project listens on -> where the proxy connects for it (ELSEWHERE: the
    project listens on that port only on another address, e.g. 127.0.0.2, or not alone)."""
    entries = table()
    owner = Owner(root_pid=root_pid, uid=uid)
    ports = {e.port for e in entries if e.state == LISTEN and owner.owns(e)}
    return {port: choose(entries, owner, port) or ELSEWHERE for port in ports}


def verify_peer(*, root_pid: int | None, uid: int | None, server: tuple[str, int],
                client: tuple[str, int]) -> str | None:
    """None if the connection from ``client`` to ``server`` reached a socket of the project;
    otherwise why not (the caller closes it without sending anything).

    Accepted (or, multi-user, queued) connections are the project's if their socket is. A
    connection still waiting in a listener's queue has no inode yet: it is the project's if
    every listener that could have taken it is (a closed listener's queue is reset, so the
    connection cannot outlive the listener that took it unaccepted)."""
    entries = table()
    owner = Owner(root_pid=root_pid, uid=uid)
    host, port = server
    peers = [e for e in entries if e.state != LISTEN and (e.local, e.port) == (host, port)
             and (e.remote, e.remote_port) == client]
    if not peers:
        return "the connection went to a socket that is gone"
    peer = peers[0]
    if owner.owns(peer):
        return None
    if peer.inode == 0:
        rivals = _listeners(entries, port, RIVALS.get(host, (host,)))
        if rivals and all(owner.owns(e) for e in rivals):
            return None
    return "the socket that answered is not the project's"
