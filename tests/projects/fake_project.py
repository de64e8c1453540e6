"""A project program that misbehaves on purpose (argv[1] says how), for manager tests."""

import json
import os
import signal
import socket
import sys
import time


def listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    return s


def ready(port: int) -> None:
    fd = int(os.environ["COCALC_READY_FD"])
    os.write(fd, ("READY " + json.dumps({"http_port": port, "pid": os.getpid()}) + "\n").encode())
    os.close(fd)


def forever() -> None:
    while True:
        time.sleep(3600)


def main() -> None:
    how = sys.argv[1]
    os.setsid()
    print(f"fake project ({how}) starting", flush=True)
    if how == "crash":
        print("boom: something went wrong", file=sys.stderr, flush=True)
        sys.exit(3)
    if how == "hang":
        print("still thinking...", flush=True)
        forever()
    if how == "garbage":
        fd = int(os.environ["COCALC_READY_FD"])
        os.write(fd, b"HELLO THERE\n")
        forever()
    s = listen()
    port = s.getsockname()[1]
    if how == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif how == "fork":
        if os.fork() == 0:
            os.setsid()  # escapes the project's process group
            if os.fork() == 0:
                forever()
            os._exit(0)
    elif how == "megabytes":
        line = "x" * 1000
        for _ in range(20000):
            print(line)
        sys.stdout.write("y" * 5_000_000)
        sys.stdout.flush()
    elif how == "bogus-port":
        port = 1 if port != 1 else 2
    elif how == "die-later":
        # dies when the test says so (SIGUSR1), after the start is complete: held before the
        # ready line, so a signal that comes early waits
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    ready(port)
    if how == "die-later":
        signal.sigwait({signal.SIGUSR1})
        print("exiting on my own", flush=True)
        sys.exit(7)
    forever()


if __name__ == "__main__":
    main()
