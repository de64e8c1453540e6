"""python-socketio's (blocking) client joining two namespaces with an auth payload, and
python-engineio's client sending plain Engine.IO messages; run as a subprocess.

    python sio_namespaces_client.py socketio <url>
    python sio_namespaces_client.py engineio <url>

Prints one JSON object with what it observed.
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any


def socketio_client(url: str) -> dict[str, Any]:
    import socketio

    out: dict[str, Any] = {}
    sio = socketio.Client(reconnection=False)
    got: queue.Queue[tuple[str, Any]] = queue.Queue()
    sio.on("auth", lambda data: got.put(("/", data)))
    sio.on("auth", lambda data: got.put(("/custom", data)), namespace="/custom")
    sio.connect(url, auth={"token": "py"}, transports=["websocket"], socketio_path="/conat/",
                namespaces=["/", "/custom"], wait_timeout=10)
    out["auth"] = dict(got.get(timeout=10) for _ in range(2))
    out["sids_differ"] = sio.get_sid("/") != sio.get_sid("/custom")
    out["echo_root"] = sio.call("echo", ["r", 1], timeout=10)
    out["echo_custom"] = sio.call("echo", b"\x01\x02", namespace="/custom", timeout=10).hex()
    sio.disconnect()
    return out


def engineio_client(url: str) -> dict[str, Any]:
    import engineio

    eio = engineio.Client()
    got: queue.Queue[Any] = queue.Queue()
    eio.on("message", got.put)
    eio.connect(url, transports=["websocket"], engineio_path="/conat/")
    eio.send("hello")
    eio.send(b"\x01\x02\x03")
    out = {"text": got.get(timeout=10), "binary": got.get(timeout=10).hex()}
    eio.disconnect()
    return out


if __name__ == "__main__":
    kind, url = sys.argv[1], sys.argv[2]
    print(json.dumps(socketio_client(url) if kind == "socketio" else engineio_client(url)), flush=True)
