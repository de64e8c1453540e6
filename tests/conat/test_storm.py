"""What a reconnect storm costs the hub per connection: no per-connection copy of
autobahn's settings (nor the pretty-printing of them), nothing of the opening handshake
kept once a connection is open, and nothing of the Site's HTTP channel and upgrade
request kept behind a conat WebSocket. (Figures: benchmarks/bench_storm.py.)"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from typing import Any

from autobahn.websocket import protocol as autobahn_protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from cocalc_hub.conat.transport.engine import EngineOptions, EngineProtocol
from cocalc_hub.internals.autobahn import HANDSHAKE_LEFTOVERS
from cocalc_hub.web.request import HubRequest
from tests.conat.support import Recorder, open_session, serve_engine, ws_connect
from tests.support import REPO, settings_for, start_hub, until


class EngineConnectionCostTests(unittest.TestCase):
    async def test_settings_are_not_copied_into_each_connection(self) -> None:
        formatted: list[Any] = []
        self.patch(autobahn_protocol, "pformat", lambda *a, **k: formatted.append(a) or "")
        port, factory = serve_engine(self, Recorder(), EngineOptions(max_payload=12345))
        ws = await ws_connect(self, port)
        await open_session(ws)
        (proto,) = factory.connections
        self.assertEqual(set(EngineProtocol.CONFIG_ATTRS) & set(vars(proto)), set())
        self.assertEqual([a for a in formatted if a != ([],)], [], "autobahn pretty-printed its settings")
        # the settings still apply: read from the factory's own protocol class
        self.assertEqual(proto.maxMessagePayloadSize, 12345)
        self.assertIsNone(proto.perMessageCompressionAccept(["offer"]))
        factory.setProtocolOptions(maxMessagePayloadSize=777)
        ws2 = await ws_connect(self, port)
        await open_session(ws2)
        (proto2,) = factory.connections - {proto}
        self.assertEqual((proto.maxMessagePayloadSize, proto2.maxMessagePayloadSize), (12345, 777))

    def test_a_factory_subclass_keeps_its_own_protocol_class(self) -> None:
        """The per-factory settings class derives from the factory's own protocol (the
        WebSocket fuzzing test's echo server is such a subclass)."""
        from twisted.internet import reactor

        from cocalc_hub.conat.transport.engine import EngineFactory
        from cocalc_hub.conat.transport.sio import SocketIOServer

        class Mine(EngineProtocol):
            pass

        class MyFactory(EngineFactory):
            protocol = Mine

        factory = MyFactory(SocketIOServer(Recorder()), reactor, EngineOptions(max_payload=4321))
        self.assertTrue(issubclass(factory.protocol, Mine))
        self.assertEqual(factory.buildProtocol(None).maxMessagePayloadSize, 4321)
        self.assertTrue(issubclass(EngineFactory(SocketIOServer(Recorder()), reactor).protocol, EngineProtocol))

    async def test_handshake_leftovers_are_released_on_open(self) -> None:
        port, factory = serve_engine(self, Recorder())
        ws = await ws_connect(self, port)
        await open_session(ws)
        (proto,) = factory.connections
        kept = {name: getattr(proto, name) for name in HANDSHAKE_LEFTOVERS if getattr(proto, name) is not None}
        self.assertEqual(kept, {})
        self.assertIn("http_request_data", HANDSHAKE_LEFTOVERS)
        self.assertIn("http_headers", HANDSHAKE_LEFTOVERS)


class FrontDoorUpgradeTests(unittest.TestCase):
    async def test_the_upgrade_request_is_not_kept_behind_a_websocket(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp()))
        password = (hub.hub.settings.secrets_dir / "conat-password").read_text().strip()
        requests: list[weakref.ref[HubRequest]] = []
        original = HubRequest.__init__

        def tracked(request: HubRequest, *args: Any, **kwargs: Any) -> None:
            original(request, *args, **kwargs)
            requests.append(weakref.ref(request))

        self.patch(HubRequest, "__init__", tracked)
        ws = await ws_connect(self, hub.port, headers={"Cookie": f"hub_password={password}"})
        await open_session(ws)
        info = await ws.text_skipping_pings()
        self.assertRegex(info, r'^42[0-9]*\["info",')
        self.assertEqual(len(requests), 1)
        web = hub.hub.web
        assert web is not None
        self.assertEqual(len(web.site.open_connections()), 1)
        self.assertEqual(web.factory.connections, set(), "the sweeper still visits the upgraded connection")
        gc.collect()
        self.assertIsNone(requests[0](), "the upgrade's HubRequest is still alive")
        # the connection still works and closes cleanly
        ws.send_text('420["subscribe",{"subject":"x.y","queue":"q"}]')
        self.assertRegex(await ws.text_skipping_pings(), r"^430\[")
        assert ws.transport is not None
        ws.transport.loseConnection()
        await until(lambda: not web.site.open_connections(), what="the front door connection to close")


FROZEN = """
import gc, sys
from cocalc_hub import tap
o = tap.Options()
o.parseOptions(["--port", "tcp:0:interface=127.0.0.1", "--data", sys.argv[1]])
before = gc.get_freeze_count()
tap.makeService(o)
print(before, gc.get_freeze_count())
"""


class StartupTests(unittest.TestCase):
    async def test_what_startup_built_is_out_of_the_collectors_sight(self) -> None:
        """A twistd hub freezes its start-up objects (gc.freeze): the full collections
        of a storm then walk the new connections only."""
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", FROZEN, os.path.abspath(self.mktemp())], env=dict(os.environ), path=str(REPO))
        self.assertEqual(code, 0, err.decode(errors="replace"))
        before, after = map(int, out.split())
        self.assertEqual(before, 0)
        self.assertGreater(after, 10000)
