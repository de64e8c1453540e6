"""A process whose conat broker runs elsewhere: the link is visible in the log within 2 s,
in /healthcheck and /metrics, and recovers when the broker comes (unit, with a driven clock,
and end to end with real processes)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from cocalc_hub.broker_link import GRACE, BrokerLink
from cocalc_hub.conat.client import Client
from tests.support import TWISTD, LogCapture, free_tcp_port, http_client, spawn


class FakeTransport:
    """Just enough of a conat transport for the client: the test plays the connection."""

    connected = False

    def start(self, owner: Any) -> None:
        self.owner = owner

    def emit(self, event: str, args: list[Any], ack: Callable[..., None] | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class BrokerLinkUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.transport = FakeTransport()
        self.logs = LogCapture(self)
        self.link = BrokerLink("http://broker:5000", lambda: Client(self.clock, self.transport), self.clock)
        self.link.startService()
        self.addCleanup(self.link.stopService)

    def warnings(self) -> list[str]:
        return [line for line in self.logs.lines if "not reachable" in line]

    def test_reported_after_the_grace_with_the_error_then_recovered(self) -> None:
        self.transport.owner.transport_disconnected("cannot connect to http://broker:5000: Connection refused", True)
        self.clock.advance(GRACE - 0.1)
        self.assertEqual(self.warnings(), [])
        self.assertFalse(self.link.status().ok)
        self.clock.advance(0.2)
        [line] = self.warnings()
        self.assertIn("conat broker at http://broker:5000 (CONAT_SERVER) not reachable", line)
        self.assertIn("Connection refused; retrying", line)
        status = self.link.status()
        self.assertFalse(status.ok)
        self.assertIn("Connection refused", status.detail)
        self.assertEqual(self.link.up_value(), 0.0)
        # more failures in the same outage: no more lines
        for _ in range(5):
            self.transport.owner.transport_disconnected("cannot connect: Connection refused", True)
            self.clock.advance(10)
        self.assertEqual(len(self.warnings()), 1)
        self.transport.connected = True
        self.transport.owner.transport_event("info", [{"user": {"hub_id": "hub"}}], None)
        self.assertTrue(self.link.status().ok)
        self.assertEqual(self.link.up_value(), 1.0)
        self.assertTrue(any("reachable again after 52 s" in line for line in self.logs.lines), self.logs.lines)

    def test_a_quick_connection_logs_no_warning(self) -> None:
        self.clock.advance(GRACE / 2)
        self.transport.connected = True
        self.transport.owner.transport_event("info", [{"user": {"hub_id": "hub"}}], None)
        self.clock.advance(GRACE * 2)
        self.assertEqual(self.warnings(), [])
        self.assertTrue(any("connected to the conat broker at http://broker:5000" in line
                            for line in self.logs.lines))
        # losing it later: reported again after the grace
        self.transport.connected = False
        self.transport.owner.transport_disconnected("ping timeout", True)
        self.clock.advance(GRACE + 0.1)
        self.assertIn("ping timeout", self.warnings()[0])

    def test_refused_credentials_are_the_reason(self) -> None:
        self.transport.connected = True
        self.transport.owner.transport_event("info", [{"user": {"error": "Error: bad hub password"}}], None)
        self.transport.connected = False
        self.transport.owner.transport_disconnected("transport close", False)
        self.clock.advance(GRACE + 0.1)
        self.assertIn("refused this hub's credentials", self.warnings()[0])


class BrokerLinkProcessTests(unittest.TestCase):
    """``--conat-api`` started before its broker: it says so, reports 503, then recovers."""

    timeout = 120

    async def test_api_process_waits_for_its_broker_visibly(self) -> None:
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir()
        broker_port = free_tcp_port()
        address = f"http://127.0.0.1:{broker_port}"
        api, api_transport = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--conat-api",
                                          "--data", str(tmp / "data"), "--port", "tcp:0:interface=127.0.0.1"],
                                   env={"CONAT_SERVER": address}, cwd=str(tmp))
        port = int((await api.wait_for(rb"listening on 127\.0\.0\.1:(\d+)")).group(1))
        await api.wait_for(rb"cocalc-hub [^ ]+ running: conat-api\n")
        started = reactor.seconds()
        line = (await api.wait_for(rb"conat broker at " + re.escape(address.encode())
                                   + rb" \(CONAT_SERVER\) not reachable: [^\n]*refused[^\n]*retrying")).group(0)
        self.assertLess(reactor.seconds() - started, 10, "reported about 2 s after start (generous under load)")
        self.assertNotIn(b"Traceback", api.output)
        http = http_client(self)
        r = await http.get(f"http://127.0.0.1:{port}/healthcheck")
        body = json.loads(await r.content())
        self.assertEqual((r.code, body["parts"]), (503, ["conat-api"]), body)
        self.assertFalse(body["components"]["conat-broker"]["ok"])
        self.assertIn(address, body["components"]["conat-broker"]["detail"])
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
        self.assertIn("cocalc_hub_conat_broker_up 0.0", await r.text())
        self.assertEqual(api.output.count(b"not reachable"), 1, line)

        broker, broker_transport = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "cocalc-hub", "--conat-server",
                                                "--data", str(tmp / "data"), "--port",
                                                f"tcp:{broker_port}:interface=127.0.0.1"], cwd=str(tmp))
        await broker.wait_for(rb"running: conat-server")
        await api.wait_for(rb"conat broker at " + re.escape(address.encode()) + rb" reachable again", timeout=60)
        r = await http.get(f"http://127.0.0.1:{port}/healthcheck")
        body = json.loads(await r.content())
        self.assertEqual(r.code, 200, body)
        self.assertTrue(body["components"]["conat-broker"]["ok"])
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
        self.assertIn("cocalc_hub_conat_broker_up 1.0", await r.text())
        await http._agent._pool.closeCachedConnections()
        for proc, transport in ((api, api_transport), (broker, broker_transport)):
            transport.signalProcess("TERM")
            await proc.ended
            self.assertNotIn(b"Traceback", proc.output)
