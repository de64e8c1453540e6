"""A backend for proxy tests, run inside a project: ``python backend_app.py PORT``.

It reports exactly what reached it, and misbehaves on request:
``/special/setcookie``, ``/special/redirect``, ``/special/close``, ``/special/hang``,
``/special/big?n=BYTES``, ``/special/slow[?ticks=N]``, ``/special/stats``, ``/special/upload`` (POST),
``/special/respond?status=N&h=Name:value&h=…`` (answers with exactly those headers),
``/ws`` (WebSocket echo, autobahn). Everything else echoes the request as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

STATS: dict[str, Any] = {"requests": 0, "aborted": 0, "ws": 0, "ws_headers": {}}


class Echo(WebSocketServerProtocol):
    def onConnect(self, request: Any) -> None:
        STATS["ws_headers"] = dict(request.headers)

    def onOpen(self) -> None:
        STATS["ws"] += 1
        self.transport.setTcpNoDelay(True)  # autobahn leaves Nagle on (pitfall 1)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


class Big:
    """Streams n bytes with back-pressure (a push producer)."""

    def __init__(self, request: Request, n: int) -> None:
        self.request = request
        self.left = n
        self.paused = False
        self.block = b"x" * 65536

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            chunk = self.block[: min(len(self.block), self.left)]
            self.left -= len(chunk)
            self.request.write(chunk)
        if self.left <= 0:
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = 0


class Root(Resource):
    isLeaf = True

    def __init__(self, port: int, ws: Resource) -> None:
        super().__init__()
        self.port = port
        self.ws = ws

    def render(self, request: Request) -> Any:
        path = request.path
        if path.endswith(b"/ws"):
            return self.ws.render(request)
        if path.endswith(b"/special/stats"):
            return json.dumps(STATS).encode()
        STATS["requests"] += 1
        if path.endswith(b"/special/setcookie"):
            for value in (b"remember_me=planted; Path=/", b"%2Fhubremember_me=planted; Path=/",
                          b"api_key=planted", b"app=1; Path=/", b"csrf_token=planted"):
                request.responseHeaders.addRawHeader(b"set-cookie", value)
            return b"cookies"
        if path.endswith(b"/special/respond"):
            request.setResponseCode(int(request.args.get(b"status", [b"200"])[0]))
            for line in request.args.get(b"h", []):
                name, _, value = line.partition(b":")
                request.responseHeaders.addRawHeader(name.strip(), value.lstrip(b" "))
            return b"hostile"
        if path.endswith(b"/special/redirect"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"http://127.0.0.1:%d/landed" % self.port)
            return b""
        if path.endswith(b"/special/close"):
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if path.endswith(b"/special/hang"):
            return NOT_DONE_YET
        if path.endswith(b"/special/big"):
            n = int(request.args.get(b"n", [b"1000"])[0])
            request.setHeader(b"content-length", b"%d" % n)
            big = Big(request, n)
            request.registerProducer(big, True)
            big.resumeProducing()
            return NOT_DONE_YET
        if path.endswith(b"/special/slow"):
            sent = [0]
            ticks = int(request.args.get(b"ticks", [b"100"])[0])  # one each 0.05 s

            def tick() -> None:
                if sent[0] >= ticks:
                    loop.stop()
                    request.finish()
                    return
                sent[0] += 1
                request.write(b"tick\n")

            def gone(_: Any) -> None:
                STATS["aborted"] += 1
                if loop.running:
                    loop.stop()

            loop = task.LoopingCall(tick)
            loop.start(0.05)
            request.notifyFinish().addErrback(gone)
            return NOT_DONE_YET
        assert request.content is not None
        request.content.seek(0)
        digest = hashlib.sha256()
        size = 0
        while True:
            block = request.content.read(1 << 20)
            if not block:
                break
            size += len(block)
            digest.update(block)
        body = {
            "method": request.method.decode(),
            "uri": request.uri.decode("latin-1"),
            "headers": [[k.decode("latin-1").lower(), v.decode("latin-1")]
                        for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
            "body_len": size,
            "body_sha256": digest.hexdigest(),
            "client": request.getClientAddress().host,
        }
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def main() -> None:
    port = int(sys.argv[1])
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    factory.setProtocolOptions(autoPingInterval=0, maxMessagePayloadSize=0, maxFramePayloadSize=0)
    site = Site(Root(port, WebSocketResource(factory)))
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"backend listening on {port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
