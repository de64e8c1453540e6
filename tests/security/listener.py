"""A server run inside a project by tests/security: ``python listener.py NAME HOST PORT [v6only]``.

It binds HOST:PORT and answers every HTTP request with ``NAME`` (Connection: close). It
reports in the file NAME (in its working directory, the project's home) one line per
event: ``listening PID``, ``error ERRNO-NAME``, ``connection`` and ``bytes N`` for each
connection, so a test can tell whether anything reached it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys


def report(name: str, line: str) -> None:
    with open(name, "a") as f:
        f.write(line + "\n")


def main() -> None:
    name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6 and "v6only" in sys.argv[4:]:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((host, port))
        sock.listen(16)
    except OSError as e:
        report(name, f"error {errno.errorcode.get(e.errno or 0, str(e.errno))}")
        return
    report(name, f"listening {os.getpid()}")
    while True:
        conn, _ = sock.accept()
        report(name, "connection")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        report(name, f"bytes {len(data)}")
        if data:
            body = name.encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        conn.close()


if __name__ == "__main__":
    main()
