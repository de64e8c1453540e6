"""python-socketio's (blocking) client against the hub's conat broker; run as a subprocess.

    python sio_client.py <hub url> <Cookie header> <tag>

Prints one JSON object with what it observed (bytes shown as ``{"hex": …}``). Before it
disconnects it writes ``HOLD <sid>`` to stderr and waits for a line on stdin, so the test
can look at the broker while the connection is still open.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import socketio


def show(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, list):
        return [show(v) for v in value]
    if isinstance(value, dict):
        return {k: show(v) for k, v in value.items()}
    return value


def main() -> None:
    url, cookie, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    out: dict[str, Any] = {}
    sio = socketio.Client(reconnection=False)
    got_info = threading.Event()
    delivered = threading.Event()
    deliveries: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_info(info: Any) -> None:
        # python-socketio acks an event that asked for one with the handler's return
        # value: None gives the empty argument list, as conat's client sends.
        out["info"] = info
        got_info.set()

    sio.on("info", on_info)
    pattern = f"s.{tag}.*"

    def on_delivery(payload: Any) -> None:
        with lock:
            deliveries.append({"event": pattern, "payload": show(payload),
                               "raw_type": type(payload["data"][4]).__name__})
            if len(deliveries) >= 2:
                delivered.set()

    sio.on(pattern, on_delivery)
    sio.connect(url, headers={"Cookie": cookie}, transports=["websocket"], socketio_path="/conat/",
                wait_timeout=10)
    out["sid"] = sio.get_sid()
    out["got_info"] = got_info.wait(10)

    out["subscribe"] = sio.call("subscribe", {"subject": pattern, "queue": "q1"}, timeout=10)
    out["subscribe_again"] = sio.call("subscribe", {"subject": pattern, "queue": "q2"}, timeout=10)
    out["publish"] = sio.call("publish", [f"s.{tag}.x", "id1", 0, 1, 0, b"\x00\xffbin", {"h": "v"}], timeout=10)
    sio.emit("publish", [f"s.{tag}.y", "id2", 0, 1, 1, b'"no ack"'])
    out["delivered"] = delivered.wait(10)
    out["deliveries"] = deliveries
    out["subscriptions"] = sio.call("subscriptions", (None,), timeout=10)
    out["cluster"] = sio.call("cluster", timeout=10)
    out["wfi_match"] = sio.call("wait-for-interest", {"subject": f"s.{tag}.z", "timeout": 0}, timeout=10)
    out["wfi_nobody"] = sio.call("wait-for-interest", {"subject": f"nobody.{tag}", "timeout": 0}, timeout=10)

    # A wait that is answered once a subscription appears (from this very connection).
    answered = threading.Event()
    answer: list[Any] = []

    def on_answer(*args: Any) -> None:
        answer.extend(args)
        answered.set()

    sio.emit("wait-for-interest", {"subject": f"later.{tag}.x", "timeout": 10000}, callback=on_answer)
    out["wfi_answered_early"] = answered.wait(0.3)
    out["subscribe_later"] = sio.call("subscribe", {"subject": f"later.{tag}.>", "queue": "q"}, timeout=10)
    out["wfi_later"] = answer if answered.wait(10) else None

    out["unsubscribe"] = sio.call("unsubscribe", {"subject": f"later.{tag}.>"}, timeout=10)
    out["subscriptions_after"] = sio.call("subscriptions", (None,), timeout=10)

    sys.stderr.write(f"HOLD {out['sid']}\n")
    sys.stderr.flush()
    sys.stdin.readline()
    sio.disconnect()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
