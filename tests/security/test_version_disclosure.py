"""Attacker: anyone probing the hub for its software versions (to pick known exploits).
No answer of the hub's own names Twisted, autobahn or their versions: not the ``Server``
header of pages, API answers and errors, not ``OPTIONS *``, not the conat WebSocket's 101.
"""

from __future__ import annotations

import re

from twisted.trial import unittest

from tests.proxy.support import ws_handshake
from tests.support import parse_response, raw_http, settings_for, start_hub

VERSIONED = re.compile(rb"(?i)twisted|autobahn|python/?\d|[a-z]+/\d+\.\d+")


class VersionDisclosureTests(unittest.TestCase):
    timeout = 60

    async def test_no_versions_in_answers(self) -> None:
        hub = start_hub(self, settings_for(self.mktemp()))
        requests = [b"OPTIONS * HTTP/1.1", b"GET * HTTP/1.1", b"OPTIONS / HTTP/1.1", b"GET / HTTP/1.1",
                    b"GET /nothing/here HTTP/1.1", b"GET /api/v2/nothing HTTP/1.1", b"TRACE / HTTP/1.1",
                    b"GET /alive HTTP/1.1", b"GET /conat/ HTTP/1.1"]
        for line in requests:
            raw = await raw_http(hub.port, line + b"\r\nHost: hub.test\r\nConnection: close\r\n\r\n")
            status, headers, _ = parse_response(raw)
            head = raw.split(b"\r\n\r\n", 1)[0]
            self.assertIsNone(VERSIONED.search(head.split(b"\r\n", 1)[1]), f"{line!r} answered {head!r}")
            self.assertEqual(headers.get("server"), "cocalc-hub", f"{line!r} answered {head!r}")
        status, raw = await ws_handshake(hub.port, "/conat/?EIO=4&transport=websocket", {})
        self.assertEqual(status, 101)
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertIsNone(VERSIONED.search(head.split(b"\r\n", 1)[1]), head)
