"""Whose TCP socket is whose, asked of the kernel (sock_diag, else /proc/net/tcp{,6}) and
/proc/<pid>/fd (blocking: call from a thread).

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

import errno
import ipaddress
import os
import socket
import struct
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


# sock_diag (netlink): the kernel looks one connection up by its addresses, or lists only the
# listening sockets, instead of printing every socket as /proc/net/tcp does (tens of ms on a
# busy host, for each new backend connection).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI")
_SOCKID = struct.Struct("!HH16s16s")
_MESSAGE = struct.Struct("=BBBB")  # family, state, timer, retransmits; then the sockid
_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_NO_COOKIE = b"\xff" * 8


def _sockid(family: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    raw_src = socket.inet_pton(family, src).ljust(16, b"\0")
    raw_dst = socket.inet_pton(family, dst).ljust(16, b"\0")
    return _SOCKID.pack(sport, dport, raw_src, raw_dst) + b"\0\0\0\0" + _NO_COOKIE


def _entry(data: bytes) -> Entry:
    family, state, _, _ = _MESSAGE.unpack_from(data, 0)  # (the socket's family, not the request's)
    sport, dport, src, dst = _SOCKID.unpack_from(data, 4)
    uid, inode = _TAIL.unpack_from(data, 4 + 48)[3:]
    if family == socket.AF_INET:
        return Entry(_address(src[:4][::-1].hex()), sport, _address(dst[:4][::-1].hex()), dport, state, uid, inode)
    return Entry(_address(_words(src)), sport, _address(_words(dst)), dport, state, uid, inode)


def _words(raw: bytes) -> str:
    """16 address bytes in network order, written as /proc/net/tcp6 does (for _address)."""
    return b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)).hex()


def _diag(family: int, states: int, sockid: bytes, dump: bool) -> list[Entry]:
    """One sock_diag request; raises OSError (ENOENT: no such socket; EPROTO: an answer
    too short to read), so that callers fall back to /proc."""
    try:
        return _ask(family, states, sockid, dump)
    except struct.error as e:
        raise OSError(errno.EPROTO, f"malformed netlink answer ({e})") from None


def _ask(family: int, states: int, sockid: bytes, dump: bool) -> list[Entry]:
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, states) + sockid
    flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
    out: list[Entry] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.sendall(_NLMSG.pack(_NLMSG.size + len(body), _SOCK_DIAG_BY_FAMILY, flags, 1, 0) + body)
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError(errno.EPROTO, "malformed netlink answer")
                payload = data[offset + _NLMSG.size:offset + length]
                offset += (length + 3) & ~3
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload, 0)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return out
                if kind == _SOCK_DIAG_BY_FAMILY:
                    out.append(_entry(payload))
                    if not dump:
                        return out
            if not data:
                return out


def listeners() -> list[Entry]:
    """Every TCP socket in LISTEN (sock_diag; /proc/net/tcp if that is unavailable)."""
    try:
        empty4 = _sockid(socket.AF_INET, "0.0.0.0", 0, "0.0.0.0", 0)
        empty6 = _sockid(socket.AF_INET6, "::", 0, "::", 0)
        return _diag(socket.AF_INET, 1 << LISTEN, empty4, True) + _diag(socket.AF_INET6, 1 << LISTEN, empty6, True)
    except OSError:
        return [e for e in table() if e.state == LISTEN]


def connection(server: tuple[str, int], client: tuple[str, int]) -> Entry | None:
    """The server side of the connection from ``client`` to ``server`` (None: none)."""
    (host, port), (chost, cport) = server, client
    asks = []
    if ":" in host:
        asks.append((socket.AF_INET6, host, chost))
    else:  # an IPv4 connection may have been taken by an IPv6 socket (v4-mapped)
        asks += [(socket.AF_INET, host, chost), (socket.AF_INET6, "::ffff:" + host, "::ffff:" + chost)]
    try:
        for family, src, dst in asks:
            try:
                found = _diag(family, 0xFFFFFFFF, _sockid(family, src, port, dst, cport), False)
            except FileNotFoundError:
                continue
            # With no such connection the kernel's lookup falls back to a listener: not it.
            if found and found[0].state != LISTEN:
                return found[0]
        return None
    except OSError:
        peers = [e for e in table() if e.state != LISTEN and (e.local, e.port) == server
                 and (e.remote, e.remote_port) == client]
        return peers[0] if peers else None


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """The inodes of the sockets these processes hold (their /proc/<pid>/fd links)."""
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
            self.inodes = socket_inodes(pids)

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
    entries = listeners()
    owner = Owner(root_pid=root_pid, uid=uid)
    ports = {e.port for e in entries if owner.owns(e)}
    return {port: choose(entries, owner, port) or ELSEWHERE for port in ports}


def verify_peer(*, root_pid: int | None, uid: int | None, server: tuple[str, int],
                client: tuple[str, int]) -> str | None:
    """None if the connection from ``client`` to ``server`` reached a socket of the project;
    otherwise why not (the caller closes it without sending anything).

    Accepted (or, multi-user, queued) connections are the project's if their socket is. A
    connection still waiting in a listener's queue has no inode yet: it is the project's if
    every listener that could have taken it is (a closed listener's queue is reset, so the
    connection cannot outlive the listener that took it unaccepted)."""
    peer = connection(server, client)
    if peer is None:
        return "the connection went to a socket that is gone"
    owner = Owner(root_pid=root_pid, uid=uid)
    if owner.owns(peer):
        return None
    host, port = server
    if peer.inode == 0:
        rivals = _listeners(listeners(), port, RIVALS.get(host, (host,)))
        if rivals and all(owner.owns(e) for e in rivals):
            return None
    return "the socket that answered is not the project's"
