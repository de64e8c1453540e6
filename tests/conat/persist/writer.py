"""Subprocess for the kill -9 test: writes to a stream and prints each acknowledged seq."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, task

from cocalc_hub.conat.persist.storage.base import SetRequest
from cocalc_hub.conat.persist.storage.sqlite import SqliteStorageBackend


async def main(reactor: object, root: str) -> None:
    backend = SqliteStorageBackend(Path(root), reactor)
    stream = await backend.open("hub/durable")
    print("ready", flush=True)
    n = 0
    while True:  # pipelined, 50 at a time, until killed
        batch = [stream.set(SetRequest(raw=b"%d" % (n + i), encoding=1)) for i in range(50)]
        n += 50
        for d in batch:
            result = await d
            sys.stdout.write(f"{result['seq']}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1])))
