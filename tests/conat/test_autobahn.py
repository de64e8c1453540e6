"""Autobahn|Testsuite's fuzzing client against the conat WebSocket endpoint.

The suite needs an echo server, so the hub's ``BASE_PATH/conat/`` is served by a
protocol that is the conat one (autobahn handshake, the fast frame path, our close
timers) with the Engine.IO layer replaced by an echo. Everything between the socket and
the Engine.IO parser is what the fuzzer exercises: the front door, the Site's upgrade,
the hand-over to autobahn and our framing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from cocalc_hub.bus.gateway import handshake_from
from cocalc_hub.conat.transport.engine import EngineFactory, EngineOptions, EngineProtocol, EngineResource
from cocalc_hub.conat.transport.sio import SocketIOServer
from tests.conat.support import Recorder
from tests.proxy.test_autobahn import require_wstest, run_fuzzing_client
from tests.support import settings_for, start_hub


class EchoProtocol(EngineProtocol):
    def onOpen(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def _text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), False)

    def _binary(self, payload: bytes) -> None:
        self.sendMessage(payload, True)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        pass


class EchoFactory(EngineFactory):
    protocol = EchoProtocol


class ConatFuzzingTests(unittest.TestCase):
    timeout = 900

    async def test_conat_endpoint(self) -> None:
        require_wstest()
        hub = start_hub(self, settings_for(self.mktemp()))
        # 16 MiB messages are part of the suite (cases 9.x); the real endpoint's limit is 8 MB.
        factory = EchoFactory(SocketIOServer(Recorder()), reactor, EngineOptions(max_payload=17 * 1024 * 1024))
        resource = EngineResource(factory, lambda request: handshake_from(request, False))
        assert hub.hub.web_parts is not None
        hub.hub.web_parts.router.mount("conat", resource, "conat")
        url = f"ws://127.0.0.1:{hub.port}/conat/?EIO=4&transport=websocket"
        # Measured: 298 OK, 3 INFORMATIONAL (of 301; 12.x/13.x need compression, which we decline).
        counts = await run_fuzzing_client(self, url, {}, ["12.*", "13.*"])
        self.assertGreater(sum(counts.values()), 280, counts)
        self.assertEqual(counts.get("FAILED", 0), 0)
